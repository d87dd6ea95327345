"""A town for the delivery tests: an agent on a stepped clock, three consenting households, subscriptions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.config import PrivacyConfig
from tests.helpers.agent import delivery_config, make_config
from tests.helpers.clock import StepClock, T0


@pytest.fixture
async def town(tmp_path, start_agent):
    """An agent on a stepped clock with 3 consenting households (k_min lowered to 3 for brevity)."""
    async def make(**delivery_changes):
        clock = StepClock(T0)
        config = replace(make_config(tmp_path), privacy=PrivacyConfig(k_min=3),
                         delivery=delivery_config(**delivery_changes))
        running = await start_agent(config, clock=clock)
        org_id, org_key = await running.create_org("Energy Co", "dso")
        tokens = []
        for _ in range(3):
            _, token = await running.create_household()
            assert (await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token))[0] == 200
            tokens.append(token)
        clock.step(1)
        return Town(running, clock, org_key, tokens)
    return make


class Town:
    def __init__(self, running, clock, org_key, tokens):
        self.running, self.clock, self.org_key, self.tokens = running, clock, org_key, tokens
        self.power = 100.0

    async def subscribe(self, url: str, **extra) -> dict:
        status, body = await self.running.call("POST", "/data/subscribe", token=self.org_key,
                                               json={"endpoint": url, "interval": 1, "window": "1s", **extra})
        assert status == 201, body
        return body

    async def window(self, power: float | None = None) -> None:
        """One second of readings from every household, then the window closes, is decided by the release module and
        (through its listener) produced."""
        self.power = power if power is not None else self.power + 10
        for token in self.tokens:
            status, body = await self.running.call("POST", "/readings", token=token,
                                                   json={"timestamp": self.clock.now, "power_import_w": self.power})
            assert status == 201, body
        self.clock.step(1)
        await self.running.agent.releases.settle()

    async def state(self, sub_id: str) -> dict:
        return (await self.running.call("GET", f"/data/subscriptions/{sub_id}", token=self.org_key))[1]
