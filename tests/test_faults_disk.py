"""The unhappy disk, with the real process: a small loop-mounted ext4 that fills up (ENOSPC) or fails (the ext4
shutdown ioctl: every I/O is EIO), the data directory deleted under the agent, kill -9, and the agent down while
windows close. What is checked: nothing acknowledged is lost beyond one flush, every write the disk refused is an
answer the client can act on (507/503 JSON with Retry-After, never a 500 or a 201), /health says so while it lasts,
the webhook sender survives and every window not sent is inside a `gap` event the receiver sees.

Needs root (mount, losetup): skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from datetime import datetime
from functools import partial

import aiohttp
import pytest

from tests.helpers.faults import (SmallDisk, assert_every_window_accounted, assert_gap_counts_what_was_lost,
                                  refused_in, window_seconds)
from tests.helpers.process import FLUSH_S, OP, Running, agent_on, town
from tests.helpers.receiver import Receiver
from tests.helpers.wait import eventually

# This suite's polls every 0.1 s, as before tests/helpers/: how long the disk stays full depends on it.
until = partial(eventually, interval=0.1)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 to make a small loop-mounted ext4")
    try:
        disk = SmallDisk(tmp_path)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot loop-mount an ext4 here: {exc.stderr.decode(errors='replace').strip()}")
    yield disk
    disk.close()


class Feeder:
    """Each household posts a reading every 0.1 s; what each answer was is kept (an acknowledged reading must
    be on disk after a crash, unless acknowledged within one flush of it)."""

    def __init__(self, running: Running, households):
        self.running, self.households = running, households
        self.answers: list[tuple[str, float, float, int, dict, dict]] = []  # meter, timestamp, at, status, body
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._feed())

    async def _feed(self) -> None:
        while True:
            for hh, auth in self.households:
                stamp = round(time.time(), 3)
                try:
                    status, body, headers = await self.running.call(
                        "POST", "/readings", auth, {"timestamp": stamp, "power_import_w": 500})
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    continue
                self.answers.append((hh["meter_id"], stamp, time.monotonic(), status, body, dict(headers)))
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def statuses(self, since: float = 0.0) -> set[int]:
        return {a[3] for a in self.answers if a[2] >= since}

    def acknowledged(self, before: float) -> dict[str, set[float]]:
        out: dict[str, set[float]] = {}
        for meter, stamp, at, status, _, _ in self.answers:
            if status == 201 and at < before:
                out.setdefault(meter, set()).add(stamp)
        return out


async def stored_timestamps(running: Running, meter_id: str) -> set[float]:
    status, body, _ = await running.call("GET", f"/meters/{meter_id}/readings?limit=100000", OP)
    assert status == 200, body
    return {round(datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).timestamp(), 3)
            for r in body["readings"]}


async def test_a_full_disk_refuses_what_it_cannot_keep_and_loses_nothing_it_acknowledged(small_disk, tmp_path):
    storage = small_disk.mount / "edge"
    receiver = Receiver()
    await receiver.start()
    try:
        async with agent_on(storage, tmp_path) as running:
            org, households, sub = await town(running, receiver)
            feeder = Feeder(running, households)
            feeder.start()

            async def aggregates(n):
                return sum(m["type"] == "aggregate" for m in receiver.messages()) >= n
            await until(lambda: aggregates(2), 40, "first aggregates")

            small_disk.fill()
            full_at = time.monotonic()
            # Readings: refused with 507 and Retry-After once the store knows (within a flush or two), never 500.
            await until(lambda: asyncio.sleep(0, 507 in feeder.statuses(full_at)), 10, "a 507 for readings")
            refused = next(a for a in feeder.answers if a[3] == 507)
            assert refused[4]["error"] == "storage_full" and refused[4]["detail"] and "Retry-After" in refused[5]
            status, health, _ = await running.call("GET", "/health", OP)
            assert status == 503 and health["storage"]["last_flush_error"]
            org_auth = {"Authorization": f"Bearer {org['api_key']}"}
            elsewhere = {"endpoint": "http://127.0.0.1:9/h", "interval": 1}
            for method, path, body in (("POST", "/data/subscribe", elsewhere), ("GET", "/data?window=1s", None),
                                       ("GET", "/data/subscriptions", None)):
                status, answer, _ = await running.call(method, path, org_auth, body)
                assert status < 500 or status in (503, 507) and answer["error"].startswith("storage"), answer
            created = []
            for _ in range(3):
                status, body, _ = await running.call("POST", "/households", OP, {})
                assert status in (201, 507), (status, body)
                if status == 201:
                    created.append(body["token"])
                else:
                    assert body["error"] == "storage_full"
            # Windows close while nothing can be queued: until one could not be (the outbox's last block may have
            # room for a few more messages first), and a second more.
            async def not_queued():
                _, health, _ = await running.call("GET", "/health", OP)
                return health["faults"]["delivery"]["windows_not_queued"]
            await until(not_queued, 30, "a window that could not be queued")
            await asyncio.sleep(1)
            # Consent changes, like new households: 200 only if durable (a small record may still fit in a file's
            # last block), else 507 with Retry-After and nothing changed; never a 500. Checked after the restart
            # below. Tried after the windows not queued: a revocation made whose grant is refused leaves two
            # households of three, under k_min, and no window would be released until it is granted again.
            hh, auth = households[0]
            consent_path = f"/households/me/consents/{org['id']}/aggregates"
            answers = []
            for method in ("DELETE", "PUT") * 5:
                status, body, headers = await running.call(method, consent_path, auth)
                assert status in (200, 507), (status, body)
                if status == 507:
                    assert body["error"] == "storage_full" and "Retry-After" in headers
                answers.append((method, status))
            made = [method for method, status in answers if status == 200]

            small_disk.free()
            freed_at = time.monotonic()
            await until(lambda: asyncio.sleep(0, 201 in feeder.statuses(freed_at)), 15, "readings accepted again")
            if made and made[-1] == "DELETE":  # its grant again was refused: two households, under k_min, for good
                status, body, _ = await running.call("PUT", consent_path, auth)
                assert status == 200, body
                made.append("PUT")
            # The sender did not die: a gap event for the windows not queued, then aggregates again.
            async def flowing():
                gaps = [i for i, m in enumerate(receiver.messages()) if m["type"] == "gap"]
                return gaps and any(m["type"] == "aggregate" for m in receiver.messages()[gaps[0]:])
            await until(flowing, 30, f"gap event and aggregates after the disk was freed (consent changes: {made})")
            await until(lambda: _healthy(running), 15, "/health 200 again")
            gap = next(m for m in receiver.messages() if m["type"] == "gap")
            assert "GET /data" in gap["detail"]
            # The windows the release module refused so far (a consent change above that was made, 200, withholds
            # the window it fell in: fewer than k_min households consented throughout it). Asked now, while the
            # agent that decided them runs: not released, so never sent, and never counted in a gap, though a gap's
            # span may include them. That window just before the first gap was the intermittent "window neither sent
            # nor in a gap" of issue 16 (and a withheld window inside the span made `lost_windows` 1 where 2 was
            # expected): it was refused, as GET /data says.
            first_sent = min(window_seconds(m["window_start"]) for m in receiver.messages() if m["type"] == "aggregate")
            status, history, _ = await running.call("GET", f"/data?window=1s&since={first_sent}&until={time.time()}",
                                                    org_auth)
            assert status == 200, history
            refused = refused_in(history)
            assert_gap_counts_what_was_lost(gap, refused)  # exactly the released windows it stands for

            # Full again, and kill -9 while full: what was acknowledged before the last flush that succeeded is
            # on disk. (moment, flushes seen just after it), polled while the disk fills: the store's flushes run
            # one after another, so two flushes that succeeded after a moment mean the second began after it.
            samples: list[tuple[float, int]] = []

            async def sample():
                while True:
                    moment = time.monotonic()
                    samples.append((moment, await _flushes(running)))
                    await asyncio.sleep(0.1)
            sampler = asyncio.create_task(sample())
            await until(lambda: asyncio.sleep(0, samples and samples[-1][1] >= samples[0][1] + 2), 20, "two flushes")
            small_disk.fill()
            full_again = time.monotonic()
            await until(lambda: asyncio.sleep(0, 507 in feeder.statuses(full_again)), 10, "a 507 again")
            await asyncio.sleep(1)
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            flushes = await _flushes(running)
            await running.kill()
            killed_wall = time.time()
            await feeder.stop()
            small_disk.free()
            await running.start()
            # Lost at most: those acknowledged after the last flush that succeeded began.
            flushed_before = max(moment for moment, seen in samples if seen <= flushes - 2)
            for meter_id, stamps in feeder.acknowledged(before=flushed_before).items():
                missing = stamps - await stored_timestamps(running, meter_id)
                assert not missing, f"{len(missing)} acknowledged readings of {meter_id} lost"
            # Exactly the consent changes answered 200 are in the history, and every household answered 201 exists.
            _, history, _ = await running.call("GET", "/households/me/consents/history", auth)
            actions = [entry["action"] for entry in history["history"]][1:]  # after the first grant
            assert actions == ["revoke" if method == "DELETE" else "grant" for method in made]
            for token in created:
                status, _, _ = await running.call("GET", "/households/me", {"Authorization": f"Bearer {token}"})
                assert status == 200
            # After the restart (the release module may withhold its first windows: decided, not lost), the windows
            # not queued while full and those that closed while the agent was down are one gap event.
            await until(lambda: asyncio.sleep(0, any(m["type"] == "gap" and window_seconds(m["to"]) >= killed_wall
                                                     for m in receiver.messages())), 30, "a gap after the restart")
            # Said, not shouted: a line a minute per broken write path, no traceback per flush.
            log = running.log.read_text()
            assert "Traceback" not in log and log.count("_flush failed") <= 2, log[-3000:]
            # No aggregate comes after the restart within the test (exact sums resume one audit period later): the
            # windows refused are all known from the answer above.
            assert_every_window_accounted(receiver.messages(), refused)
    finally:
        await receiver.stop()


async def _flushes(running: Running, at_least: int = 0) -> int:
    """The store's flushes that wrote everything they had (0 while fewer than `at_least`)."""
    _, health, _ = await running.call("GET", "/health", OP)
    flushes = health["storage"]["flushes"]
    return flushes if flushes >= at_least else 0


