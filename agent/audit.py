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
  at most the entries recorded since the batch being written began; `durable=False` (high-rate entries: trigger
  refusals) waits for the next periodic `flush` (the agent's `flush_seconds`) or the next batch;
- on disk, entries are in the order they were recorded, and what a crash leaves is a prefix of that order (runs of
  pushes, below, apart: each is where it ended);
- `close` (a clean stop) writes everything still queued;
- entries the disk refuses (full, failing) are kept in memory, in order, and written with the next attempt.

Without a running event loop (scripts, a few tests), `record` with `durable=True` writes at once, as before.

A subscription's pushes (`record_push`: one per decided window, 86,400 a day at 1 s) are kept as *runs*: one entry
for its consecutive windows whose every other detail (window, released, filtered, households) is the same, cut at
the clock hour of the windows' starts and at the UTC day of their decisions (at most 24 a day for a steady
stream, plus one per change of a detail). A run entry is the entry of its first window (`at`, `window_start`)
with `windows` (how many) and, if more than one, `last_window_start` and `last_at` (when its last window was
decided). An entry without `windows` (the format before runs, one per window) reads as it did. A run is written to
its day file (the day of its `at`) when it ends (at a cut, or with the flush once no window can continue it: after
the next hour, or its day); until then each `flush` writes the state of every run not in its
day file yet over the older of two small files (OPEN_RUNS: one checked, numbered record, one fsync), and a start
takes the newer that checks out and appends its runs (open at a crash) to their day files. So a crash keeps every
window recorded before the last completed flush took that state, and loses those after it: up to flush_seconds
(5 s by default) of windows plus the time a flush takes, whether or not the crash tears the flush in progress;
as a batch of single entries lost before (those recorded since the batch being written began). A run's place in
its file is where it ended, so readers order runs by `at` themselves, and read a run appended twice (written, then
appended again from OPEN_RUNS by a start after a crash between the two writes) once, its copy with the most
windows.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from agent.config import WINDOW_SECONDS
from agent.store.durable import Durable, GroupCommit
from agent.store.records import encode_record, record_at
from agent.store.segment import SegmentDB, SegmentStream, day_file_name, day_of_file_name, ensure_dir, fsync_dir

RETENTION_DAYS = 400
BATCH_ENTRIES = 1000  # entries per batch of entry_batches
KIND = "audit"  # in integrity(): /health, /metrics
CONSENT_ACTIONS = {True: "consent.grant", False: "consent.revoke"}
LEGACY_MATCH_S = 5.0  # an entry from before `changed_at` was recorded: the same change if this close in time
RUN_S = 3600  # a run of pushes ends at the clock hour (of its windows' starts): the access page's runs too
OPEN_RUNS = ("open-runs.0", "open-runs.1")  # the runs not in their day files yet, by turns (no *.seg: no day file)
RUN_FIELDS = ("at", "window_start", "windows", "last_window_start", "last_at")  # a run's own; the others: its details

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


def run_key(entry: dict) -> tuple[str, int] | None:
    """A run's identity (its subscription and first window), None for an entry that is no push."""
    if entry.get("action") != "data.push" or "subscription_id" not in entry or "window_start" not in entry:
        return None
    return entry["subscription_id"], entry["window_start"]


def _continues(run: dict, entry: dict) -> bool:
    """Whether a push is the next window of this run, with every detail the same, in the same clock hour, decided
    on the same UTC day (a run is in one day file, and its windows' decisions too)."""
    width = WINDOW_SECONDS.get(run["window"])
    start = entry["window_start"]
    return (width is not None and start == run["last_window_start"] + width
            and start // RUN_S == run["window_start"] // RUN_S and entry["at"] // 86400 == run["at"] // 86400
            and all(entry.get(k) == run.get(k) for k in {*entry, *run} if k not in RUN_FIELDS))


