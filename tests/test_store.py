"""The reading store: round trips, time segments, retention, torn writes, write cost, disk faults.

Real files in tmp_path throughout; nothing is mocked. Faults are made with the file system itself (a
segment that is a symlink to /dev/full, a directory that is a file), which also works when run as root.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import tracemalloc
from pathlib import Path

import pytest

from agent.store import ReadingStore, RollupAccumulator
from agent.store.records import HEADER, decode_records, encode_record, scan_records
from agent.store.segment import SegmentDB
from tests.helpers.store import DAY, abandon, at, make_reading

HOUR = 3600
# 2024-03-01T11:59:00Z: one minute before a UTC hour boundary.
T0 = 1_709_294_340.0


def seqs(rows: list[dict]) -> list[int]:
    return [int(row["power_import_w"]) for row in rows]


def segment_files(root: Path) -> dict[str, tuple[int, int]]:
    """Every segment file under root -> (size, mtime_ns)."""
    out = {}
    for path in sorted(root.rglob("*.seg")):
        st = path.stat()
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def store(tmp_path):
    opened = ReadingStore(tmp_path / "store")
    yield opened
    opened.close()


# --- round trips ---------------------------------------------------------------------------------
def test_raw_readings_round_trip_through_disk(tmp_path):
    originals = [make_reading("house-1", T0 + i, i) for i in range(30)]
    with ReadingStore(tmp_path / "s") as store:
        for reading in originals:
            store.add(reading)
        assert store.flush() == 30
    reopened = ReadingStore(tmp_path / "s")
    assert reopened.readings("house-1") == [r.to_json() for r in originals]
    assert reopened.readings("house-1")[0]["power_import_l3_w"] is None  # absent stays absent, not 0
    assert reopened.readings("house-1")[0]["timestamp"].startswith("2016-")
    reopened.close()


def test_pending_readings_are_visible_before_flush_and_merged_in_order(store):
    for i in range(10):
        store.add(make_reading("m", T0 + i, i))
    assert seqs(store.readings("m")) == list(range(10))  # nothing flushed yet
    store.flush()
    for i in range(10, 15):
        store.add(make_reading("m", T0 + i, i))
    assert store.stats()["pending"] == 5
    assert seqs(store.readings("m")) == list(range(15))


def test_readings_come_back_ordered_by_received_at_whatever_the_arrival_order(store):
    order = list(range(40))
    random.Random(4).shuffle(order)
    for n, i in enumerate(order):
        store.add(make_reading("m", T0 + i, i))
        if n % 9 == 0:
            store.flush()
    assert seqs(store.readings("m")) == list(range(40))


def test_since_until_and_limit(store):
    for i in range(100):
        store.add(make_reading("m", T0 + i, i))
    store.flush()
    store.add(make_reading("m", T0 + 100, 100))
    assert seqs(store.readings("m", since=T0 + 10, until=T0 + 20)) == list(range(10, 20))  # [since, until)
    assert seqs(store.readings("m", since=T0 + 95)) == [95, 96, 97, 98, 99, 100]
    assert seqs(store.readings("m", until=T0 + 3)) == [0, 1, 2]
    assert seqs(store.readings("m", since=T0 + 10, limit=5)) == [10, 11, 12, 13, 14]  # the oldest first
    assert store.readings("m", limit=0) == []
    assert store.readings("nobody") == []
    with pytest.raises(ValueError, match="resolution"):
        store.readings("m", resolution="5m")


def test_readings_of_other_meters_do_not_mix(store):
    for i in range(5):
        store.add(make_reading("a", T0 + i, i))
        store.add(make_reading("b", T0 + i, 100 + i))
    store.flush()
    assert seqs(store.readings("a")) == [0, 1, 2, 3, 4]
    assert seqs(store.readings("b")) == [100, 101, 102, 103, 104]
    assert store.meter_ids() == ["a", "b"]


def test_meter_ids_that_are_not_file_names_are_stored_safely(tmp_path):
    odd = ["../escape", "..", "a/b", "zähler 1", ".hidden"]
    with ReadingStore(tmp_path / "s") as store:
        for n, meter_id in enumerate(odd):
            store.add(make_reading(meter_id, T0, n))
    assert not (tmp_path / "escape").exists()
    reopened = ReadingStore(tmp_path / "s")
    assert reopened.meter_ids() == sorted(odd)
    for n, meter_id in enumerate(odd):
        assert seqs(reopened.readings(meter_id)) == [n]
    reopened.close()


def test_latest_from_memory_then_from_disk_after_restart(tmp_path):
    store = ReadingStore(tmp_path / "s")
    assert store.latest("m") is None
    for i in (3, 1, 2):
        store.add(make_reading("m", T0 + i, i))
    assert store.latest("m").power_import_w == 3  # pending, newest received_at wins
    store.close()
    reopened = ReadingStore(tmp_path / "s")
    latest = reopened.latest("m")
    assert latest.power_import_w == 3 and latest.received_at == at(T0 + 3)
    reopened.close()


# --- time segments and retention --------------------------------------------------------------------
def test_readings_across_an_hour_boundary_go_to_two_segments(tmp_path):
    root = tmp_path / "s"
    store = ReadingStore(root)
    for i in range(120):  # 11:59:00 .. 12:00:59
        store.add(make_reading("m", T0 + i, i))
    store.flush()
    assert sorted(p.name for p in (root / "raw" / "m").iterdir()) == ["20240301T11.seg", "20240301T12.seg"]
    assert seqs(store.readings("m")) == list(range(120))
    assert seqs(store.readings("m", since=T0 + 50, until=T0 + 70)) == list(range(50, 70))
    store.close()

    reopened = ReadingStore(root)
    noon = T0 + 60
    assert seqs(reopened.readings("m", since=noon)) == list(range(60, 120))
    # A query opens only the segments that overlap its range.
    assert [p.name for p in reopened._readers] == ["20240301T12.seg"]
    reopened.close()


def test_retention_deletes_expired_segment_files_and_keeps_recent_ones(tmp_path):
    root = tmp_path / "s"
    store = ReadingStore(root)
    # One reading per hour for three days, for two meters.
    for hour in range(72):
        for meter_id in ("a", "b"):
            store.add(make_reading(meter_id, T0 + hour * HOUR, hour))
        store.flush()
    raw_before = len(list((root / "raw").rglob("*.seg")))
    assert raw_before == 144

    now = T0 + 72 * HOUR
    deleted = store.apply_retention(now)
    kept = seqs(store.readings("a"))
    # Raw: only segments whose whole hour is within the last 24 h survive.
    assert kept == list(range(48, 72))
    assert deleted == 144 - 2 * 24
    assert len(store.readings("a", resolution="1m")) > 0  # rollups are kept 30 days
    assert store.stats()["segments"] == len(list(root.rglob("*.seg")))

    # Writing goes on after the current segment's neighbours were deleted.
    store.add(make_reading("a", now + 1, 999))
    store.flush()
    assert seqs(store.readings("a"))[-1] == 999

    # 31 days later every raw and rollup file is gone, and so are the meters' directories.
    assert store.apply_retention(now + 31 * DAY) > 0
    assert list(root.rglob("*.seg")) == []
    assert store.meter_ids() == ["a", "b"]  # still known in memory (latest)
    store.close()  # writes the open rollup windows: files again
    reopened = ReadingStore(root)
    assert reopened.apply_retention(now + 31 * DAY) == 2 * 2  # two meters' 1m and 15m day files
    assert reopened.meter_ids() == [] and reopened.stats()["disk_bytes"] == 0
    reopened.close()


def test_retention_of_rollups_is_separate_from_raw(tmp_path):
    store = ReadingStore(tmp_path / "s", retention_raw_s=HOUR, retention_rollup_s=2 * DAY)
    for day in range(4):
        for i in range(61):  # closes one 1-minute window per day
            store.add(make_reading("m", T0 + day * DAY + i, i))
    store.close()
    store = ReadingStore(tmp_path / "s", retention_raw_s=HOUR, retention_rollup_s=2 * DAY)
    store.apply_retention(T0 + 4 * DAY)
    starts = [row["start"] for row in store.readings("m", resolution="1m")]
    assert {s[:10] for s in starts} == {"2024-03-03", "2024-03-04"}
    assert store.readings("m") == []
    store.close()


# --- rollups ------------------------------------------------------------------------------------
def test_rollups_per_minute_and_quarter_hour(tmp_path):
    start = 1_709_294_400.0  # 2024-03-01T12:00:00Z
    store = ReadingStore(tmp_path / "s")
    for i in range(150):  # 12:00:00 .. 12:02:29, 1 Hz
        store.add(make_reading("m", start + i, i, power_export_w=float(i % 3)))
    # The first two minutes closed when a reading of the next minute came in; they are pending, visible.
    minutes = store.readings("m", resolution="1m")
    assert [(m["start"], m["end"], m["count"]) for m in minutes] == [
        ("2024-03-01T12:00:00Z", "2024-03-01T12:01:00Z", 60),
        ("2024-03-01T12:01:00Z", "2024-03-01T12:02:00Z", 60),
    ]
    first = minutes[0]
    assert first["power_import_w"] == pytest.approx(sum(range(60)) / 60)
    assert first["power_import_w_max"] == 59
    assert first["power_export_w_max"] == 2
    assert first["voltage_l1_v"] == pytest.approx(230.1)
    assert first["power_import_l3_w"] is None  # no reading had it
    assert first["energy_import_wh"] == 3_000_000.0 + 59  # counters: the last value
    assert first["tariff"] == 2 and first["gas_m3"] == 1234.5
    assert store.readings("m", resolution="15m") == []  # the quarter is still open
    store.close()  # persists the open windows, partial

    reopened = ReadingStore(tmp_path / "s")
    minutes = reopened.readings("m", resolution="1m")
    assert [m["count"] for m in minutes] == [60, 60, 30]
    quarters = reopened.readings("m", resolution="15m")
    assert len(quarters) == 1 and quarters[0]["count"] == 150
    assert quarters[0]["start"] == "2024-03-01T12:00:00Z" and quarters[0]["end"] == "2024-03-01T12:15:00Z"
    assert [m["start"][11:16] for m in reopened.readings("m", resolution="1m", since=start + 60)] == [
        "12:01", "12:02"]  # since/until filter rollups on start
    reopened.close()


def test_a_restart_inside_a_window_gives_one_rollup_not_two(tmp_path):
    start = 1_709_294_400.0
    first = ReadingStore(tmp_path / "s")
    for i in range(20):
        first.add(make_reading("m", start + i, 10))
    first.close()
    second = ReadingStore(tmp_path / "s")
    for i in range(20, 60):
        second.add(make_reading("m", start + i, 40))
    second.close()
    (minute,) = ReadingStore(tmp_path / "s").readings("m", resolution="1m")
    assert minute["count"] == 60
    assert minute["power_import_w"] == pytest.approx((20 * 10 + 40 * 40) / 60)


def test_rollup_accumulator_is_plain_data_in_data_out():
    accumulator = RollupAccumulator(900)
    quarter = 1_709_294_400.0  # 12:00:00Z
    assert accumulator.add(make_reading("m", quarter + 899.9, 1)) == []
    closed = accumulator.add(make_reading("m", quarter + 900.0, 2))  # 12:15:00 belongs to the next quarter
    assert [(r["start"], r["end"], r["count"]) for r in closed] == [(quarter, quarter + 900, 1)]
    # The device clock stepped back: the reading is left out and counted, the open window stays.
    assert accumulator.add(make_reading("m", quarter + 10, 3)) == []
    assert accumulator.late == 1
    (partial,) = accumulator.close()
    assert partial["start"] == quarter + 900 and partial["count"] == 1
    assert accumulator.close() == []


def test_rollups_follow_a_clock_stepped_back_by_ntp():
    accumulator = RollupAccumulator(60)
    wrong = 1_893_456_000.0  # the device booted believing it was 2030
    right = 1_709_294_400.0
    accumulator.add(make_reading("m", wrong, 1))
    closed = accumulator.add(make_reading("m", right, 2))  # NTP: far back, not "late"
    assert [r["start"] for r in closed] == [wrong]
    assert accumulator.late == 0
    closed = accumulator.add(make_reading("m", right + 60, 3))
    assert [(r["start"], r["count"]) for r in closed] == [(right, 1)]


# --- crash safety: torn and damaged records --------------------------------------------------------
def _three_flushes(root: Path) -> Path:
    store = ReadingStore(root)
    for batch in range(3):
        for i in range(5):
            seq = batch * 5 + i
            store.add(make_reading("m", T0 + seq, seq))
        store.flush()
    abandon(store)
    return root / "raw" / "m" / "20240301T11.seg"


def _record_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += HEADER.size + HEADER.unpack_from(data, pos)[1]
    return offsets


@pytest.mark.parametrize("damage", ["cut 3 bytes", "cut into header", "garbage appended", "byte flipped"])
def test_a_torn_or_damaged_last_record_is_cut_off_and_the_rest_survives(tmp_path, damage, caplog):
    root = tmp_path / "s"
    segment = _three_flushes(root)
    data = segment.read_bytes()
    last = _record_offsets(segment)[-1]
    if damage == "cut 3 bytes":
        segment.write_bytes(data[:-3])
    elif damage == "cut into header":
        segment.write_bytes(data[: last + 5])
    elif damage == "garbage appended":
        segment.write_bytes(data + os.urandom(1000))
    else:
        flipped = bytearray(data)
        flipped[last + HEADER.size + 10] ^= 0x40
        segment.write_bytes(bytes(flipped))

    store = ReadingStore(root)
    expected = list(range(15)) if damage == "garbage appended" else list(range(10))
    assert seqs(store.readings("m")) == expected
    # Readers never cut (a writer may be mid-append); the writer cuts the torn tail before its next append.
    assert "cutting off" not in caplog.text
    store.add(make_reading("m", T0 + 20, 20))
    store.flush()
    assert "cutting off" in caplog.text
    store.close()
    reopened = ReadingStore(root)
    assert seqs(reopened.readings("m")) == expected + [20]
    reopened.close()
    _, good, problem = decode_records(segment.read_bytes())
    assert problem is None and good == segment.stat().st_size


def test_a_power_cut_at_any_byte_of_the_last_record_loses_only_that_record(tmp_path):
    root = tmp_path / "s"
    segment = _three_flushes(root)
    intact = segment.read_bytes()
    last = _record_offsets(segment)[-1]
    for cut in range(last, len(intact)):
        segment.write_bytes(intact[:cut])
        store = ReadingStore(root)
        assert seqs(store.readings("m")) == list(range(10)), f"cut at byte {cut}"
        abandon(store)
        assert segment.stat().st_size == cut  # reading never cuts; the next writer does (test above)


def test_tinydb_update_and_remove_rewrite_a_segment_atomically(tmp_path):
    root = tmp_path / "s"
    segment = _three_flushes(root)
    db = SegmentDB(segment)
    table = db.table("readings")
    assert len(table) == 15
    table.remove(lambda doc: doc["power_import_w"] < 5)
    table.update({"tariff": 1}, lambda doc: doc["power_import_w"] == 7)
    ids = table.insert_multiple([{"meter_id": "m", "received_at": T0 + 30, "timestamp": T0 + 30,
                                  "power_import_w": 30.0}])
    assert ids == [16]  # ids go on after the removed and kept ones
    db.close()
    assert not list(segment.parent.glob("*.tmp"))
    store = ReadingStore(root)
    rows = store.readings("m")
    assert seqs(rows) == list(range(5, 15)) + [30]
    assert [row["tariff"] for row in rows if row["power_import_w"] == 7] == [1]
    store.close()


# --- write cost does not grow with the store ---------------------------------------------------------
def test_a_flush_touches_only_the_current_segments_and_costs_the_same_in_a_big_store(tmp_path):
    small = ReadingStore(tmp_path / "small", retention_raw_s=float("inf"))
    big = ReadingStore(tmp_path / "big", retention_raw_s=float("inf"))
    # The big store: 20 meters x 6 hours, a reading every 10 s = 43,200 readings in 120 raw segments.
    history_start = T0 - 7 * HOUR
    for meter in range(20):
        for hour in range(6):
            for i in range(0, HOUR, 10):
                big.add(make_reading(f"meter-{meter}", history_start + hour * HOUR + i, i))
            big.flush()
    assert big.stats()["readings_written"] == 43_200
    big.close()
    big = ReadingStore(tmp_path / "big", retention_raw_s=float("inf"))

    before = {store: segment_files(store.path) for store in (small, big)}
    appended = {}
    for store in (small, big):
        written_before = store.stats()["bytes_written"]
        for i in range(5):
            store.add(make_reading("probe", T0 + i, i))
        assert store.flush() == 5
        appended[store] = store.stats()["bytes_written"] - written_before

    # The same bytes appended whatever the size of the store...
    assert appended[small] == appended[big] > 0
    # ...to the probe's current segment only: no other file was rewritten, grown or even opened for reading.
    for store in (small, big):
        after = segment_files(store.path)
        changed = {name for name in after if before[store].get(name) != after[name]}
        assert changed == {"raw/probe/20240301T11.seg"}
        assert not store._readers
    assert segment_files(big.path)["raw/probe/20240301T11.seg"][0] == appended[big]
    small.close()
    big.close()


def test_bytes_on_disk_per_reading_stay_small(store):
    # A DSMR 5 meter at 1 Hz, flushed every 5 s: 5 readings per record.
    for i in range(600):
        store.add(make_reading("m", T0 + i, 500 + i % 50, voltage_l1_v=229.0 + (i % 17) / 10))
        if i % 5 == 4:
            store.flush()
    assert store.stats()["bytes_written"] / 600 < 300
    # A DSMR 4 meter every 10 s: one reading per record still stays under budget (the preset dictionary).
    for i in range(60):
        store.add(make_reading("dsmr4", T0 + 10 * i, i))
        store.flush()
    dsmr4_bytes = sum(p.stat().st_size for p in (store.path / "raw" / "dsmr4").iterdir())
    assert dsmr4_bytes / 60 < 300


# --- disk faults ------------------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fake a full disk")
def test_a_full_disk_keeps_readings_pending_and_reports_without_raising(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.store")
    root = tmp_path / "s"
    store = ReadingStore(root)
    store.add(make_reading("m", T0, 0))
    store.flush()
    store.close()

    store = ReadingStore(root)
    # The current segment now lives on a "disk" where every write fails with ENOSPC (even for root).
    segment = root / "raw" / "m" / "20240301T11.seg"
    good_bytes = segment.read_bytes()
    segment.unlink()
    segment.symlink_to("/dev/full")
    for i in range(1, 6):
        store.add(make_reading("m", T0 + i, i))
    assert store.flush() == 0
    assert store.flush() == 0
    stats = store.stats()
    assert stats["flush_errors"] == 2 and stats["pending"] == 5 and stats["readings_written"] == 0
    assert "No space left" in stats["last_flush_error"]
    assert caplog.text.count("flush failed") == 1  # one log line, not one per flush
    assert seqs(store.readings("m", since=T0 + 1)) == [1, 2, 3, 4, 5]  # still served from memory

    # The disk is back: the kept readings are written by the next flush.
    segment.unlink()
    segment.write_bytes(good_bytes)
    assert store.flush() == 5
    assert store.stats()["last_flush_error"] is None and store.stats()["pending"] == 0
    assert "works again" in caplog.text
    store.close()
    reopened = ReadingStore(root)
    assert seqs(reopened.readings("m")) == [0, 1, 2, 3, 4, 5]
    reopened.close()


def test_an_unwritable_directory_keeps_readings_and_other_meters_still_get_written(tmp_path):
    root = tmp_path / "s"
    store = ReadingStore(root)
    # Where the new meter's directory should go there is a file: mkdir fails, as root too.
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "broken").write_text("not a directory")
    for i in range(3):
        store.add(make_reading("broken", T0 + i, i))
        store.add(make_reading("fine", T0 + i, 10 + i))
    assert store.flush() == 3  # the healthy meter's readings were written
    stats = store.stats()
    assert stats["flush_errors"] == 1 and stats["pending"] == 3 and stats["last_flush_error"]
    assert seqs(store.readings("broken")) == [0, 1, 2]

    (root / "raw" / "broken").unlink()
    assert store.flush() == 3
    store.close()
    reopened = ReadingStore(root)
    assert seqs(reopened.readings("broken")) == [0, 1, 2]
    assert seqs(reopened.readings("fine")) == [10, 11, 12]
    reopened.close()


def test_pending_is_bounded_while_the_disk_is_down(tmp_path):
    root = tmp_path / "s"
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "m").write_text("not a directory")
    store = ReadingStore(root, max_pending=10)
    for i in range(25):
        store.add(make_reading("m", T0 + i, i))
        if i % 4 == 0:
            store.flush()
    stats = store.stats()
    assert stats["pending"] == 10 and stats["dropped"] == 15
    assert seqs(store.readings("m")) == list(range(15, 25))  # the oldest were dropped
    (root / "raw" / "m").unlink()
    assert store.flush() == 10
    store.close()


# --- threads: the agent flushes in a worker thread while the event loop adds ----------------------------
def test_adding_while_another_thread_flushes_loses_nothing(tmp_path):
    store = ReadingStore(tmp_path / "s")
    stop = threading.Event()

    def flusher():
        while not stop.is_set():
            store.flush()

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for i in range(3000):
            store.add(make_reading("m", T0 + i * 0.25, i))
            if i % 500 == 0:
                assert len(store.readings("m")) == i + 1  # pending or on disk, never both, never neither
    finally:
        stop.set()
        thread.join()
    store.close()
    reopened = ReadingStore(tmp_path / "s")
    assert seqs(reopened.readings("m", limit=10_000)) == list(range(3000))
    assert reopened.stats()["segments"] > 0
    reopened.close()


def test_one_damaged_record_in_the_middle_costs_only_that_record(tmp_path):
    """A flipped bit must not wipe what follows it (the registry and budgets use the same format)."""
    root = tmp_path / "s"
    segment = _three_flushes(root)
    offsets = _record_offsets(segment)
    damaged = bytearray(segment.read_bytes())
    damaged[offsets[0] + HEADER.size + 10] ^= 0x40  # inside the first of three records
    segment.write_bytes(bytes(damaged))
    size = segment.stat().st_size
    store = ReadingStore(root)
    assert seqs(store.readings("m")) == list(range(5, 15))  # the second and third records survive
    store.add(make_reading("m", T0 + 20, 20))
    store.flush()
    store.close()
    assert segment.stat().st_size > size  # nothing was cut
    reopened = ReadingStore(root)
    assert seqs(reopened.readings("m")) == list(range(5, 15)) + [20]
    reopened.close()


def test_a_writer_opening_a_segment_keeps_no_decoded_record(tmp_path):
    """Opening a segment for append learns its next ids from a scan that keeps no record (a day of 1 s releases
    held whole this way cost ~700 MB at the first write after a start), and the ids continue where they were."""
    buf = encode_record("r", 1, [{"n": 1}, {"n": 2}]) + encode_record("o", 1, [{"n": 3}]) \
        + encode_record("r", 3, [{"n": 4}])
    scan = scan_records(buf, keep=False)
    assert scan.records == [] and scan.next_ids == {"r": 4, "o": 2} and scan.good == len(buf)
    assert scan_records(buf).next_ids == scan.next_ids
    path = tmp_path / "day.seg"
    path.write_bytes(buf)
    db = SegmentDB(str(path))
    assert db.table("r").insert_multiple([{"n": 5}]) == [4]
    assert db.table("o").insert_multiple([{"n": 6}]) == [2]
    db.close()
    assert [d["n"] for d in SegmentDB(str(path)).table("r").all()] == [1, 2, 4, 5]


def test_a_writer_opening_a_big_segment_reads_it_a_record_at_a_time(tmp_path):
    """The first append to a day file walks it a frame at a time: the memory it allocates, at its peak, is one
    record's, not the file's (read whole, a day of three organizations' 1 s releases, ~20 MB, raised the idle
    agent's RSS by ~30 MiB at its first write of a day). The old whole-file read peaked above the file's size."""
    rnd = random.Random(7)
    path = tmp_path / "day.seg"
    with open(path, "wb") as out:
        for n in range(600):  # ~4 MB of nearly incompressible documents, written twice (copies=2)
            out.write(encode_record("r", 1 + 20 * n, [{"v": rnd.random(), "b": os.urandom(160).hex()}
                                                      for _ in range(20)]) * 2)
    size = path.stat().st_size
    db = SegmentDB(str(path), copies=2)
    tracemalloc.start()
    try:
        assert db.table("r").insert_multiple([{"v": 1}]) == [12001]  # the ids continue where they were
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    db.close()
    assert size > 4_000_000 and peak < size / 10 and kept < size / 40, (size, peak, kept)
    assert [d["v"] for d in SegmentDB(str(path)).table("r").all()][-1] == 1
