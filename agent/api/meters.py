"""Health for anyone, its detail and the metrics for the operator; meters and their readings for the operator.

Without the operator token, GET /health says only ok or degraded (200/503), for load balancers, the image's
update check and the installer's browser: readings per second, meter names and per-subscription counters told
anyone on the network who is posting now and when another organization's aggregate crosses its threshold.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from agent.api.common import ApiError, Http, agent_of, in_thread, parse_limit, parse_time, principal, stream_json
from agent.api.spec import ANYONE, LIMIT, NOT_FOUND, OP, STRING, TIME_PARAM, Route, error, ok_json, query, ref
from agent.auth import OPERATOR
from agent.metrics import render_metrics

RESOLUTIONS = ("raw", "1m", "15m")


async def health(request: web.Request) -> web.Response:
    # A token that is sent is checked (bad ones count toward the throttle): the two answers must not make
    # /health an unthrottled oracle for guessing the operator token.
    detailed = "Authorization" in request.headers and principal(request).role == OPERATOR
    ok, body = agent_of(request).health(public=not detailed)
    if not detailed:
        body = {"status": body["status"]}
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=render_metrics(agent_of(request)), content_type="text/plain", charset="utf-8")


def known_meter(request: web.Request) -> str:
    agent = agent_of(request)
    meter_id = request.match_info["meter_id"]
    if meter_id not in agent.readers and meter_id not in agent.pipeline.latest and meter_id not in agent.store.meter_ids():
        raise ApiError(Http.NOT_FOUND, f"no meter {meter_id!r}")
    return meter_id


async def list_meters(request: web.Request) -> web.Response:
    agent = agent_of(request)
    meters = []
    for meter_id in sorted(set(agent.readers) | set(agent.pipeline.latest)):
        reader = agent.readers.get(meter_id)
        latest = agent.pipeline.latest.get(meter_id)
        household = agent.registry.household_by_meter(meter_id)
        meters.append({
            "id": meter_id,
            "source": "p1" if reader else "http",
            "port": reader.spec.port if reader else None,
            "profile": reader.profile_name if reader else None,
            "state": reader.state if reader else None,
            "household_id": household.id if household else None,
            "last_reading_at": latest.to_json()["received_at"] if latest else None,
        })
    return web.json_response({"meters": meters})


async def latest_reading(request: web.Request) -> web.Response:
    meter_id = known_meter(request)
    agent = agent_of(request)
    reading = agent.pipeline.latest.get(meter_id) or await asyncio.to_thread(agent.store.latest, meter_id)
    if reading is None:
        raise ApiError(Http.NO_READING, f"meter {meter_id!r} has sent no valid telegram yet")
    return web.json_response(reading.to_json())


async def meter_readings(request: web.Request) -> web.Response:
    meter_id = known_meter(request)
    q = request.query
    since, until = parse_time(q.get("since"), "since"), parse_time(q.get("until"), "until")
    if since is not None and until is not None and until < since:
        raise ApiError(Http.BAD_PARAMETER, "until is before since")
    resolution = q.get("resolution", "raw")
    if resolution not in RESOLUTIONS:
        raise ApiError(Http.BAD_PARAMETER, f"resolution must be one of {', '.join(RESOLUTIONS)}")
    limit = parse_limit(q.get("limit"))
    return await _stream_rows(request, meter_id, resolution, agent_of(request).store.reading_batches(
        meter_id, since=since, until=until, resolution=resolution, limit=limit))


async def _stream_rows(request: web.Request, meter_id: str, resolution: str, batches) -> web.StreamResponse:
    """The answer written a batch at a time (each read and encoded in a worker thread, agent/store's
    reading_batches): memory holds one segment's rows, whatever the limit (100,000 raw readings as one body took
    the unit past its MemoryMax). `count` comes after the rows, since it is known only at the end."""
    head = json.dumps({"meter_id": meter_id, "resolution": resolution})[:-1]
    return await stream_json(request, f'{head}, "readings": [', in_thread(batches),
                             lambda count: f'], "count": {count}}}', f"readings of meter {meter_id!r}")


def _health_body(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {
        "oneOf": [ref("HealthPublic"), ref("Health")]}}}}


READINGS_QUERY = (query("since", TIME_PARAM), query("until", TIME_PARAM),
                  query("resolution", {"enum": list(RESOLUTIONS)}),
                  LIMIT)
ROUTES = (
    Route("GET", "/health", health, ANYONE, "ok or degraded for anyone; meters, storage and triggers for the operator",
          "device", {"200": _health_body("Every meter reading"), "503": _health_body("Not every meter reading"),
                     "401": error("A token was sent and it is not valid"),
                     "429": error("Too many bad tokens from this address")},
          openapi={"description": "For: anyone. Without the operator's bearer token the body is only {\"status\"}; "
                                  "a token that is sent is checked."}),
    Route("GET", "/metrics", metrics, OP, "Prometheus metrics (meters, store, webhook delivery)", "device",
          {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": STRING}}}}),
    Route("GET", "/meters", list_meters, OP, "Meters known to the device", "device", {"200": ok_json("Meters")}),
    Route("GET", "/meters/{meter_id}/latest", latest_reading, OP, "A meter's latest reading", "device",
          {"200": ok_json("Reading")}, errors=NOT_FOUND),
    Route("GET", "/meters/{meter_id}/readings", meter_readings, OP, "A meter's stored readings", "device",
          {"200": ok_json("ReadingsPage")}, READINGS_QUERY, errors={**NOT_FOUND, "400": error("Bad parameter")}),
)
