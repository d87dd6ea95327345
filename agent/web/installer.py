"""The installer's and operator's page: every P1 port, the latest values, health, households and organizations."""

from __future__ import annotations

import base64
from typing import Any

import qrcode  # type: ignore[import-untyped]
import qrcode.image.svg  # type: ignore[import-untyped]
from aiohttp import web

from agent.api.admin import new_household
from agent.auth import HOUSEHOLD, OPERATOR
from agent.registry import Household
from agent.services import Services
from agent.web.render import OPERATOR_ONLY, Form, Page, PageError, agent_of, render, sign_in_url
from agent.web.signin import Session

STALE_AFTER_S = 10  # a reading older than this is shown as old


def shown_state(port: dict[str, Any], stall_seconds: float) -> str:
    """The reader's state, except that a port being reopened after a stall still reads as stalled: the installer
    must see the cable is out, not a flicker between "stalled" and "connecting"."""
    quiet = port["seconds_since_last_telegram"]
    if port["state"] == "connecting" and port["stalls"] and quiet is not None and quiet > stall_seconds:
        return "stalled"
    return str(port["state"])


def stopped(port: dict[str, Any]) -> bool:
    """It read before and nothing comes now: the cable pulled, the meter restarted (the reader's own hint, about
    serial settings or a silent line, says more when it has one)."""
    return port["state"] in ("stalled", "disconnected") and bool(port["telegrams_ok"]) and not port.get("hint")


def ports(agent: Services) -> list[dict[str, Any]]:
    out = []
    for meter_id, reader in sorted(agent.readers.items()):
        port = {"meter_id": meter_id, **reader.snapshot()}
        port["state"] = shown_state(port, reader.spec.stall_seconds)
        port["stopped"] = stopped(port)
        port["latest"] = agent.pipeline.latest.get(meter_id)
        household = agent.registry.household_by_meter(meter_id)
        port["household_id"] = household.id if household else None
        out.append(port)
    return out


def _context(agent: Services) -> dict[str, Any]:
    ok, health = agent.health()
    households = sorted(agent.registry.households.values(), key=lambda h: h.created_at)
    http_meters = [h for h in households if h.source == "http"]
    return {"ok": ok, "health": health, "ports": ports(agent), "households": households,
            "organizations": sorted(agent.registry.organizations.values(), key=lambda o: o.name.casefold()),
            "http_latest": {h.meter_id: agent.pipeline.latest.get(h.meter_id) for h in http_meters},
            "free_meters": [m for m in sorted(agent.readers) if agent.registry.household_by_meter(m) is None],
            "now": agent.clock()}


async def installer(request: web.Request, session: Session) -> web.Response:
    return render(request, "installer.html", session=session, **_context(agent_of(request)))


async def ports_fragment(request: web.Request, session: Session) -> web.Response:
    """The ports table alone, for htmx to refresh every few seconds."""
    agent = agent_of(request)
    return render(request, "_ports.html", session=session, ports=ports(agent), ok=agent.health()[0])


def qr_data_uri(text: str) -> str:
    """A QR code of `text` as an SVG data: URI (an image the CSP allows; no script, no file)."""
    svg: bytes = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, border=2).to_string()
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()


def _link_page(request: web.Request, session: Session, household: Household, token: str | None = None,
               datalogger: str | None = None) -> web.Response:
    """A new household sign-in link (and, for a new household, its tokens), shown once."""
    url = sign_in_url(agent_of(request), f"{request.scheme}://{request.host}", HOUSEHOLD, household.id)
    return render(request, "new_link.html", session=session, household=household, url=url, token=token,
                  datalogger=datalogger, qr=qr_data_uri(url),
                  ttl_h=round(agent_of(request).sign_in.link_ttl_s / 3600))


async def create_household(request: web.Request, session: Session, data: Form) -> web.Response:
    meter_id = str(data.get("meter_id", "")) or None
    household, token, datalogger = await new_household(agent_of(request), session.subject, meter_id)
    # Shown this once, like the link: the datalogger's token for the datalogger (whoever installs or controls it
    # can only post readings with it), the household's own token for the household.
    return _link_page(request, session, household, token, datalogger)


def _household(request: web.Request) -> Household:
    household = agent_of(request).registry.households.get(request.match_info["household_id"])
    if household is None:
        raise PageError(404, "not_found")
    return household


async def new_link(request: web.Request, session: Session, data: Form) -> web.Response:
    return _link_page(request, session, _household(request))


async def new_datalogger_token(request: web.Request, session: Session, data: Form) -> web.Response:
    """A datalogger token made (a household made before there were any) or replaced. Its page holds that token
    only: whoever sets up the datalogger is handed it, and must not get a sign-in to the household's pages with it
    (red team 9, R9b-4)."""
    household = _household(request)
    agent = agent_of(request)
    datalogger = await agent.registry.rotate_datalogger_token_async(household.id)
    await agent.audit.record_durable(session.subject, OPERATOR, "household.rotate_datalogger_token",
                                     household_id=household.id)
    return render(request, "datalogger_token.html", session=session, household=household, datalogger=datalogger)


PAGES = (
    Page("GET", "/installer", installer, OPERATOR_ONLY),
    Page("GET", "/installer/ports", ports_fragment, OPERATOR_ONLY),
    Page("POST", "/installer/households", create_household, OPERATOR_ONLY, form=True),
    Page("POST", "/installer/households/{household_id}/link", new_link, OPERATOR_ONLY, form=True),
    Page("POST", "/installer/households/{household_id}/datalogger_token", new_datalogger_token, OPERATOR_ONLY,
         form=True),
)
