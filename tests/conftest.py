"""Shared test parts: the real telegrams, pseudo-terminal pairs, a running agent."""

from __future__ import annotations

import asyncio
import os
import tty
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from agent.config import Config, StorageConfig

TELEGRAMS = Path(__file__).parent / "telegrams"

# file -> (our profile, dsmr_parser specification name); the table of telegrams/README.md
TELEGRAM_PROFILES = {
    "v2_2.txt": ("dsmr22", "V2_2"),
    "v3.txt": ("dsmr3", "V3"),
    "v4_2.txt": ("dsmr4", "V4"),
    "v5.txt": ("dsmr5", "V5"),
    "v5_two_mbus.txt": ("dsmr5", "V5"),
    "unpadded_crc.txt": ("dsmr5", "V5"),
    "fluvius_v171.txt": ("fluvius", "BELGIUM_FLUVIUS"),
    "fluvius_v171_alt.txt": ("fluvius", "BELGIUM_FLUVIUS"),
    "esy5q3da1004_v304.txt": ("q3d", "Q3D"),
    "esy5q3db1024_v304.txt": ("q3d", "Q3D"),
    "sagemcom_t210_d_r.txt": ("sagemcom_t210_d_r", "SAGEMCOM_T210_D_R"),
    "iskra_ie.txt": ("iskra_ie", "ISKRA_IE"),
    "v5_eon_hu.txt": ("eon_hungary", "EON_HUNGARY"),
}

OPERATOR_TOKEN = "test-operator-token-" + "x" * 8


def pytest_addoption(parser):
    parser.addoption("--p1-port", default=None,
                     help="hardware-in-loop: a real P1 port (/dev/ttyUSB0 or socket://host:port)")
    parser.addoption("--p1-profile", default="auto", help="hardware-in-loop: the meter's profile")
    parser.addoption("--p1-telegrams", default="10", help="hardware-in-loop: telegrams to read")
    parser.addoption("--p1-replug", action="store_true",
                     help="hardware-in-loop: ask the maintainer to pull and reinsert the cable")
    parser.addoption("--p1-power-off", default=None, help="hardware-in-loop: command that cuts the adapter's power")
    parser.addoption("--p1-power-on", default=None, help="hardware-in-loop: command that restores it")


def telegram_bytes(name: str) -> bytes:
    return (TELEGRAMS / name).read_bytes()


class PtyPair:
    """A pseudo-terminal: the test writes to `master`, the agent opens `path` like a serial port."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no line discipline: CR stays CR
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.master, view)
            view = view[written:]

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def pty_pair():
    pair = PtyPair()
    yield pair
    pair.close()


def make_config(tmp_path: Path, meters=(), **overrides) -> Config:
    config = Config(operator_token=OPERATOR_TOKEN, listen_host="127.0.0.1", listen_port=0,
                    device_name="test", storage=StorageConfig(path=tmp_path / "store", flush_seconds=0.2),
                    meters=tuple(meters))
    return replace(config, **overrides)


class RunningAgent:
    def __init__(self, agent):
        self.agent = agent
        self.base = f"http://127.0.0.1:{agent.port}"
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    def auth(self, token: str = OPERATOR_TOKEN) -> dict:
        return {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, token: str | None = OPERATOR_TOKEN):
        headers = self.auth(token) if token else {}
        async with self.http.get(self.base + path, headers=headers) as resp:
            body = await resp.json(content_type=None) if resp.content_type == "application/json" else await resp.text()
            return resp.status, body

    async def call(self, method: str, path: str, token: str | None = OPERATOR_TOKEN, json=None, data=None,
                   headers: dict | None = None):
        """Any request; returns (status, parsed JSON or text)."""
        all_headers = {**(self.auth(token) if token else {}), **(headers or {})}
        async with self.http.request(method, self.base + path, headers=all_headers, json=json, data=data) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def create_org(self, name: str = "Energy Co", level: str = "dso") -> tuple[str, str]:
        status, body = await self.call("POST", "/organizations", json={"name": name, "level": level})
        assert status == 201, body
        return body["id"], body["api_key"]

    async def create_household(self, meter_id: str | None = None) -> tuple[str, str]:
        status, body = await self.call("POST", "/households", json={"meter_id": meter_id} if meter_id else {})
        assert status == 201, body
        return body["id"], body["token"]

    async def wait_for(self, predicate, timeout: float = 15.0, interval: float = 0.05):
        """Poll until predicate() is truthy; fail the test after `timeout` (never a timing assertion)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await asyncio.sleep(interval)


@pytest.fixture
async def start_agent():
    """Start an Agent on a Config; stopped at the end of the test."""
    from agent.service import Agent

    started: list[RunningAgent] = []

    async def start(config: Config, clock=None) -> RunningAgent:
        agent = Agent(config, clock=clock) if clock else Agent(config)
        await agent.start()
        running = RunningAgent(agent)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.http.close()
        await running.agent.stop()


class StepClock:
    """The agent's clock, stepped by the test: windows close when the test says so."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds
