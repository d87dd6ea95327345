"""The attacks of ../shared/PRIVACY-FINDINGS.md on aggregates (P2-P7), as an organization would run them: the
public API only, against a running agent on a stepped clock.

Each test first computes, from the readings it posted, what the attacker's arithmetic recovered on the old
design (where it applies), then shows what it recovers now: a refusal, a number off by at least the level's
stated noise, or (exact levels) the audit's `isolating` refusal. /work/notes/attacks-docs.md says each in words.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from agent.config import PrivacyConfig
from tests.conftest import StepClock, make_config

T0 = math.floor(1_790_000_000 / 3600) * 3600 + 10.0  # 10 s after a whole hour
QUARTER = 900


# --- the attacker's and the households' moves, through the public API --------------------------------------
class Town:
    """A running agent on a stepped clock, its households (id, token) and organizations (id, key)."""

    def __init__(self, running, clock):
        self.running, self.clock = running, clock
        self.households: list[tuple[str, str]] = []

    async def households_(self, n: int, **body) -> list[tuple[str, str]]:
        made = []
        for _ in range(n):
            status, out = await self.running.call("POST", "/households", json=body)
            assert status == 201, out
            made.append((out["id"], out["token"]))
        self.households += made
        return made

    async def org(self, level: str, name: str | None = None) -> tuple[str, str]:
        return await self.running.create_org(name or f"Org {level} {len(self.households)}-{id(self) % 97}", level)

    async def grant(self, org_id: str, households, service: str = "aggregates") -> None:
        for _, token in households:
            status, body = await self.running.call("PUT", f"/households/me/consents/{org_id}/{service}",
                                                   token=token)
            assert status == 200, body

    async def revoke(self, org_id: str, household) -> None:
        status, body = await self.running.call("DELETE", f"/households/me/consents/{org_id}/aggregates",
                                               token=household[1])
        assert status == 200, body

    async def post(self, household, watts: float, export: float = 0.0, at: float | None = None, **extra) -> None:
        status, body = await self.running.call(
            "POST", "/readings", token=household[1],
            json={"timestamp": self.clock.now if at is None else at, "power_import_w": watts,
                  "power_export_w": export, **extra})
        assert status == 201, body

    async def post_batch(self, household, readings: list[dict]) -> None:
        status, body = await self.running.call("POST", "/readings", token=household[1], json=readings)
        assert status == 201, body

    async def mark_related(self, household, org_ids: list[str]) -> None:
        status, body = await self.running.call("PATCH", f"/households/{household[0]}",
                                               json={"related_organizations": org_ids})
        assert status == 200, body

    async def data(self, key: str, query: str, path: str = "/data"):
        return await self.running.call("GET", f"{path}?{query}", token=key)

    async def window(self, key: str, window: str, start: float, tag: str | None = None, path: str = "/data"):
        """One window from history: (body, None) if released, (None, refusal) if not."""
        query = f"window={window}&since={start}&until={start + width(window)}" + (f"&tag={tag}" if tag else "")
        status, body = await self.data(key, query, path)
        assert status == 200, body
        if body["released"]:
            return body["released"][0], None
        assert body["refused"], body
        return None, body["refused"][0]

    async def settle(self, key: str) -> None:
        """Any organization's GET /data decides the windows that have ended (the agent's own pass would too)."""
        await self.data(key, "window=" + ("1s" if False else "1h"))

    async def to_next(self, seconds: int) -> float:
        """Step to the start of the next whole window of this width; returns it."""
        self.clock.step(seconds - self.clock.now % seconds)
        return self.clock.now


def width(window: str) -> int:
    return {"1s": 1, "1m": 60, "15m": 900, "1h": 3600}[window]


def profile(i: int, second: int) -> float:
    """A synthetic 1 Hz load: household i's base, a slow wave and a fast one (no two seconds alike)."""
    return round(300.0 + 97.0 * i + 120.0 * math.sin(second / 7.0 + i) + 35.0 * math.cos(second * 1.3 + 2 * i), 3)


@pytest.fixture
async def town(tmp_path, start_agent):
    clock = StepClock(T0)
    running = await start_agent(make_config(tmp_path), clock=clock)
    return Town(running, clock)


def town_with(**privacy):
    """A fixture factory for a non-default [privacy] or [levels] (the operator's knobs)."""

    @pytest.fixture
    async def fixture(tmp_path, start_agent):
        clock = StepClock(T0)
        levels = privacy.pop("levels", None)
        config = make_config(tmp_path, privacy=replace(PrivacyConfig(), **privacy),
                             **({"levels": levels} if levels else {}))
        running = await start_agent(config, clock=clock)
        return Town(running, clock)

    return fixture


async def minute_of_seconds(town: Town, households, value, seconds: int = 60) -> float:
    """Every household posts once a second for `seconds` (value(i, s) -> watts, or None: silent); returns the
    start of the first second."""
    start = town.clock.now
    for s in range(seconds):
        for i, h in enumerate(households):
            w = value(i, s)
            if w is not None:
                await town.post(h, w)
        town.clock.step(1)
    return start


# --- P5 and P2: exact differences, and households related to the organization ------------------------------
async def test_p5_related_household_plus_a_second_organization_isolates_nobody(town):
    """A variant the audit must see: organization A's cohort is organization B's plus the target x and r, a test
    meter of A's (marked related to A: A knows its readings). A - B - r = x. The audit counts r as known."""
    a_id, a_key = await town.org("dso", "A")
    b_id, b_key = await town.org("dso", "B")
    common = await town.households_(10)
    x, r = await town.households_(2)
    await town.mark_related(r, [a_id])
    await town.grant(a_id, [*common, x, r])
    await town.grant(b_id, common)
    await town.to_next(1)
    start = town.clock.now
    values = {h: 200.0 + 13 * i for i, h in enumerate([*common, x, r])}
    for h, w in values.items():
        await town.post(h, w)
    town.clock.step(1)
    a, a_refused = await town.window(a_key, "1s", start)
    b, b_refused = await town.window(b_key, "1s", start)
    # old design (and the audit before related households counted as known): both released, A - B - r = x
    old = sum(values[h] for h in [*common, x, r]) - sum(values[h] for h in common) - values[r]
    assert old == pytest.approx(values[x])
    assert (a is None) != (b is None), (a, b, a_refused, b_refused)
    assert (a_refused or b_refused)["error"] == "isolating"
