"""The reading store: TinyDB segments partitioned by time, batched appends, bounded disk.

Layout under ``path`` (meter ids are percent-encoded into directory names):

    raw/<meter>/YYYYMMDDTHH.seg    raw readings received in that UTC hour       (TinyDB table "readings")
    1m/<meter>/YYYYMMDD.seg        1-minute rollups starting on that UTC day    (TinyDB table "rollups")
    15m/<meter>/YYYYMMDD.seg       15-minute rollups starting on that UTC day   (TinyDB table "rollups")

Every segment is a TinyDB database over an append-only log of framed records (``segment``, ``records``).

Time: everything is partitioned, windowed, ordered and queried by ``received_at``, the device's own
NTP-synced clock, never by the meter's ``timestamp``. Meter clocks drift or are simply wrong, and replayed
test telegrams carry dates from 2016: keyed by ``timestamp``, they would land in segments that retention
deletes at once, and a query for "the last hour" would miss them.

Cost: ``add`` only appends to a deque and updates the rollup accumulators. ``flush`` writes, per segment
that has pending data, one record (compressed JSON of the batch) and fsyncs it; it opens only the current
segments, never reads older ones, and never rewrites anything. Queries open only the segments that overlap
their time range; a small LRU keeps a few decoded segments. Retention deletes whole files.

Crash safety: a record is length-prefixed and CRC-checked, so a torn write (kill -9, power cut) is found on
load and cut off; at most the readings not yet flushed are lost. The rollup windows still open live in memory:
after a restart the store rebuilds them from the raw readings on disk, so a crash costs the rollups no more than
the raw readings. Such a rebuilt window's rollup counts the window's readings already in a rollup (the partial
one a clean close writes), so it replaces, when read, the window's earlier rollups instead of being merged.

Rebuilding the open windows: the window that was open is the one of the meter's last reading *written*, which
after a clock step back is not the one of its latest ``received_at``, and the segment it went to is not always
the newest by name. So the raw segments keep their write order in the data itself, at no cost while the clock
only moves forward:

- when a flush's last reading of a meter goes to a segment older (by name) than its newest one, a record of
  table ``ORDER_TABLE`` (``{"segment": <start>}``) is appended to the newest one first: the newest segment's
  last record then says where the writes went. Readings appended to it later supersede it.
- when a segment gets a reading older than one it already holds, an empty file ``<segment>.stepped`` is made
  beside it first. A segment without one is in time order, so the rebuild decodes it from its end back to the
  first record wholly before the window only; one with it is decoded whole (the window's readings from before
  the step can be anywhere in it).

The rebuild is lazy, to keep start-up (and the watchdog's READY) free of it: a meter that has raw data on
disk is rebuilt by the first ``flush`` (a worker thread) after its first new reading, which waits in memory
until then; idle meters are rebuilt a few per flush, and by ``close``. Queries of rollups rebuild their meter
first. Results are the same as an eager rebuild's.

Threads: the agent calls flush/apply_retention/close from a worker thread while add and the queries come
from the event loop. ``_lock`` guards the in-memory state and is never held during disk I/O, so ``add``
does not wait for an fsync; ``_io_lock`` serializes disk work, so a query never sees a half-done flush.
"""

from __future__ import annotations

import calendar
import logging
import math
import os
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import itemgetter
from pathlib import Path
from urllib.parse import quote, unquote

from tinydb import Query

from agent.store.rollup import RollupAccumulator, combine_same_window, rollup_row, rollup_to_json, window_start
from agent.store.records import decode_records_backward
from agent.store.disk import DataDirectory, StorageCode, StorageUnavailable, unavailable
from agent.store.segment import SegmentDB, SegmentStream, ensure_dir, fsync_dir
from drivers.reading import FIELD_NAMES, TIME_FIELDS, Reading, iso

log = logging.getLogger("edge.store")

SEGMENT_SUFFIX = ".seg"
STEPPED_SUFFIX = ".stepped"  # beside a raw segment that holds readings out of time order (see the module doc)
ORDER_TABLE = "order"  # in a meter's newest raw segment: where its last readings were written
RESUME_IDLE_PER_FLUSH = 16  # idle meters whose open windows one flush rebuilds
ERROR_LOG_EVERY_S = 60.0  # a disk that stays broken gets one log line a minute, not one per flush


