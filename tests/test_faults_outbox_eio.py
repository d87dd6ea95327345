"""EIO on the outbox alone, under the running agent: the subscriptions' outbox directory is its own small
loop-mounted ext4, shut down (the ext4 shutdown ioctl: every I/O on it is EIO) while an endpoint holds a webhook,
so that the acknowledgement of a message already sent, then the sequence numbers and queueing of the next ones,
fail while the readings, the registry and the audit log go on. It is then mounted again in place (a lazy unmount:
the agent's descriptors still point at the dead filesystem and must be reopened), without a restart. What is
checked: the sender survives (it backs off and goes on), /health says so and then recovers, the message whose
acknowledgement failed is sent again with the same webhook-id, and every window is sent or inside a `gap` event,
sequence numbers without a hole.

Needs root (mount, losetup): skipped with the reason otherwise (CI runs as root).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

import aiohttp
import pytest
from aiohttp import web
from tests.helpers.faults import (SmallDisk, assert_every_window_accounted, assert_gap_counts_what_was_lost,
                                  refused_in, window_seconds)
from tests.helpers.process import OP, agent_on, town
from tests.helpers.receiver import Receiver
from tests.helpers.wait import eventually as until



class HoldingReceiver(Receiver):
    """Holds the next webhook (`hold`) until `release`, then answers 2xx as usual."""

    def __init__(self):
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.held = asyncio.Event()
        self.held_id: str | None = None

    def hold(self) -> None:
        self.gate, self.held_id = asyncio.Event(), None
        self.held.clear()

    def release(self) -> None:
        self.gate.set()

    async def handle(self, request: web.Request) -> web.Response:
        gate = self.gate
        if gate is not None and self.held_id is None:
            self.held_id = request.headers["webhook-id"]
            self.held.set()
            await gate.wait()
        return await super().handle(request)

    def ids(self) -> list[str]:
        return [headers["webhook-id"] for headers, _ in self.received]


@pytest.fixture
def outbox_disk(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 to make a small loop-mounted ext4")
    try:
        disk = SmallDisk(tmp_path, size_mb=8, mount=tmp_path / "edge" / "delivery" / "outbox")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot loop-mount an ext4 here: {exc.stderr.decode(errors='replace').strip()}")
    yield disk
    disk.close()


async def test_eio_on_the_outbox_alone_the_sender_survives_and_nothing_is_skipped(outbox_disk, tmp_path):
    storage = tmp_path / "edge"
    receiver = HoldingReceiver()
    await receiver.start()
    try:
        async with agent_on(storage, tmp_path) as running:
            org, households, sub = await town(running, receiver)

            async def feed():
                while True:
                    for _, auth in households:
                        try:
                            await running.call("POST", "/readings", auth, {"timestamp": time.time(),
                                                                           "power_import_w": 500})
                        except (aiohttp.ClientError, asyncio.TimeoutError):
                            pass
                    await asyncio.sleep(0.2)
            feeder = asyncio.create_task(feed())

            async def aggregates(n):
                return sum(m["type"] == "aggregate" for m in receiver.messages()) >= n
            await until(lambda: aggregates(2), 40, "first aggregates")

            # A webhook held by the endpoint; the outbox's filesystem fails; the endpoint answers 2xx: the
            # acknowledgement cannot be written (EIO), nor the next messages' sequence numbers or queueing.
            receiver.hold()
            await asyncio.wait_for(receiver.held.wait(), 20)
            outbox_disk.shut_down()
            failed_at = time.monotonic()
            receiver.release()
            held = receiver.held_id

            async def outbox_failing():
                status, health, _ = await running.call("GET", "/health", OP)
                return status == 503 and health["faults"]["delivery"]["outbox_errors"]
            await until(outbox_failing, 15, "/health 503 naming the failing outbox")
            status, _, _ = await running.call("POST", "/readings", households[0][1],
                                              {"timestamp": time.time(), "power_import_w": 500})
            assert status == 201  # the rest of the disk is fine: readings are still taken
            await asyncio.sleep(3)  # windows close while nothing can be queued
            # Its acknowledgement is not on disk: the sender, alive, sends it again (same webhook-id) as it backs
            # off, and nothing after it (no sequence number can be written for the next one).
            assert set(receiver.ids()[receiver.ids().index(held):]) == {held}

            # The filesystem back in place, the agent still running: the sender goes on by itself.
            subprocess.run(["umount", "-l", str(outbox_disk.mount)], check=True, capture_output=True)
            outbox_disk.mount_fs()

            async def flowing():
                kinds = [m["type"] for m in receiver.messages()[receiver.ids().index(held):]]
                return "gap" in kinds and "aggregate" in kinds[kinds.index("gap"):]
            await until(flowing, 60, "a gap, then aggregates, after the held message")

            async def healthy():
                return (await running.call("GET", "/health", OP))[0] == 200
            await until(healthy, 30, "/health 200 again")
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            gap = next(m for m in receiver.messages() if m["type"] == "gap")
            assert gap["lost_windows"] >= 2 and "GET /data" in gap["detail"]
            org_auth = {"Authorization": f"Bearer {org['api_key']}"}
            first_sent = min(window_seconds(m["window_start"]) for m in receiver.messages() if m["type"] == "aggregate")
            status, history, _ = await running.call("GET", f"/data?window=1s&since={first_sent}&until={time.time()}",
                                                    org_auth)
            assert status == 200, history
            refused = refused_in(history)
            assert_gap_counts_what_was_lost(gap, refused)  # exactly the windows that could not be queued
            assert_every_window_accounted(receiver.messages(), refused)
            assert time.monotonic() - failed_at > 3
            _, subscription, _ = await running.call("GET", f"/data/subscriptions/{sub['id']}", org_auth)
            assert subscription["delivery"]["queued"] <= 2  # the queue drains: the held message is acknowledged
            resent = receiver.ids().count(held)
            await asyncio.sleep(2)
            assert receiver.ids().count(held) == resent  # acknowledged now: never sent again
            log = running.log.read_text()
            assert "Traceback" not in log, log[-3000:]
            assert "Input/output error" in log, log[-3000:]  # it was EIO, and it was said
    finally:
        await receiver.stop()