def _over(run: dict, now: float) -> bool:
    """Whether no window can continue an open run any more: its day is over, or the hour after its windows' hour
    (a window that starts in it, an hour long at most, is decided by then): it goes to its day file."""
    return now >= (run["window_start"] // RUN_S + 2) * RUN_S or now // 86400 != run["at"] // 86400


def _compact(run: dict) -> dict:
    """A run as written: a run of one window without its `last_*` (its own `window_start` and `at`), so that a
    stream whose every window is a run (its outcome changing each time) takes little more than one entry each."""
    if run["windows"] > 1:
        return run
    return {k: v for k, v in run.items() if k not in ("last_window_start", "last_at")}


def _keep_run(runs: dict, run: dict) -> None:
    """A run into `runs` (by `run_key`), its copy with the most windows if it has two."""
    key = run_key(run)
    if key not in runs or run["windows"] > runs[key]["windows"]:
        runs[key] = run


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
        # runs of pushes (under _runs_lock): each subscription's open one, and those ended but not in a day file yet
        self._runs_lock = threading.Lock()
        self._open_runs: dict[str, dict] = {}
        self._ended: list[dict] = []
        self._runs_changed = False
        self._open_runs_seq = 0  # the number of the last OPEN_RUNS state written
        self._recover_runs()

    def _file(self, moment: float) -> Path:
        return self.directory / (day_file_name(moment) + ".seg")

    # --- recording -------------------------------------------------------------------------------------
    def record(self, who: str, role: str, action: str, durable: bool = True, **details) -> dict:
        """Queue an entry (cheap: never waits on the disk from the event loop). `durable=False` for high-rate
        entries: written with the next `flush` or the writer's next batch (pushes: `record_push`)."""
        entry = self._entry(who, role, action, details)
        self._entries.add(entry, soon=durable)
        return entry

    async def record_durable(self, who: str, role: str, action: str, **details) -> dict:
        """Queue an entry and return once it is on disk (for what must be logged before it is answered).
        Raises the OSError of a disk that refused it; the entry is kept and written with a later attempt."""
        entry = self._entry(who, role, action, details)
        await self._entries.add_durable(entry)
        return entry

    def record_push(self, who: str, subscription_id: str, window: str, window_start: int, **details) -> None:
        """A subscription's decided window (withheld, filtered or sent: `details`), kept in its run (see the module's
        docstring): in memory until the next `flush`, never waits on the disk."""
        entry = {**self._entry(who, "organization", "data.push", details), "subscription_id": subscription_id,
                 "window": window, "window_start": window_start}
        with self._runs_lock:
            run = self._open_runs.get(subscription_id)
            if run is not None and _continues(run, entry):
                run["windows"] += 1
                run["last_window_start"], run["last_at"] = window_start, entry["at"]
            else:
                if run is not None:
                    self._ended.append(run)
                self._open_runs[subscription_id] = {**entry, "windows": 1, "last_window_start": window_start,
                                               "last_at": entry["at"]}
            self._runs_changed = True

    def pending_runs(self) -> list[dict]:
        """Copies of the runs not in a day file yet (ended first, then the open ones). A reader takes these
        before it reads the files: a run written meanwhile is then in both, and read once (`run_key`)."""
        with self._runs_lock:
            return [dict(run) for run in (*self._ended, *self._open_runs.values())]

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
        with self._durable.lock:
            self._entries.flush()
            self._write_runs()

    def _write_runs(self) -> None:
        """The ended runs appended to their day files, then OPEN_RUNS rewritten with what is left (the open ones).
        Under the disk lock; on OSError what is not written stays (in memory, and in OPEN_RUNS as it was)."""
        now = self.clock()
        with self._runs_lock:
            for sub, run in list(self._open_runs.items()):
                if _over(run, now):
                    self._ended.append(self._open_runs.pop(sub))
                    self._runs_changed = True
            if not self._runs_changed:
                return
            ended = list(self._ended)
        days: dict[str, list[dict]] = {}
        for run in ended:
            days.setdefault(day_file_name(run["at"]), []).append(run)
        for day, runs in days.items():
            self._durable.step(lambda: self._insert(day, [_compact(run) for run in runs]))
            with self._runs_lock:
                self._ended = [run for run in self._ended if not any(run is r for r in runs)]
        with self._runs_lock:
            self._runs_changed = False
            pending = [dict(run) for run in (*self._ended, *self._open_runs.values())]
        try:
            self._durable.step(lambda: self._write_open_runs(pending))
        except OSError:
            with self._runs_lock:
                self._runs_changed = True
            raise

    def _write_open_runs(self, runs: list[dict]) -> None:
        """The state of the runs not in a day file, over the older of the two OPEN_RUNS files (a torn write leaves
        the newer one, a flush older)."""
        seq = self._open_runs_seq + 1  # taken once written: a refused write is tried again over the same file
        path = self.directory / OPEN_RUNS[seq % 2]
        created = not path.exists()
        data = encode_record("runs", seq, runs)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.directory)
        self._open_runs_seq = seq

    def _recover_runs(self) -> None:
        """The runs the newer OPEN_RUNS file holds (open at a crash, or ended and not written yet): ended now,
        written to their day files with the first flush (here, if the disk takes them)."""
        newest: tuple[int, list[dict]] = (0, [])
        for name in OPEN_RUNS:
            try:
                record = record_at((self.directory / name).read_bytes())
            except FileNotFoundError:
                continue
            if record is None:
                log.warning("%s does not check out (a write torn by a stop): the other one is taken", name)
            elif record[0] == "runs" and record[1] > newest[0]:
                newest = record[1], record[2]
        self._open_runs_seq, runs = newest
        if not runs:
            return
        self._ended, self._runs_changed = [r for r in runs if isinstance(r, dict) and run_key(r)], True
        try:
            self.flush()
        except OSError as exc:
            log.error("the runs of pushes open at the last stop are not written yet: %s", exc)

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
        """The newest `limit` entries in [since, until] (of `who`), oldest first, in batches of BATCH_ENTRIES. A
        run of pushes is one entry, placed by its `at` (its first window's) and in the answer if any of its windows
        was decided in [since, until] (`at` <= until and `last_at` >= since); the runs not in a file yet are in
        it too. Day files are decoded a record at a time, twice: newest first to count each day's entries in the
        answer (and keep its runs: at most 24 a day per steady subscription), then oldest first to give them.
        Memory holds one batch, one record and the runs of the days read, whatever the limit, as long as the
        entries are recorded in time order (they are, unless the clock stepped back): otherwise the days'
        entries are sorted by time in memory (`limit` entries, as before)."""
        pending = self.pending_runs()  # before the flush (so all it lists is on disk once the flush is done) and before
        self.flush()  # the files (a run written meanwhile is in both: read once)
        until = until if until is not None else self.clock()
        since = since if since is not None else until - 86400

        def wanted(entry: dict) -> bool:
            return (entry["at"] <= until and entry.get("last_at", entry["at"]) >= since
                    and (who is None or entry["who"] == who))
        paths: dict[int, Path] = {}
        for path in self.directory.glob("*.seg"):
            day_start = day_of_file_name(path.stem)
            if day_start is not None:  # else not one of ours
                paths[day_start] = path
        for run in pending:
            paths.setdefault(int(run["at"] // 86400 * 86400), self._file(run["at"]))
        days = sorted((day_start, path) for day_start, path in paths.items()
                      if day_start + 86400 > since and day_start <= until)

        def singles(path: Path) -> Iterator[dict]:
            return (entry for entry in SegmentStream(path, kind=KIND).docs("audit")
                    if "windows" not in entry and wanted(entry))
        counts: list[tuple[Path, int, list[dict]]] = []  # newest day first: (file, its singles, its runs by `at`)
        in_order, later, left = True, float("inf"), limit
        for _, path in reversed(days):
            if left <= 0:
                break
            found, first, last = 0, None, float("-inf")
            runs: dict[tuple[str, int] | None, dict] = {}
            for entry in SegmentStream(path, kind=KIND).docs("audit"):
                if not wanted(entry):
                    continue
                if "windows" in entry:
                    _keep_run(runs, entry)
                    continue
                found += 1
                in_order = in_order and entry["at"] >= last
                first, last = (entry["at"] if first is None else first), entry["at"]
            for run in pending:
                if self._file(run["at"]) == path and wanted(run):
                    _keep_run(runs, run)
            in_order = in_order and last <= later
            later = later if first is None else first
            day_runs = sorted(runs.values(), key=lambda run: run["at"])
            counts.append((path, found, day_runs))
            left -= found + len(day_runs)
        if not in_order:
            yield self._sorted_entries([(singles(path), day_runs) for path, _, day_runs in counts], limit)
            return
        batch: list[dict] = []
        for path, found, day_runs in reversed(counts):
            skip = max(0, -left) if path == counts[-1][0] else 0  # the oldest day: only its newest
            day = heapq.merge(itertools.islice(singles(path), found), day_runs, key=lambda entry: entry["at"])
            for index, entry in enumerate(day):  # islice: not what was recorded since the count
                if index >= skip:
                    batch.append(dict(entry))
                    if len(batch) >= BATCH_ENTRIES:
                        yield batch
                        batch = []
        if batch:
            yield batch

    @staticmethod
    def _sorted_entries(days: list[tuple[Iterator[dict], list[dict]]], limit: int) -> list[dict]:
        """The newest `limit` entries of these days (newest first; each its singles, read as they are asked for,
        and its runs), sorted by time."""
        out: list[dict] = []
        for day_singles, day_runs in days:
            if len(out) >= limit:
                break
            newest: deque[dict] = deque(maxlen=limit - len(out))  # entries are appended in the order recorded
            newest.extend(dict(entry) for entry in day_singles)
            out[:0] = sorted([*newest, *day_runs], key=lambda e: e["at"])
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
        with self._runs_lock:
            self._ended.extend(self._open_runs.values())
            self._open_runs.clear()
            self._runs_changed = True
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
