"""One time segment of the store as a TinyDB database, kept in an append-only log.

TinyDB's default JSONStorage rewrites the whole file on every write, and ``Table._update_table`` rebuilds
the whole table on every insert. Both are TinyDB's documented extension points ("Extending TinyDB"), so this
module replaces them:

- ``SegmentStorage`` (a ``tinydb.storages.Storage``) keeps a segment as framed records (see ``records``).
  ``append`` writes one batch as one record and fsyncs it: the cost is the batch, not the file. ``read``
  decodes the file for queries, incrementally (only bytes added since the last read), stopping at the first
  torn or damaged record and cutting that tail off. ``write`` (TinyDB's whole-state write, used only by
  update/remove) rewrites the file atomically: temporary file, fsync, rename, fsync of the directory.
- ``SegmentTable`` (``TinyDB.table_class``) sends inserts to ``append`` instead of read-modify-write, and
  has no query cache, because another instance may have appended to the same file since.
"""

from __future__ import annotations

import calendar
import io
import logging
import os
import time
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

from agent.store.disk import check_under
from agent.store.records import (HEADER, MAX_PAYLOAD, Damage, damage_after, encode_record, frame_ok, read_lazily_at,
                                 record_at, scan_records)

log = logging.getLogger("edge.store")

# What every segment opened by this process found damaged: {path: {offset: (kind, Damage)}}. Reported per kind by
# ``integrity()`` (/health, /metrics); kept after the file is repaired or deleted, since what was lost stays lost.
_damage: dict[str, dict[int, tuple[str, Damage]]] = {}
_damage_lock = threading.Lock()


def integrity(root: str | Path | None = None) -> dict[str, dict[str, int]]:
    """Per file kind, for the segments under `root` (all if None): files with damage, bytes skipped in the middle,
    bytes cut off a torn tail, damaged records recovered from their second copy, and damaged records lost (which
    may have been acknowledged). A file opened without a kind is named by its first directory under `root`."""
    out: dict[str, dict[str, int]] = {}
    base = None if root is None else Path(root)
    with _damage_lock:
        items = list(_damage.items())
    for path, found in items:
        if base is not None:
            try:
                relative = Path(path).relative_to(base)
            except ValueError:
                continue
        kinds = set()
        for kind, damage in found.values():
            if kind == "other" and base is not None:
                kind = relative.parts[0] if len(relative.parts) > 1 else relative.stem
            tally = out.setdefault(kind, {"files": 0, "skipped_bytes": 0, "cut_bytes": 0, "recovered": 0,
                                          "lost": 0})
            kinds.add(kind)
            tally["cut_bytes" if damage.torn else "skipped_bytes"] += damage.length
            if not damage.torn:
                tally["recovered" if damage.twin_intact else "lost"] += 1
        for kind in kinds:
            out[kind]["files"] += 1
    return out


def _note_damage(path: Path, kind: str, base: int, damage: list[Damage]) -> None:
    if damage:
        with _damage_lock:
            found = _damage.setdefault(str(path), {})
            for item in damage:
                found.setdefault(base + item.offset, (kind, item))


SETTLED_S = 60.0  # a segment not written for this long has no append in progress: a torn tail is settled


def scan_for_damage(path: str | Path, kind: str = "other") -> int:
    """Read one segment for damage only and note what it finds in ``integrity()``, as opening it would. Memory: one
    record while the frames check out (nothing is decompressed), the rest of the file from the last good record on
    once one does not (rare). A torn tail counts only once the file has not been written for SETTLED_S (before
    that it may be an append in progress, or one being undone). Returns the bytes read."""
    try:
        with open(path, "rb") as handle:
            pos = last = 0
            while True:
                header = handle.read(HEADER.size)
                if not header:
                    return pos
                length = HEADER.unpack(header)[1] if len(header) == HEADER.size else 0
                if len(header) < HEADER.size or length > MAX_PAYLOAD or not frame_ok(header, handle.read(length)):
                    break
                last, pos = pos, pos + HEADER.size + length
            handle.seek(last)
            rest = handle.read()
            mtime = os.fstat(handle.fileno()).st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return 0  # deleted by retention meanwhile
    settled = time.time() - mtime >= SETTLED_S
    damage = [d for d in damage_after(rest, last) if settled or not d.torn]
    if damage:
        log.warning("segment %s: %s", path, "; ".join(d.problem for d in damage))
        _note_damage(Path(path), kind, 0, damage)
    return last + len(rest)


