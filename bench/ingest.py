"""Readings per second through POST /readings, single and batched, beside a bare aiohttp handler.

Both servers run as their own process (one core each at most: the agent is single-threaded
apart from its flush), the load comes from this process over keep-alive connections on
127.0.0.1. The bare handler parses the JSON body and answers 201, nothing else: the ceiling
of aiohttp on this machine. Targets: batched >= 5,000 readings/s; single >= 50% of the bare
handler's request rate. Prints figures, asserts nothing.

With --instructions: the instructions one reading costs (valgrind's callgrind, user space), which a shared machine
does not disturb, beside the bare handler's: each side in a process of its own, in-process (an aiohttp server fed
through a transport with no socket: HTTP parsing, routing, the handler, the response bytes), HOUSEHOLDS_COUNTED
households posting once per stepped second; on Edge's side the real agent's app and pipeline, and what each second
of readings costs besides (the release module deciding the second's windows, the store's flush every 5 s).
Each side is run at WARM_UP_S + N and WARM_UP_S + 2N seconds: the difference per reading (steady state).

Usage: python bench/ingest.py [seconds_per_run] | --instructions [seconds, default 5]
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKEN = "bench-operator-token-0123456789"
HOUSEHOLDS = 40
CONCURRENCY = 16
BATCH = 500

HOUSEHOLDS_COUNTED = 50  # --instructions: households posting once per stepped second
# --instructions: stepped seconds before the counted ones, in both runs (the first flush creates every segment file)
WARM_UP_S = 10


async def bare_handle(request):
    await request.json()
    return web.json_response({"accepted": 1}, status=201)


def bare_app() -> web.Application:
    """The baseline: parse the JSON body, answer 201, nothing else."""
    app = web.Application()
    app.router.add_post("/readings", bare_handle)
    return app


BARE_SERVER = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from aiohttp import web
from bench.ingest import bare_app
web.run_app(bare_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def reading_body(now: float, i: int) -> bytes:
    """A household's reading as its datalogger posts it (i: which household, so values differ)."""
    return (f'{{"timestamp": {now:.3f}, "power_import_w": {300.0 + (i * 37) % 2500}, "power_export_w": 0.0, '
            f'"voltage_l1_v": 231.2, "current_l1_a": 1.8, "energy_import_t1_wh": {1234567.0 + now % 1000:.1f}}}'
            ).encode()


