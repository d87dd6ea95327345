"""Per-telegram cost of Edge's whole P1 path beside bare dsmr_parser parsing, in one run.

Edge path: bytes in 4 KiB chunks -> framing (dsmr_parser's buffer, capped) -> CRC -> parse ->
normalize -> store.add, plus the store's flush every 5 telegrams (a DSMR 5 meter at 1 Hz with the
default 5 s flush), fsync included.
Baseline: `TelegramParser(spec).parse(text)` on telegrams already cut out, CRC checked by dsmr_parser,
as every dsmr_parser user does. Target (issue 15): Edge's whole path at most 0.25x the baseline's bare parse.
Before timing, each file's Reading is checked against dsmr_parser's own parse of it (tests/p1_oracle.py): the
values must be identical, or the bench stops.

Prints CPU time per telegram (what a Pi's quarter of a core pays) and wall time. Asserts nothing about time.
Usage: python bench/p1_pipeline.py [telegrams_per_file]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from dsmr_parser import telegram_specifications as specs
from dsmr_parser.parsers import TelegramParser

from agent.store import ReadingStore
from drivers.profiles import get_profile
from drivers.reading import utcnow
from drivers.telegram import TelegramDecoder
from tests.p1_oracle import expected

TELEGRAMS = Path(__file__).resolve().parents[1] / "tests" / "telegrams"
CASES = [("v5.txt", "dsmr5", "V5"), ("v4_2.txt", "dsmr4", "V4"), ("fluvius_v171.txt", "fluvius", "BELGIUM_FLUVIUS"),
         ("v5_eon_hu.txt", "eon_hungary", "EON_HUNGARY"), ("v2_2.txt", "dsmr22", "V2_2"),
         ("esy5q3db1024_v304.txt", "q3d", "Q3D")]
TARGET = 0.25
FLUSH_EVERY = 5
ROUNDS = 5


def measure(fn) -> tuple[float, float]:
    """Best of ROUNDS runs: (cpu seconds, wall seconds)."""
    cpu, wall = [], []
    for _ in range(ROUNDS):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), statistics.median(wall)


def check_identical(name: str, profile_name: str, spec_name: str, text: str) -> None:
    reading = TelegramDecoder("bench", get_profile(profile_name)).decode(text, utcnow())
    for field, value in expected(text, spec_name, belgian=profile_name == "fluvius").items():
        if getattr(reading, field) != value:
            raise SystemExit(f"{name}: {field} is {getattr(reading, field)!r}, dsmr_parser reads {value!r}")


def bench_case(name: str, profile_name: str, spec_name: str, count: int, workdir: Path) -> dict:
    raw = (TELEGRAMS / name).read_bytes()
    text = raw.decode("latin-1")
    check_identical(name, profile_name, spec_name, text)
    spec = getattr(specs, spec_name)
    stream = raw * count
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]

    parser = TelegramParser(spec)  # CRC validated by dsmr_parser, its default

    def bare():
        for _ in range(count):
            parser.parse(text)

    round_no = 0

    def edge():
        nonlocal round_no
        round_no += 1
        store = ReadingStore(workdir / f"{profile_name}-{round_no}", flush_seconds=5)
        decoder = TelegramDecoder("bench", get_profile(profile_name))
        since_flush = 0
        for chunk in chunks:
            readings, _ = decoder.feed(chunk, utcnow())
            for reading in readings:
                store.add(reading)
                since_flush += 1
                if since_flush == FLUSH_EVERY:
                    store.flush()
                    since_flush = 0
        store.close()
        assert decoder.stats.telegrams_ok == count, decoder.stats

    bare_cpu, bare_wall = measure(bare)
    edge_cpu, edge_wall = measure(edge)
    return {"name": name, "bytes": len(raw), "bare_cpu_us": bare_cpu / count * 1e6, "edge_cpu_us": edge_cpu / count * 1e6,
            "bare_wall_us": bare_wall / count * 1e6, "edge_wall_us": edge_wall / count * 1e6}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    print(f"P1 pipeline: {count} telegrams per file, best of {ROUNDS} (CPU), median (wall); flush every "
          f"{FLUSH_EVERY} telegrams with fsync")
    print(f"{'telegram':22} {'bytes':>6} {'dsmr_parser CPU':>16} {'Edge CPU':>10} {'ratio':>6} "
          f"{'dsmr_parser wall':>17} {'Edge wall':>10}")
    with tempfile.TemporaryDirectory(dir=Path.cwd() if len(sys.argv) > 2 else None) as tmp:
        for name, profile_name, spec in CASES:
            r = bench_case(name, profile_name, spec, count, Path(tmp))
            print(f"{r['name']:22} {r['bytes']:6d} {r['bare_cpu_us']:13.0f} µs {r['edge_cpu_us']:7.0f} µs "
                  f"{r['edge_cpu_us'] / r['bare_cpu_us']:5.2f}x {r['bare_wall_us']:14.0f} µs {r['edge_wall_us']:7.0f} µs")
    print(f"target: Edge's whole path at most {TARGET}x dsmr_parser's bare parse (CPU); values identical to "
          "dsmr_parser's on every file (checked before timing)")


if __name__ == "__main__":
    main()
