"""A pseudo-terminal pair: what a test's meter writes to and the agent reads like a serial port."""

from __future__ import annotations

import os
import tty


class PtyPair:
    """A pseudo-terminal: the test writes to `master`, the agent opens `path` like a serial port."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no line discipline: CR stays CR
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.master, view)
            view = view[written:]

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
