"""Fair sharing of the actions' slots: one lane per owner (an organization, or one household's own notifications).

A lane admits at most `slots + queue` actions at once (in flight, waiting for a slot, or waiting to retry);
beyond that an action is refused at once and counted (`dropped`): never an unbounded backlog. Each attempt of
an action holds one of the lane's `slots` for that attempt only; the wait before a retry is spent outside the
slot. Lanes share nothing, so one owner's slow endpoint (a tarpit) fills its own lane and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Lane:
    def __init__(self, slots: int, queue: int):
        self.capacity = slots + queue
        self._slots = asyncio.Semaphore(slots)
        self.admitted = 0  # actions admitted and not yet done
        self.in_flight = 0  # attempts holding a slot now
        self.dropped = 0

    def admit(self) -> bool:
        """Take a place for one action (True), or count it dropped (False). `done()` gives the place back."""
        if self.admitted >= self.capacity:
            self.dropped += 1
            return False
        self.admitted += 1
        return True

    def done(self) -> None:
        self.admitted -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One attempt's slot (an attempt's HTTP request, never a retry's wait)."""
        async with self._slots:
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1


class Lanes:
    """Lanes by owner, made on first use."""

    def __init__(self, slots: int, queue: int):
        self.slots, self.queue = slots, queue
        self._lanes: dict[str, Lane] = {}

    def __getitem__(self, owner: str) -> Lane:
        lane = self._lanes.get(owner)
        if lane is None:
            lane = self._lanes[owner] = Lane(self.slots, self.queue)
        return lane

    def forget_idle(self) -> None:
        """Drop lanes with nothing admitted and nothing dropped (organizations and households come and go)."""
        for owner in [o for o, lane in self._lanes.items() if lane.admitted == 0 and lane.dropped == 0]:
            del self._lanes[owner]

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {owner: {"admitted": lane.admitted, "in_flight": lane.in_flight, "dropped": lane.dropped}
                for owner, lane in self._lanes.items()}
