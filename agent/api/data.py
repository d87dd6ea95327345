"""What organizations may see: the parameter catalogue and neighbourhood aggregates.

Aggregates are released only under the privacy rules (`agent.aggregates.release`); a refusal is
a 409 that says why, never a partial answer. Every access is written to the audit log (with the
household counts, for the operator).

A refusal of the neighbourhood aggregate says how many households are missing. A refusal of a channel tag's
aggregate never does: how many households carry a tag, or whether any does, is what GET /parameters keeps from
an organization until k_min of its consenting households carry it (`agent.parameters.visible_tags`). A tag the
organization may not see gets one fixed refusal of the live window (`tag_refusal`), the same whether the tag
exists or not, and so does every window, live or past, with too few carriers; GET /data/dp uses the same
helpers.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from aiohttp import web

from agent.aggregates import Refusal, release
from agent.api.common import ApiError, agent_of, parse_time, principal, require
from agent.auth import HOUSEHOLD, OPERATOR, ORGANIZATION
from agent.config import WINDOW_SECONDS, WINDOWS, Level
from agent.ingest import TAG
from agent.parameters import catalogue, permitted, visible_tags
from agent.registry import SERVICES
from drivers.reading import iso

MAX_HISTORY_WINDOWS = 1000


def level_of(agent, org) -> Level:
    level = agent.config.levels.get(org.level)
    if level is None:
        raise ApiError(403, "forbidden", f"the organization's level {org.level!r} is not configured on this device")
    return level


def tag_carriers(agent) -> dict[str, set[str]]:
    """{tag: meters that sent it} over the 15-minute windows still in memory (the last two hours or so)."""
    book = agent.books["15m"]
    start = book.window_start(agent.clock())
    carriers: dict[str, set[str]] = {}
    for _ in range(book.keep + 1):
        if not book.holds(start):
            break
        for meter, contribution in book.contributions(start).items():
            for tag in contribution.channels:
                carriers.setdefault(tag, set()).add(meter)
        start -= book.width_s
    return carriers


def _tags_for(agent, who) -> set[str]:
    """The channel tags this caller may see (agent.parameters.visible_tags): all for the operator, those of at
    least k_min households consenting to it for an organization, its own for a household."""
    if who.role == OPERATOR:
        return agent.known_tags()
    if who.role == ORGANIZATION:
        return _organization_tags(agent, who.organization.id)
    if who.role == HOUSEHOLD:
        return visible_tags(tag_carriers(agent), agent.config.privacy.k_min, own=who.household.meter_id)
    return set()


def _organization_tags(agent, org_id: str) -> set[str]:
    registry = agent.registry
    consenting = {h.meter_id for h in registry.households.values()
                  if any(registry.consent_state(h.id, org_id, service) for service in SERVICES)}
    return visible_tags(tag_carriers(agent), agent.config.privacy.k_min, consenting=consenting)


# --- refusals of a channel tag's aggregate: no counts, and the same for a tag that does not exist ---------------
def tag_hidden(agent, org, tag: str | None) -> bool:
    """Whether `tag` is one this organization may not see (GET /parameters does not list it to it)."""
    return tag is not None and tag not in _organization_tags(agent, org.id)


def tag_refusal_detail(k_min: int) -> str:
    """The one refusal of a tag's aggregate: it names neither the tag nor how many households carry it."""
    return (f"too few of the households consenting to this organization have data for this channel tag; its "
            f"aggregate is released only over at least {k_min} of them")


def tag_refusal(k_min: int) -> ApiError:
    return ApiError(409, "cohort_too_small", tag_refusal_detail(k_min))


def _history_asked(request: web.Request) -> bool:
    return "since" in request.query or "until" in request.query


async def refuse_hidden_tag(request: web.Request, agent, org, window: str, tag: str | None, action: str) -> None:
    """For GET /data and GET /data/dp, before anything else is computed or charged: the fixed refusal (audited)
    of the live window when the organization may not see `tag`. Past windows (since/until) are answered one by
    one, a refused one without counts (`shown_refusal`): a span with no window released reads the same for a tag
    nobody carries, and a window released then had k_min carriers then (the catalogue follows the last hours)."""
    if not _history_asked(request) and tag_hidden(agent, org, tag):
        await agent.audit.record_durable(org.id, ORGANIZATION, action, window=window, tag=tag, released=False,
                                         error="tag_not_visible")
        raise tag_refusal(agent.config.privacy.k_min)


def shown_refusal(entry: dict, tag: str | None, k_min: int) -> dict:
    """A refused window ({"error", "detail", "households", "missing", ...}) as the organization gets it: for a
    tag, without counts (a "dominated" refusal keeps its reason, which names no count)."""
    if tag is None:
        return entry
    shown = {k: v for k, v in entry.items() if k not in ("households", "missing")}
    if entry["error"] == "cohort_too_small":
        shown["detail"] = tag_refusal_detail(k_min)
    return shown


def refusal_error(entry: dict) -> ApiError:
    """The 409 of one refused window (an entry as `shown_refusal` returns it)."""
    counts = {k: entry[k] for k in ("households", "missing") if k in entry}
    return ApiError(409, entry["error"], entry["detail"], **counts)


