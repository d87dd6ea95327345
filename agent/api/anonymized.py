"""GET /data/anonymized: per-household rows of the consenting neighbourhood (consent `anonymized_data`),
generalized and suppressed until the level's k, l and t hold, with a report of the figures achieved; refused with
409 naming the requirement that cannot be met. Every access, released or refused, is in the audit log."""

from __future__ import annotations

import asyncio
import bisect
import math
from datetime import datetime, timezone

from aiohttp import web

from agent.api.common import ApiError, agent_of, parse_time, require
from agent.api.data import level_of
from agent.auth import ORGANIZATION
from agent.config import WINDOW_SECONDS
from agent.privacy.anonymize import HouseholdSeries, Refusal, anonymize, static_from_rollups
from drivers.reading import iso

MAX_ANONYMIZED_DAYS = 7
STATIC_LOOKBACK_S = 7 * 86400  # static attributes are derived from at least this much history
SERVICE = "anonymized_data"


def _iso(moment: float) -> str:
    return iso(datetime.fromtimestamp(moment, timezone.utc))


def _seconds(stamp) -> float:
    if isinstance(stamp, (int, float)):
        return float(stamp)
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --- GET /data/anonymized ------------------------------------------------------------------------
async def get_anonymized(request: web.Request) -> web.Response:
    org = require(request, ORGANIZATION).organization
    agent = agent_of(request)
    level = level_of(agent, org)
    rules = level.anonymized
    if rules.k == 0:
        raise ApiError(403, "not_permitted", f"level {level.name!r} does not receive anonymized per-household data"
                       + (" (differentially private aggregates only: GET /data/dp)" if level.dp.only else ""))
    q = request.query
    resolution = q.get("resolution", rules.resolution)
    if resolution not in ("15m", "1h"):
        raise ApiError(400, "bad_parameter", "resolution must be 15m or 1h")
    if WINDOW_SECONDS[resolution] < WINDOW_SECONDS[rules.resolution]:
        raise ApiError(403, "resolution_not_permitted", f"level {level.name!r} gets anonymized data at "
                       f"{rules.resolution} or coarser")
    res = WINDOW_SECONDS[resolution]
    now = agent.settled_until()  # a period ending after a consent change still being written has not ended
    last = int(now // res) * res  # periods that have ended
    until = parse_time(q.get("to"), "to")
    since = parse_time(q.get("from"), "from")
    until = last if until is None else min(int(until // res) * res, last)
    since = until - 86400 if since is None else int(math.ceil(since / res)) * res
    if until <= since:
        raise ApiError(400, "bad_parameter", "to must be after from, and the range must hold a whole period "
                       "that has ended")
    if until - since > MAX_ANONYMIZED_DAYS * 86400:
        raise ApiError(400, "bad_parameter", f"at most {MAX_ANONYMIZED_DAYS} days per request")
    periods = list(range(int(since), int(until), res))
    cohorts = {p: agent.registry.cohort(org.id, SERVICE, p, p + res) for p in periods}  # on the event loop
    households = [h for h in agent.registry.all_households() if any(h.id in c for c in cohorts.values())]
    timelines = {h.id: agent.registry.consent_timeline(h.id, org.id, SERVICE) for h in households}
    series = await asyncio.to_thread(_gather, agent, households, cohorts, periods, res, timelines)
    result = await asyncio.to_thread(anonymize, series, rules, resolution_s=res, level=level.name,
                                     periods=periods)
    span = {"from": _iso(since), "to": _iso(until)}
    if isinstance(result, Refusal):
        await agent.audit.record_durable(org.id, ORGANIZATION, "data.anonymized", **span, released=False,
                                         requirement=result.requirement, households=result.households)
        raise ApiError(409, f"{result.requirement}_not_met", result.detail, requirement=result.requirement,
                       households=result.households)
    report = {**result.report, **span}
    await agent.audit.record_durable(org.id, ORGANIZATION, "data.anonymized", **span, released=True,
                                     rows=report["rows"], households=report["households"], k=report["k"],
                                     l=report["l"], t=report["t"])
    return web.json_response({"records": result.records, "report": report})


def _gather(agent, households, cohorts: dict[int, set[str]], periods: list[int], res: int,
            timelines: dict[str, tuple[list[float], list[bool]]]) -> list[HouseholdSeries]:
    """Per household in some period's cohort: static attributes from its stored 15-minute rollups, and its
    mean consumption per period for the periods throughout which its consent held (cohort per period,
    so that every release of a period has the same households in it). Runs in a worker thread: it reads
    only the store, never the registry."""
    since, until = periods[0], periods[-1] + res
    out = []
    for household in households:
        rows = agent.store.readings(household.meter_id, since=min(since, until - STATIC_LOOKBACK_S),
                                    until=until, resolution="15m", limit=10**6)
        sums: dict[int, list[float]] = {}
        for row in rows:
            start = _seconds(row["start"])
            if start < since or row.get("power_import_w") is None:
                continue
            period = int(start // res) * res
            if household.id not in cohorts.get(period, ()):
                continue
            weight = row.get("count") or 1
            acc = sums.setdefault(period, [0.0, 0.0])
            acc[0] += row["power_import_w"] * weight
            acc[1] += weight
        # Static attributes only from quarters in which the household's consent held: data from outside
        # its consent is never used, not even to describe it.
        times, granted = timelines[household.id]
        consented = [row for row in rows
                     if (i := bisect.bisect_right(times, _seconds(row["start"]))) and granted[i - 1]]
        if sums:
            out.append(HouseholdSeries(household.id, static_from_rollups(consented),
                                       {p: total / n for p, (total, n) in sums.items()}))
    return out


def add_routes(app: web.Application) -> None:
    app.router.add_get("/data/anonymized", get_anonymized)