@dataclass(frozen=True)
class Kind:
    """One kind of data in the store: its directory, TinyDB table, segment span and time field."""

    name: str  # the directory, and the ``resolution`` argument of ``readings``
    table: str
    segment_s: int
    time_field: str
    name_format: str  # strftime format of a segment's UTC start, without the suffix

    def segment_start(self, moment: float) -> int:
        return window_start(moment, self.segment_s)

    def file_name(self, segment_start: int) -> str:
        return time.strftime(self.name_format, time.gmtime(segment_start)) + SEGMENT_SUFFIX

    def parse_file_name(self, name: str) -> int | None:
        if not name.endswith(SEGMENT_SUFFIX):
            return None
        try:
            return calendar.timegm(time.strptime(name[: -len(SEGMENT_SUFFIX)], self.name_format))
        except ValueError:
            return None


RAW = Kind("raw", "readings", 3600, "received_at", "%Y%m%dT%H")
ROLLUP_1M = Kind("1m", "rollups", 86400, "start", "%Y%m%d")
ROLLUP_15M = Kind("15m", "rollups", 86400, "start", "%Y%m%d")
KINDS = {kind.name: kind for kind in (RAW, ROLLUP_1M, ROLLUP_15M)}
BATCH_ROWS = 1000  # rows per batch of reading_batches (an hour of 1 Hz readings is 3,600)
ROLLUP_WIDTH_S = {ROLLUP_1M: 60, ROLLUP_15M: 900}
_RECORD_FIELDS = frozenset(FIELD_NAMES)


