"""Peak memory of every query that reads history, at its documented maximum, with the real agent process,
beside the idle agent measured in the same run (and, for the readings query, beside the same query answered as
one list, the way it was answered before it was streamed). Prints figures, asserts nothing.

    .venv/bin/python bench/memory.py [--hours 24] [--households 100] [--organizations 3] [--audit-per-day 200000]
                                     [--data DIR]   (filled once, reused by the next run: filling takes minutes)

What is on disk before the agent starts (written in the formats the agent writes, copies=2 where it does):
- one meter with 24 h of 1 Hz DSMR 5 readings (86,400, as bench/store.py makes them): GET /meters/{id}/readings
  at limit=100000, raw, 1m, 15m;
- `--households` households consenting (for 15 days) to aggregates and anonymized data of a dso organization,
  each with 14 days of readings every 15 minutes (their 15-minute rollups): GET /data/anonymized over the 7 days
  it allows at most (the anonymized module reads each household's rollups with limit=10**6);
- the release log: `--organizations` exact organizations' records of every 1 s window of today and yesterday and of
  every 1 m, 15 m and 1 h window of the last 42 days (one real record's shape, 12 households): GET /data?since= at
  1,000 windows (MAX_HISTORY_WINDOWS) of each width;
- the audit log: `--audit-per-day` entries (webhook pushes) on each of the last two days: GET /audit at
  limit=100000 over all of it (the household's /ui/me/access page makes the same read: two days, 100,000);
- GET /households/me/consents/history (the registry, in memory).
Each query runs on a fresh agent, once it has written to the release log (the first write after a start scans
today's day files) and then been idle. Peak RSS is the process's VmHWM, reset before each query
(/proc/PID/clear_refs, "5"). The unit's MemoryMax is 512M (image/). Without --data the fill is made anew in a
temporary directory each run (no cache: `make bench` works on a fresh machine).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.registry import Registry  # noqa: E402
from agent.release.log import FINE_PREFIX, day_name  # noqa: E402
from agent.store import ReadingStore  # noqa: E402
from agent.store.records import encode_record  # noqa: E402
from bench.store import MeterSimulator  # noqa: E402

TOKEN = "bench-operator-token-" + "x" * 16
LIMIT = 100_000  # the documented maximum of `limit`
HISTORY_WINDOWS = 1000  # agent/api/data.py MAX_HISTORY_WINDOWS
ANONYMIZED_DAYS = 7  # agent/api/anonymized.py MAX_ANONYMIZED_DAYS
MEMORY_MAX_MIB = 512
DAY = 86400
REFUSED = {"refused": {"error": "cohort_too_small", "detail": "fewer than 10 households (not related to this "
                       "organization) report this quantity in this window"}}
BODY = {"households": 12, "tag": None, "consumption_w": 3600.0, "production_w": 0.0, "net_w": 3600.0,
        "energy_import_wh": 1.0, "energy_export_wh": 0.0, "privacy": {"kind": "exact"},
        "grid": {"band_edges_v": [195.5, 207.0, 212.75, 218.5, 224.25, 230.0, 235.75, 241.5, 247.25, 253.0, 264.5],
                 "voltage_l1": REFUSED, "voltage_l2": REFUSED, "voltage_l3": REFUSED,
                 "long_power_failures": REFUSED}}  # one real 1 s record of the dso level (agent/release/)


def iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def prefill_readings(path: Path, hours: int, meters: list[str], now: float) -> None:
    store = ReadingStore(path, retention_raw_s=10 * DAY, retention_rollup_s=30 * DAY)
    meter = MeterSimulator("m1", random.Random(1))
    start = now - hours * 3600
    for second in range(hours * 3600):
        store.add(meter.reading(start + second))
        if second % 3600 == 3599:
            store.flush()
    simulators = [MeterSimulator(m, random.Random(i)) for i, m in enumerate(meters)]
    first = math.floor(now / DAY) * DAY - 14 * DAY
    for quarter in range(int((now - first) // 900)):
        for sim in simulators:
            store.add(sim.reading(first + quarter * 900 + 7))
        if quarter % 96 == 95:
            store.flush()
    store.close()


def prefill_registry(path: Path, households: int, now: float) -> tuple[str, str, list[str], str]:
    """A dso organization and households consenting for 15 days: (its API key, a household's token, the
    households' meters, its id)."""
    clock = [now - 15 * DAY]
    registry = Registry(path, clock=lambda: clock[0])
    org, key = registry.create_organization("Bench DSO", "dso")
    meters, token = [], ""
    for i in range(households):
        household, token, _ = registry.create_household(f"hh-meter-{i:04d}", "http")
        meters.append(household.meter_id)
        for service in ("aggregates", "anonymized_data"):
            registry.set_consent(household.id, org.id, service, True)
    registry.close()
    return key, token, meters, org.id


def fresh_keys(path: Path) -> tuple[str, str, str]:
    """A filled directory's dso organization's key and a household's token, made anew (only hashes are kept)."""
    registry = Registry(path)
    org = next(o for o in registry.organizations.values() if o.name == "Bench DSO")
    key = registry.rotate_organization_key(org.id)
    token = registry.rotate_household_token(registry.all_households()[0].id)
    registry.close()
    return key, token, org.id


def write_segment(path: Path, table: str, docs: list[dict], per_record: int) -> None:
    """Docs as the agent writes them (one record per batch, twice), without an fsync per record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:
        for i in range(0, len(docs), per_record):
            out.write(encode_record(table, i + 1, docs[i:i + per_record]) * 2)


def release_doc(org_id: str, width: int, start: int) -> dict:
    name = {1: "1s", 60: "1m", 900: "15m", 3600: "1h"}[width]
    return {"t": "r", "o": org_id, "w": width, "s": start, "g": "",
            "b": {"window": name, "window_start": iso(start), "window_end": iso(start + width), **BODY}}


def prefill_releases(directory: Path, org_ids: list[str], now: float) -> int:
    today = math.floor(now / DAY) * DAY
    written = 0
    for day in (today - DAY, today):  # 1 s windows: their own day files, five seconds a record (a flush)
        docs = [release_doc(o, 1, s) for s in range(day, min(day + DAY, int(now) - 60)) for o in org_ids]
        write_segment(directory / f"{FINE_PREFIX}{day_name(day)}.seg", "r", docs, 5 * len(org_ids))
        written += len(docs)
    for day in range(today - 42 * DAY, today + DAY, DAY):
        docs = [release_doc(o, w, s) for w in (60, 900, 3600) for s in range(day, min(day + DAY, int(now) - 3600), w)
                for o in org_ids]
        write_segment(directory / f"{day_name(day)}.seg", "r", docs, 5 * len(org_ids))
        written += len(docs)
    return written


def prefill_audit(directory: Path, org_id: str, per_day: int, now: float) -> None:
    today = math.floor(now / DAY) * DAY
    for day in (today - DAY, today):
        span = min(DAY, now - 120 - day)
        docs = [{"at": day + span * i / per_day, "who": org_id, "role": "organization", "action": "data.push",
                 "subscription_id": "sub_0123456789abcdef", "window": "1s", "window_start": iso(day + i),
                 "households": 12} for i in range(per_day)]
        write_segment(directory / f"{day_name(day)}.seg", "audit", docs, 200)


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")


def get(port: int, path: str, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=900) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def rows_of(body: dict) -> int:
    for key in ("readings", "released", "records", "entries", "history"):
        if isinstance(body.get(key), list):
            return len(body[key])
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LIST_BASELINE = """
import json, resource, sys
from agent.store import ReadingStore
store = ReadingStore(sys.argv[1], retention_raw_s=10 * 86400)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = store.readings("m1", resolution=sys.argv[2], limit=int(sys.argv[3]))
body = json.dumps({"meter_id": "m1", "count": len(rows), "readings": rows})
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(rows))
"""


def start_agent(tmp: Path, storage: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = tmp / "edge.toml"
    config.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\n[auth]\noperator_token = "{TOKEN}"\n'
                      f'[storage]\npath = "{storage}"\n[storage.retention]\nraw_hours = 240\nrollup_days = 45\n')
    releases = release_sizes(storage)
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
                             stderr=open(tmp / "agent.log", "wb"))
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if time.monotonic() > deadline or agent.poll() is not None:
                sys.exit("the agent did not start: " + (tmp / "agent.log").read_text()[-2000:])
            time.sleep(0.2)
    wait_first_release_write(storage, releases)
    wait_idle(agent.pid)
    return agent, port


def release_sizes(storage: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in (storage / "releases").glob("*.seg")}


def wait_first_release_write(storage: Path, before: dict[Path, int]) -> None:
    """Until the release log has been appended to: the first write after a start opens today's day files for
    append (a scan of each), which once decoded a whole day of 1 s records (session 6); the idle figure is taken
    after it."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if release_sizes(storage) != before:
            return
        time.sleep(0.5)
    print("  (no release-log write within 300 s of the start: idle measured without it)", flush=True)


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks


