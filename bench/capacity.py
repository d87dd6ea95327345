"""Capacity: the whole agent as a process, with 300 and 1,000 households posting a reading every second.

Beside the households: 4 emulated P1 meters on ptys (DSMR 5, one telegram a second each), a tenth of the households
posting telegrams through DSMR-reader's datalogger contract, 5 subscriptions to a local receiver (1 s, 5 s, 1 min,
15 min windows, one with a deadband) and 10 triggers (8 on household parameters, 2 on the neighbourhood; all in the
closed language, notifications). Measured over a steady window after a warm-up: the agent's CPU per reading all-in
(the agent and every process it started: trigger evaluators; from /proc), its peak RSS (VmHWM) and its RSS at the
end, beside a bare aiohttp handler answering the same requests at the same rate in the same run (JSON parsed, 201).

Target (issue 17): at most 125 µs of CPU per reading here at 1,000 households, RSS at most 150 MB.
Prints figures, asserts nothing. Usage: PYTHONPATH=. python bench/capacity.py [measured seconds, default 30]
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import BARE_SERVER, free_port, stop, wait_listening  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-operator-token-0123456789"
METERS = 4
WARMUP_S = 10.0
TELEGRAM_SHARE = 10  # one household in TELEGRAM_SHARE posts telegrams (DSMR-reader's datalogger)

TELEGRAM = (
    "/ISk5\\2MT382-1000\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0({ts}W)\r\n0-0:96.1.1(4B384547303034303436333935353037)\r\n"
    "1-0:1.8.1(000123.456*kWh)\r\n1-0:1.8.2(000234.567*kWh)\r\n1-0:2.8.1(000000.000*kWh)\r\n"
    "1-0:2.8.2(000000.000*kWh)\r\n0-0:96.14.0(0002)\r\n1-0:1.7.0(00.412*kW)\r\n1-0:2.7.0(00.000*kW)\r\n"
    "1-0:32.7.0(231.2*V)\r\n1-0:31.7.0(001*A)\r\n1-0:21.7.0(00.412*kW)\r\n1-0:22.7.0(00.000*kW)\r\n!"
)
TRIGGER_SOURCES = [
    ("household_power_consumption", "def condition(household_power_consumption):\n"
                                    f"    return household_power_consumption > {1000 + 250 * i}\n") for i in range(8)
] + [
    ("neighborhood_power_consumption", "def condition(neighborhood_power_consumption):\n"
                                       "    return neighborhood_power_consumption > 1e9\n"),
    ("neighborhood_power_production", "def condition(neighborhood_power_production):\n"
                                      "    return neighborhood_power_production > 1e9\n"),
]
SUBSCRIPTIONS = [
    {"window": "1s", "interval": 1},
    {"window": "1s", "interval": 5},
    {"window": "1m", "interval": 60},
    {"window": "15m", "interval": 900},
    {"window": "1s", "interval": 1, "filter": {"deadband": {"fields": ["consumption_w"], "percent": 5}}},
]


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def telegram(now: float) -> str:
    text = TELEGRAM.format(ts=time.strftime("%y%m%d%H%M%S", time.localtime(now)))
    return text + f"{crc16(text.encode()):04X}\r\n"


# ----------------------------------------------------------------------------------------------- processes


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of pid, its reaped children, and its live descendants (utime+stime+cutime+cstime)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    total, wanted = 0.0, {pid}
    for p in sorted(parents):  # descendants: walk up each process's ancestry
        q = p
        while q in parents and q not in wanted and q > 1:
            q = parents[q]
        if q in wanted:
            wanted.add(p)
            total += times.get(p, 0.0)
    return total


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) in MB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return (int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024)


def start_emulators() -> tuple[list[subprocess.Popen], list[str]]:
    procs, ptys = [], []
    for _ in range(METERS):
        proc = subprocess.Popen([sys.executable, "-m", "drivers.emulator", "--pty", "--profile", "dsmr5"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        procs.append(proc)
        ptys.append(proc.stdout.readline().split()[-1])
    return procs, ptys


def start_agent(tmp: Path, ptys: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    meters = "".join(f'[[meters]]\nid = "m{i}"\nport = "{p}"\nprofile = "dsmr5"\n' for i, p in enumerate(ptys))
    (tmp / "edge.toml").write_text(
        f'[api]\nlisten = "127.0.0.1:{port}"\n[auth]\noperator_token = "{TOKEN}"\n'
        f'[storage]\npath = "{tmp / "store"}"\n[logging]\nlevel = "WARNING"\n'
        f'[delivery]\nallow_http = true\nallow_private_endpoints = true\n{meters}')
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(tmp / "edge.toml")], cwd=ROOT)
    wait_listening(port)
    return proc, port


# ---------------------------------------------------------------------------------------------- the load


async def call(http: aiohttp.ClientSession, base: str, method: str, path: str, bearer: str, body=None):
    async with http.request(method, base + path, json=body, headers={"Authorization": f"Bearer {bearer}"}) as r:
        answer = await r.json(content_type=None) if r.status != 204 else None
        if r.status >= 400:
            raise RuntimeError(f"{method} {path}: {r.status} {answer}")
        return answer


async def set_up(http: aiohttp.ClientSession, base: str, households: int, receiver_url: str) -> list[str]:
    org = await call(http, base, "POST", "/organizations", TOKEN, {"name": "Bench Energy", "level": "dso"})
    tokens = []
    for _ in range(households):
        token = (await call(http, base, "POST", "/households", TOKEN, {}))["token"]
        for service in ("aggregates", "triggers"):
            await call(http, base, "PUT", f"/households/me/consents/{org['id']}/{service}", token)
        tokens.append(token)
    for spec in SUBSCRIPTIONS:
        await call(http, base, "POST", "/data/subscribe", org["api_key"], {"endpoint": receiver_url, **spec})
    for parameter, source in TRIGGER_SOURCES:
        await call(http, base, "POST", "/triggers/create", org["api_key"], {
            "parameters": [parameter], "function": base64.b64encode(source.encode()).decode(), "interval": 3600,
            "action": {"type": "notification", "content": "bench"}})
    return tokens


class Households:
    """Each household posts one reading a second, the households spread evenly over the second, over keep-alive
    connections. A small HTTP/1.1 client of its own: aiohttp's client costs more CPU per request than the handler
    it measures, and on two cores the load generator must not be what runs out."""

    CONNECTIONS = 48

    def __init__(self, port: int, tokens: list[str], telegrams: bool):
        self.port, self.tokens, self.telegrams = port, tokens, telegrams
        self.sent = self.errors = 0
        self.statuses: dict[int, int] = {}

    def request(self, i: int, token: str, now: float) -> bytes:
        if self.telegrams and i % TELEGRAM_SHARE == 0:
            from urllib.parse import urlencode

            body = urlencode({"telegram": telegram(now)}).encode()
            head = (f"POST /api/v1/datalogger/dsmrreading HTTP/1.1\r\nHost: b\r\nAuthorization: Token {token}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n")
        else:
            body = (f'{{"timestamp": {now:.3f}, "power_import_w": {300.0 + (i * 37) % 2500}, "power_export_w": 0.0, '
                    f'"voltage_l1_v": 231.2, "current_l1_a": 1.8, "energy_import_t1_wh": {1234567.0 + now % 1000:.1f}}}'
                    ).encode()
            head = (f"POST /readings HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n"
                    "Content-Type: application/json\r\n")
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    async def connection(self, queue: asyncio.Queue) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while True:
                data = await queue.get()
                if data is None:
                    return
                writer.write(data)
                status_line = await reader.readline()
                status = int(status_line.split()[1])
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":")[1])
                await reader.readexactly(length)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status in (200, 201):
                    self.sent += 1
                else:
                    self.errors += 1
        finally:
            writer.close()

    async def run(self, seconds: float) -> None:
        queues = [asyncio.Queue() for _ in range(self.CONNECTIONS)]
        workers = [asyncio.create_task(self.connection(q)) for q in queues]
        start = time.monotonic()
        n = len(self.tokens)
        for k in range(int(seconds * n)):
            delay = start + k / n - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            queues[k % len(queues)].put_nowait(self.request(k % n, self.tokens[k % n], time.time()))
        for q in queues:
            q.put_nowait(None)
        await asyncio.gather(*workers)


async def receiver() -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


async def measure_agent(households: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        emulators, ptys = start_emulators()
        hook, hook_url = await receiver()
        agent, port = start_agent(Path(tmp), ptys)
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                tokens = await set_up(http, base, households, hook_url)
            load = Households(port, tokens, telegrams=True)
            await load.run(WARMUP_S)
            async with aiohttp.ClientSession() as http:
                before = (await call(http, base, "GET", "/health", TOKEN))["readings_in"]
            cpu0, t0 = tree_cpu_s(agent.pid), time.monotonic()
            load.sent = load.errors = 0
            await load.run(seconds)
            cpu1, t1 = tree_cpu_s(agent.pid), time.monotonic()
            async with aiohttp.ClientSession() as http:
                after = (await call(http, base, "GET", "/health", TOKEN))["readings_in"]
            peak, rss = memory_mb(agent.pid)
            if load.errors:
                print(f"  (answers other than 201 to the households: {dict(sorted(load.statuses.items()))})")
            return {"cpu_s": cpu1 - cpu0, "elapsed": t1 - t0, "readings": after - before, "sent": load.sent,
                    "errors": load.errors, "peak_mb": peak, "rss_mb": rss}
        finally:
            stop(agent)
            await hook.cleanup()
            for proc in emulators:
                proc.kill()
                proc.wait()


async def measure_bare(households: int, seconds: float) -> dict:
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)])
    try:
        wait_listening(port)
        load = Households(port, [f"t{i}" for i in range(households)], telegrams=False)
        await load.run(WARMUP_S / 2)
        cpu0, t0 = tree_cpu_s(bare.pid), time.monotonic()
        load.sent = load.errors = 0
        await load.run(seconds)
        cpu1, t1 = tree_cpu_s(bare.pid), time.monotonic()
        peak, rss = memory_mb(bare.pid)
        return {"cpu_s": cpu1 - cpu0, "elapsed": t1 - t0, "readings": load.sent, "sent": load.sent,
                "errors": load.errors, "peak_mb": peak, "rss_mb": rss}
    finally:
        stop(bare)


def line(label: str, r: dict) -> str:
    per = r["cpu_s"] / max(1, r["readings"]) * 1e6
    return (f"{label:44s} {r['readings'] / r['elapsed']:9.0f} {100 * r['cpu_s'] / r['elapsed']:8.1f}% {per:9.0f} "
            f"{r['peak_mb']:8.0f} {r['rss_mb']:8.0f} {r['errors']:7d}")


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    print(f"capacity: {seconds:g} s measured after {WARMUP_S:g} s warm-up; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}; {METERS} P1 meters, {len(SUBSCRIPTIONS)} subscriptions, "
          f"{len(TRIGGER_SOURCES)} triggers; 1 household in {TELEGRAM_SHARE} posts DSMR-reader telegrams")
    print(f"{'':44s} {'readings/s':>9s} {'CPU':>9s} {'µs/reading':>9s} {'peak MB':>8s} {'RSS MB':>8s} {'errors':>7s}")
    results = {}
    for households in (300, 1000):
        results[households] = asyncio.run(measure_agent(households, seconds))
        print(line(f"Edge agent, {households:,} households", results[households]), flush=True)
        bare = asyncio.run(measure_bare(households, seconds))
        print(line(f"bare aiohttp handler, {households:,} requests/s", bare), flush=True)
    r = results[1000]
    per = r["cpu_s"] / max(1, r["readings"]) * 1e6
    print(f"1,000 households: {per:.0f} µs of CPU per reading (target <= 125): {'met' if per <= 125 else 'NOT met'}; "
          f"peak RSS {r['peak_mb']:.0f} MB (target <= 150): {'met' if r['peak_mb'] <= 150 else 'NOT met'}; "
          f"a Pi 4 core (~4x slower) would be {min(999, 4 * 100 * r['cpu_s'] / r['elapsed']):.0f}% busy")


if __name__ == "__main__":
    main()
