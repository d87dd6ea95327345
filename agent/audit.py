"""The audit log: every access by an organization to data, and every consent change.

Append-only, one TinyDB segment log per UTC day (the store's crash-safe format), fsync'd before the access is
answered: an access that happened is never missing from the log. Days older than the retention are deleted.
Every record is written twice (``copies=2``, as the registry's): one damaged copy is recovered from its twin; a
record lost beyond repair is counted (`faults.damage.audit.lost`, /health 503) when its file is read or opened.
Reads decode a day file a record at a time and keep at most `limit` entries.

The event loop never writes it. `record(...)` only appends the entry to a queue in memory, in the order of the
calls, and wakes the writer: one asyncio task that writes the whole queue in a worker thread (one fsync per
batch and day), batch after batch, so entries land in the order they were recorded and many concurrent requests
share one fsync (agent/store/durable.py's GroupCommit). The API awaits `record_durable(...)`, which returns once its entry is on disk (or raises the
OSError of a disk that refused it: the request fails, as the access must not happen unlogged). What the log
promises:

- an entry whose `record_durable` returned is on disk (a crash, kill -9 or power cut keeps it);
- `record(...)` (trigger actions, not tied to an answer) is written with the writer's next batch: a crash loses
  at most the entries recorded since the batch being written began; `durable=False` (webhook pushes, many per
  second) waits for the next periodic `flush` (the agent's `flush_seconds`) or the next batch;
- on disk, entries are in the order they were recorded, and what a crash leaves is a prefix of that order;
- `close` (a clean stop) writes everything still queued;
- entries the disk refuses (full, failing) are kept in memory, in order, and written with the next attempt.

Without a running event loop (scripts, a few tests), `record` with `durable=True` writes at once, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.store.durable import Durable, GroupCommit
from agent.store.segment import SegmentDB, SegmentStream, day_file_name, day_of_file_name, ensure_dir

RETENTION_DAYS = 400
BATCH_ENTRIES = 1000  # entries per batch of entry_batches
KIND = "audit"  # in integrity(): /health, /metrics
CONSENT_ACTIONS = {True: "consent.grant", False: "consent.revoke"}
LEGACY_MATCH_S = 5.0  # an entry from before `changed_at` was recorded: the same change if this close in time

log = logging.getLogger("edge.audit")


def consent_action(granted: bool) -> str:
    return CONSENT_ACTIONS[granted]


def unaudited(entries: list[dict], changes: list) -> list:
    """The consent changes (the registry's ConsentChange) that have no audit entry among `entries`: the agent
    stopped between the change's durable write and its entry's (the registry is written first)."""
    exact, legacy = set(), []
    for e in entries:
        if e.get("action") not in CONSENT_ACTIONS.values():
            continue
        key = (e["who"], e.get("organization_id"), e.get("service"), e["action"])
        if "changed_at" in e:
            exact.add((*key, e["changed_at"]))
        else:
            legacy.append((key, e["at"]))
    out = []
    for c in changes:
        key = (c.household_id, c.organization_id, c.service, consent_action(c.granted))
        if (*key, c.at) in exact:
            continue
        if any(k == key and abs(at - c.at) <= LEGACY_MATCH_S for k, at in legacy):
            continue
        out.append(c)
    return out


class AuditLog:
    def __init__(self, directory: str | Path, clock=time.time, retention_days: int = RETENTION_DAYS):
        self.directory = Path(directory)
        self.clock = clock
        self.retention_days = retention_days
        ensure_dir(self.directory)
        self._day: str | None = None
        self._db: SegmentDB | None = None
        # one writer at a time (the writer task's thread, a flush, close); entries in the order recorded, a day file
        # each group
        self._durable = Durable("audit log", self.directory, log, what="the audit entry")
        self._entries = GroupCommit(self._durable, group=lambda entry: day_file_name(entry["at"]),
                                    write=lambda day, entries: self._insert(day, entries))

    def _file(self, moment: float) -> Path:
        return self.directory / (day_file_name(moment) + ".seg")

    # --- recording -------------------------------------------------------------------------------------
    def record(self, who: str, role: str, action: str, durable: bool = True, **details) -> dict:
        """Queue an entry (cheap: never waits on the disk from the event loop). `durable=False` for high-rate
        entries (webhook pushes): written with the next `flush` or the writer's next batch."""
        entry = self._entry(who, role, action, details)
        self._entries.add(entry, soon=durable)
        return entry

    async def record_durable(self, who: str, role: str, action: str, **details) -> dict:
        """Queue an entry and return once it is on disk (for what must be logged before it is answered).
        Raises the OSError of a disk that refused it; the entry is kept and written with a later attempt."""
        entry = self._entry(who, role, action, details)
        await self._entries.add_durable(entry)
        return entry

    def _entry(self, who, role, action, details) -> dict:
        return {"at": self.clock(), "who": who, "role": role, "action": action, **details}

    @property
    def queued(self) -> int:
        """Entries not on disk yet."""
        return self._entries.queued

    # --- writing: from any thread ------------------------------------------------------------------------
    def flush(self) -> None:
        """Write (and fsync) everything queued, in order; settle the requests waiting for those entries.
        On OSError the entries not written stay queued, ahead of newer ones, and the error is raised (their
        requests get it); any other error (an entry that cannot be written at all) is raised too."""
        self._entries.flush()

    def _insert(self, day: str, entries: list[dict]) -> None:
        """One day's entries: one append, fsync'd (the only place the log is written)."""
        self._open(day).table("audit").insert_multiple(entries)

    def _open(self, day: str) -> SegmentDB:
        if day != self._day or self._db is None:
            if self._db:
                self._db.close()
            self._db, self._day = SegmentDB(str(self.directory / f"{day}.seg"), kind=KIND, copies=2), day
        return self._db

    # --- reading and housekeeping ----------------------------------------------------------------------
    def entries(self, since: float | None = None, until: float | None = None, who: str | None = None,
                limit: int = 10_000) -> list[dict]:
        """The newest `limit` entries in [since, until] (of `who`), oldest first (``entry_batches`` as one list)."""
        return [entry for batch in self.entry_batches(since, until, who, limit) for entry in batch]

    def entry_batches(self, since: float | None = None, until: float | None = None, who: str | None = None,
                      limit: int = 10_000) -> Iterator[list[dict]]:
        """The newest `limit` entries in [since, until] (of `who`), oldest first, in batches of BATCH_ENTRIES. Day
        files are decoded a record at a time, twice: newest first to count each day's entries in the answer, then
        oldest first to give them. Memory holds one batch and one record, whatever the limit, as long as the
        entries are recorded in time order (they are, unless the clock stepped back): otherwise the days' entries
        are sorted by time in memory (`limit` entries, as before)."""
        self.flush()
        until = until if until is not None else self.clock()
        since = since if since is not None else until - 86400
        days = []
        for path in self.directory.glob("*.seg"):
            day_start = day_of_file_name(path.stem)
            if day_start is None:
                continue  # not one of ours
            if day_start + 86400 > since and day_start <= until:
                days.append((day_start, path))
        days.sort()

        def matching(path: Path) -> Iterator[dict]:
            return (entry for entry in SegmentStream(path, kind=KIND).docs("audit")
                    if since <= entry["at"] <= until and (who is None or entry["who"] == who))
        counts: list[tuple[Path, int]] = []  # newest day first: (file, its entries in the answer)
        in_order, later, wanted = True, float("inf"), limit
        for _, path in reversed(days):
            if wanted <= 0:
                break
            found, first, last = 0, None, float("-inf")
            for entry in matching(path):
                found += 1
                in_order = in_order and entry["at"] >= last
                first, last = (entry["at"] if first is None else first), entry["at"]
            in_order = in_order and last <= later
            later = later if first is None else first
            counts.append((path, found))
            wanted -= found
        if not in_order:
            yield self._sorted_entries([path for path, _ in counts], matching, limit)
            return
        batch: list[dict] = []
        for path, found in reversed(counts):
            skip = max(0, -wanted) if (path, found) == counts[-1] else 0  # the oldest day: only its newest
            for index, entry in enumerate(matching(path)):
                if index >= found:
                    break  # recorded since the count
                if index >= skip:
                    batch.append(dict(entry))
                    if len(batch) >= BATCH_ENTRIES:
                        yield batch
                        batch = []
        if batch:
            yield batch

    @staticmethod
    def _sorted_entries(paths: list[Path], matching: Callable[[Path], Iterator[dict]], limit: int) -> list[dict]:
        """The newest `limit` entries of these day files (newest first), sorted by time."""
        out: list[dict] = []
        for path in paths:
            if len(out) >= limit:
                break
            newest: deque[dict] = deque(maxlen=limit - len(out))  # entries are appended in the order recorded
            newest.extend(dict(entry) for entry in matching(path))
            out[:0] = sorted(newest, key=lambda e: e["at"])
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
        """Write everything still queued, then close the file (a clean stop loses nothing)."""
        self._entries.closed = True
        self.flush()
        with self._durable.lock:
            if self._db:
                self._db.close()
                self._db = None

    async def aclose(self) -> None:
        """`close` from the event loop: the writer stops (a batch it is writing completes), then the rest of
        the queue is written and the file closed, in a worker thread."""
        await self._entries.aclose()
        await asyncio.to_thread(self.close)
