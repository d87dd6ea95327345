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

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

from agent.store.records import decode_records, encode_record

log = logging.getLogger("edge.store")


class SegmentStorage(Storage):
    def __init__(self, path: str | Path):
        # Nothing touches the disk here: a reader of a missing segment must not create it.
        self.path = Path(path)
        self.bytes_appended = 0  # cumulative, for the store's statistics
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
        except FileNotFoundError:
            self.drop_cache()
            return None
        with handle:
            st = os.fstat(handle.fileno())
            if self._tables is None or st.st_ino != self._decoded_inode or st.st_size < self._decoded_upto:
                self._tables, self._decoded_upto, self._decoded_inode = {}, 0, st.st_ino
            if st.st_size > self._decoded_upto:
                handle.seek(self._decoded_upto)
                buf = handle.read()
                records, good, problem = decode_records(buf)
                for table, first_id, docs in records:
                    rows = self._tables.setdefault(table, {})
                    for offset, doc in enumerate(docs):
                        rows[first_id + offset] = doc
                if problem:
                    # Readers never cut a file: a writer may be halfway through an append right now. The writer
                    # cuts a torn tail itself when it next opens the file (_open_for_append).
                    log.warning("segment %s: %s", self.path, problem)
                self._decoded_upto += good
        return self._tables

    def write(self, data: Mapping[str, Mapping]) -> None:
        """Replace the segment's whole content (TinyDB's update/remove): atomically, never in place."""
        self.close()
        temporary = self.path.with_name(self.path.name + ".tmp")
        ensure_dir(self.path.parent)
        try:
            with open(temporary, "wb") as out:
                for table, rows in data.items():
                    for first_id, docs in _consecutive_runs(rows):
                        out.write(encode_record(table, first_id, docs))
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

    # --- the fast path ------------------------------------------------------------------------
    def append(self, table: str, docs: list[dict]) -> list[int]:
        """Append docs as one record and fsync. On failure the file is left as it was, and it raises."""
        fd = self._open_for_append()
        first_id = self._next_ids.get(table, 1)
        record = encode_record(table, first_id, docs)
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, record)
            os.fsync(fd)
        except OSError:
            self._undo_append(start)
            raise
        self._next_ids[table] = first_id + len(docs)
        self.bytes_appended += len(record)
        return list(range(first_id, first_id + len(docs)))

    def drop_cache(self) -> None:
        self._tables, self._decoded_upto, self._decoded_inode = None, 0, None

    def _open_for_append(self) -> int:
        if self._fd is not None:
            return self._fd
        existed = self.path.exists()
        if not existed:
            ensure_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            if not existed:
                fsync_dir(self.path.parent)  # so the new file's name survives a power cut
            # Learn the next ids, and cut off a torn tail before appending after it.
            size = os.fstat(fd).st_size
            buf = os.pread(fd, size, 0) if size else b""
            records, good, problem = decode_records(buf)
            for table, first_id, docs in records:
                self._next_ids[table] = max(self._next_ids.get(table, 1), first_id + len(docs))
            if problem:
                log.warning("segment %s: %s at byte %d, cutting off the last %d bytes",
                            self.path, problem, good, size - good)
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


# --- small file-system helpers ---------------------------------------------------------------------
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
