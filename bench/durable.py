"""What the one durable-write primitive (agent/store/durable.py) costs, beside the bare write it wraps, in the same
run on the same disk. Prints figures, asserts nothing.

    .venv/bin/python bench/durable.py [--changes 300] [--waiters 300]

- A change from the event loop: `Durable.write` (order, shield, data-directory check, error mapping, a worker
  thread) of one fsync'd SegmentDB append, beside `asyncio.to_thread` of the same append.
- Group commit: `waiters` concurrent requests each awaiting its own entry (`GroupCommit.add_durable`, many entries
  per fsync), beside the same entries written one fsync each.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

from agent.store.disk import DataDirectory
from agent.store.durable import Durable, GroupCommit
from agent.store.segment import SegmentDB

log = logging.getLogger("edge.bench")


async def changes(directory: Path, count: int) -> tuple[float, float]:
    bare_db, db = SegmentDB(str(directory / "bare.seg")), SegmentDB(str(directory / "durable.seg"))
    durable = Durable("bench", directory / "durable.seg", log)
    started = time.perf_counter()
    for n in range(count):
        await asyncio.to_thread(bare_db.table("t").insert, {"n": n})
    bare = (time.perf_counter() - started) / count
    started = time.perf_counter()
    for n in range(count):
        await durable.write(db.table("t").insert, {"n": n})
    through = (time.perf_counter() - started) / count
    bare_db.close()
    db.close()
    return bare, through


async def group(directory: Path, waiters: int) -> tuple[float, float, int]:
    one_db, db = SegmentDB(str(directory / "one.seg")), SegmentDB(str(directory / "group.seg"))
    started = time.perf_counter()
    for n in range(waiters):
        await asyncio.to_thread(one_db.table("t").insert_multiple, [{"n": n}])
    one_each = time.perf_counter() - started
    appends = 0

    def write(_group: object, items: list[dict]) -> None:
        nonlocal appends
        appends += 1
        db.table("t").insert_multiple(items)
    commits: GroupCommit[dict] = GroupCommit(Durable("bench", directory / "group.seg", log), group=lambda _: 0,
                                             write=write)
    started = time.perf_counter()
    await asyncio.gather(*(commits.add_durable({"n": n}) for n in range(waiters)))
    grouped = time.perf_counter() - started
    await commits.aclose()
    one_db.close()
    db.close()
    return one_each, grouped, appends


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--waiters", type=int, default=300)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        watched = DataDirectory(directory)  # every step checks it, as in the agent
        bare, through = await changes(directory, args.changes)
        print(f"one change from the event loop (one fsync'd append), {args.changes} in a row:")
        print(f"  asyncio.to_thread(append)      {bare * 1e3:8.3f} ms")
        print(f"  Durable.write(append)          {through * 1e3:8.3f} ms  ({(through - bare) * 1e6:+.0f} us, "
              f"{through / bare:.2f}x)")
        one_each, grouped, appends = await group(directory, args.waiters)
        print(f"{args.waiters} concurrent requests, each awaiting its own entry:")
        print(f"  one fsync each                 {one_each * 1e3:8.1f} ms")
        print(f"  GroupCommit.add_durable        {grouped * 1e3:8.1f} ms  ({appends} appends, "
              f"{one_each / grouped:.1f}x faster)")
        del watched


if __name__ == "__main__":
    asyncio.run(main())
