"""Readings for the store tests, a crash's way of closing a store, and a writer process to kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from agent.store import ReadingStore
from agent.store.records import HEADER
from drivers.reading import Reading

DAY = 86400


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def make_reading(meter_id: str, received_at: float, seq: int = 0, **values) -> Reading:
    """A three-phase reading whose power_import_w is seq, so tests can tell readings apart."""
    fields = dict(
        power_import_w=float(seq), power_export_w=0.0,
        power_import_l1_w=100.0 + seq % 7, power_import_l2_w=50.0, power_import_l3_w=None,
        voltage_l1_v=230.1, voltage_l2_v=229.8, voltage_l3_v=None,
        current_l1_a=1.2, current_l2_a=0.4,
        energy_import_t1_wh=1_000_000.0 + seq, energy_import_t2_wh=2_000_000.0,
        energy_import_wh=3_000_000.0 + seq, tariff=2, power_failures=4, gas_m3=1234.5,
        gas_timestamp=at(received_at - 300),
    )
    fields.update(values)
    # The meter's clock says 2016 (a replayed telegram): the store must go by received_at.
    return Reading(meter_id=meter_id, timestamp=at(received_at - 8 * 365 * DAY), received_at=at(received_at),
                   **fields)


def abandon(store: ReadingStore) -> None:
    """Close the store's files the way a crash does: no flush, no rollups of the open windows."""
    for _, db in store._writers.values():
        db.close()
    for db in store._readers.values():
        db.close()
    store._writers.clear()
    store._readers.clear()


# 2024-03-01T11:58:00Z, and 5 s of device time per reading: the child crosses hour segments quickly.
CRASH_T0 = 1_709_294_280.0
CRASH_STEP_S = 5.0


CHILD = """
import sys
from datetime import datetime, timezone
from agent.store import ReadingStore
from agent.store.records import HEADER
from drivers.reading import Reading

path, seq, t0, step = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
store = ReadingStore(path, retention_raw_s=float("inf"))
while True:
    for _ in range(7):
        moment = datetime.fromtimestamp(t0 + seq * step, timezone.utc)
        for meter_id in ("a", "b"):
            store.add(Reading(meter_id=meter_id, timestamp=moment, received_at=moment,
                              power_import_w=float(seq), voltage_l1_v=230.0, energy_import_wh=1e6 + seq))
        seq += 1
    store.flush()
    print(seq, flush=True)  # every reading below seq is on disk, fsync'd
"""


def run_child_and_kill(path: Path, first_seq: int, rng: random.Random) -> int:
    """Start a writer, SIGKILL it at a random moment; returns the seq it last reported flushed."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(first_seq), str(CRASH_T0), str(CRASH_STEP_S)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = child.stdout.readline()  # the child is up and has flushed once
        assert first_line, f"child died: {child.stderr.read()}"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()  # lines printed before the kill are still in the pipe
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    lines = (first_line + rest).split()
    return int(lines[-1])


def record_spans(path) -> list[tuple[int, int]]:
    """(offset, length) of each record of a segment file, in order."""
    buf, spans, pos = path.read_bytes(), [], 0
    while pos < len(buf):
        length = HEADER.size + HEADER.unpack_from(buf, pos)[1]
        spans.append((pos, length))
        pos += length
    return spans


def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
