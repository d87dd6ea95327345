"""Signing in and out: the one-time link, the token form, sign-out."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agent.auth import DATALOGGER, HOUSEHOLD, OPERATOR, identify
from agent.web.render import (PREFIX, PRE_COOKIE, SESSION_COOKIE, ZONE_COOKIE, ZONES, Form, Page, PageError, agent_of,
                              cookie, current_session, failed, open_session, pre_session_csrf, redirect, render,
                              throttled, with_pre_cookie)
from agent.web.signin import Session


async def home(request: web.Request) -> web.Response:
    session = current_session(request)
    if session is None:
        return redirect(PREFIX + "/sign-in")
    return redirect(PREFIX + ("/me" if session.role == HOUSEHOLD else "/installer"))


def _pre_session_form(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    value = pre_session_csrf(request)
    return with_pre_cookie(request, render(request, template, status=status, pre_csrf=value, **context), value)


async def _checked_form(request: web.Request) -> Form:
    """A sign-in form's fields, if its CSRF value matches its cookie (else 403)."""
    data = await request.post()
    expected = request.cookies.get(PRE_COOKIE)
    if not expected or not agent_of(request).sign_in.csrf_ok(expected, data.get("csrf")):
        raise PageError(403, "csrf")
    return data


async def sign_in_form(request: web.Request) -> web.Response:
    return _pre_session_form(request, "sign_in.html")


async def sign_in(request: web.Request) -> web.Response:
    """The household's (or operator's) token, typed once; a valid one is never refused, bad ones are throttled."""
    data = await _checked_form(request)
    token = str(data.get("token", "")).strip()
    agent = agent_of(request)
    who = identify(token, agent.config.operator_token, agent.registry) if token else None
    if who is not None:
        if who.role == DATALOGGER:  # it may be an organization's device: it posts readings, nothing more
            raise PageError(403, "datalogger")
        if who.role not in (HOUSEHOLD, OPERATOR):
            raise PageError(403, "organization")  # organizations use the API, not these pages
        return open_session(request, who.role, who.id)
    throttled(request)
    failed(request)
    return _pre_session_form(request, "sign_in.html", status=401, bad_token=True)


async def link_page(request: web.Request) -> web.Response:
    """Opening a link only shows a button: a mail scanner or link preview that fetches it uses nothing."""
    return _pre_session_form(request, "link.html", code=request.match_info["code"])


async def redeem_link(request: web.Request) -> web.Response:
    data = await _checked_form(request)
    link = agent_of(request).sign_in.redeem(str(data.get("code", "")))
    if link is None:
        throttled(request)
        failed(request)
        raise PageError(410, "link_used")
    return open_session(request, link.role, link.subject)


async def sign_out(request: web.Request, session: Session, data: Form) -> web.Response:
    agent_of(request).sign_in.close(request.cookies.get(SESSION_COOKIE))
    response = redirect(PREFIX + "/sign-in")
    response.del_cookie(SESSION_COOKIE, path=PREFIX)
    return response


async def choose_zone(request: web.Request, session: Session, data: Form) -> web.Response:
    """The time zone the pages show times in: a cookie of this browser (a year), back to the page it was chosen on."""
    zone, back = str(data.get("zone", "")), str(data.get("back", ""))
    if zone not in ZONES or not back.startswith(PREFIX + "/") or "//" in back or "\\" in back:
        raise PageError(400, "bad_parameter")
    response = redirect(back)
    cookie(response, request, ZONE_COOKIE, zone, 365 * 86400)
    return response


SIGNED_IN = (HOUSEHOLD, OPERATOR)
PAGES = (
    Page("GET", "", home),
    Page("GET", "/", home),
    Page("GET", "/sign-in", sign_in_form),
    Page("POST", "/sign-in", sign_in),
    Page("GET", "/link/{code}", link_page),
    Page("POST", "/link", redeem_link),
    Page("POST", "/sign-out", sign_out, SIGNED_IN, form=True),
    Page("POST", "/zone", choose_zone, SIGNED_IN, form=True),
)
