"""Readings per second through POST /readings, single and batched, beside a bare aiohttp handler.

Both servers run as their own process (one core each at most: the agent is single-threaded
apart from its flush), the load comes from this process over keep-alive connections on
127.0.0.1. The bare handler parses the JSON body and answers 201, nothing else: the ceiling
of aiohttp on this machine. Targets: batched >= 5,000 readings/s; single >= 50% of the bare
handler's request rate. Prints figures, asserts nothing.

Usage: python bench/ingest.py [seconds_per_run]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-operator-token-0123456789"
HOUSEHOLDS = 40
CONCURRENCY = 16
BATCH = 500

BARE_SERVER = """
import sys
from aiohttp import web
async def handle(request):
    body = await request.json()
    return web.json_response({"accepted": 1}, status=201)
app = web.Application()
app.router.add_post("/readings", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_agent(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = tmp / "edge.toml"
    config.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\n[auth]\noperator_token = "{TOKEN}"\n'
                      f'[storage]\npath = "{tmp / "store"}"\n[logging]\nlevel = "WARNING"\n')
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)], cwd=ROOT)
    wait_listening(port)
    return proc, port


def operator(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {TOKEN}",
                                                             "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


class Load:
    """CONCURRENCY workers, each owning some households, posting for `seconds`."""

    def __init__(self, port: int, tokens: list[str], batch: int | None):
        self.url = f"http://127.0.0.1:{port}/readings"
        self.tokens = tokens
        self.batch = batch
        self.clock = {t: time.time() - 250 for t in tokens}  # strictly increasing per household
        self.requests = self.readings = self.errors = 0

    def body(self, token: str):
        def one():
            self.clock[token] += 0.001
            return {"timestamp": self.clock[token], "power_import_w": 412.5, "power_export_w": 0.0,
                    "voltage_l1_v": 231.2, "current_l1_a": 1.8, "energy_import_t1_wh": 1234567.0}
        return [one() for _ in range(self.batch)] if self.batch else one()

    async def worker(self, session: aiohttp.ClientSession, tokens: list[str], until: float) -> None:
        i = 0
        while time.monotonic() < until:
            token = tokens[i % len(tokens)]
            i += 1
            payload = self.body(token)
            async with session.post(self.url, json=payload, headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
                if resp.status == 201:
                    self.requests += 1
                    self.readings += len(payload) if isinstance(payload, list) else 1
                else:
                    self.errors += 1

    async def run(self, seconds: float) -> float:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            # warm-up, then the measured run
            await asyncio.gather(*(self.worker(session, self.tokens[w::CONCURRENCY], time.monotonic() + 0.5)
                                   for w in range(CONCURRENCY)))
            self.requests = self.readings = self.errors = 0
            started = time.monotonic()
            await asyncio.gather(*(self.worker(session, self.tokens[w::CONCURRENCY], started + seconds)
                                   for w in range(CONCURRENCY)))
            return time.monotonic() - started


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)])
        try:
            wait_listening(port)
            load = Load(port, [f"t{i}" for i in range(HOUSEHOLDS)], None)
            elapsed = asyncio.run(load.run(seconds))
            results["bare"] = (load.requests / elapsed, load.readings / elapsed, load.errors)
        finally:
            stop(bare)

        agent, port = start_agent(Path(tmp))
        try:
            tokens = [operator(port, "/households", {})["token"] for _ in range(HOUSEHOLDS)]
            for name, batch in (("single", None), ("batched", BATCH)):
                load = Load(port, tokens, batch)
                elapsed = asyncio.run(load.run(seconds))
                results[name] = (load.requests / elapsed, load.readings / elapsed, load.errors)
        finally:
            stop(agent)

    print(f"POST /readings on 127.0.0.1, {CONCURRENCY} connections, {HOUSEHOLDS} households, {seconds:g} s per run, "
          f"{os.cpu_count()} cores")
    print(f"{'':28} {'requests/s':>11} {'readings/s':>11} {'errors':>7}")
    labels = {"bare": "bare aiohttp handler", "single": "Edge, one reading/request",
              "batched": f"Edge, {BATCH} readings/request"}
    for name, (rps, readings, errors) in results.items():
        print(f"{labels[name]:28} {rps:11.0f} {readings:11.0f} {errors:7d}")
    print(f"single: {results['single'][0] / results['bare'][0]:.0%} of the bare handler's request rate (target >= 50%)")
    print(f"batched: {results['batched'][1]:.0f} readings/s (target >= 5,000)")


if __name__ == "__main__":
    main()
