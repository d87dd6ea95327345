"""The operator's endpoints: organizations, households, a read-only view of consents, the audit log."""

from __future__ import annotations

import asyncio

from aiohttp import web

from agent.api.common import ApiError, agent_of, json_object, parse_limit, parse_time, read_json, require
from agent.auth import OPERATOR
from agent.parameters import lookup


def _level(request: web.Request, name) -> str:
    levels = agent_of(request).config.levels
    if name not in levels:
        raise ApiError(422, "invalid", f"unknown level {name!r}; levels: {', '.join(sorted(levels))}")
    return name


def _parameter_list(value, tags: tuple[str, ...]) -> list[str]:
    if not all(isinstance(p, str) and p for p in value):
        raise ApiError(422, "invalid", "parameters must be a list of parameter names or patterns")
    for name in value:
        if "*" not in name and "?" not in name and lookup(name, tags) is None:
            raise ApiError(422, "invalid", f"unknown parameter {name!r}")
    return list(value)


# --- organizations -------------------------------------------------------------------------
async def create_organization(request: web.Request) -> web.Response:
    operator = require(request, OPERATOR)
    body = json_object(await read_json(request), {"name": str, "level": str}, ("name", "level"))
    agent = agent_of(request)
    org, api_key = await agent.registry.create_organization_async(body["name"], _level(request, body["level"]))
    await agent.audit.record_durable(operator.id, OPERATOR, "organization.create", organization_id=org.id,
                                     level=org.level)
    return web.json_response({**org.public(), "api_key": api_key}, status=201)


async def list_organizations(request: web.Request) -> web.Response:
    require(request, OPERATOR)
    orgs = agent_of(request).registry.organizations.values()
    return web.json_response({"organizations": [o.public() for o in orgs]})


async def get_organization(request: web.Request) -> web.Response:
    require(request, OPERATOR)
    return web.json_response(agent_of(request).registry.organization(request.match_info["org_id"]).public())


async def update_organization(request: web.Request) -> web.Response:
    operator = require(request, OPERATOR)
    body = json_object(await read_json(request), {"name": str, "level": str, "parameters": (list, type(None))})
    changes = dict(body)
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
    operator = require(request, OPERATOR)
    agent = agent_of(request)
    org_id = request.match_info["org_id"]
    api_key = await agent.registry.rotate_organization_key_async(org_id)
    await agent.audit.record_durable(operator.id, OPERATOR, "organization.rotate_key", organization_id=org_id)
    return web.json_response({"id": org_id, "api_key": api_key})


async def delete_organization(request: web.Request) -> web.Response:
    operator = require(request, OPERATOR)
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
    operator = require(request, OPERATOR)
    body = json_object(await read_json(request, allow_empty=True),
                       {"meter_id": (str, type(None)), "related_organizations": list})
    household, token = await new_household(agent_of(request), operator.id, body.get("meter_id"),
                                           body.get("related_organizations", []))
    return web.json_response({**household.public(), "token": token}, status=201)


async def new_household(agent, operator_id: str, meter_id: str | None, related=()):
    """(household, token), created and audited (the API and the installer's page both use it)."""
    if meter_id is not None and meter_id not in agent.readers:
        raise ApiError(422, "invalid", f"meter_id {meter_id!r} is not one of this device's P1 meters; leave it "
                       "out for a household that posts its own readings")
    household, token = await agent.registry.create_household_async(meter_id, "p1" if meter_id else "http", related)
    await agent.audit.record_durable(operator_id, OPERATOR, "household.create", household_id=household.id,
                                     related_organizations=household.related_organizations)
    return household, token


async def update_household(request: web.Request) -> web.Response:
    """The organizations a household is related to (an employee's home, a test meter): it never counts toward
    their k_min. The list replaces the previous one."""
    operator = require(request, OPERATOR)
    agent = agent_of(request)
    household_id = request.match_info["household_id"]
    agent.registry.household(household_id)  # 404 before the body's merits
    body = json_object(await read_json(request), {"related_organizations": list}, ("related_organizations",))
    household = await agent.registry.set_related_async(household_id, body["related_organizations"])
    await agent.audit.record_durable(operator.id, OPERATOR, "household.update", household_id=household_id,
                                     related_organizations=household.related_organizations)
    return web.json_response(household.public())


async def list_households(request: web.Request) -> web.Response:
    require(request, OPERATOR)
    return web.json_response({"households": [h.public() for h in agent_of(request).registry.households.values()]})


async def get_household(request: web.Request) -> web.Response:
    require(request, OPERATOR)
    return web.json_response(agent_of(request).registry.household(request.match_info["household_id"]).public())


async def rotate_household_token(request: web.Request) -> web.Response:
    operator = require(request, OPERATOR)
    agent = agent_of(request)
    household_id = request.match_info["household_id"]
    token = await agent.registry.rotate_household_token_async(household_id)
    await agent.audit.record_durable(operator.id, OPERATOR, "household.rotate_token", household_id=household_id)
    return web.json_response({"id": household_id, "token": token})


async def delete_household(request: web.Request) -> web.Response:
    operator = require(request, OPERATOR)
    agent = agent_of(request)
    household_id = request.match_info["household_id"]
    await agent.registry.delete_household_async(household_id)
    await agent.audit.record_durable(operator.id, OPERATOR, "household.delete", household_id=household_id)
    return web.Response(status=204)


# --- consents (read only) and audit --------------------------------------------------------
async def list_consents(request: web.Request) -> web.Response:
    require(request, OPERATOR)
    q = request.query
    consents = agent_of(request).registry.all_consents(q.get("household_id"), q.get("organization_id"))
    return web.json_response({"consents": consents})


async def read_audit(request: web.Request) -> web.Response:
    require(request, OPERATOR)
    q = request.query
    since, until = parse_time(q.get("since"), "since"), parse_time(q.get("until"), "until")
    entries = await asyncio.to_thread(agent_of(request).audit.entries, since, until, q.get("who"),
                                      parse_limit(q.get("limit")))
    return web.json_response({"entries": entries})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/organizations", create_organization)
    r.add_get("/organizations", list_organizations)
    r.add_get("/organizations/{org_id}", get_organization)
    r.add_patch("/organizations/{org_id}", update_organization)
    r.add_delete("/organizations/{org_id}", delete_organization)
    r.add_post("/organizations/{org_id}/key", rotate_organization_key)
    r.add_post("/households", create_household)
    r.add_get("/households", list_households)
    # /households/me is the household's own: registered first so it is never taken for an id
    r.add_get("/households/{household_id:hh_[0-9a-f]+}", get_household)
    r.add_patch("/households/{household_id:hh_[0-9a-f]+}", update_household)
    r.add_delete("/households/{household_id:hh_[0-9a-f]+}", delete_household)
    r.add_post("/households/{household_id:hh_[0-9a-f]+}/token", rotate_household_token)
    r.add_get("/consents", list_consents)
    r.add_get("/audit", read_audit)
