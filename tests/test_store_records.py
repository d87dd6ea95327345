"""The framing of the segment logs (agent/store/records.py) on bytes: what a record is on disk, what a scan makes of a
torn, damaged or doubled one, and the lazy and backward walks against the whole scan. tests/test_store.py and the
crash suites write and cut real files."""

from __future__ import annotations

import json
import math
import os
import random
import struct
import zlib

from agent.store.records import (
    HEADER,
    MAGIC,
    ZDICT_V1,
    damage_after,
    decode_records,
    decode_records_backward,
    encode_record,
    frame_ok,
    read_lazily_at,
    record_at,
    scan_lazily,
    scan_lazily_at,
    scan_records,
)
from agent.store.segment import SegmentDB
from tests.helpers.store import CRASH_T0, make_reading

ONE = encode_record("readings", 1, [{"a": 1}])
TWO = encode_record("readings", 2, [{"a": 2}, {"a": 3}])
OTHER = encode_record("rollups", 1, [{"b": 1}])


def frame(payload_json: bytes) -> bytes:
    """A frame around any JSON, compressed with the format's dictionary and the settings of every version before session
    8 (level 6, 32 KiB window, memLevel 9): its check holds whatever it says."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, ZDICT_V1)
    payload = packer.compress(payload_json) + packer.flush()
    return struct.pack(">4sII", MAGIC, len(payload), zlib.crc32(payload)) + payload


def flip(buf: bytes, at: int) -> bytes:
    return buf[:at] + bytes([buf[at] ^ 0xFF]) + buf[at + 1:]


def test_record_framing_refuses_what_it_did_not_write():
    record = encode_record("readings", 1, [{"a": 1}])
    assert decode_records(record) == ([("readings", 1, [{"a": 1}])], len(record), None)
    assert decode_records(b"") == ([], 0, None)
    for damaged, good, why in ((record + record[:7], len(record), "short header"),
                               (record[:-1], 0, "short payload"),
                               (b"XXXX" + record[4:], 0, "bad magic"),
                               (record[:4] + b"\xff\xff\xff\xff" + record[8:], 0, "impossible length")):
        records, end, problem = decode_records(damaged)
        assert end == good and problem.startswith(why) and problem.endswith("tail)")
    # damage in the middle: skipped, and the good record after it is still read
    records, end, problem = decode_records(record[:-1] + b"\x00" + record)
    assert records == [("readings", 1, [{"a": 1}])] and end == 2 * len(record) and "skipped" in problem


def test_a_record_is_magic_length_crc_and_the_compressed_batch():
    magic, length, crc = HEADER.unpack_from(ONE)
    payload = ONE[HEADER.size:]
    assert (magic, length, crc) == (b"ESg1", len(payload), zlib.crc32(payload)) and HEADER.size == 12
    unpacker = zlib.decompressobj(15, ZDICT_V1)
    assert json.loads(unpacker.decompress(payload) + unpacker.flush()) == {"t": "readings", "i": 1, "d": [{"a": 1}]}
    assert frame_ok(ONE[:HEADER.size], payload)
    assert not frame_ok(ONE[:HEADER.size], flip(payload, 0)) and not frame_ok(ONE[:HEADER.size], payload[:-1])
    assert not frame_ok(b"XXXX" + ONE[4:HEADER.size], payload)


def test_a_frame_that_checks_out_but_says_nothing_of_the_format_is_refused():
    for body, why in ((b'{"t": "r", "i": 1}', "undecodable payload (KeyError)"), (b"[1, 2]", "undecodable payload"),
                      (b'{"t": 5, "i": 1, "d": []}', "malformed payload"), (b"not json", "undecodable payload")):
        records, end, problem = decode_records(frame(body) + ONE)
        assert records == [("readings", 1, [{"a": 1}])] and problem.startswith(why), problem
    assert record_at(frame(b'{"t": "r", "i": 1, "d": []}')) == ("r", 1, [])
    assert record_at(flip(ONE, 20)) is None


def test_next_ids_per_table_follow_the_last_good_batch():
    scan = scan_records(ONE + OTHER + TWO)
    assert scan.next_ids == {"readings": 4, "rollups": 2} and scan.offsets == [0, len(ONE), len(ONE) + len(OTHER)]
    assert scan_records(TWO + ONE).next_ids == {"readings": 4}  # an older batch after a newer one sets no id back


def test_a_damaged_copy_of_a_record_written_twice_loses_nothing():
    doubled = ONE + flip(TWO, 20) + TWO + OTHER
    scan = scan_records(doubled)
    assert [r[1] for r in scan.records] == [1, 2, 1]
    (damage,) = scan.damage
    assert damage.twin_intact and not damage.torn and scan.lost == []
    # a damaged record with no twin beside it: acknowledged data lost
    alone = scan_records(ONE + flip(TWO, 20) + OTHER)
    assert not alone.damage[0].twin_intact and alone.lost == alone.damage
    torn = scan_records(ONE + TWO[:-3])
    assert torn.damage[0].torn and torn.lost == [] and torn.good == len(ONE)


def test_the_lazy_walk_gives_the_scans_records_once_and_its_damage_after_them():
    for buf in (ONE + TWO + OTHER, ONE + TWO + TWO + OTHER, ONE + flip(TWO, 20) + TWO + OTHER,
                ONE + flip(OTHER, 15) + TWO, ONE + TWO[:-1], b""):
        damage: list = []
        walked = []
        for offset, record in scan_lazily_at(buf, damage):
            assert record_at(buf[offset:]) == record
            walked.append(record)
        expected = [r for i, r in enumerate(scan_records(buf).records) if i == 0 or
                    r[:2] != scan_records(buf).records[i - 1][:2]]  # a second copy given once
        assert walked == expected
        assert [(d.offset, d.torn) for d in damage] == [(d.offset, d.torn) for d in scan_records(buf).damage]
        assert list(scan_lazily(buf, [])) == walked


def test_the_lazy_walk_reads_a_real_file_a_frame_at_a_time(tmp_path):
    path = tmp_path / "day.seg"
    path.write_bytes(ONE + TWO + flip(OTHER, 15) + ONE)
    damage: list = []
    with open(path, "rb") as handle:
        got = list(read_lazily_at(handle, damage))
    assert [offset for offset, _ in got] == [0, len(ONE), len(ONE) + len(TWO) + len(OTHER)]
    assert [d.offset for d in damage] == [len(ONE) + len(TWO)] and "skipped" in damage[0].problem


def test_backward_gives_the_newest_first_and_skips_what_is_damaged():
    assert list(decode_records_backward(ONE + TWO + OTHER)) == [("rollups", 1, [{"b": 1}]),
                                                                 ("readings", 2, [{"a": 2}, {"a": 3}]),
                                                                 ("readings", 1, [{"a": 1}])]
    assert [r[1] for r in decode_records_backward(ONE + TWO + OTHER[:-2])] == [2, 1]  # a torn tail
    assert [r[0] for r in decode_records_backward(ONE + flip(TWO, 3) + OTHER)] == ["rollups", "readings"]
    assert [r[1] for r in decode_records_backward(ONE + flip(TWO, 20))] == [1]  # a bad CRC at the end
    assert list(decode_records_backward(b"")) == []


def test_damage_after_an_offset_is_told_at_its_offset_in_the_segment():
    base = 1000
    (damage,) = damage_after(ONE + flip(TWO, 20) + OTHER, base)
    assert damage.offset == base + len(ONE) and f"at byte {base + len(ONE)} " in damage.problem


# A record as every version before session 8 wrote it (zlib level 6, 32 KiB window, memLevel 9), made by ddf70aa's
# encode_record: the readings of a datalogger, one with channels, one with a NaN (json writes it as NaN).
V1_FRAME = bytes.fromhex(
    "455367310000005138d2edfd78bbad6e7626c39623ccb1e4885c5d431c99c21c77a630d73332c5cc152686467aa6c8b952293923312f2f"
    "3507188cd54a05c05465a8675a8be64edcf65be0b6df026c3f2c64fc12fd6a636b01b40546fe")
V1_DOCS = [{"meter_id": "m-1", "timestamp": 1700000007.0, "received_at": 1700000007.25, "power_import_w": 412.5,
            "tariff": 2, "channels": {"pv": 1.5}},
           {"meter_id": "m-1", "timestamp": 1700000008.0, "received_at": 1700000008.25, "gas_m3": float("nan")}]


def test_segments_written_by_earlier_versions_read_as_they_did_and_take_new_records(tmp_path):
    [(table, first_id, docs)], end, problem = decode_records(V1_FRAME)
    assert (table, first_id, end, problem) == ("readings", 7, len(V1_FRAME), None)
    assert docs[0] == V1_DOCS[0] and math.isnan(docs[1].pop("gas_m3")) and docs[1] == {
        k: v for k, v in V1_DOCS[1].items() if k != "gas_m3"}
    # A bigger old file (records past the 4 KiB window the writer uses now), then appends by this version after it.
    rng = random.Random(8)
    old = [[{"v": rng.random(), "n": rng.randrange(10**6), "s": os.urandom(rng.randrange(400)).hex()}
            for _ in range(rng.randint(1, 30))] for _ in range(12)]
    path = tmp_path / "old.seg"
    ids = 1
    with open(path, "wb") as out:
        for batch in old:  # frame() compresses with the settings of every version before session 8
            out.write(frame(json.dumps({"t": "r", "i": ids, "d": batch}, separators=(",", ":")).encode()))
            ids += len(batch)
    new = [{"v": 0.5, "s": "x" * 5000}, {"v": 1.5}]
    db = SegmentDB(path)
    assert db.table("r").insert_multiple(new) == [ids, ids + 1]  # the old file's ids learnt, continued
    db.close()
    expected = [doc for batch in old for doc in batch] + new
    assert SegmentDB(path).table("r").all() == expected
    records, _, problem = decode_records(path.read_bytes())
    assert problem is None and [doc for _, _, batch in records for doc in batch] == expected


def test_records_this_version_writes_read_with_the_decompressor_of_every_earlier_version():
    docs = [make_reading("m", CRASH_T0 + i, i).to_record() for i in range(5)] + [{"s": os.urandom(3000).hex()}]
    record = encode_record("readings", 3, docs)
    payload = record[HEADER.size:]
    unpacker = zlib.decompressobj(15, ZDICT_V1)  # what records.py decoded with before session 8, and still does
    assert json.loads(unpacker.decompress(payload) + unpacker.flush()) == {"t": "readings", "i": 3, "d": docs}
    assert HEADER.unpack(record[:HEADER.size]) == (MAGIC, len(payload), zlib.crc32(payload))
