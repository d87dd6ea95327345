"""The 1-minute and 15-minute rollups survive a restart: kill -9 of a real writer process, a clean close, no data.

The oracle is independent of the store's rollup code: it decodes the raw segment files byte by byte
(``decode_records``) and aggregates every reading that reached the disk, in the order it was written. After a
crash, a restart, more readings and a clean close, the rollups the store returns must equal those: no reading
of an open window lost with the process, none counted twice.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from agent.store import ReadingStore, RollupAccumulator
from agent.store.records import HEADER, decode_records, decode_records_backward, encode_record
from agent.store.rollup import LAST_FIELDS, MAX_FIELDS, MEAN_FIELDS, combine_same_window
from tests.helpers.store import CRASH_STEP_S, CRASH_T0, abandon, make_reading, run_child_and_kill

# 2024-03-01T11:50:00Z; a reading every 5 s of device time, so seq 120 is 12:00:00 and seq 300 is 12:15:00.
T0 = 1_709_293_800.0
STEP_S = 5.0
METERS = ("a", "b")

# Writes seq first..last-1 for both meters, flushing every 7 readings and at the end, then adds `unflushed`
# more readings that never reach the disk, says "ready" and waits to be killed.
CHILD = """
import sys
from agent.store import ReadingStore, RollupAccumulator
from tests.helpers.store import make_reading

path, first, last, unflushed, t0, step = sys.argv[1], *map(int, sys.argv[2:5]), *map(float, sys.argv[5:7])
store = ReadingStore(path, retention_raw_s=float("inf"))
for seq in range(first, last + unflushed):
    for meter_id in ("a", "b"):
        store.add(make_reading(meter_id, t0 + seq * step, seq, power_export_w=float(seq % 5),
                               voltage_l3_v=(None if seq % 3 else 231.0 + seq % 4)))
    if seq % 7 == 6 and seq < last:
        store.flush()
    if seq == last - 1:
        store.flush()
print("ready", flush=True)
sys.stdin.readline()  # killed here
"""


def reading(meter_id: str, seq: int):
    """What CHILD adds for seq (the same values, so every part of a window looks alike)."""
    return make_reading(meter_id, T0 + seq * STEP_S, seq, power_export_w=float(seq % 5),
                        voltage_l3_v=(None if seq % 3 else 231.0 + seq % 4))


def kill_writer_mid_window(path: Path, first: int, last: int, unflushed: int = 3) -> None:
    """A real process writes seq first..last-1 to disk, holds `unflushed` more in memory, and gets SIGKILL."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(first), str(last), str(unflushed), str(T0), str(STEP_S)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1])
    try:
        line = child.stdout.readline()
        assert line == "ready\n", f"child failed: {child.stderr.read()}"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            stream.close()
    assert child.returncode == -signal.SIGKILL


def raw_on_disk(root: Path, meter_id: str) -> list[dict]:
    """Every raw reading of the meter in its segment files, in the order written (files by hour)."""
    docs = []
    for path in sorted((root / "raw" / meter_id).glob("*.seg")):
        records, _, _ = decode_records(path.read_bytes())
        for table, _, batch in records:
            assert table in ("readings", "order")  # "order": where a meter's writes went after a clock step
            if table == "readings":
                docs.extend(batch)
    return docs


def oracle(docs: list[dict], width_s: int) -> dict[float, dict]:
    """Rollups by window start: count, means, maxes and last values, computed from raw records."""
    windows: dict[float, list[dict]] = {}
    for doc in docs:
        windows.setdefault(math.floor(doc["received_at"] / width_s) * width_s, []).append(doc)
    out = {}
    for start, members in windows.items():
        rollup = {"count": len(members)}
        for name in MEAN_FIELDS:
            values = [d[name] for d in members if d.get(name) is not None]
            rollup[name] = sum(values) / len(values) if values else None
        for name in MAX_FIELDS:
            values = [d[name] for d in members if d.get(name) is not None]
            rollup[f"{name}_max"] = max(values) if values else None
        for name in LAST_FIELDS:
            values = [d[name] for d in members if d.get(name) is not None]
            rollup[name] = values[-1] if values else None
        out[start] = rollup
    return out


def stored_rollups(root: Path, meter_id: str, resolution: str) -> dict[float, dict]:
    store = ReadingStore(root, retention_raw_s=float("inf"))
    try:
        rows = store.readings(meter_id, resolution=resolution, limit=10**7)
    finally:
        abandon(store)  # not close(): reading must not write anything
    out = {}
    for row in rows:
        start = datetime.fromisoformat(row["start"].replace("Z", "+00:00")).timestamp()
        assert start not in out, f"two rollups for one window: {row['start']}"
        out[start] = row
    return out


