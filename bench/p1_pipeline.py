"""Per-telegram cost of Edge's whole P1 path beside bare dsmr_parser parsing, in one run, on the same telegrams.

Edge path: bytes in 4 KiB chunks -> framing (dsmr_parser's buffer, capped) -> CRC -> OBIS dispatch ->
normalize -> store.add, plus the store's flush every 5 telegrams (a DSMR 5 meter at 1 Hz with the
default 5 s flush), fsync included.
Baseline: `TelegramParser(spec).parse(text)` on telegrams already cut out, CRC checked by dsmr_parser,
as every dsmr_parser user does. Target (issue 15): Edge's whole path at most 0.25x the baseline's bare parse.

The telegrams: each real file, its instantaneous values (x.7.0: power, voltage, current, ...) changed from one
telegram to the next and its energy registers moved on every 4th, as a meter's do, its CRC recomputed; both
sides parse the same list. Before timing, the
Readings of the first ones are checked against dsmr_parser's own parse of them (tests/helpers/p1_oracle.py): values must
be identical, or the bench stops.

Prints CPU time per telegram (what a Pi's quarter of a core pays) and wall time. With --instructions, counts
instructions instead (valgrind's callgrind, each side run at N and 2N telegrams, the difference per telegram),
which a busy machine does not disturb. Asserts nothing about time.
Usage: python bench/p1_pipeline.py [telegrams_per_file] [--instructions] [file.txt ...]
"""

from __future__ import annotations

import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dsmr_parser import telegram_specifications as specs
from dsmr_parser.parsers import TelegramParser

from agent.store import ReadingStore
from drivers.profiles import get_profile
from drivers.reading import utcnow
from drivers.telegram import TelegramDecoder, crc16
from tests.helpers.p1_oracle import expected

TELEGRAMS = Path(__file__).resolve().parents[1] / "tests" / "telegrams"
CASES = [("v5.txt", "dsmr5", "V5"), ("v4_2.txt", "dsmr4", "V4"), ("fluvius_v171.txt", "fluvius", "BELGIUM_FLUVIUS"),
         ("v5_eon_hu.txt", "eon_hungary", "EON_HUNGARY"), ("v2_2.txt", "dsmr22", "V2_2"),
         ("esy5q3db1024_v304.txt", "q3d", "Q3D")]
TARGET = 0.25
FLUSH_EVERY = 5
ROUNDS = 5
CHECKED = 20  # telegrams per file checked against dsmr_parser before timing
_INSTANT = re.compile(rb"^(\d-\d:\d+\.7\.0(?:\*\d+)?\()(\d+)\.(\d+)", re.MULTILINE)
_REGISTER = re.compile(rb"^(\d-\d:[12]\.8\.[0-4](?:\*\d+)?\()(\d+)\.(\d+)", re.MULTILINE)
REGISTER_EVERY = 4  # the energy registers move on every 4th telegram (a DSMR 5 meter at 1 Hz drawing ~1 kW)


def variants(raw: bytes, count: int) -> list[bytes]:
    """`count` telegrams from one real one: its instantaneous values varied, same widths, CRC recomputed."""
    rng = random.Random(15)
    has_crc = re.search(rb"!([0-9A-F]{4})\r\n", raw) is not None
    out = []
    for i in range(count):
        def step(match, by=i // REGISTER_EVERY):
            width = len(match[2]) + len(match[3])
            digits = str(int(match[2] + match[3]) + by).zfill(width)[-width:]
            return match[1] + digits[: len(match[2])].encode() + b"." + digits[len(match[2]):].encode()

        def vary(match):
            whole, fraction = match[2], match[3]
            number = rng.randrange(10 ** min(len(whole) + len(fraction), 6))
            digits = str(number).zfill(len(whole) + len(fraction))[-(len(whole) + len(fraction)):]
            return match[1] + digits[: len(whole)].encode() + b"." + digits[len(whole):].encode()

        telegram = _REGISTER.sub(step, _INSTANT.sub(vary, raw))
        if has_crc:
            bang = telegram.rindex(b"!")
            telegram = telegram[: bang + 1] + b"%04X" % crc16(telegram[telegram.index(b"/"): bang + 1]) + b"\r\n"
        out.append(telegram)
    return out


def check_identical(name: str, profile_name: str, spec_name: str, telegrams: list[bytes]) -> None:
    decoder = TelegramDecoder("bench", get_profile(profile_name))
    for raw in telegrams[:CHECKED]:
        text = raw.decode("latin-1")
        reading = decoder.decode(text, utcnow())
        for field, value in expected(text, spec_name, belgian=profile_name == "fluvius").items():
            if getattr(reading, field) != value:
                raise SystemExit(f"{name}: {field} is {getattr(reading, field)!r}, dsmr_parser reads {value!r}")


def sides(name: str, profile_name: str, spec_name: str, count: int, workdir: Path):
    telegrams = variants((TELEGRAMS / name).read_bytes(), count)
    texts = [raw.decode("latin-1") for raw in telegrams]
    stream = b"".join(telegrams)
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    parser = TelegramParser(getattr(specs, spec_name))  # CRC validated by dsmr_parser, its default

    def bare():
        for text in texts:
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

    return telegrams, bare, edge


def measure(fn) -> tuple[float, float]:
    """Best of ROUNDS runs: (cpu seconds, wall seconds)."""
    cpu, wall = [], []
    for _ in range(ROUNDS):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), statistics.median(wall)


