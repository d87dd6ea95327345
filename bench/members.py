"""The release members index's cost (agent/release/members.py): CPU per decided window of `Releases.settle` with the
index noting every fine window's cohort, beside the same passes with the index switched off, in the same run
(alternated blocks, best of each). A window of 1,000 consenting households and four organizations (two exact dso,
two noisy supplier; 1 s exact windows, the noisy ones every 15 min), readings from every household each second.

Steady: the cohort does not change (nothing is written). Churn: one household falls silent past the hold or
comes back every window, so every window writes a change, fsync'd (the worst case; a real neighbourhood changes a
few times an hour).

    .venv/bin/python bench/members.py [--households 1000] [--windows 120]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.aggregates import new_books  # noqa: E402
from agent.registry import Registry  # noqa: E402
from agent.release import Releases  # noqa: E402
from agent.release.door import HOLD_S  # noqa: E402
from drivers.reading import Reading  # noqa: E402
from tests.conftest import make_config  # noqa: E402

T0 = math.floor(1_790_000_000 / 3600) * 3600
BLOCKS = 6


def registry_of(directory: Path, households: int) -> Registry:
    """Households consenting to four organizations since before T0 (made once: each consent is fsync'd)."""
    registry = Registry(directory / "registry.seg", clock=lambda: T0 - 3600)
    made = [registry.create_household(None, "http")[0] for _ in range(households)]
    for level in ("dso", "dso", "supplier", "supplier"):
        org, _ = registry.create_organization(f"Org {len(registry.organizations)}", level)
        for h in made:
            registry.set_consent(h.id, org.id, "aggregates", True)
    return registry


class Neighbourhood:
    def __init__(self, directory: Path, registry: Registry):
        self.now = float(T0)
        self.registry = registry
        self.books = new_books()
        self.releases = Releases(make_config(directory), registry, self.books, lambda: self.now,
                                 directory / "releases")
        self.households = sorted(registry.households.values(), key=lambda h: h.id)
        self.silent: set[str] = set()

    def post(self) -> None:
        at = datetime.fromtimestamp(self.now, timezone.utc)
        for h in self.households:
            if h.id not in self.silent:
                reading = Reading(meter_id=h.meter_id, timestamp=at, received_at=at, power_import_w=300.0,
                                  power_export_w=0.0)
                for book in self.books.values():
                    book.add(reading)

    async def window(self, churn: bool, index: int) -> float:
        """One second: readings, then the pass; the pass's CPU time."""
        if churn:  # one household in or out of the cohort every window
            self.silent ^= {self.households[index % 50].id}
        self.post()
        self.now += 1
        started = time.process_time()
        await self.releases.settle()
        return time.process_time() - started


def switched_off(releases: Releases) -> None:
    async def nothing() -> None:
        return None
    releases.members.note = lambda *args, **kwargs: None
    releases.members.commit = nothing


async def run(households: int, windows: int) -> None:
    results: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        registry = registry_of(Path(tmp), households)
        for block in range(BLOCKS):
            for churn in (False, True):
                for indexed in (True, False):
                    directory = Path(tmp) / f"{block}-{churn}-{indexed}"
                    directory.mkdir()
                    town = Neighbourhood(directory, registry)
                    if not indexed:
                        switched_off(town.releases)
                    if churn:  # past the hold, so each silence changes the cohort
                        town.releases._held_over = lambda grid, start, contributions: contributions
                    for i in range(10):  # warm-up: the first windows after start
                        await town.window(False, i)
                    times = [await town.window(churn, i) for i in range(windows)]
                    results.setdefault(("churn" if churn else "steady", indexed), []).append(
                        statistics.median(times))
                    town.releases.close()
        registry.close()
    print(f"Releases.settle CPU per 1 s window, {households} households x 4 organizations (median of {windows}, "
          f"best of {BLOCKS} alternated runs); HOLD_S = {HOLD_S}")
    for case in ("steady", "churn"):
        on, off = min(results[(case, True)]), min(results[(case, False)])
        print(f"  {case:6s}: with the members index {on * 1e3:7.3f} ms, without {off * 1e3:7.3f} ms "
              f"({on / off:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--households", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=120)
    args = parser.parse_args()
    asyncio.run(run(args.households, args.windows))


if __name__ == "__main__":
    main()