def assert_rollups_match_raw(root: Path, context: str = "") -> None:
    for meter_id in METERS:
        docs = raw_on_disk(root, meter_id)
        assert docs, "the test wrote nothing"
        for resolution, width_s in (("1m", 60), ("15m", 900)):
            expected = oracle(docs, width_s)
            got = stored_rollups(root, meter_id, resolution)
            assert sorted(got) == sorted(expected), f"{context} {meter_id} {resolution}: windows differ"
            for start, want in expected.items():
                row = got[start]
                where = f"{context} {meter_id} {resolution} {row['start']}"
                assert row["count"] == want["count"], f"{where}: count {row['count']} != {want['count']}"
                for name, value in want.items():
                    if value is None or isinstance(value, int):
                        assert row[name] == value, f"{where}: {name}"
                    else:  # means are stored rounded to 3 decimals
                        assert row[name] == pytest.approx(value, abs=1.5e-3), f"{where}: {name}"


def add_and_close(root: Path, seqs: range) -> None:
    store = ReadingStore(root, retention_raw_s=float("inf"))
    for seq in seqs:
        for meter_id in METERS:
            store.add(reading(meter_id, seq))
        if seq % 7 == 6:
            store.flush()
    store.close()


# --- kill -9 ----------------------------------------------------------------------------------------
def test_kill_9_mid_window_then_restart_gives_the_rollups_of_every_reading_on_disk(tmp_path):
    root = tmp_path / "s"
    # Killed at 12:06:40 (seq 200), inside the 12:00 quarter and the 12:06 minute; seq 200..202 die with it.
    kill_writer_mid_window(root, 0, 200)
    assert len(raw_on_disk(root, "a")) == 200
    # The restarted agent goes on from 12:06:55 past 12:15, so the 12:00 quarter is closed and written.
    add_and_close(root, range(203, 330))
    assert_rollups_match_raw(root)
    quarter = stored_rollups(root, "a", "15m")[T0 + 600]
    assert quarter["count"] == 180 - 3  # 12:00..12:15: all but the three readings lost with the process
    minute = stored_rollups(root, "a", "1m")[T0 + 960]
    assert minute["count"] == 12 - 3  # 12:06: 200, 201, 202 are lost


def test_two_kills_in_the_same_window_then_a_clean_close(tmp_path):
    root = tmp_path / "s"
    kill_writer_mid_window(root, 0, 200)      # killed at 12:06:40
    kill_writer_mid_window(root, 203, 262)    # restarted, killed again at 12:11:50, same quarter and minute 12:11
    kill_writer_mid_window(root, 262, 263, unflushed=0)  # and again a moment later, after a single reading
    add_and_close(root, range(265, 280))      # then a clean stop, still inside the quarter
    add_and_close(root, range(280, 310))      # and a clean restart that goes past 12:15
    assert_rollups_match_raw(root)


def test_kill_9_at_random_moments_while_writing(tmp_path):
    """Kills land anywhere in a flush, also between its rollup and its raw part; then a clean restart."""
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    root = tmp_path / "s"
    first_seq = 0
    for round_ in range(4):
        flushed_up_to = run_child_and_kill(root, first_seq, rng)  # the writer of test_store_crash
        if round_ == 1:  # one clean open and close in between
            ReadingStore(root, retention_raw_s=float("inf")).close()
        first_seq = flushed_up_to + 8  # past the batch that was in flight; often still the same window
    store = ReadingStore(root, retention_raw_s=float("inf"))
    for seq in range(first_seq, first_seq + 50):
        for meter_id in METERS:
            store.add(make_reading(meter_id, CRASH_T0 + seq * CRASH_STEP_S, seq))
    store.close()
    assert_rollups_match_raw(root, f"seed {seed}:")


# --- clean close -------------------------------------------------------------------------------------
def test_a_clean_close_and_restart_inside_a_window_counts_nothing_twice(tmp_path):
    root = tmp_path / "s"
    add_and_close(root, range(0, 200))    # closes at 12:06:40: the open windows are written, partial
    ReadingStore(root, retention_raw_s=float("inf")).close()  # a restart with no readings at all
    ReadingStore(root, retention_raw_s=float("inf")).close()
    add_and_close(root, range(200, 230))  # still inside the quarter and then closed again
    add_and_close(root, range(230, 330))
    assert_rollups_match_raw(root)
    assert stored_rollups(root, "a", "15m")[T0 + 600]["count"] == 180