class SegmentStorage(Storage):
    """``kind`` names the file's kind in ``integrity()``. ``copies=2`` writes every record twice, back to back, in
    one write and one fsync: for records whose loss changes meaning (consent, subscriptions, outbox sequence), so
    that one damaged record is recovered from its twin; ``lost_records`` counts those that were not."""

    def __init__(self, path: str | Path, kind: str = "other", copies: int = 1):
        # Nothing touches the disk here: a reader of a missing segment must not create it.
        self.path = Path(path)
        self.kind = kind
        self.copies = copies
        self._lost_at: set[int] = set()  # offsets of the damaged records without a twin this instance decoded
        self.bytes_appended = 0  # cumulative, for the store's statistics
        self.appended_at = 0  # where the last record appended begins (to read it again alone: SegmentStream)
        self._fd: int | None = None  # append handle, opened on first append
        self._next_ids: dict[str, int] = {}
        # The decoded view for queries: built on the first read(), then extended with what was appended.
        self._tables: dict[str, dict[int, dict]] | None = None
        self._decoded_upto = 0
        self._decoded_inode: int | None = None

    # --- TinyDB's Storage interface -----------------------------------------------------------
    def read(self) -> dict[str, dict[int, dict]] | None:
        try:
            handle = open(self.path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            self.drop_cache()
            return None
        with handle:
            st = os.fstat(handle.fileno())
            if self._tables is None or st.st_ino != self._decoded_inode or st.st_size < self._decoded_upto:
                self._tables, self._decoded_upto, self._decoded_inode = {}, 0, st.st_ino
            if st.st_size > self._decoded_upto:
                handle.seek(self._decoded_upto)
                buf = handle.read()
                scan = scan_records(buf)
                for table, first_id, docs in scan.records:
                    rows = self._tables.setdefault(table, {})
                    for offset, doc in enumerate(docs):
                        rows[first_id + offset] = doc
                # Readers never cut a file: a writer may be halfway through an append right now. The writer
                # cuts a torn tail itself when it next opens the file (_open_for_append), so a torn tail is not
                # counted here (it may be an append in progress).
                settled = [d for d in scan.damage if not d.torn]
                if settled:
                    log.warning("segment %s: %s", self.path, "; ".join(d.problem for d in settled))
                    self._found(self._decoded_upto, settled)
                tail = scan.damage[-1] if scan.damage and scan.damage[-1].offset >= scan.good else None
                # A damaged tail (whole, failing its check) is no append in progress: decoded, never again alone
                # (without its twin before it, it would look lost).
                self._decoded_upto += len(buf) if tail is not None and not tail.torn else scan.good
        return self._tables

    def write(self, data: Mapping[str, Mapping]) -> None:
        """Replace the segment's whole content (TinyDB's update/remove): atomically, never in place."""
        self.close()
        check_under(self.path)
        temporary = self.path.with_name(self.path.name + ".tmp")
        ensure_dir(self.path.parent)
        try:
            with open(temporary, "wb") as out:
                for table, rows in data.items():
                    for first_id, docs in _consecutive_runs(rows):
                        out.write(encode_record(table, first_id, docs) * self.copies)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)
        fsync_dir(self.path.parent)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._next_ids = {}
        self.drop_cache()

    @property
    def lost_records(self) -> int:
        """Damaged records this instance found in its file without an intact twin: acknowledged data may be lost."""
        return len(self._lost_at)

    def _found(self, base: int, damage: list[Damage]) -> None:
        _note_damage(self.path, self.kind, base, damage)
        self._lost_at.update(base + d.offset for d in damage if not d.torn and not d.twin_intact)

    # --- the fast path ------------------------------------------------------------------------
    def append(self, table: str, docs: list[dict]) -> list[int]:
        """Append docs as one record and fsync. On failure the file is left as it was, and it raises."""
        fd = self._open_for_append()
        first_id = self._next_ids.get(table, 1)
        record = encode_record(table, first_id, docs) * self.copies
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, record)
            os.fsync(fd)
        except OSError:
            self._undo_append(start)
            raise
        try:
            _check_linked(fd, self.path)
        except OSError:
            # It went to a file nobody reads: take it back, and reopen the path next time (the file now there, if
            # any: a rewrite by another instance, or nothing in a deleted directory, which the open refuses).
            self._undo_append(start)
            self.close()
            raise
        self._next_ids[table] = first_id + len(docs)
        self.bytes_appended += len(record)
        self.appended_at = start
        return list(range(first_id, first_id + len(docs)))

    def drop_cache(self) -> None:
        self._tables, self._decoded_upto, self._decoded_inode = None, 0, None

    def _open_for_append(self) -> int:
        if self._fd is not None:
            return self._fd
        check_under(self.path)
        existed = self.path.exists()
        if not existed:
            ensure_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            if not existed:
                fsync_dir(self.path.parent)  # so the new file's name survives a power cut
            # Learn the next ids, and cut off a torn tail before appending after it.
            # A frame at a time (read_lazily_at): one record in memory, not the file (a day of three organizations'
            # 1 s releases is ~20 MB on disk; read whole, the first write of a day raised the agent's RSS by ~30 MiB).
            size = os.fstat(fd).st_size
            damage: list[Damage] = []
            for _, (table, first_id, docs) in read_lazily_at(_Prefix(fd, size), damage):
                self._next_ids[table] = max(self._next_ids.get(table, 1), first_id + len(docs))
                del docs
            if damage:
                self._found(0, damage)
            # A damage reaching the end of the file is its tail (torn, or whole and failing its check): cut it.
            good = damage[-1].offset if damage and damage[-1].offset + damage[-1].length == size else size
            if good < size:
                problem = "; ".join(d.problem for d in damage)
                log.warning("segment %s: %s; cutting off the last %d bytes", self.path, problem, size - good)
                os.ftruncate(fd, good)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            self._next_ids = {}
            raise
        self._fd = fd
        return fd

    def _undo_append(self, start: int) -> None:
        # A half-written record followed by good ones would hide them: take it back out.
        try:
            os.ftruncate(self._fd, start)
        except OSError:
            # Cannot even truncate: drop the handle; reopening repairs the tail before the next append.
            os.close(self._fd)
            self._fd = None
            self._next_ids = {}


