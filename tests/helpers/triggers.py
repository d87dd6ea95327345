"""A town for the trigger tests: an agent on a stepped clock, an organization, consenting households, and the
window moves that make the runner evaluate, release and count."""

from __future__ import annotations

import base64
import math
import textwrap
from dataclasses import replace

import pytest

from agent.config import DeliveryConfig, TriggersConfig
from tests.helpers.agent import grant, make_config
from tests.helpers.clock import StepClock, T0


def b64(source: str) -> str:
    return base64.b64encode(textwrap.dedent(source).encode()).decode()


def body(parameters, source, interval=60, action=None, **extra) -> dict:
    return {"parameters": parameters, "function": b64(source), "interval": interval,
            "action": action or {"type": "notification", "content": "hello"}, **extra}


class Town:
    def __init__(self, running, clock, org_id, org_key, households):
        self.running, self.clock, self.org_id, self.org_key = running, clock, org_id, org_key
        self.households = households  # [(id, token)]
        self.runner = running.agent.triggers

    async def create(self, payload, key=None):
        return await self.running.call("POST", "/triggers/create", token=key or self.org_key, json=payload)

    async def trigger(self, trigger_id, key=None):
        status, out = await self.running.call("GET", f"/triggers/{trigger_id}", token=key or self.org_key)
        assert status == 200, out
        return out

    async def window(self, width=60, values=None, **fields):
        """Every household posts one reading (fields, or values[i] for household i), then the window
        closes and the runner evaluates it; returns after its statistics moment, its actions done."""
        for i, (_, token) in enumerate(self.households):
            reading = values[i] if values is not None else fields
            if reading is None:
                continue
            status, out = await self.running.call("POST", "/readings", token=token,
                                                  json={"timestamp": self.clock.now, **reading})
            assert status == 201, out
        return await close_window(self.running, self.clock, width)

    async def inbox(self, token):
        status, out = await self.running.call("GET", "/households/me/notifications", token=token)
        assert status == 200, out
        return out["notifications"]


async def close_window(running, clock, width=60):
    """The window the clock is in closes and is decided by the release module; the runner evaluates it and
    holds the results; at the release moment the actions leave (and are waited for); at the statistics moment
    the counts go to the release module. The clock ends at that statistics moment."""
    runner = running.agent.triggers
    close = (math.floor(clock.now / width) + 1) * width
    clock.now = close + 0.06  # past the release module's grace
    await running.agent.releases.settle()
    await runner.run_due()
    clock.now = close + runner.config.release_delay_s
    await runner.run_due()
    await runner.drain()
    clock.now = close + runner.config.release_delay_s + runner.config.statistics_delay_s
    await runner.run_due()
    return close


def town_config(tmp_path, **triggers):
    config = make_config(tmp_path)
    # The custodian's releases at a minute (its default finest width, 1 s, would need a reading every second from
    # every household for a minute to be released: the minute is the sum of its released seconds).
    levels = {**config.levels, "dso": replace(config.levels["dso"], windows=("1m", "15m", "1h"))}
    return replace(config, levels=levels, privacy=replace(config.privacy, k_min=3),
                   delivery=DeliveryConfig(allow_http=True, allow_private_endpoints=True,
                                           retry_schedule=(0, 0.05, 0.1), timeout_s=2.0),
                   # a deadline with room for a loaded CI machine; the refusal test sets the default 50 ms
                   triggers=TriggersConfig(**{"min_interval_s": 1, "timeout_ms": 150, "release_delay_s": 2.0,
                                              "statistics_delay_s": 5.0, **triggers}))


@pytest.fixture
async def town(tmp_path, start_agent):
    async def make(n=4, level="dso", outsiders=0, **triggers):
        """n households consenting to aggregates and triggers, then `outsiders` to aggregates only;
        the clock then moves to the next minute's window, which the consents hold throughout."""
        clock = StepClock(T0)
        running = await start_agent(town_config(tmp_path, **triggers), clock=clock)
        org_id, org_key = await running.create_org("Energy Co", level)
        households = []
        for i in range(n + outsiders):
            household_id, token = await running.create_household()
            await grant(running, token, org_id, *(("aggregates", "triggers") if i < n else ("aggregates",)))
            households.append((household_id, token))
        clock.step(60)
        return Town(running, clock, org_id, org_key, households)
    return make
