"""A household's pages: its own data (live and charts), who may use it, who used it, its notification endpoint and
appliances, its notifications. Every change goes through the API's own functions (consent, endpoint, appliance)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from aiohttp import web

from agent.api.bodies import ApplianceIn
from agent.api.household_actions import (HOUSEHOLD_LOCKS, appliance_status, new_appliance, remove_appliance,
                                         remove_endpoint, send_test_notification, set_endpoint)
from agent.api.households import change_consent
from agent.registry import Household, is_service
from agent.services import Services
from agent.store.store import KINDS, ROLLUP_WIDTH_S
from agent.web import views
from agent.web.access_index import AccessIndex
from agent.web.live import HEARTBEAT_S, LIVE, event_text, live_values
from agent.web.render import HOUSEHOLD_ONLY, PREFIX, SESSION_COOKIE, Form, Page, PageError, agent_of, redirect, render
from agent.web.signin import Session
from drivers import appliances as appliance_drivers
from drivers import notify
from drivers.reading import Reading, unix_seconds

DAY = 86400
ACCESS_ROWS = 50  # a page of the access log
ACCESS_DAYS = 7  # days looked at per page at most (the rest on the next): a page's work is bounded by the calendar
ACCESS_INDEX = web.AppKey("web_access_index", AccessIndex)


def _household(request: web.Request, session: Session) -> Household:
    return agent_of(request).registry.household(session.subject)


def _today(now: float) -> float:
    return math.floor(now / DAY) * DAY


# A household's data starts at its creation: its meter's readings from before are a previous household's (R6b-4).
def _latest(agent: Services, household: Household) -> Reading | None:
    """Its meter's latest reading, if it is its own."""
    latest = agent.pipeline.latest.get(household.meter_id)
    return latest if latest is not None and household.owns(latest.received_at.timestamp()) else None


async def _rollups(agent: Services, household: Household, since: float, resolution: str,
                   limit: int) -> list[dict[str, Any]]:
    """Its meter's rollups from `since` on, of windows wholly its own."""
    since = household.data_since(since, ROLLUP_WIDTH_S[KINDS[resolution]])
    return await asyncio.to_thread(agent.store.readings, household.meter_id, since=since, resolution=resolution,
                                   limit=limit)


# --- my data -------------------------------------------------------------------------------------
async def my_data(request: web.Request, session: Session) -> web.Response:
    agent = agent_of(request)
    household = _household(request, session)
    latest = _latest(agent, household)
    today, week = _today(agent.clock()), _today(agent.clock()) - 6 * DAY
    rollups = await _rollups(agent, household, week, "15m", 7 * 96)
    todays = [r for r in rollups if unix_seconds(r["start"]) >= today]
    return render(request, "my_data.html", session=session, household=household,
                  live=live_values(latest) if latest else None,
                  hours=views.energy_table(todays, today, 3600, 24),
                  days=views.energy_table(rollups, week, DAY, 7),
                  channels=sorted((latest.channels or {}).items()) if latest is not None else [])


async def series(request: web.Request, session: Session) -> web.Response:
    """The charts' data (uPlot columns): today's or this week's 15-minute means."""
    agent = agent_of(request)
    household = _household(request, session)
    span = request.query.get("span", "day")
    if span not in ("day", "week"):
        raise PageError(400, "bad_parameter")
    today = _today(agent.clock())
    # today by the minute (the newest minutes show at once), the week by the quarter
    since, resolution, limit = (today, "1m", 1440) if span == "day" else (today - 6 * DAY, "15m", 7 * 96)
    rollups = await _rollups(agent, household, since, resolution, limit)
    return web.json_response(views.chart_series(rollups))


async def live(request: web.Request, session: Session) -> web.StreamResponse:
    """Server-sent events: the household's newest import and export power, as they arrive."""
    agent, hub = agent_of(request), request.app[LIVE]
    household = _household(request, session)
    stream = hub.open(session.subject, household.meter_id)
    if stream is None:
        raise PageError(503, "busy", {"Retry-After": "30"})
    try:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        latest = _latest(agent, household)
        await response.write(b"retry: 3000\n\n" + (event_text(live_values(latest)) if latest else b""))
        while True:
            message = await stream.next(HEARTBEAT_S)
            # the stream was ended (the agent stops, the household's token changed or it was removed: its meter's
            # next readings are a new occupant's, R6b-4), or the session ended (signed out, expired: an open page is
            # no visit)
            if message is None or agent.sign_in.session(request.cookies.get(SESSION_COOKIE), touch=False) is None:
                break
            await response.write(message or b": still here\n\n")
    except ConnectionResetError:  # the page was closed
        pass
    finally:
        hub.close(stream)
    return response


