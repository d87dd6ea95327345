"""What organizations may see: the parameter catalogue and neighbourhood aggregates.

Aggregates are never computed here: every answer, live or history, is the release module's record
(agent/release/), so asking twice, asking live and later, or asking for a wider window gives nothing that the
records do not already say. A refusal is a 409 that says why, never a partial answer. Every access is written
to the audit log.
"""

from __future__ import annotations

from aiohttp import web

from agent.access import AccessCode, denied
from agent.api.common import ApiError, Http, agent_of, caller, parse_time
from agent.api.spec import ANY_ROLE, ORG, REFUSED, TIME_PARAM, Route, error, ok_json, query, ref
from agent.auth import OPERATOR, ORGANIZATION
from agent.config import WINDOW_SECONDS, Level
from agent.ingest import TAG
from agent.parameters import catalogue, permitted
from agent.release import Refusal, RefusalCode
from agent.release.grid import BAND_EDGES_V
from agent.services import Services
from drivers.reading import iso

MAX_HISTORY_WINDOWS = 1000


def level_of(agent: Services, org) -> Level:
    level = agent.config.levels.get(org.level)
    if level is None:
        raise ApiError(Http.FORBIDDEN, f"the organization's level {org.level!r} is not configured on this device")
    return level


async def parameters(request: web.Request) -> web.Response:
    who = caller(request)
    agent = agent_of(request)
    level = level_of(agent, who.organization) if who.role == ORGANIZATION else None
    out = []
    # The vocabulary, not the tags households carry: the same list for every caller (P11).
    for param in catalogue(agent.config.privacy.tags):
        if who.role == OPERATOR:
            allowed = True
        elif level is not None:
            allowed = permitted(param.name, level, who.organization.parameters)
        else:
            allowed = False
        out.append({**param.public(), "permitted": allowed})
    return web.json_response({"parameters": out, "privacy": privacy_terms(agent, level),
                              "trigger_disclosure": agent.triggers.disclosure()})


def privacy_terms(agent: Services, level: Level | None) -> dict:
    """What the caller's level releases and with which guarantee, in the household's terms (PRIVACY.md)."""
    privacy = agent.config.privacy
    terms = {"k_min": privacy.k_min, "ledger": {"horizon_days": privacy.horizon_days, "cap_rho": privacy.cap_rho},
             "grid_band_edges_v": list(BAND_EDGES_V)}  # the voltage bands of every grid part's counts
    if level is not None:
        terms["level"] = {"name": level.name, "kind": level.kind, "windows": list(level.windows),
                          "finest": level.finest}
        if level.noisy:
            cfg = level.dp
            terms["level"].update(noise=cfg.noise, rho_per_window=cfg.loss(), clamp_w=cfg.clamp_w,
                                  tag_clamp_w=cfg.tag_clamp_w, tags=list(cfg.tags),
                                  # grid quantities: off unless the operator enables them; then each window costs more
                                  grid=list(cfg.grid), grid_rho_per_window=cfg.grid_rho if cfg.grid else 0)
    return terms


def check_access(level: Level, org, window: str, tag: str | None, tags: tuple[str, ...]) -> tuple[str, str | None]:
    """May this organization have this window (and tag)? (agent/access.py) Used by GET /data and subscriptions."""
    refusal = denied(level, org, window, tag, tags)
    if refusal is not None:
        raise refusal
    return window, tag


def refusal_error(refusal: Refusal) -> ApiError:
    public = refusal.public()
    return ApiError(RefusalCode(public.pop("error")), public.pop("detail"), **public)


async def get_data(request: web.Request) -> web.Response:
    org = caller(request).organization
    agent = agent_of(request)
    level = level_of(agent, org)
    window = request.query.get("window", level.finest if "1m" not in level.windows else "1m")
    window, tag = check_access(level, org, window, request.query.get("tag"), agent.config.privacy.tags)
    return await answer(request, agent, org, window, tag)


