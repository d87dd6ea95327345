"""Benchmark of the reading store: write cost at a small and a large store size, bytes per reading, and the
baseline of TinyDB's default JSONStorage, all measured in the same run. Prints figures, asserts nothing.

    .venv/bin/python bench/store.py [--sizes 10000,1000000] [--writes 3000] [--batch 5] [--baseline 500,2000]
        [--startup-meters 200]

For each size the store is pre-filled through its own API (many meters at 1 Hz, big flushes, retention off
so nothing is deleted), closed and reopened cold. Then one meter goes on at 1 Hz with a flush every
``--batch`` readings, as the agent does with flush_seconds=5: that is the write cost measured, after the first
flushes (which rebuild the meters' open rollup windows after a reopen, a few meters each: start-up, their time
shown apart as "rebuild flushes").
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from tinydb import TinyDB

from agent.store import ReadingStore
from agent.store.store import RESUME_IDLE_PER_FLUSH
from drivers.reading import Reading

START = 1_709_251_200.0  # 2024-03-01T00:00:00Z
READINGS_PER_METER = 10_000  # 2.8 h at 1 Hz; the 1M store has 100 meters
INFINITY = float("inf")


class MeterSimulator:
    """Plausible three-phase DSMR 5 readings: a random walk on power, counters that go up."""

    def __init__(self, meter_id: str, rng: random.Random):
        self.meter_id, self.rng = meter_id, rng
        self.power = rng.uniform(200, 2000)
        self.energy_t1 = rng.uniform(1e6, 2e7)
        self.energy_t2 = rng.uniform(1e6, 2e7)
        self.gas = rng.uniform(100, 5000)

    def reading(self, moment: float) -> Reading:
        rng = self.rng
        self.power = max(0.0, self.power + rng.gauss(0, 40))
        self.energy_t2 += self.power / 3600
        split = [rng.uniform(0.2, 0.5), rng.uniform(0.1, 0.3)]
        phases = [self.power * split[0], self.power * split[1], self.power * (1 - sum(split))]
        volts = [round(rng.gauss(230, 1.5), 1) for _ in range(3)]
        at = datetime.fromtimestamp(moment, timezone.utc)
        return Reading(
            meter_id=self.meter_id, timestamp=at.replace(microsecond=0), received_at=at,
            power_import_w=round(self.power), power_export_w=0.0,
            power_import_l1_w=round(phases[0]), power_import_l2_w=round(phases[1]),
            power_import_l3_w=round(phases[2]),
            power_export_l1_w=0.0, power_export_l2_w=0.0, power_export_l3_w=0.0,
            voltage_l1_v=volts[0], voltage_l2_v=volts[1], voltage_l3_v=volts[2],
            current_l1_a=float(round(phases[0] / volts[0])), current_l2_a=float(round(phases[1] / volts[1])),
            current_l3_a=float(round(phases[2] / volts[2])),
            energy_import_t1_wh=round(self.energy_t1), energy_import_t2_wh=round(self.energy_t2),
            energy_export_t1_wh=0.0, energy_export_t2_wh=0.0,
            energy_import_wh=round(self.energy_t1 + self.energy_t2), energy_export_wh=0.0,
            tariff=2, power_failures=4, long_power_failures=2,
            voltage_sags_l1=0, voltage_sags_l2=0, voltage_sags_l3=0,
            voltage_swells_l1=0, voltage_swells_l2=0, voltage_swells_l3=0,
            gas_m3=round(self.gas, 3), gas_timestamp=at.replace(minute=at.minute - at.minute % 5, second=0,
                                                             microsecond=0),
        )


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def prefill(path: Path, size: int, rng: random.Random) -> tuple[dict[str, MeterSimulator], float]:
    meters = max(1, size // READINGS_PER_METER)
    per_meter = size // meters
    simulators = {f"meter-{n:03d}": MeterSimulator(f"meter-{n:03d}", rng) for n in range(meters)}
    store = ReadingStore(path, retention_raw_s=INFINITY, retention_rollup_s=INFINITY)
    began = time.perf_counter()
    # Meter after meter (not interleaved), so that each flush touches a handful of segments: the pre-fill
    # is set-up, and thousands of fsyncs of 100 meters' segments would dominate the run.
    added = 0
    for simulator in simulators.values():
        for second in range(per_meter):
            store.add(simulator.reading(START + second))
            added += 1
            if added % 10_000 == 0:  # bounded memory, few big records
                store.flush()
    store.close()
    return simulators, time.perf_counter() - began


def measure_writes(path: Path, simulator: MeterSimulator, first_second: float, writes: int, batch: int,
                   meters: int) -> dict:
    store = ReadingStore(path, retention_raw_s=INFINITY, retention_rollup_s=INFINITY)  # cold reopen
    stored = store.stats()
    # After a reopen the flushes rebuild the meters' open rollup windows, RESUME_IDLE_PER_FLUSH idle meters
    # each (start-up, measured by measure_startup): those flushes come before the timing, so that what follows
    # is the steady write cost.
    rounds = math.ceil(meters / RESUME_IDLE_PER_FLUSH) + 1
    readings = [simulator.reading(first_second + i) for i in range(writes + rounds * batch)]  # outside the timing
    warmup, readings = readings[:rounds * batch], readings[rounds * batch:]
    rebuild = time.perf_counter()
    for n, reading in enumerate(warmup, 1):
        store.add(reading)
        if n % batch == 0:
            store.flush()
    rebuild = time.perf_counter() - rebuild
    before = store.stats()
    wall, cpu = time.perf_counter(), time.process_time()
    for n, reading in enumerate(readings, 1):
        store.add(reading)
        if n % batch == 0:
            store.flush()
    store.flush()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = store.stats()
    query_began = time.perf_counter()
    last_hour = store.readings(simulator.meter_id, since=first_second + writes - 3600)
    query_s = time.perf_counter() - query_began
    store.close()
    return {
        "stored_before": stored["readings_written"] or None,
        "segments": stored["segments"],
        "disk_mb": stored["disk_bytes"] / 2**20,
        "writes_per_s": writes / wall,
        "us_per_write_wall": wall / writes * 1e6,
        "us_per_write_cpu": cpu / writes * 1e6,
        "bytes_per_reading": (after["bytes_written"] - before["bytes_written"]) / writes,
        "rebuild_s": rebuild,
        "query_last_hour_ms": query_s * 1e3,
        "query_rows": len(last_hour),
    }


def tinydb_baseline(sizes: list[int], rng: random.Random, inserts: int = 100) -> dict[int, float]:
    """Inserts/s of TinyDB's default JSONStorage once it holds `size` documents."""
    simulator = MeterSimulator("baseline", rng)
    results = {}
    for size in sizes:
        directory = Path(tempfile.mkdtemp(prefix="edge-bench-tinydb-"))
        try:
            db = TinyDB(directory / "db.json")
            db.insert_multiple(simulator.reading(START + i).to_record() for i in range(size))
            docs = [simulator.reading(START + size + i).to_record() for i in range(inserts)]
            began = time.perf_counter()
            for doc in docs:
                db.insert(doc)
            results[size] = inserts / (time.perf_counter() - began)
            db.close()
        finally:
            shutil.rmtree(directory)
    return results


