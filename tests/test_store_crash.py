"""A real kill -9: a child process writes to the store, the parent SIGKILLs it at a random moment.

The child prints, after each flush() has returned (so after fsync), how many readings it has flushed. Every
reading it reported must be there when the store is opened again, and the store must keep working.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.store import ReadingStore
from agent.store.records import decode_records
from tests.test_store import abandon

# 2024-03-01T11:58:00Z, and 5 s of device time per reading: the child crosses hour segments quickly.
T0 = 1_709_294_280.0
STEP_S = 5.0

CHILD = """
import sys
from datetime import datetime, timezone
from agent.store import ReadingStore
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
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(first_seq), str(T0), str(STEP_S)],
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


def test_kill_9_loses_nothing_that_was_reported_flushed(tmp_path):
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    path = tmp_path / "store"
    reported: set[int] = set()
    first_seq = 0
    for round_ in range(4):
        flushed_up_to = run_child_and_kill(path, first_seq, rng)
        reported.update(range(first_seq, flushed_up_to))

        store = ReadingStore(path, retention_raw_s=float("inf"))
        for meter_id in ("a", "b"):
            stored = {int(row["power_import_w"]) for row in store.readings(meter_id, limit=10**7)}
            missing = reported - stored
            assert not missing, f"seed {seed}, round {round_}: {len(missing)} reported readings lost"
        assert store.latest("a") is not None
        store.close()
        # Leave a gap: the batch in flight at the kill may or may not have reached the disk.
        first_seq = flushed_up_to + 1000

    final = ReadingStore(path, retention_raw_s=float("inf"))
    assert len(final.readings("a", limit=10**7)) >= len(reported)
    for meter_id in ("a", "b"):  # load every segment once
        for resolution in ("raw", "1m", "15m"):
            assert final.readings(meter_id, resolution=resolution, limit=10**7)
    abandon(final)  # not close(): that would append the open rollup windows
    # Every segment file, loaded once, now decodes to its very end (a torn tail would have been cut off).
    segments = list(path.rglob("*.seg"))
    assert len(segments) > 4
    for segment in segments:
        _, good, problem = decode_records(segment.read_bytes())
        assert problem is None and good == segment.stat().st_size, segment
