"""A town for the attack suites: a running agent on a stepped clock, its households and organizations, and the
operator's configurations (privacy knobs, noisy levels)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.config import DEFAULT_LEVELS, Level, PrivacyConfig
from agent.config import WINDOW_SECONDS as WIDTH
from drivers.reading import iso as stamp  # a moment as the releases write it
from tests.helpers.agent import make_config
from tests.helpers.clock import T0, StepClock

QUARTER = 900


# --- the attacker's and the households' moves, through the public API --------------------------------------
class Town:
    """A running agent on a stepped clock, its households (id, token) and organizations (id, key)."""

    def __init__(self, start, config, clock):
        self.start, self.config, self.clock = start, config, clock
        self.running = None
        self.households: list[tuple[str, str]] = []
        self._orgs = 0

    async def up(self) -> Town:
        self.running = await self.start(self.config, clock=self.clock)
        return self

    async def restart(self) -> None:
        """Stop the agent cleanly and start it again on the same data directory (and clock)."""
        await self.running.http.close()
        await self.running.agent.stop()
        self.running = await self.start(self.config, clock=self.clock)

    async def households_(self, n: int, **body) -> list[tuple[str, str]]:
        made = []
        for _ in range(n):
            status, out = await self.running.call("POST", "/households", json=body)
            assert status == 201, out
            made.append((out["id"], out["token"]))
        self.households += made
        return made

    async def org(self, level: str, name: str | None = None) -> tuple[str, str]:
        self._orgs += 1
        return await self.running.create_org(name or f"Org {self._orgs} ({level})", level)

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

    async def live(self, key: str, window: str, path: str = "/data", extra: str = ""):
        """The newest decided window: (status, body)."""
        return await self.data(key, f"window={window}{extra}", path)

    async def window(self, key: str, window: str, start: float, tag: str | None = None, path: str = "/data",
                     extra: str = ""):
        """One window from history: (body, None) if released, (None, refusal) if not."""
        query = (f"window={window}&since={start}&until={start + WIDTH[window]}" + (f"&tag={tag}" if tag else "")
                 + extra)
        status, body = await self.data(key, query, path)
        assert status == 200, body
        assert len(body["released"]) + len(body["refused"]) == 1, body
        if body["released"]:
            return body["released"][0], None
        return None, body["refused"][0]

    async def windows(self, key: str, window: str, since: float, until: float) -> list[dict]:
        """Every window of [since, until) in order: the released body, or {"refused": {error, detail, ...}}."""
        status, body = await self.data(key, f"window={window}&since={since}&until={until}")
        assert status == 200, body
        out = {b["window_start"]: b for b in body["released"]}
        out.update({r["window_start"]: {"refused": {k: v for k, v in r.items() if k != "window_start"}}
                    for r in body["refused"]})
        starts = [since + i * WIDTH[window] for i in range(int((until - since) // WIDTH[window]))]
        return [out[stamp(s)] for s in starts]

    async def live_or_refusal(self, key: str, window: str) -> dict:
        """The newest decided window as `windows` gives it: the body, or {"refused": ...} (a 409)."""
        status, body = await self.live(key, window)
        if status == 200:
            return body
        assert status == 409, body
        return {"refused": body}

    async def to_next(self, seconds: int) -> float:
        """Step to the start of the next whole window of this width; returns it."""
        self.clock.step(seconds - self.clock.now % seconds)
        return self.clock.now


def config_for(tmp_path, levels: dict | None = None, **privacy):
    overrides = {}
    if privacy:
        overrides["privacy"] = replace(PrivacyConfig(), **privacy)
    if levels:
        overrides["levels"] = {**DEFAULT_LEVELS, **levels}
    return make_config(tmp_path, **overrides)


def noisy_level(name: str = "supplier", **dp) -> Level:
    level = DEFAULT_LEVELS[name]
    return replace(level, dp=replace(level.dp, **dp))


@pytest.fixture
async def town(tmp_path, start_agent):
    return await Town(start_agent, config_for(tmp_path), StepClock(T0)).up()


@pytest.fixture
def make_town(tmp_path, start_agent):
    """A town on an operator's non-default configuration."""
    async def make(levels: dict | None = None, **privacy) -> Town:
        return await Town(start_agent, config_for(tmp_path, levels, **privacy), StepClock(T0)).up()
    return make
