"""Framing of the append-only segment logs: what one record looks like on disk.

A segment file is a sequence of records and nothing else (an empty file is a valid segment):

    offset  size  field
    0       4     magic b"ESg1" (format version 1)
    4       4     payload length, unsigned big-endian
    8       4     CRC32 of the payload, unsigned big-endian
    12      n     payload: zlib-compressed JSON, with the preset dictionary ZDICT_V1

The JSON is ``{"t": <table>, "i": <first doc id>, "d": [<doc>, ...]}``: one batch of documents of one TinyDB
table, with consecutive ids from ``i``. A record that is cut short (power cut, kill -9 half-way through a
write) or damaged fails the length or CRC check, so the reader knows exactly where the good data ends.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO
from dataclasses import dataclass, field

MAGIC = b"ESg1"
HEADER = struct.Struct(">4sII")
# A flush of one segment is a few seconds of readings; anything near this is a damaged length field.
MAX_PAYLOAD = 64 << 20

# The preset dictionary primes zlib with the key names every batch repeats, so that even a batch of one
# reading (a DSMR 4 meter sends every 10 s) compresses well. Frozen: changing a byte makes version-1 files
# unreadable, so a new dictionary needs a new MAGIC.
ZDICT_V1 = (
    b'{"t":"rollups","i":1,"d":[{"meter_id":"","start":1700000000,"end":1700000060,"count":60,'
    b'"power_import_w_max":0,"power_export_w_max":0,'
    b'"gas_timestamp":1700000000.0,"gas_m3":0.0,'
    b'"voltage_swells_l1":0,"voltage_swells_l2":0,"voltage_swells_l3":0,'
    b'"voltage_sags_l1":0,"voltage_sags_l2":0,"voltage_sags_l3":0,'
    b'"power_failures":0,"long_power_failures":0,"tariff":2,'
    b'{"t":"readings","i":1,"d":[{"meter_id":"","timestamp":1700000000.0,"received_at":1700000000.0,'
    b'"power_import_w":0.0,"power_export_w":0.0,'
    b'"power_import_l1_w":0.0,"power_import_l2_w":0.0,"power_import_l3_w":0.0,'
    b'"power_export_l1_w":0.0,"power_export_l2_w":0.0,"power_export_l3_w":0.0,'
    b'"voltage_l1_v":230.0,"voltage_l2_v":230.0,"voltage_l3_v":230.0,'
    b'"current_l1_a":0.0,"current_l2_a":0.0,"current_l3_a":0.0,'
    b'"energy_import_t1_wh":0.0,"energy_import_t2_wh":0.0,'
    b'"energy_export_t1_wh":0.0,"energy_export_t2_wh":0.0,'
    b'"energy_import_wh":0.0,"energy_export_wh":0.0,"tariff":1,'
    b'"power_failures":0,"long_power_failures":0,'
    b'"voltage_sags_l1":0,"voltage_sags_l2":0,"voltage_sags_l3":0,'
    b'"voltage_swells_l1":0,"voltage_swells_l2":0,"voltage_swells_l3":0,'
    b'"gas_m3":0.0,"gas_timestamp":1700000000.0},{"meter_id":"'
)


class CorruptRecord(Exception):
    """Where the good data of a segment ends, and why."""


# The writer's compressor, primed with ZDICT_V1 once and copied for each record: a 4 KiB window (it holds the whole
# dictionary) and a small hash, level 3. Until session 8 every record made a fresh compressobj(6, DEFLATED, 15, 9):
# ~250 KiB of state allocated, cleared and primed per record, most of the store's flush. Any window up to 32 KiB
# reads with the same decompressor (wbits 15), so files written with either setting read alike.
_PRIMED = zlib.compressobj(3, zlib.DEFLATED, 12, 4, zlib.Z_DEFAULT_STRATEGY, ZDICT_V1)


def encode_record(table: str, first_id: int, docs: list[dict]) -> bytes:
    text = json.dumps({"t": table, "i": first_id, "d": docs}, separators=(",", ":"))
    packer = _PRIMED.copy()
    payload = packer.compress(text.encode()) + packer.flush()
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclass
class Damage:
    """Bytes of a segment that did not decode: a damaged record skipped, or the tail after the last good one."""

    offset: int
    length: int
    problem: str
    torn: bool  # a tail cut short (a write interrupted before its fsync): nothing acknowledged was in it
    twin_intact: bool = False  # the record was written twice (copies=2) and its other copy decoded


@dataclass
class Scan:
    records: list[tuple[str, int, list[dict]]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # where each of `records` begins in buf
    good: int = 0  # end of the last good record
    damage: list[Damage] = field(default_factory=list)
    next_ids: dict[str, int] = field(default_factory=dict)  # per table, the id after the last good record's docs

    @property
    def problem(self) -> str | None:
        return "; ".join(d.problem for d in self.damage) or None

    @property
    def lost(self) -> list[Damage]:
        """Damage that may have cost acknowledged records: neither a torn tail nor a copy whose twin survived."""
        return [d for d in self.damage if not d.torn and not d.twin_intact]


def scan_records(buf: bytes, keep: bool = True) -> Scan:
    """Decode every good record in buf, and say what did not decode.

    A damaged record in the middle (a flipped bit, a bad sector) is skipped: decoding resumes at the next
    record that checks out, so one bad byte never costs the records after it. Only a damaged tail with no good
    record after it ends the good part: torn if it is cut short (the record claims more bytes than the file
    has), damaged if it is whole but fails its check. A damaged record right beside a good one of the same
    length and nearly the same bytes is the other copy of a record written twice (``encode_record`` twice).
    ``keep=False`` decodes without keeping the records (a scan for damage only).
    """
    scan = Scan()
    view = memoryview(buf)
    pos = 0
    spans: list[tuple[int, int]] = []  # good records' (offset, length), to find a damaged one's twin
    while pos < len(buf):
        try:
            record = _decode_one(view, pos)
            if keep:
                scan.records.append(record)
                scan.offsets.append(pos)
        except CorruptRecord as problem:
            resume = _next_good(view, buf, pos + 1)
            end = len(buf) if resume is None else resume
            torn = resume is None and str(problem) in ("short header", "short payload")
            where = "torn tail" if torn else ("damaged tail" if resume is None else f"skipped {end - pos} bytes")
            twin = not torn and _has_twin(buf, pos, end, spans[-1] if spans else None, resume)
            scan.damage.append(Damage(pos, end - pos, f"{problem} at byte {pos} ({where})", torn, twin))
            if resume is None:
                break
            pos = resume
            continue
        table, first_id, docs = record
        scan.next_ids[table] = max(scan.next_ids.get(table, 1), first_id + len(docs))
        del record, docs  # with keep=False only next_ids: a writer opening a day of 1 s releases held ~700 MB
        length = HEADER.size + HEADER.unpack_from(view, pos)[1]
        spans.append((pos, length))
        pos += length
        scan.good = pos
    return scan


def _has_twin(buf: bytes, start: int, end: int, before: tuple[int, int] | None, after: int | None) -> bool:
    """Whether buf[start:end] is a damaged copy of the good record just before or just after it."""
    candidates = [before] if before else []
    if after is not None and after + HEADER.size <= len(buf):
        candidates.append((after, HEADER.size + HEADER.unpack_from(buf, after)[1]))
    damaged = buf[start:end]
    for offset, length in candidates:
        if length == len(damaged):
            differing = sum(a != b for a, b in zip(damaged, buf[offset:offset + length]))
            if differing <= max(8, length // 64):  # a flipped byte or a bad word, not another record
                return True
    return False


def frame_ok(header: bytes, payload: bytes) -> bool:
    """Whether a record's header (HEADER.size bytes) and the payload read after it check out, without decompressing
    (the walk of a scan for damage: a frame whose CRC holds holds what was written)."""
    magic, length, crc = HEADER.unpack(header)
    return magic == MAGIC and length <= MAX_PAYLOAD and len(payload) == length and zlib.crc32(payload) == crc


def damage_after(buf: bytes, base: int) -> list[Damage]:
    """What ``scan_records`` finds damaged in buf, the bytes of a segment from offset `base` (a record's start), at
    their offsets in the segment; no record is kept."""
    return [_shifted(d, base) for d in scan_records(buf, keep=False).damage]


def decode_records(buf: bytes) -> tuple[list[tuple[str, int, list[dict]]], int, str | None]:
    """Every good record in buf (see ``scan_records``): (records as (table, first_id, docs), end of the last
    good record, what was wrong or None)."""
    scan = scan_records(buf)
    return scan.records, scan.good, scan.problem


def decode_records_backward(buf: bytes) -> Iterator[tuple[str, int, list[dict]]]:
    """The good records of buf, newest first, decoded lazily: to read only the end of a segment.

    The headers are walked from the start (cheap: nothing is decompressed) to find where each record
    begins; damage in the middle, where that walk cannot go on, falls back to ``decode_records`` of the whole
    buffer. A torn tail and records that fail their check are left out, as ``decode_records`` does.
    """
    view = memoryview(buf)
    offsets = []
    pos = 0
    while len(buf) - pos >= HEADER.size:
        magic, length, _ = HEADER.unpack_from(view, pos)
        if magic != MAGIC or length > MAX_PAYLOAD or pos + HEADER.size + length > len(buf):
            break
        offsets.append(pos)
        pos += HEADER.size + length
    if pos < len(buf) and _next_good(view, buf, pos + 1) is not None:  # a good record after the damage
        yield from reversed(decode_records(buf)[0])
        return
    for pos in reversed(offsets):
        try:
            yield _decode_one(view, pos)
        except CorruptRecord:
            continue


def scan_lazily(buf: bytes, damage: list[Damage]) -> Iterator[tuple[str, int, list[dict]]]:
    """The good records of buf, oldest first, decoded one at a time as they are asked for (a day of 1-second
    releases is ~10 MB on disk, ten times that decoded): for a long read that keeps only what it needs. A record
    written twice (``copies=2``) is given once. What did not decode is added to `damage` as ``scan_records``
    says it, once the records before it have been asked for. The headers are walked first (nothing is
    decompressed); from the first damage on (rare), ``scan_records`` decodes the rest whole."""
    return (record for _, record in scan_lazily_at(buf, damage))


def scan_lazily_at(buf: bytes, damage: list[Damage]) -> Iterator[tuple[int, tuple[str, int, list[dict]]]]:
    """``scan_lazily``'s records with the offset each was decoded from (to read it again alone: ``record_at``)."""
    return read_lazily_at(io.BytesIO(buf), damage)


def read_lazily_at(handle: BinaryIO, damage: list[Damage]) -> Iterator[tuple[int, tuple[str, int, list[dict]]]]:
    """``scan_lazily_at`` of a segment read from an open file a frame at a time: one record's bytes in memory, not
    the file's (a day of 1 s releases is tens of MB). From the first frame that does not check out (rare), the
    rest of the file from the last whole frame before it (a damaged record's twin may be it) is read and scanned
    carefully (``scan_records``)."""
    pos = 0  # where the next frame begins
    last = None  # where the last whole frame began
    given = None  # the last record given, and its bytes
    while True:
        header = handle.read(HEADER.size)
        if not header:
            return  # the end: nothing damaged
        frame = None
        if len(header) == HEADER.size:
            magic, length, _ = HEADER.unpack(header)
            if magic == MAGIC and length <= MAX_PAYLOAD:
                frame = header + handle.read(length)
                frame = frame if len(frame) == HEADER.size + length else None
        if frame is None:
            break
        start, pos = pos, pos + len(frame)
        if given is not None and frame == given[1]:
            last = start
            continue  # its second copy
        try:
            record = _decode_one(memoryview(frame), 0)
        except CorruptRecord:  # a good frame, a bad payload (CRC mismatch)
            break
        last, given = start, (record, frame)
        yield start, record
    base = 0 if last is None else last
    handle.seek(base)
    scan = scan_records(handle.read())
    for offset, record in zip(scan.offsets, scan.records):
        if given is None or record[:2] != given[0][:2]:
            yield base + offset, record
        given = (record, b"")
    damage.extend(_shifted(d, base) for d in scan.damage)


def record_at(buf: bytes) -> tuple[str, int, list[dict]] | None:
    """The record that begins buf (a record read again alone, from an offset ``scan_lazily_at`` gave), or None
    if it does not decode (damaged since)."""
    try:
        return _decode_one(memoryview(buf), 0)
    except CorruptRecord:
        return None


def _shifted(item: Damage, base: int) -> Damage:
    """A Damage found in buf[base:], as at its offset in buf."""
    return Damage(item.offset + base, item.length,
                  item.problem.replace(f"at byte {item.offset} ", f"at byte {item.offset + base} "), item.torn,
                  item.twin_intact)


def _next_good(view: memoryview, buf: bytes, start: int) -> int | None:
    """The offset of the next record after `start` that decodes, or None."""
    pos = buf.find(MAGIC, start)
    while pos >= 0:
        try:
            _decode_one(view, pos)
            return pos
        except CorruptRecord:
            pos = buf.find(MAGIC, pos + 1)
    return None


def _decode_one(view: memoryview, pos: int) -> tuple[str, int, list[dict]]:
    if len(view) - pos < HEADER.size:
        raise CorruptRecord("short header")
    magic, length, crc = HEADER.unpack_from(view, pos)
    if magic != MAGIC:
        raise CorruptRecord("bad magic")
    if length > MAX_PAYLOAD:
        raise CorruptRecord("impossible length")
    payload = view[pos + HEADER.size: pos + HEADER.size + length]
    if len(payload) < length:
        raise CorruptRecord("short payload")
    if zlib.crc32(payload) != crc:
        raise CorruptRecord("CRC mismatch")
    try:
        unpacker = zlib.decompressobj(15, ZDICT_V1)
        text = unpacker.decompress(payload) + unpacker.flush()
        body = json.loads(text)
        table, first_id, docs = body["t"], body["i"], body["d"]
    except (zlib.error, ValueError, TypeError, KeyError) as exc:
        raise CorruptRecord(f"undecodable payload ({exc.__class__.__name__})") from None
    if not (isinstance(table, str) and isinstance(first_id, int) and isinstance(docs, list)):
        raise CorruptRecord("malformed payload")
    return table, first_id, docs
