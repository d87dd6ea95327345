"""Live power for open pages: one pipeline listener, fanned out to each page's server-sent-event stream.

A reading is turned into its event text only when a page takes it, once however many pages show that meter; a slow
page gets the newest value, never a backlog. Open pages cost ingestion a dict write and a wake-up per reading.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timezone

from aiohttp import web

from drivers.reading import Reading

# A household's open live pages (each holds a connection): its next one ends its own oldest (most often a page
# already closed that the device has not noticed yet: it does at the next write). Per household, never in all, so no
# household's pages take a place from, or show in, another's (red team 6b, R6b-2): in all at most this many per
# household the operator registered.
STREAMS_PER_HOUSEHOLD = 8
HEARTBEAT_S = 15.0


def live_values(reading: Reading) -> dict[str, str]:
    """What a page shows live: import and export power and the reading's time."""
    return {"import_w": _watts(reading.power_import_w), "export_w": _watts(reading.power_export_w),
            "at": reading.received_at.astimezone(timezone.utc).strftime("%H:%M:%S UTC")}


def _watts(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def event_text(values: dict[str, str]) -> bytes:
    """One SSE message per value (htmx's sse-swap swaps each into its element), plus a JSON one for scripts."""
    lines = [f"event: {name}\ndata: {values[name]}\n\n" for name in ("import_w", "export_w", "at")]
    lines.append(f"event: reading\ndata: {json.dumps(values)}\n\n")
    return "".join(lines).encode()


class LiveStream:
    """One open page: woken when its meter has a newer reading; takes only the newest (never a backlog)."""

    def __init__(self, hub: "LiveHub", household_id: str, meter_id: str):
        self.hub, self.household_id, self.meter_id = hub, household_id, meter_id
        self.wake = asyncio.Event()
        self.ended = False

    async def next(self, timeout: float) -> bytes | None:
        """The newest reading's event text; b"" after `timeout` without one; None once the stream is ended (the
        agent stops, the household's token was rotated, it was deleted, or opened a page too many)."""
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except asyncio.TimeoutError:
            return b""
        self.wake.clear()
        return None if self.ended or self.hub.closing else self.hub.message(self.meter_id)

    def end(self) -> None:
        self.ended = True
        self.wake.set()


class LiveHub:
    """The pipeline's listener: per reading of a watched meter, one dict write and a wake-up per open page; the
    event text is made when a page takes it, once per reading however many pages show that meter."""

    def __init__(self) -> None:
        self._streams: dict[str, set[LiveStream]] = {}
        self._latest: dict[str, Reading] = {}
        self._made: dict[str, tuple[Reading, bytes]] = {}
        self._of: dict[str, dict[LiveStream, None]] = {}  # household -> its streams, oldest first
        self.closing = False

    def on_reading(self, reading: Reading) -> None:
        streams = self._streams.get(reading.meter_id)
        if not streams:
            return
        self._latest[reading.meter_id] = reading
        for stream in streams:
            stream.wake.set()

    def message(self, meter_id: str) -> bytes:
        reading = self._latest[meter_id]
        made = self._made.get(meter_id)
        if made is None or made[0] is not reading:
            made = self._made[meter_id] = (reading, event_text(live_values(reading)))
        return made[1]

    def open(self, household_id: str, meter_id: str) -> LiveStream | None:
        """A new live page of the household (None: the agent is stopping); past STREAMS_PER_HOUSEHOLD, its own
        oldest ends."""
        if self.closing:
            return None
        while len(self._of.get(household_id, ())) >= STREAMS_PER_HOUSEHOLD:
            self._forget(next(iter(self._of[household_id]))).end()
        stream = LiveStream(self, household_id, meter_id)
        self._streams.setdefault(meter_id, set()).add(stream)
        self._of.setdefault(household_id, {})[stream] = None
        return stream

    def close(self, stream: LiveStream) -> None:
        self._forget(stream)

    def end(self, household_id: str) -> None:
        """Every live page of the household ends now (its token was rotated, or it was deleted)."""
        for stream in list(self._of.get(household_id, ())):
            self._forget(stream).end()

    def _forget(self, stream: LiveStream) -> LiveStream:
        mine = self._of.get(stream.household_id, {})
        mine.pop(stream, None)
        if not mine:
            self._of.pop(stream.household_id, None)
        streams = self._streams.get(stream.meter_id, set())
        streams.discard(stream)
        if not streams:
            for table in (self._streams, self._latest, self._made):
                table.pop(stream.meter_id, None)
        return stream

    def shutdown(self) -> None:
        """The agent is stopping: every stream ends now (aiohttp would otherwise wait for them)."""
        self.closing = True
        for streams in self._streams.values():
            for stream in streams:
                stream.wake.set()


LIVE = web.AppKey("web_live", LiveHub)  # the app's one hub (agent/web/__init__.py makes it)
