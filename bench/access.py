"""The household access page's index (agent/web/access_index.py) holding one day of a 1 s subscription's pushes:
86,400 decided windows (withheld, filtered or sent alike), beside the same entries held as the dicts the audit log
decodes them to (the baseline, measured in the same run). Prints the audit log's bytes on disk for the day written
as runs (agent/audit.py `record_push`, now) beside one entry per window (the format before, same run, same
outcomes), the memory the index holds of each (tracemalloc, after the day is reduced), the CPU of reducing the
day, and the CPU of one household's page of it (what `_access_page` asks the index).

Before the index held runs (2026-12-02, this machine): 51.6 MB held for the day (598 B per window, the baseline's
size), 262 ms CPU per page load for the day; after: ~20 kB and 0.2 ms (24 runs and 5 reads). The audit log's day,
steady stream: 6.7 MB one entry per window at 5 s batches (27.6 MB at a batch per push), 0.097 MB as runs.

    .venv/bin/python bench/access.py [--windows 86400] [--flush-every 5] [--pattern steady|flapping]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.audit import AuditLog  # noqa: E402
from agent.store.segment import SegmentStream  # noqa: E402
from agent.web import views  # noqa: E402
from agent.web.access_index import AccessIndex  # noqa: E402

DAY0 = 1_790_035_200  # a UTC midnight
FLUSH_S = 5  # StorageConfig.flush_seconds's default: a batch of pushes every 5 windows


def outcome(i: int, pattern: str) -> dict:
    """Window i's outcome: "steady", sent over 12 households but a withheld window every 10 minutes (two runs cut
    each time); "flapping", released or withheld and the count changing every window (a run per window, the
    format's worst case)."""
    if pattern == "flapping":
        return {"released": bool(i % 3), **({"households": 12} if i % 3 else {})}
    return {"released": False} if i % 600 == 599 else {"released": True, "households": 12}


def write_day(directory: Path, windows: int, flush_every: int, runs: bool, pattern: str) -> None:
    """One subscription's decided windows of one day, as the delivery engine records them (`runs`: as runs, now;
    else one entry per window, as before), and a few reads."""
    clock = [float(DAY0)]
    audit = AuditLog(directory, clock=lambda: clock[0])
    for i in range(windows):
        clock[0] = DAY0 + i + 0.4
        if runs:
            audit.record_push("org-1", "sub-1", "1s", DAY0 + i, **outcome(i, pattern))
        else:
            audit.record("org-1", "organization", "data.push", durable=False, subscription_id="sub-1", window="1s",
                         window_start=DAY0 + i, **outcome(i, pattern))
        if i % 20_000 == 0:
            audit.record("org-1", "organization", "data.read", window="1m", window_start=DAY0 + i // 60 * 60,
                         released=True)
        if i % flush_every == flush_every - 1:  # the agent's periodic flush (storage.flush_seconds)
            audit.flush()
    audit.close()


def held(make):
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    thing = make()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return thing, after - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=86_400)
    parser.add_argument("--flush-every", type=int, default=FLUSH_S,
                        help="windows per audit batch (1: every push its own write, as when durable entries "
                             "keep the writer busy)")
    parser.add_argument("--pattern", choices=("steady", "flapping"), default="steady",
                        help="what came of the windows (see `outcome`)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        for runs in (False, True):
            directory = Path(tmp) / ("runs" if runs else "windows")
            t = time.perf_counter()
            write_day(directory, args.windows, args.flush_every, runs, args.pattern)
            sizes[runs] = sum(p.stat().st_size for p in directory.iterdir()), time.perf_counter() - t  # OPEN_RUNS too
        (old, old_s), (new, new_s) = sizes[False], sizes[True]
        print(f"audit log ({args.pattern}): {args.windows} pushes on disk, both copies: as runs {new / 1e6:.3f} MB "
              f"({new / args.windows:.1f} B per window, written in {new_s:.1f} s) beside one entry per window "
              f"{old / 1e6:.1f} MB ({old / args.windows:.0f} B per window, {old_s:.1f} s)")
        path = next((Path(tmp) / "windows").glob("*.seg"))
        entries, baseline = held(lambda: [dict(e) for e in SegmentStream(path, kind="audit").docs("audit")])
        print(f"baseline: the day's entries (one per window) as dicts: {baseline / 1e6:.1f} MB "
              f"({baseline / len(entries):.0f} B each)")
        del entries
        consented = {("org-1", "aggregates")}

        def keep(entry):
            return views.concerns(entry, "h-1", consented)
        for runs in (False, True):
            index = AccessIndex(Path(tmp) / ("runs" if runs else "windows"))
            t = time.process_time()
            _, size = held(lambda: index.own(DAY0, "h-1", ["org-1"], keep))
            reduced = time.process_time() - t
            t = time.process_time()
            mine = index.own(DAY0, "h-1", ["org-1"], keep)
            page = time.process_time() - t
            print(f"index of the day {'as runs' if runs else 'one entry per window'}: holds {size / 1e3:.1f} kB "
                  f"({size / args.windows:.2f} B per window); reducing the day took {reduced:.2f} s CPU; one page "
                  f"load (the index's part, the day already reduced): {1000 * page:.1f} ms CPU, {len(mine)} items")

if __name__ == "__main__":
    main()