def test_partial_rollups_of_a_clean_close_are_visible_after_restart(tmp_path):
    root = tmp_path / "s"
    add_and_close(root, range(0, 200))
    assert stored_rollups(root, "a", "15m")[T0 + 600]["count"] == 80
    assert_rollups_match_raw(root)


# --- no raw data -------------------------------------------------------------------------------------
def test_a_store_without_raw_data_starts_and_rolls_up_as_before(tmp_path):
    root = tmp_path / "s"
    ReadingStore(root).close()  # a new, empty store
    (root / "raw" / "a").mkdir(parents=True)  # a meter directory without segments
    (root / "raw" / "b").mkdir()
    (root / "raw" / "b" / "20240301T12.seg").write_bytes(b"")  # created, killed before the first record
    (root / "raw" / "notes.txt").write_text("not a meter")
    store = ReadingStore(root)
    assert store.readings("a", resolution="1m") == [] and store.readings("b", resolution="15m") == []
    store.close()
    (root / "raw" / "b" / "20240301T12.seg").unlink()
    add_and_close(root, range(0, 200))
    assert_rollups_match_raw(root)


def test_rollups_whose_raw_readings_are_gone_still_merge_with_a_restart(tmp_path):
    """Raw retention (or a lost raw file) leaves nothing to rebuild from: the written part stands, merged."""
    root = tmp_path / "s"
    add_and_close(root, range(0, 200))
    for path in (root / "raw").rglob("*.seg"):
        path.unlink()
    add_and_close(root, range(200, 330))
    for meter_id in METERS:
        quarter = stored_rollups(root, meter_id, "15m")[T0 + 600]
        assert quarter["count"] == 180
        assert quarter["power_import_w"] == pytest.approx(sum(range(120, 300)) / 180, abs=1.5e-3)
        assert quarter["power_import_w_max"] == 299 and quarter["energy_import_wh"] == 3_000_000.0 + 299


def test_an_empty_or_torn_newest_segment_falls_back_to_the_one_before(tmp_path):
    root = tmp_path / "s"
    kill_writer_mid_window(root, 0, 200)
    # The next hour's file was created, and the kill came before its first record was whole.
    torn = encode_record("readings", 1, [reading("a", 999).to_record()])
    (root / "raw" / "a" / "20240301T13.seg").write_bytes(torn[:-5])
    (root / "raw" / "b" / "20240301T13.seg").write_bytes(b"")
    add_and_close(root, range(203, 330))
    assert_rollups_match_raw(root)


def test_start_up_reads_only_the_newest_raw_segment_of_each_meter(tmp_path, caplog):
    root = tmp_path / "s"
    kill_writer_mid_window(root, 0, 200)  # 11:50 .. 12:06:40: two hour segments per meter
    for meter_id in METERS:  # the 11:00 segment becomes something that cannot be read at all
        older = root / "raw" / meter_id / "20240301T11.seg"
        older.unlink()
        older.mkdir()
    caplog.set_level(logging.WARNING, logger="edge.store")
    store = ReadingStore(root, retention_raw_s=float("inf"))
    assert caplog.records == []  # had start-up opened it, it would have said so
    for meter_id in METERS:
        store.add(reading(meter_id, 203))
        store.add(reading(meter_id, 400))  # 12:23:20 closes the 12:00 quarter
    (quarter,) = [row for row in store.readings("a", resolution="15m") if row["start"] == "2024-03-01T12:00:00Z"]
    assert quarter["count"] == 80 + 1  # 12:00:00..12:06:35 rebuilt from the newest segment, and 12:06:55
    abandon(store)


def test_decoding_records_from_the_end_gives_what_decoding_from_the_start_gives():
    records = [encode_record("readings", 1 + 2 * i, [reading("a", seq).to_record() for seq in (2 * i, 2 * i + 1)])
               for i in range(6)]
    whole = b"".join(records)
    second = len(records[0])
    payload_flipped, length_flipped = bytearray(whole), bytearray(whole)
    payload_flipped[second + HEADER.size + 3] ^= 0xFF
    length_flipped[second + 5] ^= 0xFF
    for buf in (b"", whole, whole[:-7], bytes(payload_flipped), bytes(length_flipped), whole + b"ESg1 torn"):
        assert list(decode_records_backward(buf)) == list(reversed(decode_records(buf)[0]))
    assert len(list(decode_records_backward(bytes(length_flipped)))) == 5  # only the damaged one is lost
    newest_first = decode_records_backward(whole)
    assert next(newest_first)[1] == 11  # the last record comes first