def measure_startup(meters: int, rng: random.Random) -> dict:
    """Opening a store that holds `meters` meters (30 min each at one reading per 10 s, as HTTP-fed households
    post, a flush every 5 s) vs opening an empty store, and the first flush, which rebuilds their open rollup
    windows."""
    root = Path(tempfile.mkdtemp(prefix="edge-bench-startup-"))
    try:
        store = ReadingStore(root / "full", retention_raw_s=INFINITY, retention_rollup_s=INFINITY)
        simulators = [MeterSimulator(f"household-{n:04d}", rng) for n in range(meters)]
        for step in range(180):
            for simulator in simulators:
                store.add(simulator.reading(START + 10 * step))
            if step % 20 == 19:
                store.flush()
        store.close()
        ReadingStore(root / "empty").close()
        timings = {}
        for name in ("empty", "full"):
            began = time.perf_counter()
            opened = ReadingStore(root / name, retention_raw_s=INFINITY, retention_rollup_s=INFINITY)
            timings[name] = time.perf_counter() - began
            if name == "full":
                for simulator in simulators:
                    opened.add(simulator.reading(START + 1800))
                began = time.perf_counter()
                opened.flush()
                timings["first_flush"] = time.perf_counter() - began
            opened.close()
        return timings
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,1000000", help="stored readings before measuring")
    parser.add_argument("--writes", type=int, default=3000, help="readings written in the measurement")
    parser.add_argument("--batch", type=int, default=5, help="readings per flush (1 Hz x flush_seconds)")
    parser.add_argument("--baseline", default="500,2000", help="TinyDB JSONStorage sizes")
    parser.add_argument("--startup-meters", type=int, default=200, help="meters for the start-up figure")
    parser.add_argument("--dir", default=None, help="where to build the stores (default: a temporary dir)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = random.Random(2024)

    root = Path(args.dir or tempfile.mkdtemp(prefix="edge-bench-store-"))
    results = {}
    try:
        for size in sizes:
            path = root / f"store-{size}"
            simulators, fill_s = prefill(path, size, rng)
            per_meter = size // len(simulators)
            print(f"pre-filled {size:,} readings ({len(simulators)} meter(s)) in {fill_s:.1f} s "
                  f"({size / fill_s:,.0f} readings/s with big batches), RSS {rss_mb():.0f} MB", flush=True)
            probe = next(iter(simulators.values()))
            results[size] = measure_writes(path, probe, START + per_meter, args.writes, args.batch, len(simulators))
            shutil.rmtree(path)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    baseline = tinydb_baseline([int(s) for s in args.baseline.split(",")], rng)
    startup = measure_startup(args.startup_meters, rng)

    print(f"\nReadingStore: {args.writes} writes of one meter, flush (fsync) every {args.batch} readings")
    print(f"{'stored':>10} {'segments':>9} {'disk MB':>8} {'writes/s':>10} {'us/write':>9} {'cpu us/w':>9} "
          f"{'bytes/reading':>14} {'query 1h ms':>12} {'rebuild flushes ms':>19}")
    for size, r in results.items():
        print(f"{size:>10,} {r['segments']:>9} {r['disk_mb']:>8.1f} {r['writes_per_s']:>10,.0f} "
              f"{r['us_per_write_wall']:>9.1f} {r['us_per_write_cpu']:>9.1f} {r['bytes_per_reading']:>14.1f} "
              f"{r['query_last_hour_ms']:>12.1f} {r['rebuild_s'] * 1e3:>19.0f}")
    if len(sizes) >= 2:
        small, large = results[sizes[0]], results[sizes[-1]]
        print(f"steady write cost ratio {sizes[-1]:,} / {sizes[0]:,} (after the rebuild flushes): wall {large['us_per_write_wall'] / small['us_per_write_wall']:.2f}x, "
              f"cpu {large['us_per_write_cpu'] / small['us_per_write_cpu']:.2f}x (target <= 1.5x)")
    print(f"bytes written per reading: {max(r['bytes_per_reading'] for r in results.values()):.1f} (target < 300)")
    print(f"RSS of this process: {rss_mb():.0f} MB now, peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"start-up with {args.startup_meters} meters on disk: {startup['full'] * 1e3:.1f} ms "
          f"(empty store, same run: {startup['empty'] * 1e3:.1f} ms); their open rollup windows are rebuilt by "
          f"the first flush (worker thread): {startup['first_flush'] * 1e3:.0f} ms")
    print("\nbaseline, TinyDB default JSONStorage (same run):")
    for size, per_s in baseline.items():
        print(f"  {per_s:>8,.0f} inserts/s at {size:,} documents")
    ours = results[sizes[-1]]["writes_per_s"]
    print(f"  ReadingStore at {sizes[-1]:,} stored: {ours:,.0f} writes/s "
          f"({ours / baseline[max(baseline)]:,.0f}x the baseline at {max(baseline):,})")


if __name__ == "__main__":
    main()