class SegmentStream:
    """A segment's documents decoded one record at a time, for a long read that keeps only what it needs (a
    history query, a replay at start): never the whole decoded file in memory. Damage is noted in ``integrity()``
    as ``SegmentStorage`` notes it; ``lost_records`` (records damaged without an intact twin) is known once the
    documents have been iterated. A torn tail (an append in progress, or cut off by the writer when it next
    opens the file) is left out and not counted."""

    def __init__(self, path: str | Path, kind: str = "other"):
        self.path, self.kind = Path(path), kind
        self.lost_records = 0
        self.at = 0  # where the record of the document last given begins (for ``record_at``)

    def docs(self, table: str) -> Iterator[dict]:
        try:
            handle = open(self.path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            return
        damage: list[Damage] = []
        with handle:  # read a record at a time: the file's bytes are never all in memory
            for offset, (name, _, docs) in read_lazily_at(handle, damage):
                if name == table:
                    self.at = offset
                    yield from docs
        settled = [d for d in damage if not d.torn]
        if settled:
            log.warning("segment %s: %s", self.path, "; ".join(d.problem for d in settled))
            _note_damage(self.path, self.kind, 0, settled)
        self.lost_records = sum(not d.twin_intact for d in settled)

    def record_at(self, offset: int, table: str) -> list[dict] | None:
        """The documents of the one record at `offset` (``at`` when they were given, or ``appended_at``), read
        alone; None if it is gone or does not decode (then a whole read, ``docs``, may find its twin)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(offset)
                header = handle.read(HEADER.size)
                if len(header) < HEADER.size or HEADER.unpack(header)[1] > MAX_PAYLOAD:
                    return None
                buf = header + handle.read(HEADER.unpack(header)[1])
        except (FileNotFoundError, NotADirectoryError):
            return None
        record = record_at(buf)
        return record[2] if record is not None and record[0] == table else None


class SegmentTable(Table):
    """A TinyDB table whose inserts append to the segment log (O(batch), not O(table)).

    Ids are assigned consecutively per table; a ``Document``'s own doc_id is not kept.
    """

    def __init__(self, storage: Storage, name: str, cache_size: int = 0, persist_empty: bool = False):
        # No query cache: another SegmentDB on the same file may have appended since the last search.
        super().__init__(storage, name, cache_size=0, persist_empty=persist_empty)

    def insert(self, document: Mapping) -> int:
        return self.insert_multiple([document])[0]

    def insert_multiple(self, documents: Iterable[Mapping]) -> list[int]:
        docs = [dict(document) for document in documents]
        if not docs:
            return []
        ids = self._storage.append(self.name, docs)
        self.clear_cache()
        return ids


class SegmentDB(TinyDB):
    table_class = SegmentTable
    default_storage_class = SegmentStorage

    @property
    def storage(self) -> SegmentStorage:
        """TinyDB's storage, typed as what it is here (its path, its lost records)."""
        storage = self._storage
        assert isinstance(storage, SegmentStorage)
        return storage


# --- small file-system helpers ---------------------------------------------------------------------
DAY_FILE_FORMAT = "%Y%m%d"  # a day file is named after its UTC date (the audit, the release log, the members index)


def day_file_name(moment: float) -> str:
    """The name (without ".seg") of the day file `moment` belongs to."""
    return time.strftime(DAY_FILE_FORMAT, time.gmtime(moment))


def day_of_file_name(name: str) -> int | None:
    """The UTC midnight a day file's name (without ".seg") says, or None for a file of another name."""
    try:
        return calendar.timegm(time.strptime(name, DAY_FILE_FORMAT))
    except ValueError:
        return None


def ensure_dir(directory: Path) -> None:
    """Create directory and missing parents, fsyncing each parent so the new entries are durable."""
    if directory.is_dir():
        return
    ensure_dir(directory.parent)
    try:
        directory.mkdir()
    except FileExistsError:
        if not directory.is_dir():
            raise
        return
    fsync_dir(directory.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_linked(fd: int, path: Path) -> None:
    """Raise if the file written to is no longer the one at `path` (deleted or replaced under the agent): the
    write went where nobody will read it."""
    st = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        now = None
    if st.st_nlink == 0 or now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise FileNotFoundError(2, "the file was deleted or replaced under the running agent", str(path))


class _Prefix(io.RawIOBase):
    """The first `size` bytes of fd, read with pread (its offset untouched): what the fstat saw, and no more (not
    a concurrent append, nor /dev/full's endless zeros)."""

    def __init__(self, fd: int, size: int):
        super().__init__()
        self._fd, self._size, self._pos = fd, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        assert whence == os.SEEK_SET
        self._pos = offset
        return offset

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = os.pread(self._fd, max(0, min(len(buffer), self._size - self._pos)), self._pos)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _consecutive_runs(rows: Mapping) -> list[tuple[int, list[dict]]]:
    """Group {doc_id: doc} (ids may be str after TinyDB's round trip) into runs of consecutive ids."""
    runs: list[tuple[int, list[dict]]] = []
    for doc_id in sorted(int(i) for i in rows):
        doc = dict(rows[doc_id] if doc_id in rows else rows[str(doc_id)])
        if runs and runs[-1][0] + len(runs[-1][1]) == doc_id:
            runs[-1][1].append(doc)
        else:
            runs.append((doc_id, [doc]))
    return runs
