"""An agent for a test: its configuration (in process, or as an edge.toml for a real `edge-agent run`), a client for
one running in the test's event loop, a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import aiohttp

from agent.config import Config, DeliveryConfig, StorageConfig
from tests.helpers.wait import eventually

OPERATOR_TOKEN = "test-operator-token-" + "x" * 8


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
        return await eventually(predicate, timeout, interval=interval)


def delivery_config(**changes) -> DeliveryConfig:
    return replace(DeliveryConfig(allow_http=True, allow_private_endpoints=True, retry_schedule=(0, 0.05, 0.1),
                                  timeout_s=1.0), **changes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def agent_toml(tmp_path, port: int, flush_seconds: float = 0.5, storage: Path | None = None, tables: str = "") -> str:
    """An edge.toml for a real `edge-agent run` on loopback: the [api], [auth] and [storage] tables (the store in
    tmp_path/store unless `storage` is given), then `tables`."""
    return f"""
[api]
listen = "127.0.0.1:{port}"
[auth]
operator_token = "{OPERATOR_TOKEN}"
[storage]
path = "{storage or tmp_path / 'store'}"
flush_seconds = {flush_seconds}
""" + tables


# A neighbourhood of three (k_min 3) whose webhooks may go to a receiver on loopback over HTTP.
WEBHOOK_TABLES = """[privacy]
k_min = 3
[delivery]
allow_http = true
allow_private_endpoints = true
retry_schedule = [0, 0.2]
"""


def run_agent_process(config_path, env=None) -> subprocess.Popen:
    """A real `edge-agent run` on an edge.toml, its stderr piped."""
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config_path)],
                            env={**os.environ, **(env or {})}, stderr=subprocess.PIPE, text=True)


async def grant(running, token, org_id, *services):
    """The household (its token) consents to the organization's services (aggregates unless named)."""
    for service in services or ("aggregates",):
        status, out = await running.call("PUT", f"/households/me/consents/{org_id}/{service}", token=token)
        assert status == 200, out


async def post(running, token, clock, **values):
    """One reading from the household, stamped with the clock's now."""
    status, body = await running.call("POST", "/readings", token=token,
                                      json={"timestamp": clock.now, **values})
    assert status == 201, body