def test_a_restart_after_the_clock_was_stepped_back_counts_nothing_twice(tmp_path):
    """The device booted believing it was 2030, NTP stepped it back, the agent restarted cleanly.

    The newest raw segment on disk is then that of 2030, whose windows were closed by the step, but the readings
    written last are those of 2024: the restart reopens their window, and its rollup replaces the partial one
    of the close rather than doubling it.
    """
    root = tmp_path / "s"
    wrong, right = 1_893_456_000.0, 1_709_294_400.0  # 2030-01-01T00:00Z, 2024-03-01T12:00Z
    store = ReadingStore(root, retention_raw_s=float("inf"))
    for i in range(10):
        for meter_id in METERS:
            store.add(make_reading(meter_id, wrong + 5 * i, i))
    for i in range(20):  # 12:00:00 .. 12:01:35
        for meter_id in METERS:
            store.add(make_reading(meter_id, right + 5 * i, 100 + i))
    store.close()
    store = ReadingStore(root, retention_raw_s=float("inf"))
    for i in range(20, 40):  # 12:01:40 .. 12:03:15
        for meter_id in METERS:
            store.add(make_reading(meter_id, right + 5 * i, 100 + i))
    store.close()
    assert_rollups_match_raw(root)
    assert stored_rollups(root, "a", "1m")[wrong]["count"] == 10


def test_damage_early_in_the_newest_segment_does_not_disturb_the_rebuild(tmp_path, caplog):
    root = tmp_path / "s"
    kill_writer_mid_window(root, 0, 330)  # killed at 12:17:30: the open quarter is 12:15
    # Damage the first record of each meter's 12:00 segment (12:00:00..12:00:30, long closed): a payload
    # byte for "a" (its check fails), the length field for "b" (the headers cannot be walked past it).
    for meter_id, offset in (("a", HEADER.size + 5), ("b", 6)):
        path = root / "raw" / meter_id / "20240301T12.seg"
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="edge.store")
    abandon(ReadingStore(root, retention_raw_s=float("inf")))
    assert caplog.records == []  # the rebuild did not fail
    add_and_close(root, range(333, 400))
    for meter_id in METERS:
        for resolution, width_s in (("1m", 60), ("15m", 900)):
            expected = oracle(raw_on_disk(root, meter_id), width_s)
            got = stored_rollups(root, meter_id, resolution)
            for start in (s for s in expected if s >= T0 + 1500):  # 12:15 on: windows open at the kill or later
                assert got[start]["count"] == expected[start]["count"], (meter_id, resolution, got[start]["start"])
                assert got[start]["power_import_w"] == pytest.approx(expected[start]["power_import_w"], abs=1.5e-3)
    assert stored_rollups(root, "b", "15m")[T0 + 1500]["count"] == 30 + 67  # 12:15:00..12:17:25, 12:17:45..12:23:15


def test_resume_reopens_the_newest_window_and_its_rollup_replaces_the_earlier_ones():
    accumulator = RollupAccumulator(60)
    minute = T0 + 600  # 12:00:00
    accumulator.resume("m", [make_reading("m", minute - 5, 1), make_reading("m", minute + 10, 2),
                             make_reading("m", minute + 5, 3)])  # in the order written, not by time
    accumulator.resume("empty", [])
    (closed,) = accumulator.add(make_reading("m", minute + 60, 4))
    assert (closed["start"], closed["count"], closed["power_import_w_max"]) == (minute, 2, 3)
    assert closed["energy_import_wh"] == 3_000_000.0 + 3  # last written, not latest received_at
    assert closed["replaces"] is True
    (fresh,) = accumulator.close()
    assert "replaces" not in fresh
    earlier = {"start": minute, "count": 1, "power_import_w": 9.0}
    assert combine_same_window(earlier, closed) is closed
    assert combine_same_window(earlier, fresh)["count"] == 2  # merged, as after a clock step


# --- clock steps and the rebuild: the window of the last reading written, not of the latest received_at ---
H = 1_709_294_400.0  # 2024-03-01T12:00:00Z


def add_times(store: ReadingStore, times: list[float], first_seq: int) -> int:
    for n, moment in enumerate(times, first_seq):
        for meter_id in METERS:
            store.add(make_reading(meter_id, moment, n))
        if n % 5 == 4:
            store.flush()
    return first_seq + len(times)


