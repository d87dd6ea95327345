"""The privacy budget's spends (GET /data/dp, and GET /data for dp-only levels) are written off the event loop,
and a DP answer leaves only once its spend is on disk; two requests of one organization can neither both spend
the last of its budget nor both pay for (and draw different noise for) one window.

Same method as tests/test_event_loop_io.py: the budget's write waits at a gate in whatever thread runs it until
the test opens it; /health must be answered meanwhile and the DP requests must not be. No durations are measured.
"""

from __future__ import annotations

import asyncio
import gc

import pytest
from aiohttp.test_utils import make_mocked_request

from agent.api.privacy import get_dp
from agent.config import DEFAULT_LEVELS, DifferentialPrivacy, Level
from agent.privacy import dp
from agent.privacy.budget import PrivacyBudget
from tests.conftest import StepClock, make_config
from tests.test_event_loop_io import Gate, answered_meanwhile
from tests.test_privacy_api import T0, feed, households

pytestmark = pytest.mark.skipif(not dp.available(), reason="OpenDP is not installed")


def level(epsilon_per_day: float) -> Level:
    return Level("app", ("neighborhood_*",), ("15m", "1h"),
                 dp=DifferentialPrivacy(only=True, epsilon=1.0, epsilon_per_day=epsilon_per_day))


@pytest.fixture
async def dp_town(tmp_path, start_agent, monkeypatch):
    """12 households consenting to one organization of a dp-only level; two closed 15-minute windows."""
    async def make(epsilon_per_day: float):
        clock = StepClock(T0 - 60)
        config = make_config(tmp_path, levels={**DEFAULT_LEVELS, "app": level(epsilon_per_day)})
        running = await start_agent(config, clock=clock)
        org_id, org_key = await running.create_org("App", "app")
        homes = await households(running, org_id, 12, "aggregates")
        await feed(running, clock, [h for h, _ in homes], [T0, T0 + 900])
        clock.now = T0 + 1800 + 20
        budget = running.agent.budget
        gate = Gate()
        monkeypatch.setattr(budget, "_write", gate.wrap(budget._write))  # the fsync'd append of a spend
        calibrations = CountCalls(monkeypatch, dp, "calibrate")
        return running, org_id, org_key, gate, calibrations, tmp_path / "store" / "privacy"
    return make


class CountCalls:
    """Counts calls to a plain function. A DP request calibrates its noise just before it waits for its
    organization's lock, with nothing awaited in between: once counted, it is at (or past) that lock."""

    def __init__(self, monkeypatch, owner, name):
        self.count = 0
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)


def from_disk(directory, org_id: str) -> tuple[float, PrivacyBudget]:
    budget = PrivacyBudget(directory, clock=lambda: T0 + 1800 + 20)
    return budget.status(org_id, level(10.0).dp)["epsilon_spent"], budget


async def test_a_dp_answer_is_sent_only_once_its_spend_is_on_disk(dp_town):
    running, org_id, org_key, gate, _, directory = await dp_town(10.0)
    request = asyncio.create_task(running.call("GET", "/data/dp?window=15m", token=org_key))
    await running.wait_for(gate.entered.is_set)
    await answered_meanwhile(running, request)
    gate.open()
    status, body = await request
    gate.check()
    assert status == 200, body
    assert body["budget"]["epsilon_spent"] == 1.0
    spent, reread = from_disk(directory, org_id)
    try:
        assert spent == 1.0
        key = f"15m|{int(T0 + 900)}||{level(10.0).dp.clamp_w}"
        assert reread.cached(org_id, key)["consumption_w"] == body["consumption_w"]  # the answer sent is on disk
    finally:
        reread.close()


async def test_two_requests_for_one_window_pay_once_and_get_one_answer(dp_town):
    running, org_id, org_key, gate, calibrations, directory = await dp_town(10.0)
    first = asyncio.create_task(running.call("GET", "/data?window=15m", token=org_key))  # dp-only: GET /data
    await running.wait_for(gate.entered.is_set)
    second = asyncio.create_task(running.call("GET", "/data/dp?window=15m", token=org_key))
    await running.wait_for(lambda: calibrations.count == 2)
    await answered_meanwhile(running, first, second)
    gate.open()
    (s1, a), (s2, b) = await asyncio.gather(first, second)
    gate.check()
    assert (s1, s2) == (200, 200), (a, b)
    assert a["consumption_w"] == b["consumption_w"]  # the same noisy answer: nothing to average away
    assert a["budget"]["epsilon_spent"] == b["budget"]["epsilon_spent"] == 1.0
    assert len(gate.calls) == 1
    spent, reread = from_disk(directory, org_id)
    reread.close()
    assert spent == 1.0