# --- who may use my data -------------------------------------------------------------------------
async def consents(request: web.Request, session: Session) -> web.Response:
    agent = agent_of(request)
    household = _household(request, session)
    history = list(reversed(agent.registry.history_of(household.id)))
    names = {o.id: o.name for o in agent.registry.organizations.values()}
    return render(request, "consents.html", session=session, offers=views.offers(agent, household.id),
                  history=history, names=names, privacy=agent.config.privacy,
                  trigger_config=agent.config.triggers)


async def change(request: web.Request, session: Session, data: Form) -> web.Response:
    """One click: grant or revoke one service for one organization, through the API's own consent code."""
    org_id, service, action = str(data.get("organization", "")), str(data.get("service", "")), data.get("action")
    if action not in ("grant", "revoke") or not is_service(service):
        raise PageError(400, "bad_parameter")
    await change_consent(agent_of(request), session.subject, org_id, service, action == "grant")
    return redirect(f"{PREFIX}/me/consents#org-{org_id}")


# --- who used my data ----------------------------------------------------------------------------
async def access(request: web.Request, session: Session) -> web.Response:
    """The access log over the ledger's horizon, newest first, a page at a time (`?before=<day>.<entry>`)."""
    agent = agent_of(request)
    household = _household(request, session)
    days = agent.config.privacy.horizon_days
    rows, more = await _access_page(request, household.id, _cursor(request.query.get("before")))
    return render(request, "access.html", session=session, days=days, log=rows, more=more,
                  first_page="before" not in request.query, ledger=agent.releases.ledger_of(household.id))


def _cursor(text: str | None) -> tuple[int, int] | None:
    """`<day>.<n>`: the household's own entries before its n-th of that day (oldest first), and older days."""
    if text is None:
        return None
    day, _, position = text.partition(".")
    if not (day.isascii() and day.isdigit() and position.isascii() and position.isdigit()) or int(day) % DAY:
        raise PageError(400, "bad_parameter")
    return int(day), int(position)


async def _access_page(request: web.Request, household_id: str,
                       cursor: tuple[int, int] | None) -> tuple[list[views.Row], str | None]:
    """A page of rows from `cursor` back (None: from now), and the cursor of the next page (None: no more).
    Everything that shapes it is this household's own: its entries of each day (its consented organizations'
    requests, whatever came of them, and trigger actions about it), counted in its own list, so a cursor, a
    page's size and its order say nothing of anyone else's entries. A page ends at ACCESS_ROWS rows or after
    ACCESS_DAYS days (the calendar's bound on the work, the same for everyone). The day files are read and
    filtered in a worker thread (each only as far as it grew); the rows are made here, on the loop."""
    agent = agent_of(request)
    index = request.app[ACCESS_INDEX]
    today = int(_today(agent.clock()))
    first_day = agent.releases.ledger.first_day(agent.clock()) * DAY  # the ledger's own days
    day, position = (min(cursor[0], today), cursor[1]) if cursor is not None else (today, None)
    if day < first_day:
        return [], None
    await asyncio.to_thread(agent.audit.flush)  # entries still queued (pushes) are shown too
    present = set(await asyncio.to_thread(index.days))
    subscriptions = agent.delivery.subscriptions
    consented = views.consented_to(agent.registry, household_id)
    organizations = {org for org, _ in consented}

    def keep(entry: views.Entry) -> bool:
        return views.concerns(entry, household_id, consented)

    def tag_of(entry: views.Entry) -> str | None:
        if entry["action"] != "data.push":
            return entry.get("tag")
        sub = subscriptions.get(entry.get("subscription_id", ""))
        return sub.tag if sub is not None else None
    rows: list[views.Row] = []
    looked = 0
    while True:
        looked += 1
        mine = await asyncio.to_thread(index.own, day, household_id, organizations, keep) if day in present else []
        end = len(mine) if position is None else min(position, len(mine))
        take = min(end, ACCESS_ROWS - len(rows))
        rows.extend(views.access_row(e, agent.registry, household_id, agent.releases.members, tag_of)
                    for e in reversed(mine[end - take:end]))
        if take < end:
            return rows, f"{day}.{end - take}"
        if day - DAY < first_day:
            return rows, None
        if len(rows) >= ACCESS_ROWS or looked == ACCESS_DAYS:
            return rows, f"{day}.0"  # the days before this one
        day, position = day - DAY, None


