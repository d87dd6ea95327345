"""What organizations get beyond exact aggregates: anonymized per-household data and DP aggregates.

GET /data/anonymized  per-household rows of the consenting neighbourhood (consent `anonymized_data`),
                      generalized and suppressed until the level's k, l and t hold, with a report of the
                      figures achieved; refused with 409 naming the requirement that cannot be met.
GET /data/dp          neighbourhood sums with OpenDP noise (clamp, sum, discrete Laplace or Gaussian),
                      charged to the organization's daily budget (429 when spent, with when it renews).
GET /data             for levels with `dp.only`, answers like /data/dp: never an exact aggregate.

Every access, released or refused, is written to the audit log.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone

from aiohttp import web

from agent.api.common import ApiError, KeyedLocks, agent_of, parse_time, require
from agent.api.data import (MAX_HISTORY_WINDOWS, check_access, level_of, refuse_hidden_tag, refusal_error,
                             shown_refusal)
from agent.auth import ORGANIZATION
from agent.config import WINDOW_SECONDS, Level
from agent.privacy import dp
from agent.privacy.budget import BudgetExceeded
from drivers.reading import iso

DP_WINDOWS = ("15m", "1h")
# One DP request per organization at a time, from its cache check to its spend being on disk: two requests can
# neither both spend the last of the day's budget nor both pay for (and draw noise for) the same window.
DP_LOCKS = web.AppKey("dp_organization_locks", KeyedLocks)


def _iso(moment: float) -> str:
    return iso(datetime.fromtimestamp(moment, timezone.utc))


# --- DP aggregates -----------------------------------------------------------------------------
def _dp_guarantee(level: Level) -> str:
    cfg = level.dp
    delta = f", delta = {cfg.delta:g}" if cfg.noise == "gaussian" else ""
    return (f"epsilon = {cfg.epsilon:g}{delta} per window, per household: adding or removing one household's "
            f"readings in one window changes the probability of any answer by at most a factor e^{cfg.epsilon:g}; "
            f"at most {cfg.epsilon_per_day:g} per organization per UTC day (the daily budget)")


def _clamp(request: web.Request, level: Level, tag: str | None) -> int:
    value = request.query.get("clamp_w")
    if value is None:
        return level.dp.tag_clamp_w if tag else level.dp.clamp_w
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 1_000_000:
        raise ApiError(400, "bad_parameter", "clamp_w must be an integer from 1 to 1000000 (watts)")
    return int(value)


async def get_dp(request: web.Request) -> web.Response:
    org = require(request, ORGANIZATION).organization
    agent = agent_of(request)
    level = level_of(agent, org)
    window = request.query.get("window", "15m" if "15m" in level.windows else level.windows[-1])
    if window not in DP_WINDOWS:
        raise ApiError(400, "bad_parameter", f"window must be one of {', '.join(DP_WINDOWS)}")
    window, tag = check_access(level, org, window, request.query.get("tag"))
    await refuse_hidden_tag(request, agent, org, window, tag, "data.dp")  # before anything is computed or charged
    return await dp_aggregates(request, agent, org, level, window, tag)


async def dp_aggregates(request: web.Request, agent, org, level: Level, window: str, tag: str | None) -> web.Response:
    """The DP answer for one organization (window and tag already checked against its level)."""
    if not dp.available():
        await agent.audit.record_durable(org.id, ORGANIZATION, "data.dp", window=window, tag=tag, released=False,
                                         error="dp_unavailable")
        raise ApiError(503, "dp_unavailable", dp.unavailable_reason())
    clamp = _clamp(request, level, tag)
    q = request.query
    width = WINDOW_SECONDS[window]
    now = agent.clock()
    history = "since" in q or "until" in q
    if history:
        since, until = parse_time(q.get("since"), "since"), parse_time(q.get("until"), "until")
        since = now - 3600 if since is None else since
        settled = agent.settled_until()  # not a window ending after a consent change still being written
        until = settled if until is None else min(until, settled)
        if until <= since:
            raise ApiError(400, "bad_parameter", "until must be after since")
        first, last = int(since // width) * width, int(until // width) * width
        if (last - first) // width > MAX_HISTORY_WINDOWS:  # before building anything
            raise ApiError(400, "bad_parameter", f"at most {MAX_HISTORY_WINDOWS} windows per request")
        starts = list(range(first, last, width))
    else:
        starts = [agent.books[window].last_closed(now)]
    cfg = level.dp
    quantities = ("consumption",) if tag else ("consumption", "production")
    try:
        mechanism = dp.calibrate(cfg.noise, clamp, cfg.epsilon / len(quantities), cfg.delta)
    except (ValueError, dp._dp.OpenDPException) as err:  # an operator's extreme setting
        raise ApiError(503, "dp_unavailable", f"cannot calibrate noise for this level: {str(err).strip()[:200]}")
    keys = {start: f"{window}|{start}|{tag or ''}|{clamp}" for start in starts}
    lock = request.app[DP_LOCKS](org.id)

    async def locked():
        # From the cache check to the spend (and the answers) being on disk, whole: a cancelled request keeps
        # the organization's lock until its write has settled, or the next request would pay again.
        async with lock:
            try:
                released, refused, plan = await _release(agent, org, level, window, tag, starts, keys, history,
                                                         mechanism, quantities)
            except BudgetExceeded as err:
                return None, err
            return (released, refused, plan, agent.budget.status(org.id, cfg)), None
    outcome, exceeded = await agent.shielded(locked())
    if outcome is not None:
        released, refused, plan, budget = outcome
    if exceeded is not None:
        await agent.audit.record_durable(org.id, ORGANIZATION, "data.dp", window=window, tag=tag, released=False,
                                         error="budget_exhausted", windows=exceeded.windows)
        retry = max(1, math.ceil(exceeded.renews_at - agent.clock()))
        raise ApiError(429, "budget_exhausted", exceeded.detail, {"Retry-After": str(retry)},
                       renews_at=exceeded.status["renews_at"], budget=exceeded.status)
    await agent.audit.record_durable(org.id, ORGANIZATION, "data.dp", window=window, tag=tag,
                                     released=len(released), refused=len(refused),
                                     epsilon_spent=round(cfg.epsilon * len(plan), 6))
    refused = [shown_refusal(r, tag, agent.config.privacy.k_min) for r in refused]  # no counts for a tag
    if not history:
        if refused:
            raise refusal_error(refused[0])
        return web.json_response({**released[starts[0]], "budget": budget})
    return web.json_response({"window": window, "tag": tag, "released": [released[s] for s in sorted(released)],
                              "refused": refused, "budget": budget})


async def _release(agent, org, level: Level, window: str, tag: str | None, starts: list[int], keys: dict,
                   history: bool, mechanism: dp.Mechanism, quantities: tuple[str, ...]):
    """Under the organization's DP lock: the windows answered from the log, those refused (cohort too small),
    and the fresh ones, charged and on disk before this returns. BudgetExceeded (with `.windows`) charges nothing."""
    missing = [s for s in starts if agent.budget.cached(org.id, keys[s]) is None]
    if not missing:
        contributions = {}
    elif history:
        contributions = await asyncio.to_thread(agent.history_contributions, agent.consenting_meters(org.id),
                                                window, missing, tag)
    else:
        contributions = {starts[0]: agent.books[window].contributions(starts[0])}
    cfg = level.dp
    released: dict[int, dict] = {}
    refused: list[dict] = []
    plan: dict[int, list[list[float]]] = {}
    for start in starts:
        cached = agent.budget.cached(org.id, keys[start])
        if cached is not None:
            released[start] = cached
            continue
        values = _values(agent, org.id, window, start, contributions.get(start, {}), tag)
        k_min = agent.config.privacy.k_min
        if len(values[0]) < k_min:
            n = len(values[0])
            refused.append({"window_start": _iso(start), "error": "cohort_too_small",
                            "detail": f"{n} consenting households have data in this window; at least {k_min} "
                                      f"are needed ({k_min - n} missing)", "households": n,
                            "missing": k_min - n})
            continue
        plan[start] = values if not tag else values[:1]
    mechanisms = [mechanism for values in plan.values() for _ in values]
    if mechanisms:
        try:
            agent.budget.spend(org.id, cfg, mechanisms)
        except BudgetExceeded as err:
            err.windows = len(plan)
            raise
    fresh = {}
    for start, values in plan.items():
        noisy = [mechanism.release(v) for v in values]
        body = _dp_body(window, start, tag, len(values[0]), noisy, mechanism, level, quantities)
        released[start] = fresh[keys[start]] = body
    if fresh:
        await agent.budget.record_async(org.id, mechanisms, fresh)  # durable before anything is answered
    return released, refused, plan


def _values(agent, org_id: str, window: str, start: int, contributions: dict, tag: str | None) -> list[list[float]]:
    """[consumption values, production values] of the window's cohort (consent `aggregates` held
    throughout the window), one per household with data in it."""
    end = start + WINDOW_SECONDS[window]
    cohort = agent.registry.cohort(org_id, "aggregates", start, end)
    meters = {agent.registry.meter_of(h) for h in cohort}
    members = [c for meter, c in contributions.items() if meter in meters and (tag is None or tag in c.channels)]
    if tag:
        return [[c.channels[tag] for c in members]]
    return [[c.consumption_w for c in members], [c.production_w for c in members]]


def _dp_body(window: str, start: int, tag: str | None, n: int, noisy: list[int], mechanism: dp.Mechanism,
             level: Level, quantities: tuple[str, ...]) -> dict:
    width = WINDOW_SECONDS[window]
    consumption = noisy[0]
    production = noisy[1] if len(noisy) > 1 else None
    cfg = level.dp
    return {
        "window": window,
        "window_start": _iso(start),
        "window_end": _iso(start + width),
        "households": n,
        "tag": tag,
        "consumption_w": consumption,
        "production_w": production,
        "net_w": None if production is None else consumption - production,
        "energy_import_wh": round(consumption * width / 3600, 3),
        "energy_export_wh": None if production is None else round(production * width / 3600, 3),
        "mean_w": round(consumption / n, 3),
        "dp": {
            "epsilon": cfg.epsilon,
            **({"delta": cfg.delta} if cfg.noise == "gaussian" else {}),
            "unit": dp.UNIT,
            "guarantee": _dp_guarantee(level),
            "noisy": list(quantities),
            "per_quantity": mechanism.public(cfg.delta),
            "households_exact": True,  # the cohort size is public (k_min rule), the values are not
        },
    }


def add_routes(app: web.Application) -> None:
    app[DP_LOCKS] = KeyedLocks()
    app.router.add_get("/data/dp", get_dp)
