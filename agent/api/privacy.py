"""GET /data/dp: the noisy level's recorded releases, by the name the first version gave them.

A noisy level's every answer is already noised once, recorded and shared (agent/release/), so GET /data and
GET /data/dp give the same answers; an exact level has no noisy release to give.
"""

from __future__ import annotations

from aiohttp import web

from agent.api.common import ApiError, Http, agent_of, caller
from agent.api.data import (AGGREGATE_ERRORS, AGGREGATES, SPAN_QUERY, TAG_QUERY, WINDOW_QUERY, answer, check_access,
                            level_of)
from agent.api.spec import ORG, Route, error
from agent.privacy import dp


async def get_dp(request: web.Request) -> web.Response:
    org = caller(request).organization
    agent = agent_of(request)
    level = level_of(agent, org)
    if not level.noisy:
        raise ApiError(Http.NOT_NOISY, f"level {level.name!r} is an exact level: its releases are exact "
                       "(GET /data)")
    if not dp.available():
        raise ApiError(Http.DP_UNAVAILABLE, dp.unavailable_reason())
    window, tag = check_access(level, org, request.query.get("window", level.finest), request.query.get("tag"),
                               agent.config.privacy.tags)
    return await answer(request, agent, org, window, tag)


ROUTES = (
    Route("GET", "/data/dp", get_dp, ORG,
          "A noisy level's releases (the same records GET /data answers with): OpenDP's clamp, sum and discrete "
          "Gaussian (or Laplace) with the level's fixed clamp, drawn once per window and shared by every "
          "organization of the level with the same cohort, charged to each household's ledger", "organization",
          {"200": {"description": "The newest decided window, or history with since/until", **AGGREGATES}},
          ({**WINDOW_QUERY, "description": "default: the level's finest"}, TAG_QUERY, *SPAN_QUERY),
          errors={**AGGREGATE_ERRORS, "503": error(f"OpenDP is not available on this device ({Http.DP_UNAVAILABLE})")}),
)
