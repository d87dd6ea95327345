"""The audit log's entries a household's access log can show, read once and kept small: organizations' requests
for releases (whatever came of them) and trigger actions about households, by whose page may show them. I/O only,
in a worker thread.

A day file is decoded incrementally (only what was appended since the last request: the segment reader keeps its
place) and reduced to those entries; the pages then read a page of them, newest first, without reading any file
whole again. A subscription's pushes (`data.push`: one per decided window, 86,400 a day at 1 s) are kept as runs
(`Run`): its consecutive windows within one clock hour of their starts, so a run's boundaries are a function of the
subscription's own windows and the clock only (never of what came of them, which depends on other households).
The audit log writes them as runs already (agent/audit.py: cut also where an outcome changed, which the page must
not show): the index joins those of one hour into one, takes entries of the format before (one per window) as
runs of one, and shows the runs not in a file yet (`pending`, the log's `pending_runs`) as if they were.
Memory per kept day is bounded by runs, not windows: at most (24 + the breaks in its windows: restarts, refusals
of the organization's access) runs per subscription, each ~170 B, plus one small dict per one-off request (reads,
history, anonymized) and trigger action. The reductions of at most `KEEP_DAYS` files are kept; an older day asked
for again is read again (bench/access.py: a 1 s subscription's day was 51.6 MB held as dicts, now ~20 kB).
"""

from __future__ import annotations

import heapq
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.audit import RUN_S
from agent.config import WINDOW_SECONDS
from agent.store.segment import SegmentStorage, day_file_name, day_of_file_name

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


