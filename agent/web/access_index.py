"""The audit log's entries a household's access log can show, read once and kept small: releases handed to
organizations and trigger actions about households. I/O only, in a worker thread.

A day file is decoded incrementally (only what was appended since the last request: the segment reader keeps its
place) and reduced to those entries; the pages then read a page of them, newest first, without reading any file
whole again. The reductions of at most `KEEP_DAYS` files are kept (a pushing subscription writes ~17,000 entries a
day); an older day asked for again is read again.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from agent.store.segment import SegmentStorage

KEEP_DAYS = 3
RELEASING = ("data.read", "data.push", "data.history", "data.anonymized")
FIELDS = ("at", "who", "action", "window", "window_start", "since", "until", "from", "to", "tag", "released",
          "subscription_id", "household_id", "delivered", "disclosed", "action_type")


def shown(entry: dict[str, Any]) -> bool:
    """An entry some household's access log may show."""
    action = entry.get("action")
    if action == "trigger.action":
        return bool(entry.get("household_id"))
    # pushes are recorded only when a release went out (they carry no `released`)
    return action in RELEASING and entry.get("role") == "organization" and bool(entry.get("released", True))


class _Day:
    def __init__(self, path: Path):
        self.storage = SegmentStorage(path)
        self.entries: list[dict[str, Any]] = []
        self.seen = 0  # the highest record id reduced

    def refresh(self) -> None:
        tables = self.storage.read() or {}
        rows = tables.get("audit", {})
        for doc_id in sorted(i for i in rows if i > self.seen):
            entry = rows[doc_id]
            if shown(entry):
                self.entries.append({k: entry[k] for k in FIELDS if k in entry})
            self.seen = doc_id
        rows.clear()  # reduced: the reader keeps its place in the file, not the entries


class AccessIndex:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._days: OrderedDict[int, _Day] = OrderedDict()
        self._lock = threading.Lock()  # requests' worker threads

    def day(self, day_start: int) -> list[dict[str, Any]]:
        """The shown entries of one UTC day, oldest first (appended to as the day's file grows)."""
        with self._lock:
            day = self._days.get(day_start)
            if day is None:
                day = self._days[day_start] = _Day(self.directory / f"{time.strftime('%Y%m%d', time.gmtime(day_start))}.seg")
            self._days.move_to_end(day_start)
            day.refresh()
            while len(self._days) > KEEP_DAYS:
                self._days.popitem(last=False)
            return day.entries

    def days(self) -> list[int]:
        """The UTC midnights of the day files there are, oldest first."""
        out = []
        for path in self.directory.glob("*.seg"):
            try:
                out.append(calendar.timegm(time.strptime(path.stem, "%Y%m%d")))
            except ValueError:
                continue
        return sorted(out)
