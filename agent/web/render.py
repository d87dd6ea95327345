"""Pages: Jinja2 templates per language, the security headers, sessions from cookies, CSRF, HTML errors.

Every page is server-rendered and every action a plain form (htmx and the charts only add to it). The headers
forbid inline script and framing; no page carries a token in its URL except the one-time sign-in link, which is
never sent on as a Referer.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from babel.dates import format_datetime
from babel.numbers import format_decimal
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context
from multidict import MultiDictProxy

from agent.api.common import ApiError
from agent.auth import HOUSEHOLD, OPERATOR
from agent.registry import RegistryError
from agent.services import Services
from agent.web import i18n
from agent.web.signin import Session, SignIn

log = logging.getLogger("edge.web")

PREFIX = "/ui"
Form = MultiDictProxy[str | bytes | bytearray | web.FileField]  # a posted form's fields (a form Page's)
SESSION_COOKIE = "edge_session"
PRE_COOKIE = "edge_signin"  # before a session: the sign-in forms' CSRF value (double submit)
ZONE_COOKIE = "edge_zone"  # the time zone the pages show times in, chosen on the page (no script guesses it)
# Edge's countries first; times are kept in UTC and only shown in the zone
ZONES = ("UTC", "Europe/Amsterdam", "Europe/Brussels", "Europe/Luxembourg", "Europe/Vienna", "Europe/Budapest",
         "Europe/Berlin", "Europe/Paris", "Europe/Dublin", "Europe/London")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
TEMPLATES = Path(__file__).parent / "templates"


class PageError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _environment(language: str) -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                      extensions=["jinja2.ext.i18n"], trim_blocks=True, lstrip_blocks=True)
    env.install_gettext_translations(i18n.translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.filters["num"] = lambda value, digits=0: "–" if value is None else format_decimal(
        round(value, digits), format="#,##0" + ("." + "0" * digits if digits else ""), locale=language)
    @pass_context
    def when(context: Context, moment: float | None, pattern: str = "yyyy-MM-dd HH:mm:ss", zone: bool = True) -> str:
        """A moment in the household's chosen zone (`zone` in the context), with its abbreviation (CET, UTC)."""
        if moment is None:
            return "–"
        tz = _zone_info(context.get("zone"))
        local = datetime.fromtimestamp(moment, tz)
        return format_datetime(local, pattern, tzinfo=tz, locale=language) + (f" {local.tzname()}" if zone else "")
    env.filters["utc"] = when
    env.globals["language"] = language
    return env


def _zone_info(name: str | None) -> tzinfo:
    try:
        return ZoneInfo(name) if name in ZONES and name != "UTC" else timezone.utc
    except ZoneInfoNotFoundError:  # a system without the time zone database: UTC
        return timezone.utc


def zone_of(request: web.Request) -> str:
    zone = request.cookies.get(ZONE_COOKIE)
    return zone if zone in ZONES else "UTC"


ENVIRONMENTS = {language: _environment(language) for language in i18n.LANGUAGES}


def language_of(request: web.Request) -> str:
    return i18n.negotiate(request.headers.get("Accept-Language"))