# --- my endpoint and appliances ------------------------------------------------------------------
def _devices_page(request: web.Request, session: Session, secret: str | None = None,
                  tested: dict[str, Any] | None = None, read: dict[str, Any] | None = None) -> web.Response:
    """`tested`: a test notification's result; `read`: an appliance's state just read (with its id)."""
    agent = agent_of(request)
    store = agent.triggers.households
    return render(request, "devices.html", session=session, endpoint=store.endpoints.get(session.subject),
                  appliances=store.appliances_of(session.subject), drivers=appliance_drivers.names(),
                  kinds=notify.KINDS, secret=secret, tested=tested, read=read,
                  organizations=sorted(agent.registry.organizations.values(), key=lambda o: o.name.casefold()))


async def devices(request: web.Request, session: Session) -> web.Response:
    return _devices_page(request, session)


async def set_notify(request: web.Request, session: Session, data: Form) -> web.Response:
    agent = agent_of(request)
    out = await set_endpoint(agent, request.app[HOUSEHOLD_LOCKS], session.subject, str(data.get("url", "")),
                             str(data.get("kind", "webhook")))
    if out.get("secret"):  # shown this once, on this answer (never in a URL)
        return _devices_page(request, session, secret=out["secret"])
    return redirect(PREFIX + "/me/devices")


async def unset_notify(request: web.Request, session: Session, data: Form) -> web.Response:
    await remove_endpoint(agent_of(request), request.app[HOUSEHOLD_LOCKS], session.subject)
    return redirect(PREFIX + "/me/devices")


async def test_notify(request: web.Request, session: Session, data: Form) -> web.Response:
    """A test notification to the household's endpoint, its result on the page (not a redirect: it is shown once)."""
    return _devices_page(request, session, tested=await send_test_notification(agent_of(request), session.subject))


async def read_appliance(request: web.Request, session: Session, data: Form) -> web.Response:
    """An appliance's relay read now (a form: it reaches out to the appliance, so it carries the CSRF token)."""
    appliance_id = request.match_info["appliance_id"]
    out = await appliance_status(agent_of(request), session.subject, appliance_id)
    return _devices_page(request, session, read={"id": appliance_id, **out})


async def add_appliance(request: web.Request, session: Session, data: Form) -> web.Response:
    channel = str(data.get("channel", "")).strip()
    if channel and not (channel.isascii() and channel.isdigit()):
        raise PageError(400, "bad_parameter")
    body = ApplianceIn(name=str(data.get("name", "")), kind=str(data.get("kind", "")).strip() or None,
                       driver=str(data.get("driver", "")), address=str(data.get("address", "")),
                       channel=int(channel) if channel else None,
                       allowed_organizations=[str(o) for o in data.getall("allowed_organizations", [])])
    await new_appliance(agent_of(request), request.app[HOUSEHOLD_LOCKS], session.subject, body)
    return redirect(PREFIX + "/me/devices")


async def delete_appliance(request: web.Request, session: Session, data: Form) -> web.Response:
    await remove_appliance(agent_of(request), request.app[HOUSEHOLD_LOCKS], session.subject,
                           request.match_info["appliance_id"])
    return redirect(PREFIX + "/me/devices")


# --- notifications -------------------------------------------------------------------------------
async def notifications(request: web.Request, session: Session) -> web.Response:
    inbox = agent_of(request).triggers.households.inbox(session.subject)
    return render(request, "notifications.html", session=session, inbox=inbox)


async def notification(request: web.Request, session: Session) -> web.Response:
    inbox = agent_of(request).triggers.households.inbox(session.subject)
    found = next((n for n in inbox if str(n.get("id")) == request.match_info["id"]), None)
    if found is None:
        raise PageError(404, "not_found")
    return render(request, "notification.html", session=session, note=found)


HH = HOUSEHOLD_ONLY
PAGES = (
    Page("GET", "/me", my_data, HH),
    Page("GET", "/me/series.json", series, HH),
    Page("GET", "/me/live", live, HH),
    Page("GET", "/me/consents", consents, HH),
    Page("POST", "/me/consents", change, HH, form=True),
    Page("GET", "/me/access", access, HH),
    Page("GET", "/me/devices", devices, HH),
    Page("POST", "/me/devices/notify", set_notify, HH, form=True),
    Page("POST", "/me/devices/notify/remove", unset_notify, HH, form=True),
    Page("POST", "/me/devices/notify/test", test_notify, HH, form=True),
    Page("POST", "/me/devices/appliances", add_appliance, HH, form=True),
    Page("POST", "/me/devices/appliances/{appliance_id}/remove", delete_appliance, HH, form=True),
    Page("POST", "/me/devices/appliances/{appliance_id}/status", read_appliance, HH, form=True),
    Page("GET", "/me/notifications", notifications, HH),
    Page("GET", "/me/notifications/{id}", notification, HH),
)
