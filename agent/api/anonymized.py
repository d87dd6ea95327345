"""GET /data/anonymized: per-household rows of the consenting neighbourhood (consent `anonymized_data`),
generalized and suppressed until the level's k, l and t hold, with a report of the figures achieved; refused with
409 naming the requirement that cannot be met. Every access, released or refused, is in the audit log.

The release grid is fixed: one release per whole UTC day at the level's resolution, computed the first time any
organization of the level with the same cohort asks for any part of that day (once the day has settled), recorded
through the one door (`agent.releases.once`) and answered from the record ever after. A request for a range gets
exactly the recorded rows of the periods it overlaps: never a row the day's release suppressed, and the same rows
however the day is asked for. Non-custodian levels (`linkable = false`) get rows that no pseudonym, count or order
links across periods; the custodian gets one pseudonym per household per day.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import weakref
from collections.abc import AsyncIterator, Iterator

from aiohttp import web

from agent.api.common import ApiError, Http, agent_of, caller, parse_time, stream_json
from agent.api.data import level_of
from agent.api.spec import ORG, TIME_PARAM, Route, error, ok_json, query
from agent.auth import ORGANIZATION
from agent.config import WINDOW_SECONDS
from agent.privacy.anonymize import DAY_S, HouseholdSeries, day_periods, release_day, select, static_from_rollups
from agent.registry import ConsentLine
from agent.release import RefusalCode
from agent.services import Services
from drivers.reading import iso, unix_seconds

MAX_ANONYMIZED_DAYS = 7
QUARTER_S = WINDOW_SECONDS["15m"]  # the stored rollups static attributes are read from
STATIC_LOOKBACK_S = 7 * 86400  # static attributes are derived from at least this much history
SETTLE_S = 900  # a day is released once it ended this long ago: late readings of its last quarter are in
SERVICE = "anonymized_data"
KIND = "anonymized"  # the kind of `once` record of a day's release
KIND_WITHHELD = "anonymized-withheld"  # ...and of the periods withheld from an organization's day
RESOLUTIONS = ("15m", "1h")  # the anonymized grid's choices


# --- GET /data/anonymized ------------------------------------------------------------------------
async def get_anonymized(request: web.Request) -> web.StreamResponse:
    org = caller(request).organization
    agent = agent_of(request)
    level = level_of(agent, org)
    rules = level.anonymized
    if rules.k == 0:
        raise ApiError(Http.NOT_PERMITTED, f"level {level.name!r} does not receive anonymized per-household data"
                       + (" (noisy aggregates only: GET /data)" if level.noisy else ""))
    res = _resolution(request.query.get("resolution"), level)
    since, until, days = _range(request.query, agent.releases.settle_limit())
    # A day at a time: each day's release decided (or read back), its rows counted and let go; the rows are
    # read back again, a day at a time, as they are written (memory holds one day, whatever the range).
    docs, keys, rows = [], [], 0
    for day in days:
        key, doc = await keyed_day_release(agent, org.id, level, res, day)
        if "records" in doc:
            rows += len(select(doc, since, until))
            keys.append(key)
        docs.append({name: value for name, value in doc.items() if name != "records"})
        del doc
    span = {"from": iso(since), "to": iso(until)}
    released = [doc for doc in docs if "report" in doc]
    if not released:
        refused = docs[0]["refused"]
        await agent.audit.record_durable(org.id, ORGANIZATION, "data.anonymized", **span, released=False,
                                         requirement=refused["requirement"],
                                         households=max(doc["audit"]["households"] for doc in docs))
        raise ApiError(Http(f"{refused['requirement']}_not_met"), refused["detail"],
                       requirement=refused["requirement"])
    report = _report(level, res, docs, released, rows, span)
    await agent.audit.record_durable(org.id, ORGANIZATION, "data.anonymized", **span, released=True,
                                     rows=rows, days=len(days), k=report["k"], l=report["l"], t=report["t"])
    return await stream_json(request, '{"records": [', _recorded_rows(agent, keys, since, until),
                             lambda _: f'], "report": {json.dumps(report)}}}', "anonymized data")


async def _recorded_rows(agent: Services, keys: list[str], since: int, until: int) -> AsyncIterator[list[dict]]:
    """The rows of each recorded day release in [since, until), read back a day at a time."""
    for key in keys:
        yield select(await agent.releases.recorded(KIND, key), since, until)


def _resolution(asked: str | None, level) -> int:
    rules = level.anonymized
    resolution = asked or rules.resolution
    if resolution not in RESOLUTIONS:
        raise ApiError(Http.BAD_PARAMETER, f"resolution must be {' or '.join(RESOLUTIONS)}")
    if WINDOW_SECONDS[resolution] < WINDOW_SECONDS[rules.resolution]:
        raise ApiError(Http.RESOLUTION_NOT_PERMITTED, f"level {level.name!r} gets anonymized data at "
                       f"{rules.resolution} or coarser")
    if resolution != rules.resolution and not rules.linkable:
        # a second grid of the same days would be a second release of the same rows to compare with the first
        raise ApiError(Http.BAD_PARAMETER, f"level {level.name!r} gets anonymized data on one grid: "
                       f"{rules.resolution}")
    return WINDOW_SECONDS[resolution]


def _range(query, settled: float) -> tuple[int, int, list[int]]:
    """[since, until) as asked, and the whole UTC days it overlaps; only days that have settled."""
    last_day = int((settled - SETTLE_S) // DAY_S) * DAY_S  # the first day not yet released
    until = parse_time(query.get("to"), "to")
    since = parse_time(query.get("from"), "from")
    until = last_day if until is None else int(math.ceil(until))
    since = until - DAY_S if since is None else int(since)
    if until <= since:
        raise ApiError(Http.BAD_PARAMETER, "to must be after from")
    if until - since > MAX_ANONYMIZED_DAYS * DAY_S:
        raise ApiError(Http.BAD_PARAMETER, f"at most {MAX_ANONYMIZED_DAYS} days per request")
    first = since // DAY_S * DAY_S
    days = [day for day in range(first, until, DAY_S) if day + DAY_S <= last_day]
    if not days:
        raise ApiError(RefusalCode.NOT_SETTLED, "a day's anonymized release is made once the UTC day has ended (and "
                       f"{SETTLE_S // 60} minutes more); ask for days before {iso(last_day)}")
    return since, until, days


def _report(level, res: int, docs: list[dict], released: list[dict], rows: int, span: dict) -> dict:
    first = released[0]["report"]
    return {
        "level": level.name, **span,
        "resolution": first["resolution"],
        "quasi_identifiers": first["quasi_identifiers"], "sensitive_attribute": first["sensitive_attribute"],
        "k": min(doc["report"]["k"] for doc in released),
        "l": min(doc["report"]["l"] for doc in released),
        "t": max(doc["report"]["t"] for doc in released),
        "t_against": first["t_against"],
        "epsilon": None, "epsilon_spent": 0.0,
        "required": first["required"],
        "linkable": first["linkable"],
        "pseudonyms": first["pseudonyms"],
        "rows": rows,
        "grid": f"whole UTC days at {first['resolution']}; every range gets the recorded rows of the periods "
                "it overlaps",
        "days": [{**_answerable(doc["report"]), "released": True} if "report" in doc
                 else {"day": doc["day"], "released": False, **doc["refused"]} for doc in docs],
    }


# What a day's report said before red team 7 (R7-2): how many rows were suppressed, and for which requirement,
# depends on the households' values (a lone row's suppression named its hours). Kept in releases recorded
# then, never answered.
VALUE_COUNTS = ("rows_suppressed", "suppressed_for")


def _answerable(report: dict) -> dict:
    return {name: value for name, value in report.items() if name not in VALUE_COUNTS}


async def day_release(agent: Services, org_id: str, level, res: int, day: int) -> dict:
    """The recorded release of one day for this organization's cohort (`keyed_day_release`'s)."""
    return (await keyed_day_release(agent, org_id, level, res, day))[1]


async def keyed_day_release(agent: Services, org_id: str, level, res: int, day: int) -> tuple[str, dict]:
    """The recorded release of one day for this organization's cohort, and its key (`releases.recorded` reads
    it back): computed once (by the first organization
    of the level with exactly this consenting cohort to ask), then always the record, whatever changes later.
    Households the operator marked as related to any organization (employees, test meters) are left out when it
    is computed: their organization knows them, and they would only help it isolate the others."""
    periods = day_periods(day, res)
    cohorts, withheld = await _cohorts(agent, org_id, level, res, day)
    if not level.anonymized.linkable:
        # Decided once too: were it made again after the other organization is deleted, the day would be released
        # a second time, over other periods, perhaps generalized otherwise: two releases of one morning to compare.
        decided = await agent.releases.once(KIND_WITHHELD, f"{org_id}|{level.name}|{res}|{day}",
                                            lambda: {"withheld": withheld})
        withheld = [int(p) for p in decided["withheld"]]
    for period in withheld:
        cohorts[period] = set()
    members = set().union(*cohorts.values())
    digest = hashlib.sha256(json.dumps({str(p): sorted(c) for p, c in cohorts.items()},
                                       sort_keys=True).encode()).hexdigest()[:32]
    key = f"{level.name}|{res}|{day}|{digest}"
    households = [h for h in agent.registry.all_households() if h.id in members and not h.related_organizations]
    timelines = {h.id: agent.registry.consent_timeline(h.id, org_id, SERVICE) for h in households}

    def compute() -> dict:
        series = _gather(agent, households, cohorts, periods, res, timelines)
        doc = release_day(series, level.anonymized, resolution_s=res, level=level.name, day=day)
        if withheld and "report" in doc:
            doc["report"]["withheld_periods"] = [iso(p) for p in withheld]
            doc["report"]["withheld_because"] = ("another organization's cohort differs from this one by fewer "
                                                 "than k households in these periods")
        return doc

    return key, await agent.releases.once(KIND, key, compute)


_COHORTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # agent -> {question: answer}
COHORT_MEMO = 512


async def _cohorts(agent: Services, org_id: str, level, res: int, day: int) -> tuple[dict[int, set[str]], list[int]]:
    """The organization's consenting cohort per period of a settled day, and the periods to withhold. A settled
    day's cohorts never change, so the answer is kept (per set of organizations: a deleted one no longer
    counts) instead of going through every consent again on every request."""
    others = tuple(sorted(agent.registry.organizations))
    question = (org_id, level.name, res, day, others)
    memo = _COHORTS.setdefault(agent, {})
    if question not in memo:
        cohorts = {p: agent.registry.cohort(org_id, SERVICE, p, p + res) for p in day_periods(day, res)}
        withheld = [] if level.anonymized.linkable else await _too_close(agent, org_id, level, cohorts, res, day)
        memo[question] = (cohorts, withheld)
        while len(memo) > COHORT_MEMO:
            memo.pop(next(iter(memo)))
    cohorts, withheld = memo[question]
    return {p: set(c) for p, c in cohorts.items()}, list(withheld)


async def _too_close(agent: Services, org_id: str, level, cohorts: dict[int, set[str]], res: int, day: int) -> list[int]:
    """The periods in which another organization's unlinked release would be made from a cohort that differs
    from this one by fewer than k households, by consent or by the households whose rows are in the releases
    (those with data in the period, not related to any organization): the two releases' difference would be
    those few households' rows (their trajectory). Comparing consents alone let k silent or related households
    of an organization's own make the difference one household's rows (red team 6, R6-7). Such periods are
    withheld from both; identical cohorts share one record instead. Past periods' cohorts and stored readings
    do not change, so the decision is the same whenever and by whomever it is asked."""
    k = level.anonymized.k
    theirs = {}
    for other in list(agent.registry.organizations.values()):
        other_level = agent.config.levels.get(other.level)
        if other.id == org_id or other_level is None or other_level.anonymized.k == 0 \
                or other_level.anonymized.linkable:  # the custodian holds every reading anyway
            continue
        theirs[other.id] = (max(k, other_level.anonymized.k),
                            {p: agent.registry.cohort(other.id, SERVICE, p, p + res) for p in cohorts})
    if not theirs:
        return []
    everyone = set().union(*cohorts.values(), *(c for _, by in theirs.values() for c in by.values()))
    meters = {h.id: h.meter_id for h in agent.registry.all_households()
              if h.id in everyone and not h.related_organizations}
    with_rows = await asyncio.to_thread(_with_rows, agent, meters, day, res)
    close = set()
    for limit, by_period in theirs.values():
        for period, mine in cohorts.items():
            other = by_period[period]
            rows = with_rows.get(period, set())
            for a, b in ((mine, other), (mine & rows, other & rows)):
                if 0 < len(a ^ b) < limit:
                    close.add(period)
    return sorted(close)


def _with_rows(agent: Services, meters: dict[str, str], day: int, res: int) -> dict[int, set[str]]:
    """Period -> the households (of `meters`) with a stored reading in it: those a release can have a row of.
    Runs in a worker thread: it reads only the store."""
    out: dict[int, set[str]] = {}
    for household_id, meter_id in meters.items():
        rows = agent.store.readings(meter_id, since=day, until=day + DAY_S, resolution="15m", limit=10**6)
        for period, _ in _by_period(rows, day, day + DAY_S, res):
            out.setdefault(period, set()).add(household_id)
    return out


def _by_period(rows: list[dict], since: int, until: int, res: int) -> Iterator[tuple[int, dict]]:
    """(period, row) of each stored 15-minute row in [since, until) with a consumption: what a release has a row
    of. One rule for the rows released and for the withholding rule that compares them (R6-7)."""
    for row in rows:
        start = unix_seconds(row["start"])
        if since <= start < until and row.get("power_import_w") is not None:
            yield int(start // res) * res, row


def _gather(agent: Services, households, cohorts: dict[int, set[str]], periods: list[int], res: int,
            timelines: dict[str, ConsentLine]) -> list[HouseholdSeries]:
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
        for period, row in _by_period(rows, since, until, res):
            if household.id not in cohorts.get(period, ()):
                continue
            weight = row.get("count") or 1
            acc = sums.setdefault(period, [0.0, 0.0])
            acc[0] += row["power_import_w"] * weight
            acc[1] += weight
        # Static attributes only from quarters throughout which the household's consent held: data from
        # outside its consent is never used, not even to describe it (a reading sent in the minutes after a
        # revocation, or by a meter's next household, is in its quarter's rollup: red team 9a, R9a-2).
        line = timelines[household.id]
        consented = [row for row in rows
                     if line.held_throughout(unix_seconds(row["start"]), unix_seconds(row["start"]) + QUARTER_S)]
        if sums:
            out.append(HouseholdSeries(household.id, static_from_rollups(consented),
                                       {p: total / n for p, (total, n) in sums.items()}))
    return out


ROUTES = (
    Route("GET", "/data/anonymized", get_anonymized, ORG,
          "Per-household rows of consenting households, generalized and suppressed to the level's k, l, t and "
          "min_cell in every period; one recorded release per whole UTC day, any range gets its periods' recorded "
          "rows; no pseudonym below the custodian (one per household per day at it)", "organization",
          {"200": ok_json("AnonymizedRelease")},
          (query("from", TIME_PARAM, "default: 24 h before to"),
           query("to", TIME_PARAM, "default: the end of the last released day"),
           query("resolution", {"enum": list(RESOLUTIONS)}, "default: the level's grid")),
          errors={"400": error("Bad parameter"),
                  "409": error("The level's k, l or t cannot be met (says which), or the day has not ended "
                               "(not_settled)")}),
)
