"""The audit log: every access by an organization to data, and every consent change.

Append-only, one TinyDB segment log per UTC day (the store's crash-safe format), fsync'd per entry:
an access that happened is never missing from the log. Days older than the retention are deleted.
"""

from __future__ import annotations

import calendar
import threading
import time
from pathlib import Path

from agent.store.segment import SegmentDB, ensure_dir

RETENTION_DAYS = 400


class AuditLog:
    def __init__(self, directory: str | Path, clock=time.time, retention_days: int = RETENTION_DAYS):
        self.directory = Path(directory)
        self.clock = clock
        self.retention_days = retention_days
        ensure_dir(self.directory)
        self._day: str | None = None
        self._db: SegmentDB | None = None
        self._pending: list[dict] = []
        self._lock = threading.Lock()  # queries and retention run in worker threads

    def _file(self, moment: float) -> Path:
        return self.directory / (time.strftime("%Y%m%d", time.gmtime(moment)) + ".seg")

    def record(self, who: str, role: str, action: str, durable: bool = True, **details) -> dict:
        """`durable=False` for high-rate entries (webhook pushes): written with the next `flush`."""
        entry = {"at": self.clock(), "who": who, "role": role, "action": action, **details}
        with self._lock:
            self._pending.append(entry)
        if durable:
            self.flush()
        return entry

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            by_day: dict[str, list[dict]] = {}
            for entry in pending:
                by_day.setdefault(time.strftime("%Y%m%d", time.gmtime(entry["at"])), []).append(entry)
            for day, entries in by_day.items():
                try:
                    self._open(day).table("audit").insert_multiple(entries)
                except OSError:
                    # disk full or failing: keep what is not written for the next flush, and say so
                    self._pending[:0] = [e for d, es in by_day.items() if d >= day for e in es]
                    raise

    def _open(self, day: str) -> SegmentDB:
        if day != self._day:
            if self._db:
                self._db.close()
            self._db, self._day = SegmentDB(str(self.directory / f"{day}.seg")), day
        return self._db

    def entries(self, since: float | None = None, until: float | None = None, who: str | None = None,
                limit: int = 10_000) -> list[dict]:
        self.flush()
        until = until if until is not None else self.clock()
        since = since if since is not None else until - 86400
        out: list[dict] = []
        for path in sorted(self.directory.glob("*.seg")):
            try:
                day_start = calendar.timegm(time.strptime(path.stem, "%Y%m%d"))
            except ValueError:
                continue  # not one of ours
            if day_start + 86400 <= since or day_start > until:
                continue
            db = SegmentDB(str(path))
            try:
                for entry in db.table("audit").all():
                    if since <= entry["at"] <= until and (who is None or entry["who"] == who):
                        out.append(dict(entry))
            finally:
                db.close()
        out.sort(key=lambda e: e["at"])
        return out[-limit:]

    def apply_retention(self) -> int:
        cutoff = self.clock() - self.retention_days * 86400
        removed = 0
        for path in self.directory.glob("*.seg"):
            if path != self._file(self.clock()) and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        return removed

    def close(self) -> None:
        self.flush()
        if self._db:
            self._db.close()
            self._db = None