async def _healthy(running: Running) -> bool:
    status, _, _ = await running.call("GET", "/health", OP)
    return status == 200


async def test_io_errors_are_refused_and_what_was_acknowledged_survives(small_disk, tmp_path):
    storage = small_disk.mount / "edge"
    async with agent_on(storage, tmp_path) as running:
        org, households, _ = await town(running, None)
        feeder = Feeder(running, households)
        feeder.start()
        await until(lambda: asyncio.sleep(0, len(feeder.answers) > 30), 20, "readings in")
        # Two flushes that succeed after this moment: the second began after it, so every reading acknowledged
        # before it is written (a moment on the real clock, such as one flush before the failure, slips under load).
        flushed_before = time.monotonic()
        flushes = await _flushes(running)
        await until(lambda: _flushes(running, at_least=flushes + 2), 20, "two flushes")
        small_disk.shut_down()
        failed_at = time.monotonic()
        await until(lambda: asyncio.sleep(0, 503 in feeder.statuses(failed_at)), 10, "a 503 for readings")
        refused = next(a for a in feeder.answers if a[3] == 503)
        assert refused[4]["error"] == "storage_error" and "Retry-After" in refused[5]
        # from the first refusal on (the store knows), no reading is taken while the disk fails
        first = feeder.answers.index(refused)
        await until(lambda: asyncio.sleep(0, len(feeder.answers) > first + 10), 20, "ten answers after it")
        assert {a[3] for a in feeder.answers[first:]} == {503}
        status, health, _ = await running.call("GET", "/health", OP)
        assert status == 503
        hh, auth = households[0]
        status, body, _ = await running.call("DELETE", f"/households/me/consents/{org['id']}/aggregates", auth)
        assert status == 503 and body["error"] == "storage_error"
        await feeder.stop()
        # A stop on a failing disk closes every store whatever fails, exits 0 and says what it could not write.
        assert await running.stop() == 0
        log = running.log.read_text()
        assert "cannot start" not in log and "could not be written" in log, log[-3000:]
        small_disk.remount()
        await running.start()
        # What was acknowledged before a flush that succeeded is on disk.
        for meter_id, stamps in feeder.acknowledged(before=flushed_before).items():
            missing = stamps - await stored_timestamps(running, meter_id)
            assert not missing, f"{len(missing)} acknowledged readings of {meter_id} lost"
        _, consents, _ = await running.call("GET", "/households/me/consents", auth)
        assert [c["organization_id"] for c in consents["consents"]] == [org["id"]]  # the refused change: not made


