"""hungup://: a real pty, hung up between pyserial configuring it and flushing it (what a USB adapter pulled
mid-open does), so pyserial's own tcflush raises a real termios.error (EIO)."""

from __future__ import annotations

import os
import time

from serial import serialposix


class Serial(serialposix.Serial):
    def open(self):
        self._ends = os.openpty()
        self.portstr = os.ttyname(self._ends[1])
        super().open()

    def _update_dtr_state(self):
        for end in self._ends:  # the other end goes away: the next termios call on the port fails
            os.close(end)
        time.sleep(0.05)  # the kernel hangs a pty up asynchronously, a moment after its master closes

    def _update_rts_state(self):
        pass  # a pty has no RTS line; the flush that follows is what fails