def _refused(result: Refusal, tag: str | None, k_min: int) -> dict:
    return shown_refusal({"error": result.error, "detail": result.detail, "households": result.households,
                          "missing": result.missing}, tag, k_min)


async def parameters(request: web.Request) -> web.Response:
    who = principal(request)
    agent = agent_of(request)
    level = level_of(agent, who.organization) if who.role == ORGANIZATION else None
    out = []
    for param in catalogue(_tags_for(agent, who)):
        if who.role == OPERATOR:
            allowed = True
        elif level is not None:
            allowed = permitted(param.name, level, who.organization.parameters)
        else:
            allowed = False
        out.append({**param.public(), "permitted": allowed})
    return web.json_response({"parameters": out})


def _query(request: web.Request, level: Level, org) -> tuple[str, str | None]:
    window = request.query.get("window", "1m" if "1m" in level.windows else level.windows[0])
    return check_access(level, org, window, request.query.get("tag"))


def check_access(level: Level, org, window: str, tag: str | None) -> tuple[str, str | None]:
    """May this organization have this window (and tag)? Used by GET /data and subscriptions."""
    if window not in WINDOWS:
        raise ApiError(400, "bad_parameter", f"window must be one of {', '.join(WINDOWS)}")
    if window not in level.windows:
        raise ApiError(403, "window_not_permitted", f"level {level.name!r} may use windows "
                       f"{', '.join(level.windows)}")
    if tag is not None and not TAG.match(tag):
        raise ApiError(400, "bad_parameter", "tag: 1-32 lowercase letters, digits, '_' or '-'")
    needed = f"neighborhood_channel_{tag}" if tag else "neighborhood_power_consumption"
    if not permitted(needed, level, org.parameters):
        raise ApiError(403, "parameter_not_permitted", f"{needed} is not permitted for this organization")
    return window, tag


async def get_data(request: web.Request) -> web.Response:
    org = require(request, ORGANIZATION).organization
    agent = agent_of(request)
    level = level_of(agent, org)
    window, tag = _query(request, level, org)
    k_min = agent.config.privacy.k_min
    if level.dp.only:  # this level never gets an exact aggregate: OpenDP noise, or a refusal
        await refuse_hidden_tag(request, agent, org, window, tag, "data.dp")
        from agent.api.privacy import dp_aggregates

        return await dp_aggregates(request, agent, org, level, window, tag)
    if _history_asked(request):
        return await _history(request, agent, org, window, tag)
    # A tag the organization may not see is refused whatever the window holds; the audit log still has the
    # count (for the operator), the answer has none.
    hidden = tag_hidden(agent, org, tag)
    book = agent.books[window]
    start = book.last_closed(agent.clock())
    result = agent.release_window(org.id, window, start, book.contributions(start), tag)
    released = not isinstance(result, Refusal) and not hidden
    await agent.audit.record_durable(org.id, ORGANIZATION, "data.read", window=window, window_start=start, tag=tag,
                                     households=result.households if isinstance(result, Refusal)
                                     else result["households"], released=released,
                                     **({"error": "tag_not_visible"} if hidden else {}))
    if hidden:
        raise tag_refusal(k_min)
    if not released:
        raise refusal_error(_refused(result, tag, k_min))
    return web.json_response(result)


async def _history(request, agent, org, window: str, tag: str | None) -> web.Response:
    now = agent.clock()
    since = parse_time(request.query.get("since"), "since")
    until = parse_time(request.query.get("until"), "until")
    since = now - 3600 if since is None else since
    until = now if until is None else min(until, now)
    if until <= since:
        raise ApiError(400, "bad_parameter", "until must be after since")
    width = WINDOW_SECONDS[window]
    first, last = int(since // width) * width, int(until // width) * width  # closed windows only
    if (last - first) // width > MAX_HISTORY_WINDOWS:  # before building anything
        raise ApiError(400, "bad_parameter", f"at most {MAX_HISTORY_WINDOWS} windows per request; "
                       "narrow since/until or use a larger window")
    starts = list(range(first, last, width))
    # Windows still in memory are answered from the very contributions the live answer used: two answers
    # about one window must never differ (their difference would be a household).
    book = agent.books[window]
    per_window = {start: book.contributions(start) for start in starts if book.holds(start)}
    older = [start for start in starts if start not in per_window]
    if older:
        meters = agent.consenting_meters(org.id)  # read the registry here, on the event loop
        per_window.update(await asyncio.to_thread(agent.history_contributions, meters, window, older, tag))
    released, refused = [], []
    k_min = agent.config.privacy.k_min
    for start in starts:
        result = agent.release_window(org.id, window, start, per_window.get(start, {}), tag)
        if isinstance(result, Refusal):
            shown = _refused(result, tag, k_min)
            refused.append({"window_start": iso(datetime.fromtimestamp(start, timezone.utc)),
                            "error": shown["error"], "detail": shown["detail"]})
        else:
            released.append(result)
    await agent.audit.record_durable(org.id, ORGANIZATION, "data.history", window=window, since=first, until=until,
                                     tag=tag, released=len(released), refused=len(refused))
    return web.json_response({"window": window, "tag": tag, "released": released, "refused": refused})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/parameters", parameters)
    app.router.add_get("/data", get_data)
