"""The household access page's index (agent/web/access_index.py) holding one day of a 1 s subscription's pushes:
86,400 `data.push` audit entries (one per decided window, withheld, filtered or sent alike), beside the same
entries held as the dicts the audit log decodes them to (the baseline, measured in the same run). Prints the
memory the index holds (tracemalloc, after the day is reduced), the CPU of reducing the day, and the CPU of one
household's page of it (what `_access_page` asks the index).

Before the index held runs (2026-12-02, this machine): 51.6 MB held for the day (598 B per window, the baseline's
size), 262 ms CPU per page load for the day; after: ~20 kB and 0.2 ms (24 runs and 5 reads).

    .venv/bin/python bench/access.py [--windows 86400] [--flush-every 5]
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


def write_day(directory: Path, windows: int, flush_every: int) -> None:
    """One subscription's decided windows of one day, as the delivery engine records them (and a few reads)."""
    clock = [float(DAY0)]
    audit = AuditLog(directory, clock=lambda: clock[0])
    for i in range(windows):
        clock[0] = DAY0 + i + 0.4
        audit.record("org-1", "organization", "data.push", durable=False, subscription_id="sub-1", window="1s",
                     window_start=DAY0 + i, released=bool(i % 3), **({"households": 12} if i % 3 else {}))
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        t = time.perf_counter()
        write_day(directory, args.windows, args.flush_every)
        size = sum(p.stat().st_size for p in directory.glob("*.seg"))
        print(f"audit log: {args.windows} pushes written in {time.perf_counter() - t:.1f} s, "
              f"{size / 1e6:.1f} MB on disk ({size / args.windows:.0f} B per window, both copies)")
        path = next(directory.glob("*.seg"))
        entries, baseline = held(lambda: [dict(e) for e in SegmentStream(path, kind="audit").docs("audit")])
        print(f"baseline: the day's entries as dicts: {baseline / 1e6:.1f} MB ({baseline / len(entries):.0f} B each)")
        del entries
        index = AccessIndex(directory)
        consented = {("org-1", "aggregates")}

        def keep(entry):
            return views.concerns(entry, "h-1", consented)
        t = time.process_time()
        _, size = held(lambda: index.own(DAY0, "h-1", ["org-1"], keep))
        reduced = time.process_time() - t
        print(f"index: holds {size / 1e3:.1f} kB for the day ({size / args.windows:.2f} B per window); "
              f"reducing the day took {reduced:.1f} s CPU")
        t = time.process_time()
        mine = index.own(DAY0, "h-1", ["org-1"], keep)
        print(f"one page load (the index's part, the day already reduced): {1000 * (time.process_time() - t):.1f} ms "
              f"CPU, {len(mine)} items")


if __name__ == "__main__":
    main()