class ReadingStore:
    """Readings and their 1-minute and 15-minute rollups, per meter, on disk under ``path``.

    ``flush_seconds`` is how often the owner is expected to call ``flush`` (the store runs no timer);
    ``max_pending`` bounds what a broken disk can make the store hold in memory (oldest dropped first,
    counted in ``stats()["dropped"]``); ``cache_segments`` is how many decoded segments queries keep.
    """

    def __init__(self, path: str | Path, flush_seconds: float = 5.0,
                 retention_raw_s: float = 86400, retention_rollup_s: float = 30 * 86400,
                 *, max_pending: int = 100_000, cache_segments: int = 4):
        self.path = Path(path)
        self.flush_seconds = flush_seconds
        self.retention_s = {RAW: retention_raw_s, ROLLUP_1M: retention_rollup_s, ROLLUP_15M: retention_rollup_s}
        self.max_pending = max_pending
        self.cache_segments = cache_segments
        ensure_dir(self.path)
        self.data_directory = DataDirectory(self.path)

        self._lock = threading.Lock()  # in-memory state; never held across disk I/O
        self._io_lock = threading.RLock()  # disk: flush, queries, retention, close
        self._closed = False
        self._pending: deque[Reading] = deque()
        self._pending_rollups: deque[tuple[Kind, dict]] = deque()
        self._latest: dict[str, Reading] = {}
        self._accumulators = {kind: RollupAccumulator(width) for kind, width in ROLLUP_WIDTH_S.items()}
        # The segment each (kind, meter) currently appends to; older ones are closed when time moves on.
        self._writers: dict[tuple[Kind, str], tuple[int, SegmentDB]] = {}
        self._readers: OrderedDict[Path, SegmentDB] = OrderedDict()

        self._counters = {"readings_written": 0, "rollups_written": 0, "bytes_written": 0, "flushes": 0,
                          "flush_errors": 0, "dropped": 0, "dropped_after_close": 0}
        self._last_flush_at: float | None = None
        self._last_flush_error: str | None = None
        self._last_flush_fault: OSError | None = None  # what refuses new readings while it lasts (check_writable)
        self._last_error_logged_at = -math.inf
        self._segments, self._disk_bytes = self._measure_disk()
        # Meters whose open rollup windows are still to be rebuilt from disk (lazily, see the module doc), and
        # their readings that came meanwhile, in order (under _lock). Only names are listed here: no file is read.
        self._unresumed: set[str] = {unquote(meter_dir.name) for meter_dir in self._meter_dirs(RAW)}
        self._held: dict[str, list[Reading]] = {}
        self._raw_meta: dict[str, _RawMeta] = {}  # write order bookkeeping per meter (under _io_lock)

    # --- rebuilding the open rollup windows -------------------------------------------------------
    def _resume(self, meter_ids: list[str]) -> None:
        """Rebuild these meters' open windows from disk and feed them what they held meanwhile (under _io_lock)."""
        widest = max(ROLLUP_WIDTH_S.values())
        for meter_id in meter_ids:
            readings: list[Reading] = []
            meter_dir = self.path / RAW.name / _dir_name(meter_id)
            try:
                docs, meta = self._rebuild_source(meter_dir, widest)
                self._raw_meta[meter_id] = meta
                readings = [_reading_from_record(doc) for doc in docs]
            except Exception as exc:  # a damaged store must not stop the agent: those windows start empty
                log.warning("cannot rebuild the open rollup windows of meter %r from %s: %r", meter_id, meter_dir, exc)
            with self._lock:
                if meter_id not in self._unresumed:
                    continue
                self._unresumed.discard(meter_id)
                for accumulator in self._accumulators.values():
                    accumulator.resume(meter_id, readings)
                for reading in self._held.pop(meter_id, ()):
                    self._accumulate(reading)

    def _resume_due(self, idle: int | None) -> None:
        """Rebuild the meters that hold new readings, and up to ``idle`` idle ones (all if None)."""
        with self._lock:
            if not self._unresumed:
                return
            due = list(self._held)
            rest = sorted(self._unresumed.difference(self._held))
        self._resume(due + (rest if idle is None else rest[:idle]))

    def _rebuild_source(self, meter_dir: Path, width_s: int) -> tuple[list[dict], _RawMeta]:
        """The raw records of the window of the meter's last reading written, in write order, and what the
        writer needs to know of the meter's segments. Reads the newest segment's end, and the segment it points
        to (or, if the newest has no readable record yet, the one before)."""
        files = self._segment_files_in(RAW, meter_dir)
        meta = _RawMeta(newest=files[-1][0] if files else None, unordered=_stepped_in(meter_dir))
        for segment, path in reversed(files[-3:]):
            pointer, docs, high = _last_window_records(path, width_s, segment not in meta.unordered)
            if pointer is not None and pointer != segment:
                target = path.with_name(RAW.file_name(pointer))
                _, pointed, pointed_high = _last_window_records(target, width_s, pointer not in meta.unordered)
                if pointed:
                    meta.last, meta.highs[pointer] = pointer, pointed_high
                    if docs:
                        meta.highs[segment] = high
                    return pointed, meta
            if docs:
                meta.last, meta.highs[segment] = segment, high
                return docs, meta
        return [], meta

    # --- writing -------------------------------------------------------------------------------
    def add(self, reading: Reading) -> None:
        """Queue a reading for the next flush and feed the rollups. Memory only, O(1)."""
        with self._lock:
            if self._closed:
                if not self._counters["dropped_after_close"]:
                    log.warning("store closed: dropping readings that still come in (meter %r)", reading.meter_id)
                self._counters["dropped_after_close"] += 1
                return
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self._counters["dropped"] += 1
            self._pending.append(reading)
            known = self._latest.get(reading.meter_id)
            if known is None or reading.received_at >= known.received_at:
                self._latest[reading.meter_id] = reading
            if reading.meter_id in self._unresumed:  # rolled up once its open windows are rebuilt (flush)
                self._held.setdefault(reading.meter_id, []).append(reading)
            else:
                self._accumulate(reading)

    def _accumulate(self, reading: Reading) -> None:
        row = rollup_row(reading)  # one tuple for both widths: less to read and to keep until it is folded
        moment = reading.received_at.timestamp()
        for kind, accumulator in self._accumulators.items():
            for rollup in accumulator.add(reading, row, moment):
                self._queue_rollup(kind, rollup)

    def flush(self) -> int:
        """Write everything pending, one record per segment, fsync'd. Returns the readings written.

        Never raises for a disk fault: what could not be written stays pending for the next flush, and
        the fault is counted in ``stats()`` and logged.
        """
        with self._io_lock:
            # Before anything new reaches the disk: the rebuild counts what is on disk, the held readings after it.
            self._resume_due(RESUME_IDLE_PER_FLUSH)
            with self._lock:
                readings, self._pending = list(self._pending), deque()
                rollups, self._pending_rollups = list(self._pending_rollups), deque()
            if not readings and not rollups:
                return 0

            # Rollups first: a crash between the two parts leaves a rollup whose window the next start rebuilds
            # from the raw readings (and replaces), not raw readings past a closed window whose rollup is lost.
            batches: dict[tuple[Kind, str, int], list] = {}
            for kind, rollup in rollups:
                batches.setdefault((kind, rollup["meter_id"], kind.segment_start(rollup["start"])), []).append(rollup)
            raw: dict[tuple[str, int], list[Reading]] = {}
            last_segment: dict[str, int] = {}
            for reading in readings:
                segment = last_segment[reading.meter_id] = RAW.segment_start(reading.received_at.timestamp())
                raw.setdefault((reading.meter_id, segment), []).append(reading)
            # Per meter, the segment of its last reading is written last (see ORDER_TABLE).
            for (meter_id, segment), items in sorted(raw.items(), key=lambda i: last_segment[i[0][0]] == i[0][1]):
                batches[(RAW, meter_id, segment)] = items

            written = {"readings": 0, "rollups": 0, "bytes": 0, "new_segments": 0}
            failed: list = []
            errors: list[str] = []
            faults: list[OSError] = []
            recovered: str | None = None
            lost = self.data_directory.problem()
            for (kind, meter_id, segment), items in batches.items():
                if lost:  # never recreate a deleted data directory: nobody would read what went there
                    errors.append(lost)
                    faults.append(StorageUnavailable(StorageCode.DIRECTORY_LOST, lost))
                    failed.extend((kind, item) for item in items)
                    continue
                try:
                    self._append(kind, meter_id, segment, items, written,
                                 last=kind is RAW and last_segment[meter_id] == segment)
                except OSError as exc:
                    errors.append(f"{self._segment_path(kind, meter_id, segment)}: {exc.strerror or exc}")
                    faults.append(exc)
                    failed.extend((kind, item) for item in items)
                except Exception as exc:  # e.g. a value JSON cannot encode: retrying will not help
                    log.error("flush: dropping %d item(s) of meter %r that cannot be stored: %r",
                              len(items), meter_id, exc)
                    with self._lock:
                        self._counters["dropped"] += len(items)

            with self._lock:
                self._requeue(failed)
                counters = self._counters
                counters["readings_written"] += written["readings"]
                counters["rollups_written"] += written["rollups"]
                counters["bytes_written"] += written["bytes"]
                self._disk_bytes += written["bytes"]
                self._segments += written["new_segments"]
                if errors:
                    counters["flush_errors"] += 1
                    self._last_flush_error = errors[0]
                    self._last_flush_fault = faults[0]
                else:
                    counters["flushes"] += 1
                    self._last_flush_at = time.time()
                    recovered, self._last_flush_error, self._last_flush_fault = self._last_flush_error, None, None
            self._log_flush_outcome(errors, len(failed), recovered)
            return written["readings"]

    def check_writable(self) -> None:
        """Raise StorageUnavailable (full, failed, directory lost) while the last flush failed or the data directory is
        gone: a reading accepted now might never reach the disk, so it is refused (a datalogger keeps it and
        sends it again) instead of acknowledged. Memory only (a stat a second at most): for every POST /readings."""
        lost = self.data_directory.problem(max_age_s=1.0)
        if lost:
            raise StorageUnavailable(StorageCode.DIRECTORY_LOST, "the data directory was deleted or replaced "
                                     "under the running agent: readings are not saved until it is restarted")
        with self._lock:
            fault = self._last_flush_fault
        if fault is not None:
            raise unavailable(fault, "the reading")

    def _append(self, kind: Kind, meter_id: str, segment: int, items: list, written: dict,
                last: bool = False) -> None:
        if kind is not RAW:
            self._insert(kind, meter_id, segment, kind.table, items, written)
            written["rollups"] += len(items)
            return
        meta = self._meta(meter_id)
        high = max(reading.received_at.timestamp() for reading in items)
        if segment not in meta.unordered:
            before = meta.highs.get(segment)
            if before is None:
                before = _segment_high(self._segment_path(RAW, meter_id, segment))
            moments = [reading.received_at.timestamp() for reading in items]
            if any(a < b for a, b in zip(moments, [before, *moments])):
                self._mark_stepped(meter_id, segment)
                meta.unordered.add(segment)
                meta.highs.pop(segment, None)
            else:
                high = max(high, before)
        if last and meta.last != segment and meta.newest is not None and segment < meta.newest:
            self._insert(RAW, meter_id, meta.newest, ORDER_TABLE, [{"segment": segment}], written)
        self._insert(RAW, meter_id, segment, RAW.table, [item.to_record() for item in items], written)
        written["readings"] += len(items)
        if segment not in meta.unordered:
            meta.highs[segment] = high
            for old in sorted(meta.highs)[:-4]:  # bounded: only the last few segments are ever written again
                del meta.highs[old]
        meta.newest = segment if meta.newest is None else max(meta.newest, segment)
        if last:
            meta.last = segment

    def _insert(self, kind: Kind, meter_id: str, segment: int, table: str, docs: list, written: dict) -> None:
        db, temporary = self._writer(kind, meter_id, segment)
        storage = db.storage
        before = storage.bytes_appended
        created = not storage.path.exists()
        try:
            db.table(table).insert_multiple(docs)
        finally:
            if temporary:
                db.close()
        written["bytes"] += storage.bytes_appended - before
        written["new_segments"] += created

    def _meta(self, meter_id: str) -> _RawMeta:
        """What the writer knows of the meter's raw segments: from its rebuild, else from its directory."""
        meta = self._raw_meta.get(meter_id)
        if meta is None:
            meter_dir = self.path / RAW.name / _dir_name(meter_id)
            files = self._segment_files_in(RAW, meter_dir)
            meta = self._raw_meta[meter_id] = _RawMeta(newest=files[-1][0] if files else None,
                                                      unordered=_stepped_in(meter_dir))
        return meta

    def _mark_stepped(self, meter_id: str, segment: int) -> None:
        path = self._segment_path(RAW, meter_id, segment).with_suffix(STEPPED_SUFFIX)
        ensure_dir(path.parent)
        with open(path, "wb") as marker:
            os.fsync(marker.fileno())
        fsync_dir(path.parent)

    def _writer(self, kind: Kind, meter_id: str, segment: int) -> tuple[SegmentDB, bool]:
        """The SegmentDB to append to, and whether it is a one-off (late data for an older segment)."""
        current = self._writers.get((kind, meter_id))
        if current is not None and current[0] == segment:
            return current[1], False
        db = SegmentDB(self._segment_path(kind, meter_id, segment))
        if current is not None and segment < current[0]:
            return db, True
        if current is not None:
            current[1].close()  # time moved on: this segment is done
        self._writers[(kind, meter_id)] = (segment, db)
        return db, False

    def _queue_rollup(self, kind: Kind, rollup: dict) -> None:
        if len(self._pending_rollups) >= self.max_pending:
            self._pending_rollups.popleft()
            self._counters["dropped"] += 1
        self._pending_rollups.append((kind, rollup))

    def _requeue(self, failed: list) -> None:
        """Put what a failed flush could not write back in front of what arrived meanwhile (under _lock)."""
        failed_readings = [item for kind, item in failed if kind is RAW]
        failed_rollups = [(kind, item) for kind, item in failed if kind is not RAW]
        self._pending.extendleft(reversed(failed_readings))
        self._pending_rollups.extendleft(reversed(failed_rollups))
        for queue in (self._pending, self._pending_rollups):
            while len(queue) > self.max_pending:
                queue.popleft()
                self._counters["dropped"] += 1

    def _log_flush_outcome(self, errors: list[str], kept: int, recovered: str | None) -> None:
        now = time.monotonic()
        if errors and now - self._last_error_logged_at >= ERROR_LOG_EVERY_S:
            self._last_error_logged_at = now
            log.warning("flush failed for %d segment(s), %d item(s) kept for the next flush: %s",
                        len(errors), kept, errors[0])
        elif recovered:
            self._last_error_logged_at = -math.inf
            log.info("flush works again after: %s", recovered)

    # --- reading -------------------------------------------------------------------------------
    def latest(self, meter_id: str) -> Reading | None:
        """The reading with the latest received_at: from memory if this process saw one, else from disk."""
        with self._lock:
            known = self._latest.get(meter_id)
        if known is not None:
            return known
        with self._io_lock:
            for segment, path in reversed(self._segment_files(RAW, meter_id)):
                docs = self._read_segment(RAW, segment, path, -math.inf, math.inf)
                if docs:
                    newest = _reading_from_record(max(docs, key=itemgetter("received_at")))
                    with self._lock:
                        known = self._latest.get(meter_id)
                        if known is None or newest.received_at > known.received_at:
                            self._latest[meter_id] = known = newest
                    return known
        return None

    def readings(self, meter_id: str, since: float | None = None, until: float | None = None,
                 resolution: str = "raw", limit: int = 10000) -> list[dict]:
        """Readings (``Reading.to_json`` dicts) or rollups of one meter, oldest first, at most ``limit``.

        ``since`` (inclusive) and ``until`` (exclusive) are Unix seconds on ``received_at`` for raw
        readings and on ``start`` for rollups ("1m", "15m"). Pending readings are included; rollups of
        windows still open are not. With more than ``limit`` matches, the oldest ``limit`` are returned:
        page on by passing the last one's time as ``since``.
        """
        batches = self.reading_batches(meter_id, since, until, resolution, limit, cache=True)
        return [row for batch in batches for row in batch]

    def reading_batches(self, meter_id: str, since: float | None = None, until: float | None = None,
                        resolution: str = "raw", limit: int = 10000, cache: bool = False) -> Iterator[list[dict]]:
        """The rows of ``readings``, oldest first, in batches of at most BATCH_ROWS of one segment: an answer streamed
        from this holds one segment's decoded documents and one batch's JSON, not ``limit`` rows (and, without
        ``cache``, decodes a segment not in the cache for this read only, each document once). Each segment is read whole under the I/O lock (what is on disk and what is pending together),
        so a flush between two segments neither loses nor repeats a row."""
        kind = KINDS.get(resolution)
        if kind is None:
            raise ValueError(f"resolution must be one of {', '.join(KINDS)}, got {resolution!r}")
        if limit <= 0:
            return
        low = -math.inf if since is None else since
        high = math.inf if until is None else until
        to_json = _record_to_json if kind is RAW else rollup_to_json
        with self._io_lock:
            if kind is not RAW:
                with self._lock:
                    held = meter_id in self._held
                if held:  # its held readings may close windows: roll them up first
                    self._resume([meter_id])
            pending = {kind.segment_start(doc[kind.time_field])
                       for doc in self._pending_docs(kind, meter_id, low, high)}
            segments = sorted(pending | {segment for segment, _ in self._segment_files(kind, meter_id)
                                         if segment + kind.segment_s > low and segment < high})
        left = limit
        for segment in segments:
            with self._io_lock:  # no flush can run now, so every item of the segment is either pending or on disk
                docs = self._read_segment(kind, segment, self._segment_path(kind, meter_id, segment), low, high,
                                          cache)
                docs.extend(doc for doc in self._pending_docs(kind, meter_id, low, high)
                            if kind.segment_start(doc[kind.time_field]) == segment)
            docs.sort(key=itemgetter(kind.time_field))  # stable: equal times keep arrival order
            rows = (docs if kind is RAW else _merge_same_window(docs))[:left]
            del docs
            left -= len(rows)
            for first in range(0, len(rows), BATCH_ROWS):  # their JSON a part at a time
                yield [to_json(doc) for doc in rows[first:first + BATCH_ROWS]]
            if left <= 0:
                return

    def meter_ids(self) -> list[str]:
        ids = set()
        for kind in KINDS.values():
            try:
                ids.update(unquote(entry.name) for entry in os.scandir(self.path / kind.name) if entry.is_dir())
            except FileNotFoundError:
                pass
        with self._lock:
            ids.update(self._latest)
            ids.update(reading.meter_id for reading in self._pending)
        return sorted(ids)

    def _pending_docs(self, kind: Kind, meter_id: str, low: float, high: float) -> list[dict]:
        with self._lock:
            if kind is RAW:
                return [reading.to_record() for reading in self._pending
                        if reading.meter_id == meter_id and low <= reading.received_at.timestamp() < high]
            return [dict(rollup) for rollup_kind, rollup in self._pending_rollups
                    if rollup_kind is kind and rollup["meter_id"] == meter_id and low <= rollup["start"] < high]

    def _read_segment(self, kind: Kind, segment: int, path: Path, low: float, high: float,
                      cache: bool = True) -> list[dict]:
        """The segment's docs in [low, high). Without `cache` (a long query streamed segment by segment), a segment
        not already decoded is decoded for this read only: a day of segments must not churn through the cache."""
        db = self._readers.get(path) if not cache else self._reader(path)
        if db is None:  # decoded a record at a time, each document held once (TinyDB's view would copy them all)
            docs = SegmentStream(path).docs(kind.table)
            if low <= segment and segment + kind.segment_s <= high:
                return list(docs)
            return [doc for doc in docs if isinstance(t := doc.get(kind.time_field), (int, float)) and low <= t < high]
        table = db.table(kind.table)
        if low <= segment and segment + kind.segment_s <= high:
            return table.all()  # the whole segment is in range
        field = Query()[kind.time_field]
        return table.search((field >= low) & (field < high))

    def _reader(self, path: Path) -> SegmentDB:
        db = self._readers.get(path)
        if db is not None:
            self._readers.move_to_end(path)
            return db
        db = self._readers[path] = SegmentDB(path)
        while len(self._readers) > self.cache_segments:
            self._readers.popitem(last=False)[1].close()
        return db

    # --- housekeeping --------------------------------------------------------------------------
    def apply_retention(self, now: float | None = None) -> int:
        """Delete the segment files whose whole span is older than retention. Returns files deleted."""
        now = time.time() if now is None else now
        deleted = 0
        with self._io_lock:
            for kind in KINDS.values():
                horizon = now - self.retention_s[kind]
                for meter_dir in self._meter_dirs(kind):
                    for segment, path in self._segment_files_in(kind, meter_dir):
                        if segment + kind.segment_s <= horizon:
                            self._forget(kind, unquote(meter_dir.name), segment, path)
                            try:
                                path.unlink()
                                deleted += 1
                            except FileNotFoundError:
                                pass
                            except OSError as exc:
                                log.warning("retention: cannot delete %s: %s", path, exc)
                    for leftover in meter_dir.glob("*.tmp"):  # an interrupted TinyDB update/remove
                        leftover.unlink(missing_ok=True)
                    for marker in meter_dir.glob("*" + STEPPED_SUFFIX):  # its segment is gone
                        if not marker.with_suffix(SEGMENT_SUFFIX).exists():
                            marker.unlink(missing_ok=True)
                    try:
                        meter_dir.rmdir()  # only succeeds once the meter has no data left
                    except OSError:
                        pass
            segments, disk_bytes = self._measure_disk()
            with self._lock:
                self._segments, self._disk_bytes = segments, disk_bytes
        if deleted:
            log.info("retention: deleted %d segment file(s)", deleted)
        return deleted

    def _forget(self, kind: Kind, meter_id: str, segment: int, path: Path) -> None:
        """Close any open handle on a segment that is about to be deleted, and forget what it held."""
        meta = self._raw_meta.get(meter_id) if kind is RAW else None
        if meta is not None:
            meta.highs.pop(segment, None)
            meta.unordered.discard(segment)
            if segment in (meta.newest, meta.last):  # learnt again from the directory when next written
                del self._raw_meta[meter_id]
        reader = self._readers.pop(path, None)
        if reader is not None:
            reader.close()
        current = self._writers.get((kind, meter_id))
        if current is not None and current[1].storage.path == path:
            current[1].close()
            del self._writers[(kind, meter_id)]

    def stats(self) -> dict:
        """Counters for /health and /metrics; memory only (cheap to call from the event loop).

        pending / rollups_pending: waiting for the next flush. readings_written, rollups_written,
        bytes_written: since this process started. flushes: flushes that wrote everything they had;
        flush_errors: flushes where a segment failed (its items stay pending); last_flush_error: the
        first failure of the last flush, None once a flush succeeds. dropped: items lost to the
        max_pending bound or that could not be encoded. rollups_late: readings left out of rollups
        (out of order). segments, disk_bytes: segment files on disk (recounted at each retention pass).
        """
        with self._lock:
            return {
                "pending": len(self._pending),
                "rollups_pending": len(self._pending_rollups),
                **self._counters,
                "rollups_late": sum(accumulator.late for accumulator in self._accumulators.values()),
                "last_flush_at": self._last_flush_at,
                "last_flush_error": self._last_flush_error,
                "data_directory_lost": self.data_directory.problem(),
                "segments": self._segments,
                "disk_bytes": self._disk_bytes,
            }

    def close(self) -> None:
        """Persist the open rollup windows (partial) and everything pending, then close every file."""
        with self._io_lock:
            with self._lock:
                if self._closed:
                    return
            self._resume_due(None)  # every meter's open windows, so that their (partial) rollups are written
            with self._lock:
                for kind, accumulator in self._accumulators.items():
                    for rollup in accumulator.close():
                        self._queue_rollup(kind, rollup)
            self.flush()
            with self._lock:
                self._closed = True
                lost = len(self._pending) + len(self._pending_rollups)
            if lost:
                log.error("store closed with %d item(s) that could not be written", lost)
            for _, db in self._writers.values():
                db.close()
            for db in self._readers.values():
                db.close()
            self._writers.clear()
            self._readers.clear()

    def __enter__(self) -> ReadingStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- where things are ----------------------------------------------------------------------
    def _segment_path(self, kind: Kind, meter_id: str, segment: int) -> Path:
        return self.path / kind.name / _dir_name(meter_id) / kind.file_name(segment)

    def _segment_files(self, kind: Kind, meter_id: str) -> list[tuple[int, Path]]:
        return self._segment_files_in(kind, self.path / kind.name / _dir_name(meter_id))

    @staticmethod
    def _segment_files_in(kind: Kind, meter_dir: Path) -> list[tuple[int, Path]]:
        """(segment start, path) of the meter's segments, oldest first."""
        try:
            entries = list(os.scandir(meter_dir))
        except (FileNotFoundError, NotADirectoryError):
            return []
        files = []
        for entry in entries:
            segment = kind.parse_file_name(entry.name)
            if segment is not None:
                files.append((segment, Path(entry.path)))
        return sorted(files)

    def _meter_dirs(self, kind: Kind) -> list[Path]:
        try:
            return [Path(entry.path) for entry in os.scandir(self.path / kind.name) if entry.is_dir()]
        except FileNotFoundError:
            return []

    def _measure_disk(self) -> tuple[int, int]:
        segments = disk_bytes = 0
        for kind in KINDS.values():
            for meter_dir in self._meter_dirs(kind):
                for _, path in self._segment_files_in(kind, meter_dir):
                    try:
                        disk_bytes += path.stat().st_size
                        segments += 1
                    except FileNotFoundError:
                        pass
        return segments, disk_bytes