async def answer(request: web.Request, agent: Services, org, window: str, tag: str | None) -> web.Response:
    """The recorded answer: the newest decided window, or with since/until every window in the span."""
    await agent.releases.settle()  # windows that have ended are decided now rather than at the next pass
    if "since" in request.query or "until" in request.query:
        return await _history(request, agent, org, window, tag)
    start = agent.releases.last_settled(window)
    if start is None:
        result: dict | Refusal = Refusal(RefusalCode.NOT_SETTLED, "no window of this width has been decided "
                                         "since the device started; ask again after the first one has ended")
    else:
        result = agent.releases.answer(org.id, window, start, tag)
    released = not isinstance(result, Refusal)
    await agent.audit.record_durable(org.id, ORGANIZATION, "data.read", window=window, window_start=start, tag=tag,
                                     released=released, **({} if released else {"error": result.error}))
    if not released:
        raise refusal_error(result)
    return web.json_response(result)


async def _history(request, agent: Services, org, window: str, tag: str | None) -> web.Response:
    now = agent.clock()
    since = parse_time(request.query.get("since"), "since")
    until = parse_time(request.query.get("until"), "until")
    since = now - 3600 if since is None else since
    until = now if until is None else min(until, now)
    if until <= since:
        raise ApiError(Http.BAD_PARAMETER, "until must be after since")
    width = WINDOW_SECONDS[window]
    first, last = int(since // width) * width, int(until // width) * width  # closed windows only
    if (last - first) // width > MAX_HISTORY_WINDOWS:  # before building anything
        raise ApiError(Http.BAD_PARAMETER, f"at most {MAX_HISTORY_WINDOWS} windows per request; "
                       "narrow since/until or use a larger window")
    await agent.releases.settle()
    limit = agent.releases.settle_limit()
    starts = [s for s in range(first, last, width) if s + width <= limit]  # ended; the log has the rest
    answers = await agent.releases.history(org.id, window, starts, tag)
    released, refused = [], []
    for start in starts:
        result = answers[start]
        if isinstance(result, Refusal):
            refused.append({"window_start": iso(start), **result.public()})
        else:
            released.append(result)
    await agent.audit.record_durable(org.id, ORGANIZATION, "data.history", window=window, since=first, until=until,
                                     tag=tag, released=len(released), refused=len(refused))
    return web.json_response({"window": window, "tag": tag, "released": released, "refused": refused})


# The query of every aggregate endpoint (GET /data, GET /data/dp).
WINDOW_QUERY = query("window", {"enum": list(WINDOW_SECONDS)})
TAG_QUERY = query("tag", {"type": "string", "pattern": TAG.pattern})
SPAN_QUERY = (query("since", TIME_PARAM, "history from the release log instead of the last decided window"),
              query("until", TIME_PARAM))
AGGREGATES = {"content": {"application/json": {"schema": {"oneOf": [ref("Aggregate"), ref("AggregateHistory")]}}}}
AGGREGATE_ERRORS = {"400": error(f"Bad parameter, or a tag outside the vocabulary ({AccessCode.UNKNOWN_TAG.value})"),
                    "409": REFUSED}
ROUTES = (
    Route("GET", "/parameters", parameters, ANY_ROLE,
          "The parameter catalogue, with what the caller may use; the same list for every caller: channel parameters "
          "for exactly the device's tag vocabulary ([privacy] tags), whatever households carry", "organization",
          {"200": ok_json("Parameters")}),
    Route("GET", "/data", get_data, ORG,
          "Neighbourhood aggregates over consenting households, as released once per window (exact at exact levels, "
          "OpenDP noise at noisy ones)", "organization",
          {"200": {"description": "The newest decided window, or with since/until every decided window in the span "
                                  "(from the release log)", **AGGREGATES}},
          (WINDOW_QUERY, TAG_QUERY, *SPAN_QUERY), errors=AGGREGATE_ERRORS),
)
