"""The audit log's entries a household's access log can show, read once and kept small: organizations' requests
for releases (whatever came of them) and trigger actions about households, by whose page may show them. I/O only,
in a worker thread.

A day file is decoded incrementally (only what was appended since the last request: the segment reader keeps its
place) and reduced to those entries; the pages then read a page of them, newest first, without reading any file
whole again. The reductions of at most `KEEP_DAYS` files are kept (a pushing subscription writes ~17,000 entries a
day); an older day asked for again is read again.
"""

from __future__ import annotations

import calendar
import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.store.segment import SegmentStorage

KEEP_DAYS = 3
RELEASING = ("data.read", "data.push", "data.history", "data.anonymized")
FIELDS = ("at", "who", "action", "window", "window_start", "since", "until", "from", "to", "tag", "released",
          "subscription_id", "household_id", "delivered", "disclosed", "action_type")


def owner(entry: dict[str, Any]) -> tuple[str, str] | None:
    """Whose page may show an entry: ("household", id) for a trigger action about it, ("organization", id) for
    its requests, released or refused alike (the pages of the households that consented to it), or None."""
    action = entry.get("action")
    if action == "trigger.action":
        return ("household", entry["household_id"]) if entry.get("household_id") else None
    return ("organization", entry["who"]) if action in RELEASING and entry.get("role") == "organization" else None


class _Day:
    def __init__(self, path: Path):
        self.storage = SegmentStorage(path)
        self.entries: list[dict[str, Any]] = []
        self.owned: dict[tuple[str, str], list[int]] = {}  # owner -> positions in `entries`
        self.seen = 0  # the highest record id reduced

    def refresh(self) -> None:
        tables = self.storage.read() or {}
        rows = tables.get("audit", {})
        for doc_id in sorted(i for i in rows if i > self.seen):
            entry = rows[doc_id]
            key = owner(entry)
            if key is not None:
                self.owned.setdefault(key, []).append(len(self.entries))
                self.entries.append({k: entry[k] for k in FIELDS if k in entry})
            self.seen = doc_id
        rows.clear()  # reduced: the reader keeps its place in the file, not the entries


class AccessIndex:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._days: OrderedDict[int, _Day] = OrderedDict()
        self._lock = threading.Lock()  # requests' worker threads

    def _day(self, day_start: int) -> _Day:
        day = self._days.get(day_start)
        if day is None:
            day = self._days[day_start] = _Day(self.directory / f"{time.strftime('%Y%m%d', time.gmtime(day_start))}.seg")
        self._days.move_to_end(day_start)
        day.refresh()
        while len(self._days) > KEEP_DAYS:
            self._days.popitem(last=False)
        return day

    def day(self, day_start: int) -> list[dict[str, Any]]:
        """The entries of one UTC day any page may show, oldest first (appended to as the day's file grows)."""
        with self._lock:
            return self._day(day_start).entries

    def own(self, day_start: int, household_id: str, organizations: Iterable[str],
            keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """One household's entries of one UTC day, oldest first: the trigger actions about it and the requests
        of `organizations` (those it consented to), as far as `keep` accepts them. Only these are looked at
        (besides decoding what the file grew by), so neither the list nor the work to make it depends on other
        households' entries; it grows only at its end while the organizations stay the same."""
        owners = {("household", household_id), *(("organization", org) for org in organizations)}
        with self._lock:
            day = self._day(day_start)
            positions = heapq.merge(*(day.owned.get(key, ()) for key in owners))
            return [entry for entry in (day.entries[i] for i in positions) if keep(entry)]

    def days(self) -> list[int]:
        """The UTC midnights of the day files there are, oldest first."""
        out = []
        for path in self.directory.glob("*.seg"):
            try:
                out.append(calendar.timegm(time.strptime(path.stem, "%Y%m%d")))
            except ValueError:
                continue
        return sorted(out)
