"""Live power for open pages: one pipeline listener, fanned out to each page's server-sent-event stream.

A reading is turned into its event text once per meter, however many pages show it; each page holds a queue of
one (a slow page gets the newest value, never a backlog), so open pages cost ingestion one dict lookup per reading.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timezone

MAX_STREAMS = 500  # open live pages; beyond: 503 (each holds a connection)
HEARTBEAT_S = 15.0


def live_values(reading) -> dict:
    """What a page shows live: import and export power and the reading's time."""
    return {"import_w": _watts(reading.power_import_w), "export_w": _watts(reading.power_export_w),
            "at": reading.received_at.astimezone(timezone.utc).strftime("%H:%M:%S UTC")}


def _watts(value) -> str:
    return "–" if value is None else f"{value:.0f}"


def event_text(values: dict) -> bytes:
    """One SSE message per value (htmx's sse-swap swaps each into its element), plus a JSON one for scripts."""
    lines = [f"event: {name}\ndata: {values[name]}\n\n" for name in ("import_w", "export_w", "at")]
    lines.append(f"event: reading\ndata: {json.dumps(values)}\n\n")
    return "".join(lines).encode()


class LiveHub:
    def __init__(self):
        self._queues: dict[str, set[asyncio.Queue]] = {}
        self.streams = 0
        self.closing = False

    def on_reading(self, reading) -> None:
        queues = self._queues.get(reading.meter_id)
        if not queues:
            return
        message = event_text(live_values(reading))
        for queue in queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)

    def open(self, meter_id: str) -> asyncio.Queue | None:
        if self.closing or self.streams >= MAX_STREAMS:
            return None
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._queues.setdefault(meter_id, set()).add(queue)
        self.streams += 1
        return queue

    def close(self, meter_id: str, queue: asyncio.Queue) -> None:
        queues = self._queues.get(meter_id, set())
        if queue in queues:
            queues.discard(queue)
            self.streams -= 1
        if not queues:
            self._queues.pop(meter_id, None)

    def shutdown(self) -> None:
        """The agent is stopping: every stream ends now (aiohttp would otherwise wait for them)."""
        self.closing = True
        for queues in self._queues.values():
            for queue in queues:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(None)