def render(request: web.Request, template: str, status: int = 200, session: Session | None = None,
           **context: Any) -> web.Response:
    language = language_of(request)
    html = ENVIRONMENTS[language].get_template(template).render(
        session=session, csrf=session.csrf if session else None, path=request.path, zone=zone_of(request),
        zones=ZONES, back=request.path if request.method == "GET" else PREFIX + "/", **context)
    response = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
    response.headers["Content-Language"] = language
    response.headers["Vary"] = "Accept-Language, Cookie"
    return response


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response under /ui, pages, fragments, events and static files alike."""
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        response.headers.update(SECURITY_HEADERS)
        if not request.path.startswith(PREFIX + "/static/"):
            response.headers["Cache-Control"] = "no-store"


class PageServices(Services, Protocol):
    """What the pages use of the running agent: the API's services and the pages' sign-in."""

    @property
    def sign_in(self) -> SignIn: ...


PAGE_SERVICES: web.AppKey[PageServices] = web.AppKey("page_services")


# --- who is signed in --------------------------------------------------------------------------
def agent_of(request: web.Request) -> PageServices:
    return request.app[PAGE_SERVICES]


def current_session(request: web.Request) -> Session | None:
    agent = agent_of(request)
    session = agent.sign_in.session(request.cookies.get(SESSION_COOKIE))
    if session is not None and session.role == HOUSEHOLD and session.subject not in agent.registry.households:
        agent.sign_in.close(request.cookies.get(SESSION_COOKIE))  # the household was deleted
        return None
    return session


def redirect(location: str) -> web.Response:
    """303 See Other: after a form, the browser GETs the page again (a reload never repeats the action)."""
    return web.Response(status=303, headers={"Location": location})


def cookie(response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: float) -> None:
    response.set_cookie(name, value, max_age=int(max_age), path=PREFIX, httponly=True, samesite="Strict",
                        secure=request.secure)


def open_session(request: web.Request, role: str, subject: str) -> web.Response:
    agent = agent_of(request)
    agent.sign_in.close(request.cookies.get(SESSION_COOKIE))  # never two sessions from one browser
    session_id, _ = agent.sign_in.open(role, subject)
    response = redirect(PREFIX + ("/me" if role == HOUSEHOLD else "/installer"))
    cookie(response, request, SESSION_COOKIE, session_id, agent.sign_in.max_age_s)
    response.del_cookie(PRE_COOKIE, path=PREFIX)
    return response


def sign_in_url(agent: PageServices, base: str, role: str, subject: str) -> str:
    """A one-time sign-in link (the only URL that carries a secret)."""
    return f"{base}{PREFIX}/link/{agent.sign_in.new_link(role, subject)}"


def pre_session_csrf(request: web.Request) -> str:
    """The value a sign-in form carries and its cookie repeats (a cross-site page can set neither)."""
    return request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(24)


def with_pre_cookie(request: web.Request, response: web.Response, value: str) -> web.Response:
    if request.cookies.get(PRE_COOKIE) != value:
        cookie(response, request, PRE_COOKIE, value, 3600)
    return response


def throttled(request: web.Request) -> None:
    """As on the API: an address that presented too many bad tokens (or links) waits, whatever it sends now."""
    wait = agent_of(request).throttle.retry_after(request.remote or "unknown")
    if wait:
        raise PageError(429, "too_many", {"Retry-After": str(math.ceil(wait))})


def failed(request: web.Request) -> None:
    agent_of(request).throttle.failed(request.remote or "unknown")


# --- the pages' route table --------------------------------------------------------------------
@dataclass(frozen=True)
class Page:
    """A page route, stated once: method, path (under PREFIX), handler, who may open it and whether it is a form.

    The pages' router and the session check before each handler are derived from the rows (`add_pages`), as the
    API's are from its Routes (agent/api/spec.py); pages are not the API's, though: a session cookie (not a bearer
    token), a CSRF token on every form, a redirect to the sign-in page, HTML errors, and no OpenAPI document.
    `roles` empty: anyone (the handler takes the request only); else a session of one of them (the handler takes
    the request and the session, and with `form` the posted fields too)."""

    method: str
    path: str
    handler: Callable[..., Awaitable[web.StreamResponse]]
    roles: tuple[str, ...] = ()
    form: bool = False


def guarded_page(row: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The row's handler behind its session, role and CSRF checks. Errors become an HTML page with the right status,
    never a traceback."""
    handler, roles, form = row.handler, row.roles, row.form

    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            session = current_session(request) if roles else None
            if roles:
                if session is None:
                    if request.method == "GET" and not request.path.endswith(("/live", ".json")):
                        return redirect(PREFIX + "/sign-in")
                    raise PageError(401, "signed_out")
                if session.role not in roles:
                    raise PageError(403, "forbidden")
            if form:
                data = await request.post()
                # the session again, now that the body is here: one ended meanwhile (a rotated token, a deleted
                # household, signed out) acts no more than a form sent afterwards (red team 8, R8-2)
                if current_session(request) is not session:
                    raise PageError(401, "signed_out")
                if session is None or not agent_of(request).sign_in.csrf_ok(session.csrf, data.get("csrf")):
                    raise PageError(403, "csrf")
                return await handler(request, session, data)
            return await handler(request, session) if roles else await handler(request)
        except PageError as err:
            response = render(request, "error.html", status=err.status, error=err.message)
            response.headers.update(err.headers)
            return response
        except (ApiError, RegistryError) as err:
            refused = ApiError.of(err) if isinstance(err, RegistryError) else err
            return render(request, "error.html", status=refused.status, error="refused", detail=refused.detail)
    return run


def add_pages(app: web.Application, pages: tuple[Page, ...]) -> None:
    for row in pages:
        if row.method == "GET":  # and HEAD, as aiohttp's add_get does
            app.router.add_get(PREFIX + row.path, guarded_page(row))
        else:
            app.router.add_route(row.method, PREFIX + row.path, guarded_page(row))


HOUSEHOLD_ONLY = (HOUSEHOLD,)
OPERATOR_ONLY = (OPERATOR,)