async def test_two_requests_cannot_both_spend_the_last_of_the_budget(dp_town):
    running, org_id, org_key, gate, calibrations, directory = await dp_town(1.0)  # one window's worth
    first = asyncio.create_task(running.call("GET", f"/data/dp?window=15m&since={T0}&until={T0 + 900}",
                                             token=org_key))
    await running.wait_for(gate.entered.is_set)
    second = asyncio.create_task(running.call("GET", f"/data/dp?window=15m&since={T0 + 900}&until={T0 + 1800}",
                                              token=org_key))
    await running.wait_for(lambda: calibrations.count == 2)
    await answered_meanwhile(running, first, second)
    gate.open()
    (s1, a), (s2, b) = await asyncio.gather(first, second)
    gate.check()
    assert (s1, s2) == (200, 429), (a, b)
    assert len(a["released"]) == 1 and a["budget"]["epsilon_remaining"] == 0
    assert b["error"] == "budget_exhausted"
    spent, reread = from_disk(directory, org_id)
    reread.close()
    assert spent == 1.0


async def test_a_refused_disk_releases_nothing_and_charges_nothing(dp_town, monkeypatch):
    running, org_id, org_key, _, _, _ = await dp_town(1.0)
    budget = running.agent.budget

    def refuse(doc):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(budget, "_write", refuse)
    status, body = await running.call("GET", "/data/dp?window=15m", token=org_key)
    assert status == 500 and "consumption_w" not in body
    assert budget.status(org_id, level(1.0).dp)["epsilon_spent"] == 0  # the charge went with the write
    monkeypatch.setattr(budget, "_write", PrivacyBudget._write.__get__(budget))  # the disk is back
    status, body = await running.call("GET", "/data/dp?window=15m", token=org_key)
    assert status == 200 and body["budget"]["epsilon_spent"] == 1.0


def mocked_dp_request(running, org_key: str):
    """GET /data/dp?window=15m as the handler sees it, run as a task the test can cancel (aiohttp does not cancel a
    handler whose client went away; the agent stopping does)."""
    return make_mocked_request("GET", "/data/dp?window=15m", headers={"Authorization": f"Bearer {org_key}"},
                               app=running.agent._runner.app)


async def test_a_cancelled_dp_request_keeps_its_organizations_lock_until_its_spend_is_on_disk(dp_town):
    running, org_id, org_key, gate, calibrations, directory = await dp_town(10.0)
    first = asyncio.create_task(get_dp(mocked_dp_request(running, org_key)))
    await running.wait_for(gate.entered.is_set)
    first.cancel()  # while its spend is being written
    await asyncio.gather(first, return_exceptions=True)
    second = asyncio.create_task(running.call("GET", "/data/dp?window=15m", token=org_key))
    await running.wait_for(lambda: calibrations.count == 2)
    await answered_meanwhile(running, second)  # it waits for the first one's spend
    gate.open()
    status, body = await second
    gate.check()
    assert status == 200, body
    assert len(gate.calls) == 1  # answered from the first one's record: paid once
    assert body["budget"]["epsilon_spent"] == 1.0
    spent, reread = from_disk(directory, org_id)
    reread.close()
    assert spent == 1.0


async def test_a_cancelled_dp_request_whose_spend_the_disk_refuses_charges_nothing(dp_town, monkeypatch):
    running, org_id, org_key, _, calibrations, directory = await dp_town(10.0)
    budget = running.agent.budget
    gate = Gate()

    def refuse(doc):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(budget, "_write", gate.wrap(refuse))
    loop = asyncio.get_running_loop()
    unhandled: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    try:
        first = asyncio.create_task(get_dp(mocked_dp_request(running, org_key)))
        await running.wait_for(gate.entered.is_set)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        monkeypatch.setattr(budget, "_write", PrivacyBudget._write.__get__(budget))  # the disk is back
        second = asyncio.create_task(running.call("GET", "/data/dp?window=15m", token=org_key))
        await running.wait_for(lambda: calibrations.count == 2)
        await answered_meanwhile(running, second)
        gate.open()
        status, body = await second
        gate.check()
        del first
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert status == 200, body
    assert body["budget"]["epsilon_spent"] == 1.0  # the refused spend's charge went with it
    assert not [c for c in unhandled if "never retrieved" in c.get("message", "")], unhandled
    spent, reread = from_disk(directory, org_id)
    reread.close()
    assert spent == 1.0
