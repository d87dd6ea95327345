"""Fair sharing between organizations (SANDBOX-FINDINGS S4, S5), with real aiohttp receivers on 127.0.0.1 and real
locked workers. No durations are asserted: only what had arrived, or finished, by the time something else did.

The bound stated (README/PRIVACY.md, see /work/notes/triggers-docs.md): another organization's actions and every
household's own notifications wait for none of a tarpit organization's slots, queue places or connections; the
tarpit organization holds at most [triggers] organization_action_slots connections, and beyond slots + queue its
actions are dropped and counted (failed in its counts), never queued without bound. An upload waits for at most
one trial of any other organization."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import pytest
from aiohttp import web

from agent.config import DeliveryConfig
from tests.helpers.agent import grant
from tests.helpers.clock import StepClock, T0
from tests.helpers.receiver import Receiver
from tests.helpers.triggers import body, town_config

ALWAYS = "def condition(household_power_consumption):\n    return True\n"


class Tarpit:
    """An endpoint that holds every request until released (or 60 s)."""

    def __init__(self):
        self.entered = 0
        self.finished = 0
        self.most_at_once = 0
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.entered += 1
        self.most_at_once = max(self.most_at_once, self.entered - self.finished)
        try:
            await request.read()
            try:
                await asyncio.wait_for(self.release.wait(), 60)
            except asyncio.TimeoutError:
                pass
            return web.Response(status=204)
        finally:
            self.finished += 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"


@pytest.fixture
async def tarpit():
    pit = Tarpit()
    await pit.start()
    yield pit
    pit.release.set()
    await pit.runner.cleanup()


@pytest.fixture
async def receivers():
    out = [Receiver(), Receiver()]
    for r in out:
        await r.start()
    yield out
    for r in out:
        await r.stop()


def fair_config(tmp_path, **triggers):
    config = town_config(tmp_path, **{"organization_action_slots": 2, "organization_action_queue": 3,
                                      "timeout_ms": 1000, **triggers})  # evaluations never killed on a busy machine
    # the old design's shared limits, small: one tarpit would hold all of them
    delivery = DeliveryConfig(allow_http=True, allow_private_endpoints=True, retry_schedule=(0, 0.05, 0.1),
                              timeout_s=60.0, max_connections=2)
    return replace(config, delivery=delivery)


async def _window(running, clock, households, watts=100.0) -> float:
    """Readings, the window settled and evaluated, its results dispatched at the release moment (not awaited)."""
    runner = running.agent.triggers
    for _, token in households:
        assert (await running.call("POST", "/readings", token=token,
                                   json={"timestamp": clock.now, "power_import_w": watts}))[0] == 201
    close = (math.floor(clock.now / 60) + 1) * 60
    clock.now = close + 0.06
    await running.agent.releases.settle()
    await runner.run_due()
    clock.now = close + runner.config.release_delay_s
    await runner.run_due()
    return close


async def test_a_tarpit_organization_delays_no_one_else(tmp_path, start_agent, tarpit, receivers):
    hooks, endpoints = receivers
    clock = StepClock(T0)
    # statistics long after the release: the tarpit's requests stay held across the next window
    running = await start_agent(fair_config(tmp_path, statistics_delay_s=100.0), clock=clock)
    runner = running.agent.triggers
    slow_id, slow_key = await running.create_org("Tarpit Co", "dso")
    fair_id, fair_key = await running.create_org("Fair Co", "dso")
    households = [await running.create_household() for _ in range(10)]
    for _, token in households:
        await grant(running, token, slow_id, "aggregates", "triggers")
        await grant(running, token, fair_id, "aggregates", "triggers")
        assert (await running.call("PUT", "/households/me/notify", token=token,
                                   json={"url": endpoints.url, "kind": "ntfy"}))[0] == 200
    # the tarpit organization: a household webhook every household consented to: 10 events a window
    status, slow = await running.call("POST", "/triggers/create", token=slow_key, json=body(
        ["household_power_consumption"], ALWAYS, interval=1, action={"type": "webhook", "endpoint": tarpit.url},
        description="held"))
    assert status == 201, slow
    for _, token in households:
        await grant(running, token, slow_id, f"trigger_events:{slow['id']}")
    clock.step(60)
    first = await _window(running, clock, households)
    await running.wait_for(lambda: tarpit.entered == 2)  # its two slots taken, held

    # the fair organization: a neighbourhood webhook, and notifications to every household's own endpoint
    status, hook = await running.call("POST", "/triggers/create", token=fair_key, json=body(
        ["neighborhood_power_consumption"], "def condition(neighborhood_power_consumption):\n    return True\n",
        interval=1, action={"type": "webhook", "endpoint": hooks.url}))
    assert status == 201, hook
    status, note = await running.call("POST", "/triggers/create", token=fair_key, json=body(
        ["household_power_consumption"], ALWAYS, interval=1))
    assert status == 201, note
    clock.now = first + 10
    await _window(running, clock, households)

    # the fair organization's webhook and all ten households' notifications arrive while every request the
    # tarpit took is still held
    await running.wait_for(lambda: len(hooks.received) == 1 and len(endpoints.received) == 10)
    assert tarpit.finished == 0 and tarpit.most_at_once == 2  # its own slots (and connections), no more
    lane = runner.organization_lanes[slow_id]
    assert lane.admitted == 5  # 2 in flight + 3 queued, from the first window
    assert lane.dropped == 5 + 10  # the rest of the first window, all of the second: dropped and counted
    assert runner.organization_lanes[fair_id].admitted == 0
    assert runner.health()["dropped_actions"] == 15  # the operator sees it

    # released: the admitted five are delivered; the first window's counts say 5 delivered, 5 failed
    tarpit.release.set()
    await runner.drain()
    assert tarpit.entered == 5 and tarpit.most_at_once == 2
    clock.now = first + runner.config.release_delay_s + runner.config.statistics_delay_s + 60
    await runner.run_due()
    status, view = await running.call("GET", f"/triggers/{slow['id']}", token=slow_key)
    assert view["deliveries"] == {"delivered": 5, "failed": 15} and view["firings"] == 20


async def test_a_retry_waits_outside_the_slot(tmp_path, start_agent, receivers):
    failing, _ = receivers
    failing.mode = "fail"
    clock = StepClock(T0)
    config = fair_config(tmp_path, organization_action_slots=1)
    config = replace(config, delivery=replace(config.delivery, retry_schedule=(0, 30.0)))
    running = await start_agent(config, clock=clock)
    runner = running.agent.triggers
    org_id, org_key = await running.create_org("Energy Co", "dso")
    households = [await running.create_household() for _ in range(3)]
    status, created = await running.call("POST", "/triggers/create", token=org_key, json=body(
        ["household_power_consumption"], ALWAYS, interval=1, action={"type": "webhook", "endpoint": failing.url},
        description="retries"))
    assert status == 201
    for _, token in households:
        await grant(running, token, org_id, "aggregates", "triggers", f"trigger_events:{created['id']}")
    clock.step(60)
    for _, token in households:
        assert (await running.call("POST", "/readings", token=token,
                                   json={"timestamp": clock.now, "power_import_w": 1.0}))[0] == 201
    close = (math.floor(clock.now / 60) + 1) * 60
    clock.now = close + 0.06
    await running.agent.releases.settle()
    await runner.run_due()
    clock.now = close + runner.config.release_delay_s
    await runner.run_due()
    # one slot, three events, every first attempt refused: all three first attempts arrive while the first
    # waits 30 s for its retry (a retry holding the slot would keep the others out for those 30 s)
    await running.wait_for(lambda: len(failing.arrivals) == 3)
    lane = runner.organization_lanes[org_id]
    assert lane.in_flight == 0 and lane.admitted == 3


async def test_an_upload_flood_gets_429s_and_an_honest_upload_is_not_queued_behind_it(tmp_path, start_agent):
    clock = StepClock(T0)
    running = await start_agent(town_config(tmp_path, timeout_ms=2000, release_delay_s=5.0,
                                            max_refusals_per_hour=5), clock=clock)
    runner = running.agent.triggers
    flood_id, flood_key = await running.create_org("Flood Co", "dso")
    _, honest_key = await running.create_org("Honest Co", "dso")
    _, refused_key = await running.create_org("Refused Co", "dso")
    sleeper = "def condition(household_power_consumption):\n    while True:\n        pass\n"

    # refused uploads count: after 5 an hour, 429 with Retry-After before any trial; the audit log has them summed
    broken = body(["household_power_consumption"], "def condition(household_power_consumption):\n  return (\n")
    for _ in range(5):
        status, out = await running.call("POST", "/triggers/create", token=refused_key, json=broken)
        assert status == 422 and out["reason"] == "syntax error"
    async with running.http.post(running.base + "/triggers/create", json=broken,
                                 headers=running.auth(refused_key)) as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
        assert (await resp.json())["error"] == "too_many_uploads"
    await running.agent.audit.record_durable("test", "operator", "flush")
    status, audit = await running.call("GET", "/audit?since=0")
    refusals = [e for e in audit["entries"] if e["action"] == "trigger.refused"]
    assert len(refusals) == 1 and refusals[0]["count"] == 1  # one entry a minute, not one (fsync'd) each
    runner._log_refusals(force=True)
    await running.agent.audit.record_durable("test", "operator", "flush")
    status, audit = await running.call("GET", "/audit?since=0")
    assert sum(e["count"] for e in audit["entries"] if e["action"] == "trigger.refused") == 5

    # a flood of slow uploads: one trial at a time for that organization, two more waiting, the rest 429
    done: list[str] = []

    async def upload(name, key, source):
        status, out = await running.call("POST", "/triggers/create", token=key,
                                         json=body(["household_power_consumption"], source))
        done.append(name)
        return status, out
    flood = [asyncio.create_task(upload(f"flood{i}", flood_key, sleeper)) for i in range(3)]
    await running.wait_for(lambda: runner._trials_waiting[flood_id] == 3)
    status, out = await running.call("POST", "/triggers/create", token=flood_key,
                                     json=body(["household_power_consumption"], sleeper))
    assert status == 429, out
    honest = await upload("honest", honest_key, ALWAYS)
    assert honest[0] == 201, honest
    # the honest upload waited for none of the flood's trials: it is done before the first of them
    assert done[0] == "honest"
    results = await asyncio.gather(*flood)
    assert [s for s, _ in results] == [422, 422, 422]
    assert all(out["reason"] == "too slow: exceeded 2000 ms" for _, out in results)
