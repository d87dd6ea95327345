"""The release log on disk: every release, refusal, cohort and memo, append-only, one segment file per UTC day.

The store's segment format (CRC-framed, compressed TinyDB records, torn tails cut on load). 1-second releases
go to their own day files (`1s-YYYYMMDD.seg`), kept two days; everything else (`YYYYMMDD.seg`) is kept for the
ledger's horizon or the rollups' retention, whichever is longer. A write is one appended record per file, fsync'd;
it runs in a worker thread (the caller uses `agent.offloop.serially`).

Documents (short keys: there are many):
  {"t": "r", "o": org, "w": width_s, "s": start, "g": tag or "", "b": body | "x": refusal, ["c": cohort, "p": rho]}
  {"t": "c", "h": cohort hash, "m": [household ids]}         (before the first release that names it, per file)
  {"t": "n", "o": org, "i": trigger, "w": width_s, "s": start, "b": counts, ["c", "p"]}   trigger statistics
  {"t": "o", "k": memo key, "b": body}                        a release computed when first asked (`once`)
"""

from __future__ import annotations

import calendar
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.store.segment import SegmentDB, ensure_dir

log = logging.getLogger("edge.release")

TABLE = "r"
FINE_PREFIX = "1s-"
FINE_KEEP_DAYS = 2


def day_name(moment: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(moment))


def _day(path: Path) -> int | None:
    """The UTC midnight a day file is named after, or None for another file."""
    try:
        return calendar.timegm(time.strptime(path.stem.removeprefix(FINE_PREFIX), "%Y%m%d"))
    except ValueError:
        return None


class ReleaseLog:
    def __init__(self, directory: str | Path, keep_days: int):
        self.directory = Path(directory)
        self.keep_days = keep_days
        ensure_dir(self.directory)
        self._open: dict[str, SegmentDB] = {}
        self._lock = threading.Lock()  # a worker thread's write, a history read, or close()
        self.last_error: str | None = None  # the last write's failure, None once one succeeds

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.seg"

    @staticmethod
    def file_of(doc: dict[str, Any]) -> str:
        moment = doc.get("s", 0) if doc["t"] in ("r", "n") else doc.get("at", 0)
        prefix = FINE_PREFIX if doc["t"] == "r" and doc.get("w") == 1 else ""
        return prefix + day_name(moment)

    def write(self, batches: dict[str, list[dict[str, Any]]]) -> None:
        """{file name: docs}: each file's docs appended as one record and fsync'd. A refused write raises its
        OSError and is kept in `last_error` (shown in /health) until a write succeeds."""
        with self._lock:
            try:
                for name, docs in batches.items():
                    db = self._open.get(name)
                    if db is None:
                        db = self._open[name] = SegmentDB(str(self._path(name)), kind="releases")
                    db.table(TABLE).insert_multiple(docs)
            except OSError as exc:
                self.last_error = f"{exc.strerror or exc} ({time.strftime('%H:%M:%S', time.gmtime())} UTC)"
                raise
            self.last_error = None
            # keep only today's and yesterday's files open
            for name in sorted(self._open)[:-4]:
                self._open.pop(name).close()

    def read(self, name: str) -> list[dict[str, Any]]:
        """Every document of one day file (a history read, in a worker thread)."""
        with self._lock:
            db = self._open.get(name)
            if db is not None:
                return list(db.table(TABLE).all())
        path = self._path(name)
        if not path.exists():
            return []
        db = SegmentDB(str(path))
        try:
            return list(db.table(TABLE).all())
        finally:
            db.close()

    def load(self, now: float, fine_since: float) -> Iterator[dict[str, Any]]:
        """Every document still kept, oldest file first (1-second files only from `fine_since`); deletes files
        past their retention."""
        for path in sorted(self.directory.glob("*.seg"), key=lambda p: p.stem.removeprefix(FINE_PREFIX)):
            day = _day(path)
            if day is None:
                continue
            if self._expired(path, day, now):
                path.unlink(missing_ok=True)
                continue
            if path.stem.startswith(FINE_PREFIX) and day + 86400 < fine_since:
                continue
            db = SegmentDB(str(path))
            try:
                yield from db.table(TABLE).all()
            finally:
                db.close()

    def apply_retention(self, now: float) -> None:
        with self._lock:
            for path in self.directory.glob("*.seg"):
                day = _day(path)
                if day is not None and self._expired(path, day, now):
                    db = self._open.pop(path.stem, None)
                    if db is not None:
                        db.close()
                    path.unlink(missing_ok=True)

    def _expired(self, path: Path, day: int, now: float) -> bool:
        keep = FINE_KEEP_DAYS if path.stem.startswith(FINE_PREFIX) else self.keep_days
        return day + (keep + 1) * 86400 < now

    def close(self) -> None:
        with self._lock:
            for db in self._open.values():
                db.close()
            self._open.clear()
