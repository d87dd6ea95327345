"""A real `edge-agent run` in a subprocess, driven over HTTP from the test's event loop (the fault suites), and a script
killed with SIGKILL once it got far enough (`kill_9_when`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.helpers.agent import OPERATOR_TOKEN, WEBHOOK_TABLES, agent_toml, free_port
from tests.helpers.receiver import Receiver

OP = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}  # the operator's headers
FLUSH_S = 0.5


class Running:
    """A real `edge-agent run` and an HTTP client for it."""

    def __init__(self, config: Path, port: int):
        self.config, self.port = config, port
        self.process: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None
        self.log = config.parent / "agent.log"

    async def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent.cli", "run", "--config", str(self.config), stderr=log)
        self.http = self.http or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        deadline = time.monotonic() + 30
        while True:
            try:
                if (await self.call("GET", "/health", {}))[0] in (200, 503):
                    return
            except aiohttp.ClientError:
                pass
            assert self.process.returncode is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the agent did not start"
            await asyncio.sleep(0.1)

    async def call(self, method: str, path: str, headers: dict, body=None):
        async with self.http.request(method, f"http://127.0.0.1:{self.port}{path}", headers=headers,
                                     json=body) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> int:
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.process.wait()
        return self.process.returncode

    async def close(self) -> None:
        if self.process and self.process.returncode is None:
            await self.kill()
        if self.http:
            await self.http.close()


@asynccontextmanager
async def agent_on(storage: Path, tmp_path: Path):
    port = free_port()
    config = tmp_path / "edge.toml"
    config.write_text(agent_toml(tmp_path, port, FLUSH_S, storage=storage, tables=WEBHOOK_TABLES))
    running = Running(config, port)
    await running.start()
    try:
        yield running
    finally:
        await running.close()


async def town(running: Running, receiver: Receiver | None):
    """An organization, three households that consent (k_min 3), and a 1 s subscription to `receiver`."""
    _, org, _ = await running.call("POST", "/organizations", OP, {"name": "Org", "level": "dso"})
    households = []
    for _ in range(3):
        _, hh, _ = await running.call("POST", "/households", OP, {})
        auth = {"Authorization": f"Bearer {hh['token']}"}
        status, _, _ = await running.call("PUT", f"/households/me/consents/{org['id']}/aggregates", auth)
        assert status == 200
        households.append((hh, auth))
    sub = None
    if receiver is not None:
        status, sub, _ = await running.call("POST", "/data/subscribe", {"Authorization": f"Bearer {org['api_key']}"},
                                            {"endpoint": receiver.url, "interval": 1, "window": "1s"})
        assert status == 201
    return org, households, sub


def kill_9_when(script: str, args: list[str], reached: int) -> int:
    """`python -c script *args` (the repository importable), killed with SIGKILL while it runs, once a line it
    printed (a number: how far it got, durably) is at least `reached`. Returns the last number printed."""
    repo = Path(__file__).resolve().parent.parent.parent
    child = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(repo)}, cwd=repo)
    try:
        done = -1
        while done < reached:
            line = child.stdout.readline() if child.stdout else ""
            assert line, f"the child stopped (exit {child.poll()})"
            done = int(line)
        child.send_signal(signal.SIGKILL)  # while it keeps going
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return done
