"""The local HTTP API (aiohttp): health and metrics for everyone, meter data for the operator.

Every error is JSON `{"error": ..., "detail": ...}` with the right status; nothing a handler
raises leaks a traceback to the caller.
"""

from __future__ import annotations

import hmac
import logging
import math
from datetime import datetime, timezone

from aiohttp import web

from agent.metrics import render_metrics

log = logging.getLogger("edge.api")

MAX_BODY_BYTES = 1024 * 1024
AGENT = web.AppKey("agent", object)
RESOLUTIONS = ("raw", "1m", "15m")
MAX_LIMIT = 100_000


def json_error(status: int, error: str, detail: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as err:
        return json_error(err.status, err.error, err.detail, err.headers)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return json_error(err.status, err.reason.lower().replace(" ", "_"), err.text or err.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal_error", "the agent could not answer this request; see its log")


# --- auth ----------------------------------------------------------------------------------
def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>",
                       {"WWW-Authenticate": 'Bearer realm="edge"'})
    return token.strip()


def require_operator(request: web.Request) -> None:
    token = bearer_token(request)
    expected = request.app[AGENT].config.operator_token
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(403, "forbidden", "this token may not use this endpoint")


# --- parameters ----------------------------------------------------------------------------
def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds or ISO 8601 (a naive time is taken as UTC)."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError
        return seconds
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be Unix seconds or ISO 8601, got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_limit(value: str | None, default: int = 10_000) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise ApiError(400, "bad_parameter", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


def known_meter(request: web.Request) -> str:
    agent = request.app[AGENT]
    meter_id = request.match_info["meter_id"]
    if meter_id not in agent.readers and meter_id not in agent.pipeline.latest and meter_id not in agent.store.meter_ids():
        raise ApiError(404, "not_found", f"no meter {meter_id!r}")
    return meter_id


# --- handlers ------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    ok, body = request.app[AGENT].health()
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    text = render_metrics(request.app[AGENT])
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def list_meters(request: web.Request) -> web.Response:
    require_operator(request)
    agent = request.app[AGENT]
    meters = []
    for meter_id in sorted(set(agent.readers) | set(agent.pipeline.latest)):
        reader = agent.readers.get(meter_id)
        latest = agent.pipeline.latest.get(meter_id)
        meters.append({
            "id": meter_id,
            "source": "p1" if reader else "http",
            "port": reader.spec.port if reader else None,
            "profile": reader.profile_name if reader else None,
            "state": reader.state if reader else None,
            "last_reading_at": latest.to_json()["received_at"] if latest else None,
        })
    return web.json_response({"meters": meters})


async def latest_reading(request: web.Request) -> web.Response:
    require_operator(request)
    meter_id = known_meter(request)
    agent = request.app[AGENT]
    reading = agent.pipeline.latest.get(meter_id) or agent.store.latest(meter_id)
    if reading is None:
        raise ApiError(404, "no_reading", f"meter {meter_id!r} has sent no valid telegram yet")
    return web.json_response(reading.to_json())


async def meter_readings(request: web.Request) -> web.Response:
    require_operator(request)
    meter_id = known_meter(request)
    q = request.query
    since, until = parse_time(q.get("since"), "since"), parse_time(q.get("until"), "until")
    if since is not None and until is not None and until < since:
        raise ApiError(400, "bad_parameter", "until is before since")
    resolution = q.get("resolution", "raw")
    if resolution not in RESOLUTIONS:
        raise ApiError(400, "bad_parameter", f"resolution must be one of {', '.join(RESOLUTIONS)}")
    limit = parse_limit(q.get("limit"))
    rows = request.app[AGENT].store.readings(meter_id, since=since, until=until, resolution=resolution,
                                               limit=limit)
    return web.json_response({"meter_id": meter_id, "resolution": resolution, "count": len(rows),
                              "readings": rows})


def create_app(agent) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[AGENT] = agent
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/meters", list_meters)
    app.router.add_get("/meters/{meter_id}/latest", latest_reading)
    app.router.add_get("/meters/{meter_id}/readings", meter_readings)
    return app