def _dir_name(meter_id: str) -> str:
    if not meter_id:
        raise ValueError("meter_id must not be empty")
    # Percent-encode everything but letters, digits and "_-~"; dots too, so "." and ".." stay harmless.
    return quote(meter_id, safe="").replace(".", "%2E")


def _record_to_json(record: dict) -> dict:
    """Same as ``Reading.from_record(record).to_json()``, without building the Reading (queries return
    thousands of rows and this is most of their cost)."""
    out = {}
    for name in FIELD_NAMES:
        value = record.get(name)
        if value is not None and name in TIME_FIELDS:
            value = iso(datetime.fromtimestamp(value, timezone.utc))
        elif isinstance(value, dict):
            value = dict(value)  # (channels) a copy: the decoded segment cache must not be changed
        out[name] = value
    return out


@dataclass
class _RawMeta:
    """What the writer knows of one meter's raw segments on disk (see the module doc)."""

    newest: int | None = None  # the newest segment by name
    last: int | None = None  # the segment its last reading written went to, if known
    highs: dict[int, float] = field(default_factory=dict)  # latest received_at in a segment in time order
    unordered: set[int] = field(default_factory=set)  # segments with a STEPPED_SUFFIX marker


def _stepped_in(meter_dir: Path) -> set[int]:
    try:
        names = [entry.name for entry in os.scandir(meter_dir) if entry.name.endswith(STEPPED_SUFFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return set()
    found = (RAW.parse_file_name(name[: -len(STEPPED_SUFFIX)] + SEGMENT_SUFFIX) for name in names)
    return {segment for segment in found if segment is not None}


def _raw_docs(table: str, docs: list) -> list[dict]:
    return [doc for doc in docs if table == RAW.table and isinstance(doc, dict)
            and isinstance(doc.get("received_at"), (int, float))]


def _read_regular(path: Path) -> bytes | None:
    """A segment file's bytes; None if it is missing or not a regular file (never read a device to its end)."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            return handle.read(st.st_size) if stat.S_ISREG(st.st_mode) else None
    except (FileNotFoundError, NotADirectoryError):
        return None


def _segment_high(path: Path) -> float:
    """The latest received_at in a raw segment in time order: its last readings record's. -inf if none."""
    buf = _read_regular(path)
    if buf is None:
        return -math.inf
    for table, _, docs in decode_records_backward(buf):
        docs = _raw_docs(table, docs)
        if docs:
            return max(doc["received_at"] for doc in docs)
    return -math.inf


def _last_window_records(path: Path, width_s: int, in_order: bool) -> tuple[int | None, list[dict], float]:
    """(where its ORDER_TABLE record points, if that is the segment's last record; the raw records of the window
    of width_s of its last reading written, in write order; the latest received_at of the records decoded).

    Records are decoded from the end of the file. In a segment in time order (``in_order``) the window's readings
    are all after the last record wholly before it, so decoding stops there; otherwise the whole file is read.
    """
    buf = _read_regular(path)
    if buf is None:
        return None, [], -math.inf
    pointer: int | None = None
    newest_record = True
    batches: list[list[dict]] = []
    start: int | None = None
    high = -math.inf
    for table, _, docs in decode_records_backward(buf):
        if table == ORDER_TABLE:
            if newest_record and docs and isinstance(docs[-1], dict) and isinstance(docs[-1].get("segment"), int):
                pointer = docs[-1]["segment"]
            newest_record = False
            continue
        newest_record = False
        docs = _raw_docs(table, docs)
        if not docs:
            continue
        if start is None:
            start = window_start(docs[-1]["received_at"], width_s)
        newest = max(doc["received_at"] for doc in docs)
        high = max(high, newest)
        if in_order and newest < start:
            break
        batches.append([doc for doc in docs if window_start(doc["received_at"], width_s) == start])
    return pointer, [doc for docs in reversed(batches) for doc in docs], high


def _reading_from_record(record: dict) -> Reading:
    # Fields a later version of Reading dropped are ignored rather than crash every query.
    return Reading.from_record({name: value for name, value in record.items() if name in _RECORD_FIELDS})


def _merge_same_window(rollups: list[dict]) -> list[dict]:
    """Rollups sorted by start, same starts in the order written; those of one window become one."""
    merged: list[dict] = []
    for rollup in rollups:
        if merged and merged[-1]["start"] == rollup["start"]:
            merged[-1] = combine_same_window(merged[-1], rollup)
        else:
            merged.append(rollup)
    return merged