def timed(count: int, workdir: Path) -> None:
    print(f"P1 pipeline: {count} telegrams per file, best of {ROUNDS} (CPU), median (wall); flush every "
          f"{FLUSH_EVERY} telegrams with fsync")
    print(f"{'telegram':22} {'bytes':>6} {'dsmr_parser CPU':>16} {'Edge CPU':>10} {'ratio':>6} "
          f"{'dsmr_parser wall':>17} {'Edge wall':>10}")
    for name, profile_name, spec_name in CASES:
        telegrams, bare, edge = sides(name, profile_name, spec_name, count, workdir)
        check_identical(name, profile_name, spec_name, telegrams)
        (bare_cpu, bare_wall), (edge_cpu, edge_wall) = measure(bare), measure(edge)
        print(f"{name:22} {len(telegrams[0]):6d} {bare_cpu / count * 1e6:13.0f} µs {edge_cpu / count * 1e6:7.0f} µs "
              f"{edge_cpu / bare_cpu:5.2f}x {bare_wall / count * 1e6:14.0f} µs {edge_wall / count * 1e6:7.0f} µs")


def instructions(count: int) -> None:
    print(f"P1 pipeline, instructions per telegram (callgrind; each side at {count} and {2 * count} telegrams, "
          "the difference; user space only, so fsync's kernel time is not in it)")
    print(f"{'telegram':22} {'dsmr_parser':>14} {'Edge':>14} {'ratio':>6}")
    for name, profile_name, spec_name in CASES:
        telegrams, _, _ = sides(name, profile_name, spec_name, CHECKED, Path(tempfile.gettempdir()))
        check_identical(name, profile_name, spec_name, telegrams)
        per = {side: (_count(side, name, 2 * count) - _count(side, name, count)) / count for side in ("bare", "edge")}
        print(f"{name:22} {per['bare']:14,.0f} {per['edge']:14,.0f} {per['edge'] / per['bare']:5.2f}x")


def _count(side: str, name: str, count: int) -> int:
    run = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                          __file__, "--run", side, name, str(count)], capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", run.stderr)[1])


def run_one(side: str, name: str, count: int) -> None:
    """One side, once: what --instructions counts."""
    case = next(c for c in CASES if c[0] == name)
    with tempfile.TemporaryDirectory() as tmp:
        _, bare, edge = sides(*case, count, Path(tmp))
        (bare if side == "bare" else edge)()


def main() -> None:
    global CASES
    if sys.argv[1:2] == ["--run"]:
        run_one(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    args = [a for a in sys.argv[1:] if not a.startswith("--") and not a.endswith(".txt")]
    CASES = [c for c in CASES if c[0] in sys.argv] or CASES  # file names given: only those
    if "--instructions" in sys.argv:
        instructions(int(args[0]) if args else 40)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            timed(int(args[0]) if args else 500, Path(tmp))
    print(f"target: Edge's whole path at most {TARGET}x dsmr_parser's bare parse; values identical to dsmr_parser's "
          f"(the first {CHECKED} telegrams of every file checked before measuring)")


if __name__ == "__main__":
    main()
