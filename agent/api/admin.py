"""The operator's endpoints: organizations, households, a read-only view of consents, the audit log."""

from __future__ import annotations


from aiohttp import web

from agent.api.bodies import HouseholdIn, HouseholdPatch, OrganizationIn, OrganizationPatch, decode
from agent.api.common import (ApiError, Http, agent_of, caller, in_thread, parse_limit, parse_time, read_body,
                              stream_json)
from agent.api.spec import LIMIT, NO_CONTENT, NOT_FOUND, OP, STRING, TIME_PARAM, Route, error, ok_json, query, ref
from agent.auth import OPERATOR
from agent.parameters import lookup
from agent.services import Services


def _level(request: web.Request, name) -> str:
    levels = agent_of(request).config.levels
    if name not in levels:
        raise ApiError(Http.INVALID, f"unknown level {name!r}; levels: {', '.join(sorted(levels))}")
    return name


def _parameter_list(value, tags: tuple[str, ...]) -> list[str]:
    if not all(isinstance(p, str) and p for p in value):
        raise ApiError(Http.INVALID, "parameters must be a list of parameter names or patterns")
    for name in value:
        if "*" not in name and "?" not in name and lookup(name, tags) is None:
            raise ApiError(Http.INVALID, f"unknown parameter {name!r}")
    return list(value)


# --- organizations -------------------------------------------------------------------------
async def create_organization(request: web.Request) -> web.Response:
    operator = caller(request)
    body = decode(await read_body(request), OrganizationIn)
    agent = agent_of(request)
    org, api_key = await agent.registry.create_organization_async(body.name, _level(request, body.level))
    await agent.audit.record_durable(operator.id, OPERATOR, "organization.create", organization_id=org.id,
                                     level=org.level)
    return web.json_response({**org.public(), "api_key": api_key}, status=201)


async def list_organizations(request: web.Request) -> web.Response:
    orgs = agent_of(request).registry.organizations.values()
    return web.json_response({"organizations": [o.public() for o in orgs]})


async def get_organization(request: web.Request) -> web.Response:
    return web.json_response(agent_of(request).registry.organization(request.match_info["org_id"]).public())


async def update_organization(request: web.Request) -> web.Response:
    operator = caller(request)
    changes = decode(await read_body(request), OrganizationPatch).given()
    if "level" in changes:
        _level(request, changes["level"])
    if changes.get("parameters") is not None:
        changes["parameters"] = _parameter_list(changes["parameters"], agent_of(request).config.privacy.tags)
    agent = agent_of(request)
    org = await agent.registry.update_organization_async(request.match_info["org_id"], **changes)
    await agent.audit.record_durable(operator.id, OPERATOR, "organization.update", organization_id=org.id,
                                     changes=sorted(changes))
    return web.json_response(org.public())


async def rotate_organization_key(request: web.Request) -> web.Response:
    operator = caller(request)
    agent = agent_of(request)
    org_id = request.match_info["org_id"]
    api_key = await agent.registry.rotate_organization_key_async(org_id)
    await agent.audit.record_durable(operator.id, OPERATOR, "organization.rotate_key", organization_id=org_id)
    return web.json_response({"id": org_id, "api_key": api_key})


async def delete_organization(request: web.Request) -> web.Response:
    operator = caller(request)
    agent = agent_of(request)
    org_id = request.match_info["org_id"]

    async def delete():
        await agent.registry.delete_organization_async(org_id)
        await agent.delivery.drop_organization_async(org_id)  # after any subscribe in flight, under its lock
        await agent.audit.record_durable(operator.id, OPERATOR, "organization.delete", organization_id=org_id)
    await agent.shielded(delete())  # a cancelled request must not leave its subscriptions behind
    return web.Response(status=204)


# --- households ----------------------------------------------------------------------------
async def create_household(request: web.Request) -> web.Response:
    operator = caller(request)
    raw = await read_body(request)
    body = decode(raw, HouseholdIn) if raw else HouseholdIn()
    household, token, datalogger = await new_household(agent_of(request), operator.id, body.meter_id,
                                                       body.related_organizations)
    return web.json_response({**household.public(), "token": token, "datalogger_token": datalogger}, status=201)


async def new_household(agent: Services, operator_id: str, meter_id: str | None, related=()):
    """(household, token, datalogger token or None), created and audited (the API and the installer's page both
    use it)."""
    if meter_id is not None and meter_id not in agent.readers:
        raise ApiError(Http.INVALID, f"meter_id {meter_id!r} is not one of this device's P1 meters; leave it "
                       "out for a household that posts its own readings")
    household, token, datalogger = await agent.registry.create_household_async(meter_id, "p1" if meter_id else "http",
                                                                               related)
    await agent.audit.record_durable(operator_id, OPERATOR, "household.create", household_id=household.id,
                                     related_organizations=household.related_organizations)
    return household, token, datalogger


async def update_household(request: web.Request) -> web.Response:
    """The organizations a household is related to (an employee's home, a test meter): it never counts toward
    their k_min. The list replaces the previous one."""
    operator = caller(request)
    agent = agent_of(request)
    household_id = request.match_info["household_id"]
    agent.registry.household(household_id)  # 404 before the body's merits
    body = decode(await read_body(request), HouseholdPatch)
    household = await agent.registry.set_related_async(household_id, body.related_organizations)
    await agent.audit.record_durable(operator.id, OPERATOR, "household.update", household_id=household_id,
                                     related_organizations=household.related_organizations)
    return web.json_response(household.public())


async def list_households(request: web.Request) -> web.Response:
    return web.json_response({"households": [h.public() for h in agent_of(request).registry.households.values()]})


