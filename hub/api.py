"""The hub's HTTP API, with the device API's conventions: Bearer keys (an organization's one key, the same as on
its devices; the hub's operator token), JSON errors {"error", "detail"}, OpenAPI at /openapi.json, every
organization's read in the audit log.

  GET /health                                 no key
  GET /areas                                  the areas the caller may read, with their devices
  GET /areas/{area}/data?window=&since=&until=&tag=   the area's windows: released sums, or refusals
  GET /devices                                operator: devices, applied version, last release, health
  POST /subscriptions {endpoint, area, window, tag}   an area's windows pushed as Standard Webhooks (hub/push.py)
  GET /subscriptions, DELETE /subscriptions/{id}
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from agent.api import bodies
from agent.api.common import ApiError as DeviceApiError
from agent.fleet.document import FleetOrg
from hub import openapi as docs
from hub.answers import HubCode
from hub.bodies import SubscribeIn
from hub.service import WIDTHS, Hub

MAX_WINDOWS = 1500  # per request
OPERATOR, ORGANIZATION = "operator", "organization"
HUB = web.AppKey("hub", Hub)
CALLER = web.RequestKey("hub_caller", tuple)  # (role, FleetOrg or None): the route's role check found it
AUDIT_PATH: web.AppKey[Path | None] = web.AppKey("audit_path")
ENDPOINTS = web.AppKey("endpoints", tuple)  # (allow_http, allow_private): the webhook endpoint policy


class ApiError(Exception):
    def __init__(self, code: HubCode, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = code.status, str(code), detail


@web.middleware
async def errors(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return web.json_response({"error": err.error, "detail": err.detail}, status=err.status)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return web.json_response({"error": err.reason.lower().replace(" ", "_"), "detail": err.text or err.reason},
                                 status=err.status)
    except Exception as err:  # never a stack trace to a caller
        request.app[HUB].last_error = f"api: {type(err).__name__}: {err}"
        return web.json_response({"error": HubCode.UNAVAILABLE, "detail": "the hub could not answer now; try again"},
                                 status=HubCode.UNAVAILABLE.status)


def _caller(request: web.Request) -> tuple[str, FleetOrg | None]:
    """("operator", None) or ("organization", FleetOrg); 401 otherwise. Routes with roles ask it before their
    handler runs (`_guarded`); a handler reads request[CALLER]."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise ApiError(HubCode.UNAUTHORIZED, "send Authorization: Bearer <key>")
    token = header[7:].strip()
    hub: Hub = request.app[HUB]
    if hub.operator_token and hmac.compare_digest(token.encode(errors="replace"), hub.operator_token.encode()):
        return OPERATOR, None
    digest = hashlib.sha256(token.encode(errors="replace")).hexdigest()
    org = hub.organization_by_key_hash(digest)
    if org is not None and hmac.compare_digest(org.key_hash, digest):
        return ORGANIZATION, org
    raise ApiError(HubCode.UNAUTHORIZED, "unknown or revoked key")


async def _audit(request: web.Request, who: str, action: str, **fields: object) -> None:
    path: Path | None = request.app[AUDIT_PATH]
    if path is None:
        return
    line = json.dumps({"at": time.time(), "who": who, "action": action, **fields}, separators=(",", ":"))

    def append() -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    await asyncio.to_thread(append)  # off the event loop


async def health(request: web.Request) -> web.Response:
    return web.json_response(request.app[HUB].health())


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(docs.spec(ROUTES))


async def areas(request: web.Request) -> web.Response:
    role, org = request[CALLER]
    hub: Hub = request.app[HUB]
    visible = {a: list(d) for a, d in hub.areas().items() if role == OPERATOR or a in org.areas}
    return web.json_response({"areas": [{"area": a, "devices": d} for a, d in sorted(visible.items())]})


def _number(request: web.Request, name: str) -> float:
    raw = request.query.get(name)
    if raw is None:
        raise ApiError(HubCode.BAD_REQUEST, f"{name} is required (UNIX seconds)")
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(HubCode.BAD_REQUEST, f"{name} must be UNIX seconds, got {raw!r}") from None
    if not math.isfinite(value):
        raise ApiError(HubCode.BAD_REQUEST, f"{name} must be finite")
    return value


