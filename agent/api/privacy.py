"""GET /data/dp: the noisy level's recorded releases, by the name the first version gave them.

A noisy level's every answer is already noised once, recorded and shared (agent/release/), so GET /data and
GET /data/dp give the same answers; an exact level has no noisy release to give.
"""

from __future__ import annotations

from aiohttp import web

from agent.api.common import ApiError, agent_of, require
from agent.api.data import answer, check_access, level_of
from agent.auth import ORGANIZATION
from agent.privacy import dp


async def get_dp(request: web.Request) -> web.Response:
    org = require(request, ORGANIZATION).organization
    agent = agent_of(request)
    level = level_of(agent, org)
    if not level.noisy:
        raise ApiError(403, "not_noisy", f"level {level.name!r} is an exact level: its releases are exact "
                       "(GET /data)")
    if not dp.available():
        raise ApiError(503, "dp_unavailable", dp.unavailable_reason())
    window, tag = check_access(level, org, request.query.get("window", level.finest), request.query.get("tag"),
                               agent.config.privacy.tags)
    return await answer(request, agent, org, window, tag)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/data/dp", get_dp)