async def get_household(request: web.Request) -> web.Response:
    return web.json_response(agent_of(request).registry.household(request.match_info["household_id"]).public())


async def rotate_household_token(request: web.Request) -> web.Response:
    operator = caller(request)
    agent = agent_of(request)
    household_id = request.match_info["household_id"]
    token = await agent.registry.rotate_household_token_async(household_id)
    await agent.audit.record_durable(operator.id, OPERATOR, "household.rotate_token", household_id=household_id)
    return web.json_response({"id": household_id, "token": token})


async def rotate_datalogger_token(request: web.Request) -> web.Response:
    """The household's datalogger token, made (a household made before there were any has none) or replaced."""
    operator = caller(request)
    agent = agent_of(request)
    household_id = request.match_info["household_id"]
    token = await agent.registry.rotate_datalogger_token_async(household_id)
    await agent.audit.record_durable(operator.id, OPERATOR, "household.rotate_datalogger_token",
                                     household_id=household_id)
    return web.json_response({"id": household_id, "datalogger_token": token})


async def delete_household(request: web.Request) -> web.Response:
    operator = caller(request)
    agent = agent_of(request)
    household_id = request.match_info["household_id"]
    meter_id = agent.registry.household(household_id).meter_id
    await agent.registry.delete_household_async(household_id)
    # its meter's latest reading was its own: not the next household's on that meter (R6b-4)
    agent.pipeline.latest.pop(meter_id, None)
    agent.triggers.latest.pop(meter_id, None)
    await agent.audit.record_durable(operator.id, OPERATOR, "household.delete", household_id=household_id)
    return web.Response(status=204)


# --- consents (read only) and audit --------------------------------------------------------
async def list_consents(request: web.Request) -> web.Response:
    q = request.query
    consents = agent_of(request).registry.all_consents(q.get("household_id"), q.get("organization_id"))
    return web.json_response({"consents": consents})


async def read_audit(request: web.Request) -> web.StreamResponse:
    q = request.query
    since, until = parse_time(q.get("since"), "since"), parse_time(q.get("until"), "until")
    batches = agent_of(request).audit.entry_batches(since, until, q.get("who"), parse_limit(q.get("limit")))
    return await stream_json(request, '{"entries": [', in_thread(batches), lambda _: "]}", "audit log")


ORG_PATH = "/organizations/{org_id}"
# /households/me is the household's own: the id's pattern keeps it from being taken for one
HH_PATH = "/households/{household_id:hh_[0-9a-f]+}"
ROUTES = (
    Route("POST", "/organizations", create_organization, OP, "Register an organization; its API key is shown once",
          "operator", {"201": ok_json("OrganizationCreated", "Created")}, body="OrganizationIn"),
    Route("GET", "/organizations", list_organizations, OP, "List organizations", "operator",
          {"200": ok_json("Organizations")}),
    Route("GET", ORG_PATH, get_organization, OP, "One organization", "operator", {"200": ok_json("Organization")},
          errors=NOT_FOUND),
    Route("PATCH", ORG_PATH, update_organization, OP, "Change name, level or allowed parameters", "operator",
          {"200": ok_json("Organization")}, body="OrganizationPatch", errors=NOT_FOUND),
    Route("DELETE", ORG_PATH, delete_organization, OP,
          "Remove an organization; its key stops working and its consents end", "operator", {"204": NO_CONTENT},
          errors=NOT_FOUND),
    Route("POST", f"{ORG_PATH}/key", rotate_organization_key, OP, "Issue a new API key; the old one stops working",
          "operator", {"200": ok_json("KeyRotated")}, errors=NOT_FOUND),
    Route("POST", "/households", create_household, OP,
          "Register a household; its token (and datalogger token, if it posts its own readings) shown once", "operator",
          {"201": ok_json("HouseholdCreated", "Created")},
          errors={"400": error("Malformed JSON"), "409": error("Meter already taken"),
                  "422": error("Unknown meter or organization")},
          openapi={"requestBody": {"required": False,
                                   "content": {"application/json": {"schema": ref("HouseholdIn")}}}}),
    Route("GET", "/households", list_households, OP, "List households", "operator", {"200": ok_json("Households")}),
    Route("GET", HH_PATH, get_household, OP, "One household", "operator", {"200": ok_json("Household")},
          errors=NOT_FOUND),
    Route("PATCH", HH_PATH, update_household, OP,
          "Mark the household related to organizations (replaces the list; unknown ids: 422)", "operator",
          {"200": ok_json("Household")}, body="HouseholdPatch", errors=NOT_FOUND),
    Route("DELETE", HH_PATH, delete_household, OP, "Remove a household; its consents end", "operator",
          {"204": NO_CONTENT}, errors=NOT_FOUND),
    Route("POST", f"{HH_PATH}/token", rotate_household_token, OP,
          "Issue a new household token (its pages' sessions end; its datalogger token stays)", "operator",
          {"200": ok_json("KeyRotated")}, errors=NOT_FOUND),
    Route("POST", f"{HH_PATH}/datalogger_token", rotate_datalogger_token, OP,
          "Make or replace the household's datalogger token, which only posts its readings (the household's token "
          "and sessions stay)", "operator", {"200": ok_json("KeyRotated")}, errors=NOT_FOUND),
    Route("GET", "/consents", list_consents, OP, "Consents, read only (for support)", "operator",
          {"200": ok_json("Consents")}, (query("household_id", STRING), query("organization_id", STRING))),
    Route("GET", "/audit", read_audit, OP, "The audit log", "operator", {"200": ok_json("Audit")},
          (query("since", TIME_PARAM), query("until", TIME_PARAM), query("who", STRING), LIMIT),
          errors={"400": error("Bad parameter")}),
)