async def area_data(request: web.Request) -> web.Response:
    _, org = request[CALLER]
    hub: Hub = request.app[HUB]
    area = request.match_info["area"]
    if area not in org.areas or area not in hub.areas():
        raise ApiError(HubCode.NOT_FOUND, f"no area {area!r} for this organization")
    window = request.query.get("window", "1h")
    if window not in WIDTHS:
        raise ApiError(HubCode.BAD_REQUEST, f"window must be one of {', '.join(WIDTHS)}")
    tag = request.query.get("tag") or None
    if tag is not None and not all(c.isalnum() or c in "_-" for c in tag):
        raise ApiError(HubCode.BAD_REQUEST, "tag: letters, digits, '_' or '-'")
    width = WIDTHS[window]
    since, until = _number(request, "since"), _number(request, "until")
    first, last = math.ceil(since / width) * width, math.floor(until / width) * width  # windows inside
    count = max(0, (last - first) // width)
    if count > MAX_WINDOWS:
        raise ApiError(HubCode.TOO_MANY_WINDOWS, f"at most {MAX_WINDOWS} windows per request, asked {count}")
    released: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    starts = range(int(first), int(last), width)
    answers = await asyncio.gather(*(hub.window(org.id, area, window, start, tag) for start in starts))
    for answer in answers:
        if answer is not None:
            (released if "released" in answer else refused).append(answer.get("released") or answer["refused"])
    await _audit(request, org.id, "area.data", area=area, window=window, since=since, until=until, tag=tag,
           released=len(released))
    return web.json_response({"area": area, "window": window, "tag": tag, "released": released,
                              "refused": refused})


async def devices(request: web.Request) -> web.Response:
    return web.json_response({"devices": await request.app[HUB].devices()})


async def subscribe(request: web.Request) -> web.Response:
    from agent.delivery.targets import TargetError, check_literal_host, check_url
    from hub import push

    _, org = request[CALLER]
    hub: Hub = request.app[HUB]
    try:
        body = bodies.decode(await request.read(), SubscribeIn)
    except DeviceApiError as err:  # the body's shape: the device API's words, the hub's status
        raise ApiError(HubCode.BAD_REQUEST, err.detail) from None
    area, window, tag = body.area, body.window, body.tag
    if area not in org.areas or area not in hub.areas():
        raise ApiError(HubCode.NOT_FOUND, f"no area {area!r} for this organization")
    if window not in WIDTHS:
        raise ApiError(HubCode.BAD_REQUEST, f"window must be one of {', '.join(WIDTHS)}")
    if tag is not None and not (tag and all(c.isalnum() or c in "_-" for c in tag)):
        raise ApiError(HubCode.BAD_REQUEST, "tag: letters, digits, '_' or '-'")
    allow_http, allow_private = request.app[ENDPOINTS]
    try:
        endpoint = check_url(body.endpoint, allow_http)
        check_literal_host(endpoint, allow_private)
    except TargetError as err:
        raise ApiError(HubCode.BAD_ENDPOINT, str(err)) from None
    sub = await push.create(hub, org.id, area, window, tag, endpoint)
    await _audit(request, org.id, "subscription.create", subscription=sub["id"], area=area, window=window)
    return web.json_response({**push.public(sub), "secret": sub["secret"]}, status=201)


async def subscriptions(request: web.Request) -> web.Response:
    from hub import push

    _, org = request[CALLER]
    return web.json_response({"subscriptions": await push.listing(request.app[HUB], org.id)})


async def unsubscribe(request: web.Request) -> web.Response:
    from hub import push

    _, org = request[CALLER]
    sub_id = request.match_info["sub_id"]
    if not await push.delete(request.app[HUB], org.id, sub_id):
        raise ApiError(HubCode.NOT_FOUND, f"no subscription {sub_id!r}")
    await _audit(request, org.id, "subscription.delete", subscription=sub_id)
    return web.json_response({"deleted": sub_id})


# --- the route table: every endpoint once, with who may call it ----------------------------------------------------
@dataclass(frozen=True)
class Route:
    """An endpoint of the hub: the router and the role check before its handler come from this row, as the device
    API's do from agent/api/spec.py's Route, and so do the document's paths (hub/openapi.py's spec). Not that Route
    itself: the hub's keys are its own (an organization's key hash in the desired state, the hub's operator token:
    not the device's registry), it has no throttle and no storage errors, and its operations say so."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    roles: tuple[str, ...]  # () : no key needed
    operation: dict[str, Any] | None  # its OpenAPI operation (hub/openapi.py); None: not in the document


ROUTES = (
    Route("GET", "/health", health, (), docs.HEALTH),
    Route("GET", "/openapi.json", openapi, (), None),
    Route("GET", "/areas", areas, (OPERATOR, ORGANIZATION), docs.AREAS),  # each sees the areas it may read
    Route("GET", "/areas/{area}/data", area_data, (ORGANIZATION,), docs.AREA_DATA),
    Route("GET", "/devices", devices, (OPERATOR,), docs.DEVICES),
    Route("POST", "/subscriptions", subscribe, (ORGANIZATION,), docs.SUBSCRIBE),
    Route("GET", "/subscriptions", subscriptions, (ORGANIZATION,), docs.SUBSCRIPTIONS),
    Route("DELETE", "/subscriptions/{sub_id}", unsubscribe, (ORGANIZATION,), docs.UNSUBSCRIBE),
)


def _guarded(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler behind the route's role check: 401 without a valid key, 403 for a key of another role."""
    if not route.roles:
        return route.handler

    async def checked(request: web.Request) -> web.StreamResponse:
        caller: tuple[str, Any] = _caller(request)
        if caller[0] not in route.roles:
            raise ApiError(HubCode.FORBIDDEN, f"this endpoint is for: {', '.join(route.roles)} (a {caller[0]}'s key "
                                             "was sent)")
        request[CALLER] = caller
        return await route.handler(request)

    checked.__name__ = route.handler.__name__
    return checked


def create_app(hub: Hub, audit_path: Path | None = None, allow_http: bool = False,
               allow_private: bool = False) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[HUB] = hub
    app[AUDIT_PATH] = audit_path
    app[ENDPOINTS] = (allow_http, allow_private)
    for route in ROUTES:
        if route.method == "GET":  # and HEAD, as aiohttp's add_get does
            app.router.add_get(route.path, _guarded(route))
        else:
            app.router.add_route(route.method, route.path, _guarded(route))
    return app
