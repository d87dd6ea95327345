"""A household's own endpoints: its consents, and its readings when its meter is not wired to the device."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiohttp import web

from agent.api.answers import Accepted
from agent.api.common import ApiError, Http, KeyedLocks, agent_of, caller, json_value, read_body, still_caller
from agent.api.spec import HH, INGEST, NOT_FOUND, STRING, Route, error, ok_json, ref
from agent.audit import consent_action
from agent.auth import HOUSEHOLD
from agent.ingest import check_order, readings_from_json_bytes, readings_from_payload
from agent.registry import SERVICES
from agent.services import Services

log = logging.getLogger("edge.api")


async def me(request: web.Request) -> web.Response:
    household = caller(request).household
    return web.json_response(household.public())


async def organizations_for_household(request: web.Request) -> web.Response:
    """What a household needs to decide: who may ask, at which level, for which services."""
    orgs = agent_of(request).registry.organizations.values()
    return web.json_response({"services": list(SERVICES),
                              "organizations": [{"id": o.id, "name": o.name, "level": o.level} for o in orgs]})


async def my_consents(request: web.Request) -> web.Response:
    household = caller(request).household
    registry = agent_of(request).registry
    return web.json_response({"consents": registry.consents_of(household.id),
                              "history": registry.history_of(household.id)})


async def my_consent_history(request: web.Request) -> web.Response:
    household = caller(request).household
    return web.json_response({"history": agent_of(request).registry.history_of(household.id)})


async def change_consent(agent: Services, household_id: str, org_id: str, service: str, granted: bool):
    """A household's grant or revocation, durable with its audit entry (the API and the web pages both use it)."""
    async def change_and_audit():
        change = await agent.registry.set_consent_async(household_id, org_id, service, granted)
        try:
            await agent.audit.record_durable(household_id, HOUSEHOLD, consent_action(granted),
                                             organization_id=org_id, service=service, changed_at=change.at)
        except OSError as exc:  # the change is durable: answer it (never a 5xx for what happened); the entry
            log.error("consent change of %s is durable but its audit entry is not yet: %s (kept, written when "
                      "the disk takes it)", household_id, exc)  # stays queued in the audit log
        return change
    # One step: a change on disk always gets its audit entry, even if this request is cancelled meanwhile
    # (the agent stopping waits for it).
    return await agent.shielded(change_and_audit())


async def _change_consent(request: web.Request, granted: bool) -> web.Response:
    household = caller(request).household
    org_id, service = request.match_info["org_id"], request.match_info["service"]
    change = await change_consent(agent_of(request), household.id, org_id, service, granted)
    return web.json_response({"organization_id": org_id, "service": service, "granted": granted, "at": change.at})


async def grant_consent(request: web.Request) -> web.Response:
    return await _change_consent(request, True)


async def revoke_consent(request: web.Request) -> web.Response:
    return await _change_consent(request, False)


# --- readings in ---------------------------------------------------------------------------
METER_LOCKS = web.AppKey("meter_locks", KeyedLocks)


async def _accept(request: web.Request, agent: Services, household, readings) -> None:
    """All checks first, then store them all: a batch is all or nothing."""
    if household.source == "p1":
        raise ApiError(Http.WIRED_METER, "this household's meter is read on the device's P1 port")
    agent.store.check_writable()  # 507/503 while the store cannot write: never acknowledge what may be lost
    latest = agent.pipeline.latest.get(household.meter_id)
    locks = request.app[METER_LOCKS]
    if latest is not None and not locks.held(household.meter_id):
        # The usual case: the check and the store are one step on the event loop (no await between them), so no
        # other request for this meter can come between them.
        _check_and_ingest(agent, readings, latest)
        return
    # One batch per meter at a time, from the order check to the store: while one request waits for the
    # store below, another with the same readings must not pass the check too.
    async with locks(household.meter_id):
        latest = agent.pipeline.latest.get(household.meter_id)
        if latest is None:
            # The first batch since a restart: the store reads its segment files, off the event loop.
            latest = await asyncio.to_thread(agent.store.latest, household.meter_id)
        _check_and_ingest(agent, readings, latest)


def _check_and_ingest(agent, readings, latest) -> None:
    check_order(readings, latest.timestamp if latest else None, agent.now())
    for reading in sorted(readings, key=lambda r: r.timestamp) if len(readings) > 1 else readings:
        agent.ingest_http(reading)


def _accepted(count: int) -> web.Response:
    """201 Accepted (its body made once for the one-reading answer)."""
    body = ACCEPTED_ONE if count == 1 else msgspec.json.encode(Accepted(accepted=count))
    return web.Response(body=body, status=201, content_type="application/json")


ACCEPTED_ONE = msgspec.json.encode(Accepted(accepted=1))