def wait_idle(pid: int, quiet_s: float = 3.0) -> None:
    """Until the agent has used under 3% of a core for `quiet_s`: the open rollup windows rebuilt after a start
    (a few meters per flush) would count in the first query's peak otherwise."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        before = cpu_s(pid)
        time.sleep(quiet_s)
        if cpu_s(pid) - before < 0.03 * quiet_s:
            return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--households", type=int, default=100)
    parser.add_argument("--organizations", type=int, default=3)
    parser.add_argument("--audit-per-day", type=int, default=200_000)
    parser.add_argument("--data", help="a directory to fill (or, filled by an earlier run, to reuse)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(args.data) if args.data else Path(tmp_name)
        storage = tmp / "store"
        if (storage / "registry.seg").exists():  # filled by an earlier run: its time, and keys made anew
            now = max(p.stat().st_mtime for p in (storage / "raw").rglob("*.seg"))  # the agent never adds to these
            key, household_token, org_id = fresh_keys(storage / "registry.seg")
            print(f"reusing {storage} (filled {(time.time() - now) / 60:.0f} minutes ago)")
        else:
            now = time.time()
            began = time.monotonic()
            key, household_token, meters, org_id = prefill_registry(storage / "registry.seg", args.households, now)
            prefill_readings(storage, args.hours, meters, now)
            orgs = [org_id] + [f"org_{i:012x}" for i in range(1, args.organizations)]
            releases = prefill_releases(storage / "releases", orgs, now)
            prefill_audit(storage / "audit", org_id, args.audit_per_day, now)
            print(f"on disk in {time.monotonic() - began:.0f} s: {args.hours * 3600} readings of m1; "
                  f"{args.households} households x 14 days of 15-minute readings; {releases} release records of "
                  f"{args.organizations} organizations; {2 * args.audit_per_day} audit entries")
        today = math.floor(now / DAY) * DAY
        last_day = math.floor((now - 900) / DAY) * DAY  # the anonymized module's first day not yet released
        queries = [(f"/meters/m1/readings?resolution={r}&limit={LIMIT}", TOKEN, r) for r in ("raw", "1m", "15m")]
        for window, width in (("1s", 1), ("1m", 60), ("15m", 900), ("1h", 3600)):
            until = math.floor((now - 120) / width) * width
            queries.append((f"/data?window={window}&since={until - HISTORY_WINDOWS * width}&until={until}", key, None))
        yesterday = today - DAY // 2  # 1 s windows no longer in memory: read from yesterday's day files
        queries.append((f"/data?window=1s&since={yesterday}&until={yesterday + HISTORY_WINDOWS}", key, None))
        queries.append((f"/data/anonymized?from={last_day - ANONYMIZED_DAYS * DAY}&to={last_day}", key, None))
        queries.append((f"/audit?since={today - DAY}&limit={LIMIT}", TOKEN, None))
        queries.append(("/households/me/consents/history", household_token, None))
        print(f"each query on a fresh agent (freed memory is not given back: one query would inflate the next); "
              f"the unit's MemoryMax {MEMORY_MAX_MIB} MiB")
        print(f"{'query':<72} {'status':>6} {'rows':>7} {'idle MiB':>9} {'peak MiB':>9} {'+ idle':>7} {'s':>6}"
              f"   as one list (before)")
        for path, token, resolution in queries:
            agent, port = start_agent(tmp, storage)
            try:
                idle = status_kb(agent.pid, "VmRSS") / 1024  # the start's own peak (the release log replayed) aside
                reset_peak(agent.pid)
                began = time.monotonic()
                status, body = get(port, path, token)
                took = time.monotonic() - began
                peak = status_kb(agent.pid, "VmHWM") / 1024
            finally:
                agent.terminate()
                agent.wait()
            before = ""
            if resolution is not None:
                out = subprocess.run([sys.executable, "-c", LIST_BASELINE, str(storage), resolution, str(LIMIT)],
                                     capture_output=True, text=True, check=True).stdout.split()
                before = f"+{(int(out[1]) - int(out[0])) / 1024:.0f} MiB"
            shown = path if len(path) <= 72 else path[:69] + "..."
            over = "  OVER MemoryMax" if peak > MEMORY_MAX_MIB else ""
            print(f"{shown:<72} {status:>6} {rows_of(body):>7} {idle:>9.0f} {peak:>9.0f} {peak - idle:>+7.0f}"
                  f" {took:>6.1f}   {before}" + ("" if status == 200 else f"   {body.get('error')}") + over,
                  flush=True)


if __name__ == "__main__":
    main()
