"""Peak memory of the operator's history queries at their documented maximum, with the real agent process, beside
the idle agent and beside the same query answered as one list (how it was answered before it was streamed), all
measured in the same run. Prints figures, asserts nothing.

    .venv/bin/python bench/memory.py [--hours 24]

One meter with 24 h of 1 Hz DSMR 5 readings (86,400, as bench/store.py makes them). Peak RSS is the process's
VmHWM, reset before each query (/proc/PID/clear_refs, "5"). The unit's MemoryMax is 512M (image/).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.store import ReadingStore  # noqa: E402
from bench.store import MeterSimulator  # noqa: E402

TOKEN = "bench-operator-token-" + "x" * 16
LIMIT = 100_000  # the documented maximum of `limit`
QUERIES = [f"/meters/m1/readings?resolution={r}&limit={LIMIT}" for r in ("raw", "1m", "15m")]


def prefill(path: Path, hours: int) -> None:
    store = ReadingStore(path, retention_raw_s=10 * 86400)
    meter = MeterSimulator("m1", random.Random(1))
    start = time.time() - hours * 3600
    for second in range(hours * 3600):
        store.add(meter.reading(start + second))
        if second % 3600 == 3599:
            store.flush()
    store.close()


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")


def get(port: int, path: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=600) as resp:
        return len(json.loads(resp.read())["readings"])


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp) / "store"
        began = time.monotonic()
        prefill(storage, args.hours)
        print(f"store: {args.hours * 3600} readings of one meter in {time.monotonic() - began:.0f} s")
        port = free_port()
        config = Path(tmp) / "edge.toml"
        config.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\n[auth]\noperator_token = "{TOKEN}"\n'
                          f'[storage]\npath = "{storage}"\n[storage.retention]\nraw_hours = 240\n')
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
                                 stderr=open(Path(tmp) / "agent.log", "wb"))
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except urllib.error.HTTPError:
                    break
                except OSError:
                    if time.monotonic() > deadline or agent.poll() is not None:
                        sys.exit("the agent did not start: " + (Path(tmp) / "agent.log").read_text()[-2000:])
                    time.sleep(0.2)
            time.sleep(1)
            idle = status_kb(agent.pid, "VmHWM") / 1024
            print(f"idle agent: peak RSS {idle:.0f} MiB")
            print(f"{'query':<48} {'rows':>7} {'peak MiB':>9} {'+ idle':>7} {'RSS after':>10}   as one list (before)")
            for query in QUERIES:
                reset_peak(agent.pid)
                rows = get(port, query)
                peak = status_kb(agent.pid, "VmHWM") / 1024
                after = status_kb(agent.pid, "VmRSS") / 1024
                resolution = query.split("resolution=")[1].split("&")[0]
                out = subprocess.run([sys.executable, "-c", LIST_BASELINE, str(storage), resolution, str(LIMIT)],
                                     capture_output=True, text=True, check=True).stdout.split()
                grew = (int(out[1]) - int(out[0])) / 1024
                print(f"{query:<48} {rows:>7} {peak:>9.0f} {peak - idle:>+7.0f} {after:>10.0f}   +{grew:.0f} MiB")
        finally:
            agent.terminate()
            agent.wait()


if __name__ == "__main__":
    main()