async def post_readings(request: web.Request) -> web.Response:
    household = caller(request).household
    agent = agent_of(request)
    received_at = agent.now()
    if request.content_type == "text/plain":
        text = (await read_body(request)).decode("latin-1")
        readings = [agent.telegram_ingest.decode(text, household.meter_id, received_at)]
    else:
        if request.content_type not in ("application/json", "application/octet-stream", ""):
            raise ApiError(Http.UNSUPPORTED_MEDIA_TYPE, "send application/json readings or a text/plain telegram")
        raw, tags = await read_body(request), agent.config.privacy.tags
        try:  # the schema checks while msgspec parses: one pass over the body
            readings = readings_from_json_bytes(raw, household.meter_id, received_at, tags)
        except msgspec.MsgspecError:  # not msgspec's JSON, or refused: what json.loads reads, in words
            readings = readings_from_payload(json_value(raw), household.meter_id, received_at, tags)
    await _accept(request, agent, household, readings)
    return _accepted(len(readings))


async def dsmr_reader_datalogger(request: web.Request) -> web.Response:
    """DSMR-reader's remote datalogger contract: form field `telegram`, `Authorization: Token <key>`
    or `X-AUTHKEY`, 201 on success; existing Pi dataloggers need only a new host and key."""
    household = caller(request).household
    agent = agent_of(request)
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise ApiError(Http.UNSUPPORTED_MEDIA_TYPE, "send the telegram as form field 'telegram'")
    try:
        form = await request.post()
    except ValueError as err:  # e.g. multipart without a boundary
        raise ApiError(Http.BAD_REQUEST, f"unreadable form: {err.__class__.__name__}") from None
    still_caller(request)
    telegram = form.get("telegram")
    if not isinstance(telegram, str) or not telegram.strip():
        raise ApiError(Http.BAD_REQUEST, "form field 'telegram' is required")
    reading = agent.telegram_ingest.decode(telegram.replace("\n", "\r\n").replace("\r\r\n", "\r\n"),
                                           household.meter_id, agent.now())
    await _accept(request, agent, household, [reading])
    return _accepted(1)


CONSENT_PATH = "/households/me/consents/{org_id}/{service}"
CONSENT_DOCS = {"service": "aggregates, triggers, anonymized_data, or trigger_events:<trigger id> (one trigger's "
                           "per-household events: its webhooks or appliance switches of a condition on your data; a "
                           "trigger id is trg_ and 12 hex digits)"}
ROUTES = (
    Route("GET", "/households/me", me, HH, "The calling household", "household", {"200": ok_json("Household")}),
    Route("GET", "/households/me/organizations", organizations_for_household, HH,
          "Organizations a household may consent to", "household", {"200": ok_json("OrganizationsForHousehold")}),
    Route("GET", "/households/me/consents", my_consents, HH, "Current consents and their history", "household",
          {"200": ok_json("MyConsents")}),
    Route("GET", "/households/me/consents/history", my_consent_history, HH, "Every consent change, append-only",
          "household", {"200": ok_json("ConsentHistory")}),
    Route("PUT", CONSENT_PATH, grant_consent, HH, "Grant a service to an organization", "household",
          {"200": ok_json("ConsentSet")}, errors=NOT_FOUND, path_docs=CONSENT_DOCS),
    Route("DELETE", CONSENT_PATH, revoke_consent, HH, "Revoke it; effective for the window in progress", "household",
          {"200": ok_json("ConsentSet")}, errors=NOT_FOUND, path_docs=CONSENT_DOCS),
    Route("POST", "/readings", post_readings, INGEST,
          "Post readings (households whose meter is not wired to the device; the datalogger token or the household's)",
          "household", {"201": ok_json("Accepted", "Stored")},
          errors={"400": error("Malformed JSON"), "409": error("Duplicate, or a wired meter"),
                  "413": error("Body or batch too large"), "415": error("Unsupported content type"),
                  "422": error("Invalid reading or telegram")},
          openapi={"requestBody": {"required": True, "content": {
              "application/json": {"schema": ref("ReadingsIn")},
              "text/plain": {"schema": {"type": "string", "description": "One raw P1 telegram"}}}}}),
    Route("POST", "/api/v1/datalogger/dsmrreading", dsmr_reader_datalogger, INGEST,
          "DSMR-reader remote datalogger compatibility (Authorization: Token <key> or X-AUTHKEY)", "household",
          {"201": ok_json("Accepted", "Stored")},
          errors={"400": error("Missing telegram"), "409": error("Duplicate"), "413": error("Body too large"),
                  "415": error("Not a form"), "422": error("Bad telegram")},
          schemes=("token", "bearer"),
          openapi={"security": [{"token": []}, {"authkey": []}],
                   "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
                       "type": "object", "required": ["telegram"], "properties": {"telegram": STRING}}}}}}),
)
