"""Proof that disk work is off the event loop: gates that hold a function in its thread until the test opens them,
and call counters."""

from __future__ import annotations

import asyncio
import threading

from agent.store.segment import SegmentDB

GIVE_UP_S = 20  # only reached when the gate blocks the event loop itself (a failure)


class Gate:
    """Wraps functions so that each call waits, in its own thread, until `open()`: before doing its work (a
    write lands only then), or after it (a read returns what was on disk when it started, only then)."""

    def __init__(self):
        self.entered = threading.Event()
        self._open = threading.Event()
        self.calls: list[dict] = []

    def wrap(self, function, wait_after: bool = False):
        def gated(*args, **kwargs):
            call = {"thread": threading.current_thread(), "opened_by_test": None}
            self.calls.append(call)
            result = function(*args, **kwargs) if wait_after else None
            self.entered.set()
            call["opened_by_test"] = self._open.wait(GIVE_UP_S)
            return result if wait_after else function(*args, **kwargs)
        return gated

    def open(self) -> None:
        self._open.set()

    def check(self) -> None:
        assert self.calls, "the gated function was never called"
        for call in self.calls:
            assert call["opened_by_test"], "the gate gave up: it blocked the event loop, which could not open it"
            assert call["thread"] is not threading.main_thread(), "ran on the event loop's thread"


def gate_segment_writes(monkeypatch, db: SegmentDB) -> Gate:
    gate = Gate()
    storage = db.storage
    monkeypatch.setattr(storage, "append", gate.wrap(storage.append))  # inserts: an fsync'd append
    monkeypatch.setattr(storage, "write", gate.wrap(storage.write))  # updates, removals: an atomic rewrite
    return gate


class Counting:
    """Counts calls to an async method, so the test knows a request has reached it."""

    def __init__(self, monkeypatch, owner, name):
        self.count = 0
        original = getattr(owner, name)

        async def counted(*args, **kwargs):
            self.count += 1
            return await original(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)


async def answered_meanwhile(running, *pending: asyncio.Task) -> None:
    """/health is answered while the gated requests are still waiting for their disk work."""
    status, _ = await running.get("/health", token=None)
    assert status in (200, 503)
    assert not any(task.done() for task in pending), "answered before its disk work was done"
