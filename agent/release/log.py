"""The release log on disk: every release, refusal, cohort and memo, append-only, one segment file per UTC day.

The store's segment format (CRC-framed, compressed TinyDB records, torn tails cut on load). 1-second releases
go to their own day files (`1s-YYYYMMDD.seg`), kept two days; everything else (`YYYYMMDD.seg`) is kept for the
ledger's horizon or the rollups' retention, whichever is longer. A write is one appended record per file, fsync'd;
it runs in a worker thread (the caller's `agent.store.durable.Durable`).

Every record is written twice (``copies=2``, as the registry's): one damaged copy is recovered from its twin. A
main file with records lost beyond repair fails closed, since they may have held ledger charges: the start that
finds it adds a LOST charge for the file's day, to every household (`ledger.EVERYONE`), so the ledger over-counts
that day and never under-counts; the charge is written into that file (once, with the next write if the disk
refuses it now), so it outlives a damaged tail that the next append cuts off. Reads decode the file a record at a
time (`SegmentStream`), keeping only what the reader asks for.

Documents (short keys: there are many):
  {"t": "r", "o": org, "w": width_s, "s": start, "g": tag or "", "b": body | "x": refusal, ["c": cohort, "p": rho]}
  {"t": "c", "h": cohort hash, "m": [household ids]}         (before the first release that names it, per file)
  {"t": "n", "o": org, "i": trigger, "w": width_s, "s": start, "b": counts, ["c", "p"]}   trigger statistics
  {"t": "o", "k": memo key, "b": body}                        a release computed when first asked (`once`)
  {"t": "c", "h": "lost-<file>", "m": ["*"], "x": n} and {"t": "n", "o": "", "i": "", "w": 86400, "s": day,
   "b": {}, "c": "lost-<file>", "p": 0.0, "x": n}             the fail-closed charge of a day with n lost records

Memos (`once`: a one-off release, such as an anonymized day) must never be computed twice: a second computation
is a second noisy draw, or one over other households. So every memo's key is also in `memos.seg` (written twice,
before the memo itself, in the same step; `{"k": key, "f": day file}`, `{"k": key, "gone": 1}` if the memo's own
write then failed; begun with `{"since": day}` and the memos then on record): a key the index has whose memo is
missing from a day file still kept was lost, and is refused for good. Memos of a day file that lost records before
the index began, or while the index itself lost records, are unknown: then every memo not on record is refused
while that day file is kept (agent/release/door.py, `_note_lost_memos`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.release.ledger import EVERYONE
from agent.store.segment import SegmentDB, SegmentStorage, SegmentStream, day_file_name, day_of_file_name, ensure_dir

log = logging.getLogger("edge.release")

TABLE = "r"
FINE_PREFIX = "1s-"
FINE_KEEP_DAYS = 2
KIND = "releases"  # in integrity(): /health, /metrics
LOST = "lost-"  # the cohort hash prefix of a fail-closed charge
MEMOS = "memos"  # the memo index's file (memos.seg): no day file


day_name = day_file_name


def _day(path: Path) -> int | None:
    """The UTC midnight a day file is named after, or None for another file."""
    return day_of_file_name(path.stem.removeprefix(FINE_PREFIX))


class ReleaseLog:
    def __init__(self, directory: str | Path, keep_days: int):
        self.directory = Path(directory)
        self.keep_days = keep_days
        ensure_dir(self.directory)
        self._open: dict[str, SegmentDB] = {}
        self._lock = threading.Lock()  # a worker thread's write, a history read, or close()
        self.last_error: str | None = None  # the last write's failure, None once one succeeds
        self._unwritten: dict[str, list[dict[str, Any]]] = {}  # fail-closed charges the disk refused at start
        self.lost_files: dict[str, int] = {}
        self._memo_db: SegmentDB | None = None  # the memo index, once written to
        # memo key -> (day file, offset of its record): memos are read from disk when asked, never all held (a day
        # of anonymized rows is megabytes, and every one asked in the retention would be kept)
        self._memo_at: dict[str, tuple[str, int]] = {}

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
                for name in list(self._unwritten):  # first: a damaged tail in that file is cut by this append
                    self._insert(name, self._unwritten[name])
                    del self._unwritten[name]
                for name, docs in batches.items():
                    self._insert(name, docs)
            except OSError as exc:
                self.last_error = f"{exc.strerror or exc} ({time.strftime('%H:%M:%S', time.gmtime())} UTC)"
                raise
            self.last_error = None
            # keep only today's and yesterday's files open
            for name in sorted(self._open)[:-4]:
                self._open.pop(name).close()

    def _insert(self, name: str, docs: list[dict[str, Any]]) -> int:
        """Appends docs as one record; returns where it begins."""
        db = self._open.get(name)
        if db is None:
            db = self._open[name] = SegmentDB(str(self._path(name)), kind=KIND, copies=2)
        db.table(TABLE).insert_multiple(docs)
        storage = db.storage
        assert isinstance(storage, SegmentStorage)
        return storage.appended_at

    def read(self, name: str, keep: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """The documents of one day file that `keep` accepts (all without it), for a history read in a worker
        thread: decoded a record at a time from the file (never through the writer's open database, whose
        decoded view would then stay in memory), so that only what is kept is held."""
        docs = SegmentStream(self._path(name), kind=KIND).docs(TABLE)
        return list(docs) if keep is None else [doc for doc in docs if keep(doc)]

    def load(self, now: float, fine_since: float) -> Iterator[dict[str, Any]]:
        """Every document still kept, oldest file first (1-second files only from `fine_since`), with the
        fail-closed charge of a main file whose records are lost (see the module's doc); deletes files past
        their retention."""
        for path in sorted(self.directory.glob("*.seg"), key=lambda p: p.stem.removeprefix(FINE_PREFIX)):
            day = _day(path)
            if day is None:
                continue
            if self._expired(path, day, now):
                path.unlink(missing_ok=True)
                continue
            if path.stem.startswith(FINE_PREFIX) and day + 86400 < fine_since:
                continue
            stream = SegmentStream(path, kind=KIND)
            charged = 0  # lost records a fail-closed charge in this file already covers
            for doc in stream.docs(TABLE):
                if doc.get("c", "").startswith(LOST) and doc.get("t") == "n":
                    charged = max(charged, doc.get("x", 1))
                elif doc.get("t") == "o":
                    self._memo_at[doc["k"]] = (path.stem, stream.at)
                yield doc
            if path.stem.startswith(FINE_PREFIX):
                continue
            if max(stream.lost_records, charged):
                self.lost_files[path.stem] = max(stream.lost_records, charged)
            if stream.lost_records > charged:
                yield from self._fail_closed(path.stem, day, stream.lost_records)

    def _fail_closed(self, name: str, day: int, lost: int) -> list[dict[str, Any]]:
        """The charge of a day whose lost records may have held charges: to every household, durably."""
        cohort = LOST + name
        docs = [{"t": "c", "h": cohort, "m": [EVERYONE], "x": lost},
                {"t": "n", "o": "", "i": "", "w": 86400, "s": day, "b": {}, "c": cohort, "p": 0.0, "x": lost}]
        log.error("release log %s: %d damaged record(s) could not be recovered; failing closed: every household "
                  "counts as having spent its whole privacy cap on %s while that day is in the horizon", name, lost,
                  name)
        with self._lock:
            try:
                self._insert(name, docs)
            except OSError as exc:  # kept, and written first by the next write
                log.error("release log %s: cannot write the fail-closed charge yet: %s", name, exc)
                self._unwritten[name] = docs
        return docs

    # --- memos -----------------------------------------------------------------------------------
    def write_memo(self, doc: dict[str, Any], known: dict[str, str]) -> None:
        """A memo (`{"t": "o", "k": key, ...}`): its key into the index, then the memo into its day file, each
        fsync'd (in a worker thread). Raises the OSError of a refused write: then no memo is on record (its key,
        if written, is marked gone; if even that fails, the key counts as lost at the next start: refused).
        `known`: the memos on record ({key: day file}), put in the index when it is begun."""
        name = self.file_of(doc)
        with self._lock:
            path = self._path(MEMOS)
            begun = path.exists() and path.stat().st_size > 0
            first = [] if begun else [{"since": day_name(doc.get("at", 0))},
                                      *({"k": k, "f": f} for k, f in known.items())]
            if self._memo_db is None:
                self._memo_db = SegmentDB(str(path), kind=KIND, copies=2)
            index = self._memo_db.table(TABLE)
            index.insert_multiple([*first, {"k": doc["k"], "f": name}])
            try:
                self._memo_at[doc["k"]] = (name, self._insert(name, [doc]))
            except OSError as exc:
                self.last_error = f"{exc.strerror or exc} ({time.strftime('%H:%M:%S', time.gmtime())} UTC)"
                try:
                    index.insert({"k": doc["k"], "gone": 1})
                except OSError:
                    pass  # the key stays without its memo: lost, so refused, never computed twice
                raise
            self.last_error = None

    def read_memo(self, key: str) -> Any | None:
        """A memo's body (`{"t": "o", "k": key, "b": body}`), read alone from where it was loaded or written (in a
        worker thread); its whole day file is read if that record no longer decodes (its twin may). None if it
        is not on disk (damaged beyond repair, or its file deleted)."""
        with self._lock:
            where = self._memo_at.get(key)
        if where is None:
            return None
        name, offset = where
        docs = SegmentStream(self._path(name), kind=KIND).record_at(offset, TABLE)
        if docs is None:
            docs = self.read(name, lambda d: d.get("t") == "o" and d.get("k") == key)
        return next((doc["b"] for doc in docs if doc.get("t") == "o" and doc.get("k") == key), None)

    def memo_index(self) -> MemoIndex:
        """What the index says (read at start, after `load`)."""
        stream = SegmentStream(self._path(MEMOS), kind=KIND)
        index = MemoIndex()
        for doc in stream.docs(TABLE):
            if "since" in doc:
                index.since = index.since or doc["since"]
            elif doc.get("gone"):
                index.files.pop(doc["k"], None)
            else:
                index.files[doc["k"]] = doc["f"]
        index.damaged = stream.lost_records > 0
        return index

    def kept(self, name: str) -> bool:
        return self._path(name).exists()

    def kept_until(self, name: str) -> float:
        """When retention deletes a main day file."""
        day = _day(self._path(name))
        return 0.0 if day is None else day + (self.keep_days + 1) * 86400

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
            if self._memo_db is not None:
                self._memo_db.close()
            self._memo_db = None


@dataclass
class MemoIndex:
    files: dict[str, str] = field(default_factory=dict)  # memo key -> the day file its memo went to
    since: str | None = None  # the day the index began: memos before it are not in it
    damaged: bool = False  # records of the index itself lost beyond repair
