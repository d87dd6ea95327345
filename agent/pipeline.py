"""Where every Reading goes, whichever way it came in: the store, the latest-value table, and
whoever listens (the demo printer now; aggregates, triggers and subscriptions later).

Runs on the event loop thread only: P1 reader threads hand readings over with
`loop.call_soon_threadsafe(pipeline.ingest, reading)`.
"""

from __future__ import annotations

import logging
from typing import Callable

from agent.store import ReadingStore
from drivers.reading import Reading

log = logging.getLogger("edge.pipeline")

Listener = Callable[[Reading], None]


class Pipeline:
    def __init__(self, store: ReadingStore) -> None:
        self.store = store
        self.latest: dict[str, Reading] = {}
        self.readings_in = 0
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def ingest(self, reading: Reading, live: bool = True) -> None:
        """Store it; tell the listeners only when it is live (not a datalogger catching up)."""
        self.store.add(reading)
        known = self.latest.get(reading.meter_id)
        # by arrival: one telegram from a meter whose clock jumped ahead must not freeze "latest"
        if known is None or reading.received_at >= known.received_at:
            self.latest[reading.meter_id] = reading
        self.readings_in += 1
        if not live:
            return
        for listener in self._listeners:
            try:
                listener(reading)
            except Exception:  # one listener's bug must not stop ingestion
                log.exception("reading listener %r failed", listener)