class Run:
    """One subscription's consecutive decided windows `first`, `first + width`, ... (`count` of them), all starting
    in one clock hour; `at`: when the first was recorded."""

    __slots__ = ("who", "subscription_id", "window", "width", "first", "count", "at")

    def __init__(self, entry: dict[str, Any]):
        self.who, self.subscription_id = sys.intern(entry["who"]), sys.intern(entry["subscription_id"])
        self.window, self.width = sys.intern(entry["window"]), WINDOW_SECONDS[entry["window"]]
        self.first, self.count, self.at = int(entry["window_start"]), int(entry.get("windows", 1)), entry["at"]

    @staticmethod
    def of(entry: dict[str, Any]) -> bool:
        """Whether an entry is a push, or the log's run of pushes, a run can hold (on the windows' grid of a known
        width)."""
        windows = entry.get("windows", 1)
        return (entry.get("action") == "data.push" and isinstance(entry.get("subscription_id"), str)
                and entry.get("window") in WINDOW_SECONDS and isinstance(entry.get("window_start"), (int, float))
                and entry["window_start"] == int(entry["window_start"]) and isinstance(windows, int) and windows >= 1)

    def copy(self) -> Run:
        run = object.__new__(Run)
        for name in Run.__slots__:
            setattr(run, name, getattr(self, name))
        return run

    def held(self, entry: dict[str, Any]) -> bool:
        """Whether the entry's windows begin before this run's end: held already (the log's second copy of a run,
        appended again by a start after a crash; a subscription's windows only go forward)."""
        return int(entry["window_start"]) < self.first + self.count * self.width

    def extend(self, entry: dict[str, Any]) -> bool:
        """Take the subscription's next windows (a push, or a run of them) if they follow on from this run's last
        in the same clock hour (or overlap it: a second copy's)."""
        start, end = int(entry["window_start"]), self.first + self.count * self.width
        if (entry["who"] != self.who or entry["window"] != self.window or not self.first <= start <= end
                or start // RUN_S != self.first // RUN_S):
            return False
        self.count = max(self.count, (start - self.first) // self.width + int(entry.get("windows", 1)))
        return True

    def entry(self) -> dict[str, Any]:
        """As the pages read an entry: the first window's, with `windows` (how many the run holds)."""
        return {"at": self.at, "who": self.who, "action": "data.push", "subscription_id": self.subscription_id,
                "window": self.window, "window_start": self.first, "windows": self.count}


class _Day:
    def __init__(self, path: Path):
        self.storage = SegmentStorage(path)
        self.entries: list[dict[str, Any] | Run] = []  # at the position of its first window
        self.owned: dict[tuple[str, str], list[int]] = {}  # owner -> positions in `entries`
        self.runs: dict[str, Run] = {}  # subscription -> its newest run
        self.seen = 0  # the highest record id reduced

    def refresh(self) -> None:
        tables = self.storage.read() or {}
        rows = tables.get("audit", {})
        for doc_id in sorted(i for i in rows if i > self.seen):
            entry = rows[doc_id]
            key = owner(entry)
            if key is not None:
                self._reduce(key, entry)
            self.seen = doc_id
        rows.clear()  # reduced: the reader keeps its place in the file, not the entries

    def _reduce(self, key: tuple[str, str], entry: dict[str, Any]) -> None:
        item: dict[str, Any] | Run
        if Run.of(entry):
            run = self.runs.get(entry["subscription_id"])
            if run is not None and (run.extend(entry) or run.held(entry)):
                return
            item = self.runs[entry["subscription_id"]] = Run(entry)
        else:
            item = {k: entry[k] for k in FIELDS if k in entry}
        self.owned.setdefault(key, []).append(len(self.entries))
        self.entries.append(item)


def _entry(item: dict[str, Any] | Run) -> dict[str, Any]:
    return item.entry() if isinstance(item, Run) else item


class AccessIndex:
    def __init__(self, directory: str | Path, pending: Callable[[], list[dict[str, Any]]] = list):
        self.directory = Path(directory)
        self._pending = pending  # the log's runs not in a file yet (AuditLog.pending_runs)
        self._days: OrderedDict[int, _Day] = OrderedDict()
        self._lock = threading.Lock()  # requests' worker threads

    def _day(self, day_start: int) -> _Day:
        day = self._days.get(day_start)
        if day is None:
            day = self._days[day_start] = _Day(self.directory / f"{day_file_name(day_start)}.seg")
        self._days.move_to_end(day_start)
        day.refresh()
        while len(self._days) > KEEP_DAYS:
            self._days.popitem(last=False)
        return day

    def _items(self, day_start: int, pending: list[dict[str, Any]],
               owners: set[tuple[str, str]] | None) -> list[dict[str, Any]]:
        """The day's entries of `owners` (all if None) by `at` (a run at its first window's), with the pending runs
        joined to the runs they continue (copies: the index keeps what the file holds) or as runs of their own."""
        day = self._day(day_start)
        if owners is None:
            items = list(day.entries)
        else:
            items = [day.entries[i] for i in heapq.merge(*(day.owned.get(key, ()) for key in owners))]
        shown: dict[str, Run] = {}  # subscription -> the run a pending one may continue (a copy)
        for entry in sorted(pending, key=lambda e: (e["subscription_id"], e["window_start"])):
            key = owner(entry)
            if not Run.of(entry) or (owners is not None and key not in owners) or key is None \
                    or day_file_name(entry["at"]) != day_file_name(day_start):
                continue
            sub = entry["subscription_id"]
            run = shown.get(sub)
            if run is None and sub in day.runs:
                run = shown[sub] = day.runs[sub].copy()
                items = [run if item is day.runs[sub] else item for item in items]
            if run is not None and (run.extend(entry) or run.held(entry)):
                continue
            run = shown[sub] = Run(entry)
            items.append(run)
        items.sort(key=lambda item: item.at if isinstance(item, Run) else item["at"])
        return [_entry(item) for item in items]

    def day(self, day_start: int) -> list[dict[str, Any]]:
        """The entries of one UTC day any page may show, by time, a run as one (`Run.entry`)."""
        pending = self._pending()  # before the file: a run written meanwhile is in both, and taken once
        with self._lock:
            return self._items(day_start, pending, None)

    def own(self, day_start: int, household_id: str, organizations: Iterable[str],
            keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """One household's entries of one UTC day, by time: the trigger actions about it and the requests of
        `organizations` (those it consented to), as far as `keep` accepts them, a run of pushes as one entry
        (`Run.entry`, placed at its first window), the log's runs not in a file yet included. Only these are
        looked at (besides decoding what the file grew by), so neither the list nor the work to make it depends
        on other households' entries; while the organizations stay the same it grows only at its end, and a run's
        `windows` only while its hour lasts."""
        owners = {("household", household_id), *(("organization", org) for org in organizations)}
        pending = self._pending()  # before the file: a run written meanwhile is in both, and taken once
        with self._lock:
            return [entry for entry in self._items(day_start, pending, owners) if keep(entry)]

    def days(self) -> list[int]:
        """The UTC midnights of the day files there are, and of the runs not in a file yet, oldest first (a day's
        first run may still be open: its file is made when it ends)."""
        out = {int(run["at"] // 86400 * 86400) for run in self._pending()}
        for path in self.directory.glob("*.seg"):
            day = day_of_file_name(path.stem)
            if day is not None:
                out.add(day)
        return sorted(out)