def test_a_restart_while_the_stepped_back_clock_is_still_behind_loses_no_reading(tmp_path):
    """The review's demo: readings 12:00..12:20, the clock steps back to 11:50 and runs to 12:05, clean close,
    restart. The window open then is 12:00 (of the last reading written), not 12:15 (of the latest received_at)."""
    root = tmp_path / "s"
    store = ReadingStore(root, retention_raw_s=float("inf"))
    n = add_times(store, [H + i * 10 for i in range(121)], 0)            # 12:00:00 .. 12:20:00
    n = add_times(store, [H - 600 + i * 10 for i in range(91)], n)       # stepped back: 11:50:00 .. 12:05:00
    store.close()
    store = ReadingStore(root, retention_raw_s=float("inf"))
    add_times(store, [H + 310 + i * 10 for i in range(60)], n)           # 12:05:10 .. 12:15:00
    assert store.stats()["rollups_late"] == 0  # was 59 per meter and width: the 12:15 window had been reopened
    store.close()
    assert_rollups_match_raw(root)
    assert stored_rollups(root, "a", "15m")[H]["count"] == 90 + 31 + 59  # 180, was 121
    assert stored_rollups(root, "a", "15m")[H - 900]["count"] == 60


@pytest.mark.parametrize("crash", [False, True])
def test_a_restart_after_a_step_back_into_an_older_hour_reopens_that_hour(tmp_path, crash):
    """The last reading went to the 11:00 segment, older by name than the 12:00 one: the newest segment says so."""
    root = tmp_path / "s"
    store = ReadingStore(root, retention_raw_s=float("inf"))
    n = add_times(store, [H + i * 10 for i in range(121)], 0)            # 12:00:00 .. 12:20:00
    n = add_times(store, [H - 1800 + i * 10 for i in range(101)], n)     # stepped back: 11:30:00 .. 11:46:40
    if crash:
        store.flush()
        abandon(store)
    else:
        store.close()
    store = ReadingStore(root, retention_raw_s=float("inf"))
    add_times(store, [H - 790 + i * 10 for i in range(140)], n)          # 11:46:50 .. 12:10:00
    assert store.stats()["rollups_late"] == 0
    store.close()
    assert_rollups_match_raw(root)
    assert stored_rollups(root, "a", "15m")[H - 900]["count"] == 11 + 79  # 11:45:00 .. 11:59:50


def test_a_restart_after_a_step_back_inside_one_hour_finds_the_readings_from_before_the_step(tmp_path):
    """12:00..12:50, stepped back to 12:05, killed at 12:35: the open quarter 12:30 has readings from before the
    step early in the segment, behind readings older than it. The segment is marked, so it is read whole."""
    root = tmp_path / "s"
    store = ReadingStore(root, retention_raw_s=float("inf"))
    n = add_times(store, [H + i * 10 for i in range(301)], 0)            # 12:00:00 .. 12:50:00
    n = add_times(store, [H + 300 + i * 10 for i in range(181)], n)      # stepped back: 12:05:00 .. 12:35:00
    store.flush()
    abandon(store)
    assert (root / "raw" / "a" / "20240301T12.stepped").exists()
    store = ReadingStore(root, retention_raw_s=float("inf"))
    add_times(store, [H + 2110 + i * 10 for i in range(80)], n)          # 12:35:10 .. 12:48:20
    store.close()
    assert_rollups_match_raw(root)
    assert stored_rollups(root, "a", "15m")[H + 1800]["count"] == 90 + 31 + 59  # 12:30 .. 12:44:50: both visits, then on


def test_a_meter_in_time_order_gets_no_marker_and_start_up_reads_no_segment(tmp_path, monkeypatch):
    import agent.store.store as store_module

    root = tmp_path / "s"
    store = ReadingStore(root, retention_raw_s=float("inf"))
    n = add_times(store, [H + i * 10 for i in range(200)], 0)
    store.close()
    assert not list((root / "raw").rglob("*.stepped")) and not list((root / "raw").rglob("*.tmp"))
    decoded = []
    real = store_module._last_window_records
    monkeypatch.setattr(store_module, "_last_window_records", lambda path, *a: decoded.append(path) or real(path, *a))
    store = ReadingStore(root, retention_raw_s=float("inf"))
    assert decoded == []  # lazy: nothing read before the agent is ready
    add_times(store, [H + 2000 + i * 10 for i in range(3)], n)  # meter "a" and "b" get readings: held
    assert decoded == []
    store.flush()  # rebuilt here, in the flushing (worker) thread
    assert sorted(path.parent.name for path in decoded) == ["a", "b"]
    store.close()
    assert_rollups_match_raw(root)