async def test_the_data_directory_deleted_under_the_agent_is_a_fatal_health_error(tmp_path):
    storage = tmp_path / "edge"
    async with agent_on(storage, tmp_path) as running:
        org, households, _ = await town(running, None)
        hh, auth = households[0]
        status, _, _ = await running.call("POST", "/readings", auth, {"timestamp": time.time(), "power_import_w": 1})
        assert status == 201
        assert (await running.call("GET", "/health", OP))[0] == 200
        shutil.rmtree(storage)
        await until(lambda: asyncio.sleep(0, not storage.exists()), 5)
        status, health, _ = await running.call("GET", "/health", OP)
        assert status == 503 and health["faults"]["data_directory_lost"]
        status, body, headers = await running.call("POST", "/readings", auth,
                                                   {"timestamp": time.time(), "power_import_w": 1})
        assert status == 503 and body["error"] == "data_directory_lost" and "Retry-After" in headers
        status, body, _ = await running.call("POST", "/households", OP, {})
        assert status == 503 and body["error"] == "data_directory_lost"
        status, body, _ = await running.call("DELETE", f"/households/me/consents/{org['id']}/aggregates", auth)
        assert status == 503 and body["error"] == "data_directory_lost"
        await asyncio.sleep(2 * FLUSH_S)
        assert not storage.exists()  # nothing recreated it: an empty directory would hide the loss
        status, health, _ = await running.call("GET", "/health", {})
        assert status == 503 and health == {"status": "degraded"}
