"""kill -9 with webhook messages queued: after a restart they are delivered, in order, once each
(or again with the same webhook-id); and the audit log's runs of pushes listed before the kill are all there after
it, each window once."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import aiohttp

from tests.helpers.agent import OPERATOR_TOKEN, WEBHOOK_TABLES, agent_toml, free_port
from tests.helpers.receiver import Receiver
from tests.helpers.wait import eventually


async def start(config) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.cli", "run", "--config", str(config),
                                                stderr=asyncio.subprocess.DEVNULL)


def pushed_windows(audit: dict, subscription_id: str) -> list[int]:
    """The windows GET /audit's runs of pushes list for a subscription, in order, each once (or it fails)."""
    windows = []
    for entry in audit["entries"]:
        if entry["action"] == "data.push" and entry["subscription_id"] == subscription_id:
            windows += [entry["window_start"] + i for i in range(entry.get("windows", 1))]
    assert windows == sorted(set(windows)), "a window listed twice, or out of order"
    return windows


async def test_queued_messages_survive_kill_9(tmp_path):
    port, hook_port = free_port(), free_port()
    config = tmp_path / "edge.toml"
    config.write_text(agent_toml(tmp_path, port, tables=WEBHOOK_TABLES))
    base = f"http://127.0.0.1:{port}"
    op = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    agent = await start(config)
    async with aiohttp.ClientSession() as http:
        async def call(method, path, headers, body=None):
            async with http.request(method, base + path, headers=headers, json=body) as resp:
                return resp.status, await resp.json(content_type=None)

        async def up():
            try:
                return (await call("GET", "/health", {}))[0] in (200, 503)
            except aiohttp.ClientError:
                return False

        deadline = time.monotonic() + 30
        while not await up():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        _, org = await call("POST", "/organizations", op, {"name": "Org", "level": "dso"})
        org_auth = {"Authorization": f"Bearer {org['api_key']}"}
        households = []
        # three: the audit of exact sums assumes an organization may know one household, so two never release
        for _ in range(3):
            _, hh = await call("POST", "/households", op, {})
            hh_auth = {"Authorization": f"Bearer {hh['token']}"}
            assert (await call("PUT", f"/households/me/consents/{org['id']}/aggregates", hh_auth))[0] == 200
            households.append(hh_auth)
        status, sub = await call("POST", "/data/subscribe", org_auth,
                                 {"endpoint": f"http://127.0.0.1:{hook_port}/hook", "interval": 1, "window": "1s"})
        assert status == 201
        # The receiver is not there yet: messages pile up in the outbox.
        queued = 0
        deadline = time.monotonic() + 30
        while queued < 3:
            assert time.monotonic() < deadline, "no messages queued"
            for hh_auth in households:
                status, _ = await call("POST", "/readings", hh_auth, {"timestamp": time.time(), "power_import_w": 500})
                assert status == 201
            await asyncio.sleep(0.25)
            queued = (await call("GET", f"/data/subscriptions/{sub['id']}", org_auth))[1]["delivery"]["queued"]
        # what GET /audit lists is on disk (it flushes first): the windows decided so far, as runs, some still open
        status, audit = await call("GET", "/audit?since=0", op)
        assert status == 200
        pushed = pushed_windows(audit, sub["id"])
        assert pushed
        agent.send_signal(signal.SIGKILL)
        await agent.wait()

    receiver = Receiver()
    await receiver.start(hook_port)
    agent = await start(config)
    try:
        await eventually(lambda: len(receiver.received) >= queued, timeout=30)
        messages = receiver.messages()
        sequences = [m["sequence"] for m in messages]
        assert sequences[:queued] == list(range(1, queued + 1))
        assert all(m["type"] == "aggregate" and m["aggregate"]["households"] == 3 for m in messages)
        # the audit's runs open at the kill were appended at the start: every window listed before is listed once
        async with aiohttp.ClientSession() as http:
            async def audit_after():
                try:  # the outbox may send before the API listens
                    async with http.get(f"{base}/audit?since=0", headers=op) as resp:
                        return resp.status, await resp.json()
                except aiohttp.ClientConnectionError:
                    return None
            deadline = time.monotonic() + 30
            while (got := await audit_after()) is None:
                assert time.monotonic() < deadline, "the API did not come back"
                await asyncio.sleep(0.1)
        assert got[0] == 200
        after = pushed_windows(got[1], sub["id"])
        assert set(pushed) <= set(after)
    finally:
        agent.send_signal(signal.SIGTERM)
        await agent.wait()
        await receiver.stop()