def reading_request(token: str, now: float, i: int) -> bytes:
    body = reading_body(now, i)
    return (f"POST /readings HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


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


# --- --instructions: one reading through the real handler, in-process ------------------------------------------


class Sink(asyncio.Transport):
    """A connection's far end with no socket: counts the responses the server writes, by status."""

    def __init__(self) -> None:
        super().__init__()
        self.answers = 0
        self.statuses: dict[int, int] = {}
        self.closing = False
        self.waiter: asyncio.Future | None = None  # Connection.send's, until the next answer

    def write(self, data) -> None:
        if bytes(data[:9]) == b"HTTP/1.1 ":
            status = int(bytes(data[9:12]))
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.answers += 1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Connection:
    """One keep-alive HTTP/1.1 connection into an aiohttp app's own server (RequestHandler), fed its bytes."""

    def __init__(self, app: web.Application):
        self.app, self.sink = app, Sink()

    async def open(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        self.protocol = self.runner.server()
        self.protocol.connection_made(self.sink)

    async def send(self, request: bytes) -> None:
        """The request, and its answer awaited. Not polled with sleep(0): while a handler waits for a worker thread
        (the first request of a household reads its segment files), each poll is a turn of the event loop counted
        as the agent's, as many as the thread took (two counts of one run differed by 10,000 turns)."""
        answered = self.sink.answers
        self.protocol.data_received(request)
        while self.sink.answers == answered:
            self.sink.waiter = asyncio.get_running_loop().create_future()
            await self.sink.waiter


async def in_process(side: str, seconds: int, households: int = HOUSEHOLDS_COUNTED) -> dict[int, int]:
    """`seconds` stepped seconds of every household posting one reading; the answers' statuses."""
    # The stepped clock: an hour back (nothing of it is in the future), at the same phase of the hour every run, so
    # that both runs of a side cross the same window boundaries (a minute's close costs more than a second of
    # readings: where it fell made one count differ from the next by up to 15%).
    moment = [(int(time.time()) // 3600 - 1) * 3600 + 7.0]
    with tempfile.TemporaryDirectory() as tmp:
        if side == "bare":
            app, tokens, agent = bare_app(), [f"t{i}" for i in range(households)], None
        else:
            agent, tokens = bench_agent(Path(tmp), households, lambda: moment[0])
            app = agent_app(agent)
        connection = Connection(app)
        await connection.open()
        for second in range(WARM_UP_S + seconds):  # both runs warm up alike: the difference is steady state
            moment[0] += 1.0
            for i, token in enumerate(tokens):
                await connection.send(reading_request(token, moment[0], i))
            if agent is not None:
                await agent.releases.settle()  # the second's windows decided, as the release module's pass does
                if second % 5 == 4:  # the store's flush, every flush_seconds (5)
                    agent.store.flush()
                    await agent.releases.flush()
        if agent is not None:
            await agent.stop()
        return connection.sink.statuses


def bench_agent(tmp: Path, households: int, clock):
    """The real Agent (not started: no timers, threads or processes running beside the measured path), an
    organization at the dso level and `households` posting households that consented to its aggregates."""
    import tomllib

    from agent.config import parse_config
    from agent.service import Agent

    config = parse_config(tomllib.loads(f'[auth]\noperator_token = "{TOKEN}"\n[storage]\npath = "{tmp / "store"}"\n'
                                        '[logging]\nlevel = "WARNING"\n'))
    agent = Agent(config, clock=clock)
    org, _ = agent.registry.create_organization("Bench Energy", "dso")
    tokens = []
    for _ in range(households):
        household, token, _ = agent.registry.create_household(None, "http")
        agent.registry.set_consent(household.id, org.id, "aggregates", True)
        tokens.append(token)
    return agent, tokens


def agent_app(agent) -> web.Application:
    """The agent's application as its start makes it: the API and the web pages' hooks."""
    from agent import web as pages
    from agent.api import create_app

    app = create_app(agent)
    pages.add_routes(app, agent)
    return app


def instructions(seconds: int) -> None:
    print(f"POST /readings in-process, instructions per reading (callgrind, user space; {HOUSEHOLDS_COUNTED} "
          f"households, each side at {WARM_UP_S} + {seconds} and {WARM_UP_S} + {2 * seconds} stepped seconds, the "
          "difference: one flush in it when seconds is 5)")
    # Every module compiled first: a missing .pyc made the first run of a side compile it, inside its count only.
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(ROOT / d) for d in ("agent", "drivers", "bench"))],
                   check=True, capture_output=True)
    per = {}
    for side in ("bare", "edge"):
        counts = [_count(side, n) for n in (seconds, 2 * seconds)]
        per[side] = (counts[1] - counts[0]) / (seconds * HOUSEHOLDS_COUNTED)
    print(f"{'bare aiohttp handler':28} {per['bare']:12,.0f}")
    print(f"{'Edge, one reading/request':28} {per['edge']:12,.0f}  {per['edge'] / per['bare']:.2f}x")


def _count(side: str, seconds: int) -> int:
    # One OpenBLAS thread (numpy's, imported by the DP module): its idle workers spin for as long as the machine makes
    # them wait, which made two counts of the same run differ by ~9M instructions (~35k per reading of 250).
    run = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
                          "--run", side, str(seconds)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    if run.returncode:
        raise RuntimeError(f"{side} under callgrind failed: {run.stderr[-2000:]}")
    return int(re.search(r"Collected : (\d+)", run.stderr)[1])


def run_one(side: str, seconds: int) -> None:
    """One side, once: what --instructions counts. Every answer must be a 201."""
    statuses = asyncio.run(in_process(side, seconds))
    if set(statuses) != {201}:
        raise SystemExit(f"{side}: answers {statuses}")


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        run_one(sys.argv[2], int(sys.argv[3]))
        return
    if "--instructions" in sys.argv:
        args = [a for a in sys.argv[1:] if not a.startswith("--")]
        instructions(int(args[0]) if args else 5)
        return
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
