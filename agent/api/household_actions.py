"""A household's side of triggers: where its notifications go, its inbox, and the appliances it lets
organizations switch.

- ``PUT /households/me/notify`` {"url", "kind": "webhook"|"ntfy"}: a webhook gets JSON signed per Standard
  Webhooks with the secret returned once; an ntfy-style topic URL gets the text with a Title header.
  Endpoints follow the subscriptions' rules (https, public addresses, unless the operator allows more).
- ``GET /households/me/notifications``: the last 100 notifications, newest first, whether or not an
  endpoint is registered (organizations only ever see counts).
- ``POST /households/me/notify/test``: a test notification to that endpoint now, signed as every notification,
  through the household's own delivery lane; the answer says what the endpoint answered (502 if it failed).
- ``POST /households/me/appliances``: a Shelly (Gen2 RPC) or Tasmota relay on the household's own network.
  Registered by the household itself, so private LAN addresses and plain http are allowed; this device's
  loopback and link-local (cloud metadata) addresses are not, unless ``[delivery] allow_private_endpoints``.
  An organization can switch it only if it is in ``allowed_organizations`` *and* holds the household's
  ``triggers`` consent. ``GET /households/me/appliances/{id}/status`` reads its relay now, on or off (502 if it
  cannot).
  An address is one household's on the device: another's registration of it is refused (409 ``address_taken``),
  and the device never connects to it for another household (agent/triggers/actions.py, R6-9).
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timezone

import aiohttp
from aiohttp import web

from agent.api.bodies import APPLIANCE_KIND, APPLIANCE_NAME, ApplianceIn, NotifyIn, decode
from agent.api.common import ApiError, Http, KeyedLocks, agent_of, caller, read_body
from agent.api.spec import HH, NO_CONTENT, NOT_FOUND, Route, error, ok_json
from agent.auth import HOUSEHOLD
from agent.delivery import signing
from agent.delivery.targets import TargetError
from agent.services import Services
from agent.triggers import actions
from agent.triggers.runner import APPLIANCE_TIMEOUT_S
from drivers import appliances, notify
from drivers.appliances import ApplianceError
from drivers.reading import iso

MAX_APPLIANCES = 32
# per household, one change at a time to its endpoint and appliances: a check (how many appliances, which names,
# is there an endpoint) and the change it allows stay one step while the write is awaited
HOUSEHOLD_LOCKS = web.AppKey("household_locks", KeyedLocks)
ADDRESSES_LOCK = "appliance addresses"  # a key of HOUSEHOLD_LOCKS no household id can be


def address_taken() -> ApiError:
    """The address, or the relay answering at it (R8-1), is another household's: one sentence, not saying whose,
    nor which of the two (R6-9)."""
    return ApiError(Http.ADDRESS_TAKEN, "this address is another household's appliance on this device")


def _household(request: web.Request):
    household = caller(request).household
    return household, agent_of(request)


# --- notification endpoint -------------------------------------------------------------------------
async def get_notify(request: web.Request) -> web.Response:
    household, agent = _household(request)
    endpoint = agent.triggers.households.endpoints.get(household.id)
    if endpoint is None:
        raise ApiError(Http.NOT_FOUND, "no notification endpoint; PUT one")
    return web.json_response({"url": endpoint["url"], "kind": endpoint["kind"], "updated_at": endpoint["updated_at"]})


async def put_notify(request: web.Request) -> web.Response:
    household, agent = _household(request)
    body = decode(await read_body(request), NotifyIn)
    return web.json_response(await set_endpoint(agent, request.app[HOUSEHOLD_LOCKS], household.id, body.url,
                                                body.kind))


async def set_endpoint(agent: Services, locks: KeyedLocks, household_id: str, url: str, kind: str) -> dict:
    """Checked, written and audited; the answer carries a webhook's secret, once (the API and the web pages)."""
    if kind not in notify.KINDS:
        raise ApiError(Http.INVALID, f"kind must be one of {', '.join(notify.KINDS)}")
    delivery = agent.config.delivery
    try:
        url = actions.check_endpoint(url, delivery.allow_http, delivery.allow_private_endpoints)
    except TargetError as err:
        raise ApiError(Http.ENDPOINT_REFUSED, str(err)) from None
    secret = signing.new_secret() if kind == "webhook" else None
    doc = {"url": url, "kind": kind, "secret": secret, "updated_at": agent.clock()}
    # under the household's lock: a DELETE asked for meanwhile waits until this endpoint is written, then removes it
    await agent.triggers.households.set_endpoint_async(household_id, doc, lock=locks(household_id))
    await agent.audit.record_durable(household_id, HOUSEHOLD, "notify.set", kind=kind)
    out = {"url": url, "kind": kind, "updated_at": doc["updated_at"]}
    if secret:
        out["secret"] = secret
    return out


async def delete_notify(request: web.Request) -> web.Response:
    household, agent = _household(request)
    await remove_endpoint(agent, request.app[HOUSEHOLD_LOCKS], household.id)
    return web.Response(status=204)


async def remove_endpoint(agent: Services, locks: KeyedLocks, household_id: str) -> None:
    # under the household's lock: after a PUT in progress, it removes what that wrote
    if not await agent.triggers.households.remove_endpoint_async(household_id, lock=locks(household_id)):
        raise ApiError(Http.NOT_FOUND, "no notification endpoint")
    await agent.audit.record_durable(household_id, HOUSEHOLD, "notify.delete")


async def post_notify_test(request: web.Request) -> web.Response:
    household, agent = _household(request)
    out = await send_test_notification(agent, household.id)
    if not out["delivered"]:
        raise ApiError(Http.NOT_DELIVERED, out["error"], endpoint_status=out["status"])
    return web.json_response(out)


async def send_test_notification(agent: Services, household_id: str) -> dict:
    """A test notification to the household's endpoint now, as a trigger's would go (signed, the same address
    rules, a slot of the household's own lane): {"delivered", "status" (the endpoint's, if it answered), "error"}.
    Audited; nothing reaches an organization."""
    endpoint = agent.triggers.households.endpoints.get(household_id)
    if endpoint is None:
        raise ApiError(Http.NOT_FOUND, "no notification endpoint; PUT one")
    lane = agent.triggers.household_lanes[household_id]
    if not lane.admit():
        raise ApiError(Http.BUSY, "this household's notifications are still being sent; try again later")
    delivery = agent.config.delivery
    status, error = None, None
    try:
        if not actions.literal_allowed(endpoint["url"], delivery.allow_private_endpoints):
            raise notify.NotifyError("the address is not allowed")
        msg_id = "ntf_test_" + secrets.token_hex(6)
        title, content = "Edge: test", "A test notification from your Edge device: it reaches you."
        body = json.dumps({"type": "notification", "id": msg_id, "title": title, "content": content, "test": True,
                           "at": iso(datetime.fromtimestamp(agent.clock(), timezone.utc))},
                          separators=(",", ":")).encode()
        headers = signing.headers([endpoint["secret"]], msg_id, int(time.time()), body) if endpoint.get("secret") else {}
        async with actions.web_session(delivery.allow_private_endpoints, delivery.timeout_s, 1) as session, \
                lane.slot():
            status = await notify.send(session, endpoint["url"], endpoint["kind"], title=title, message=content,
                                       body=body, headers=headers)
    except notify.NotifyError as err:
        error = str(err)
        if error.startswith("HTTP "):
            status = int(error[5:])
            error = f"the endpoint answered {error}"
        elif error != "the address is not allowed":
            error = f"not reachable ({error})"
    finally:
        lane.done()
    await agent.audit.record_durable(household_id, HOUSEHOLD, "notify.test", delivered=error is None,
                                     status=status)
    return {"delivered": error is None, "status": status, "error": error}


async def notifications(request: web.Request) -> web.Response:
    household, agent = _household(request)
    entries = [{k: e[k] for k in ("id", "organization_id", "organization_name", "trigger_id", "title", "content",
                                  "at")} for e in agent.triggers.households.inbox(household.id)]
    return web.json_response({"notifications": entries})


# --- appliances ------------------------------------------------------------------------------------
def _public(appliance: dict) -> dict:
    return {k: appliance.get(k) for k in ("id", "name", "kind", "driver", "address", "channel",
                                          "allowed_organizations", "created_at")}


async def add_appliance(request: web.Request) -> web.Response:
    household, agent = _household(request)
    body = decode(await read_body(request), ApplianceIn)
    doc = await new_appliance(agent, request.app[HOUSEHOLD_LOCKS], household.id, body)
    return web.json_response(_public(doc), status=201)


async def new_appliance(agent: Services, locks: KeyedLocks, household_id: str, body: ApplianceIn) -> dict:
    """Checked, written and audited (the API and the web pages)."""
    name = body.name
    if not APPLIANCE_NAME.match(name) or not name.strip():
        raise ApiError(Http.INVALID, "name must be 1 to 64 printable characters")
    kind = body.kind
    if kind is not None and not APPLIANCE_KIND.match(kind):
        raise ApiError(Http.INVALID, "kind: 1-32 lowercase letters, digits, '_' or '-' (e.g. ev_charger, heater)")
    device = appliances.driver(body.driver)
    if device is None:
        raise ApiError(Http.INVALID, f"driver must be one of {', '.join(appliances.names())}")
    channel = body.channel
    if channel is not None and not 0 <= channel <= device.max_channel:
        raise ApiError(Http.INVALID, f"channel must be 0 to {device.max_channel} for {device.name}")
    try:
        address = actions.check_appliance_address(body.address, agent.config.delivery.allow_private_endpoints)
    except TargetError as err:
        raise ApiError(Http.ADDRESS_REFUSED, str(err)) from None
    orgs = body.allowed_organizations
    if len(orgs) > 64:  # the web pages' form is not decoded as the API's body is
        raise ApiError(Http.INVALID, "allowed_organizations must be a list of organization ids")
    for org_id in orgs:
        if org_id not in agent.registry.organizations:
            raise ApiError(Http.INVALID, f"no organization {org_id[:40]!r}; see GET /households/me/organizations")
    store = agent.triggers.households
    doc = {"id": "app_" + secrets.token_hex(6), "household_id": household_id, "name": name, "kind": kind,
           "driver": device.name, "address": address, "channel": channel,
           "allowed_organizations": sorted(set(orgs)), "created_at": agent.clock()}
    # before the relay is asked (no request for a registration refused anyway), then again under the locks
    _check_room(store.appliances_of(household_id), name)
    if agent.triggers.bindings.taken(actions.appliance_key(address), household_id):
        raise address_taken()
    mac = await _relay_identity(agent, device, doc)
    # the household's lock, then the device's for addresses: two households registering one address take turns
    async with locks(household_id), locks(ADDRESSES_LOCK), agent.triggers.bindings.binding:
        _check_room(store.appliances_of(household_id), name)
        if agent.triggers.bindings.taken(actions.appliance_key(address), household_id):
            # whose it is is not said, nor whether it was registered or reached (R6-9)
            raise address_taken()
        if mac is not None:
            if agent.triggers.bindings.device_taken(mac, household_id):  # the same sentence (R8-1)
                raise address_taken()
            doc["device"] = mac
        await store.add_appliance_async(doc)
    await agent.audit.record_durable(household_id, HOUSEHOLD, "appliance.add", appliance_id=doc["id"],
                                     driver=device.name, allowed_organizations=doc["allowed_organizations"])
    return doc


def _check_room(mine: list[dict], name: str) -> None:
    if len(mine) >= MAX_APPLIANCES:
        raise ApiError(Http.CONFLICT, f"at most {MAX_APPLIANCES} appliances per household")
    if any(a["name"].casefold() == name.casefold() for a in mine):
        raise ApiError(Http.CONFLICT, f"an appliance named {name!r} exists already")


async def _relay_identity(agent: Services, device: appliances.ApplianceDriver, doc: dict) -> str | None:
    """The relay's identity at the address being registered (R8-1), or None if it does not answer with one now (it
    is then bound on its first reach, and an address refused here is refused by the address check after this).
    409 if the relay is another household's."""
    private = agent.config.delivery.allow_private_endpoints
    bindings = agent.triggers.bindings
    try:
        with bindings.acting(doc):
            if not bindings.literal_allowed(doc, private):
                return None
            async with actions.lan_session(private, APPLIANCE_TIMEOUT_S, 1, bindings) as session:
                return await bindings.identify(session, device, doc)
    except actions.RelayTaken:
        raise address_taken() from None
    except (ApplianceError, aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


async def list_appliances(request: web.Request) -> web.Response:
    household, agent = _household(request)
    return web.json_response({"appliances": [_public(a) for a in agent.triggers.households.appliances_of(household.id)],
                              "drivers": appliances.names()})


async def delete_appliance(request: web.Request) -> web.Response:
    household, agent = _household(request)
    await remove_appliance(agent, request.app[HOUSEHOLD_LOCKS], household.id, request.match_info["appliance_id"])
    return web.Response(status=204)


async def remove_appliance(agent: Services, locks: KeyedLocks, household_id: str, appliance_id: str) -> None:
    store = agent.triggers.households
    async with locks(household_id):
        appliance = store.appliances.get(appliance_id)
        if appliance is None or appliance["household_id"] != household_id:
            raise ApiError(Http.NOT_FOUND, "no such appliance")
        await store.remove_appliance_async(appliance["id"])
    await agent.audit.record_durable(household_id, HOUSEHOLD, "appliance.delete", appliance_id=appliance["id"])


async def get_appliance_status(request: web.Request) -> web.Response:
    household, agent = _household(request)
    out = await appliance_status(agent, household.id, request.match_info["appliance_id"])
    if out["error"] is not None:
        raise ApiError(Http.APPLIANCE_UNREACHABLE, out["error"])
    return web.json_response(out)


async def appliance_status(agent: Services, household_id: str, appliance_id: str) -> dict:
    """The relay's state now, read from the appliance itself (the switching actions' address rules and
    bindings): {"on", "error"}; nothing is switched. Never the power the relay meters (R6-9: whoever holds an
    appliance's address would read a household's consumption through it; the household's meter shows its own).
    A failure is one sentence whatever the cause: no more of an address than whether such a relay answers there."""
    appliance = agent.triggers.households.appliances.get(appliance_id)
    if appliance is None or appliance["household_id"] != household_id:
        raise ApiError(Http.NOT_FOUND, "no such appliance")
    device = appliances.driver(appliance["driver"])
    private = agent.config.delivery.allow_private_endpoints
    bindings = agent.triggers.bindings
    try:
        with bindings.acting(appliance):
            if device is None or not bindings.literal_allowed(appliance, private):
                raise ApplianceError("refused")
            async with actions.lan_session(private, APPLIANCE_TIMEOUT_S, 1, bindings) as session:
                await bindings.reach(session, device, appliance)  # its relay, at that one address (R8-1)
                state = await device.status(session, appliance["address"], appliance.get("channel"))
    except (ApplianceError, aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return {"on": None, "error": f"it did not answer as a {appliance['driver']} relay at its address"}
    return {"on": state.on, "error": None}


ROUTES = (
    Route("GET", "/households/me/notify", get_notify, HH, "The household's notification endpoint", "household",
          {"200": ok_json("Notify")}, errors=NOT_FOUND),
    Route("PUT", "/households/me/notify", put_notify, HH,
          "Set it: a webhook (signed, secret shown once) or an ntfy-style topic URL", "household",
          {"200": ok_json("Notify")}, body="NotifyIn"),
    Route("DELETE", "/households/me/notify", delete_notify, HH, "Remove it (notifications stay in the inbox)",
          "household", {"204": NO_CONTENT}, errors=NOT_FOUND),
    Route("POST", "/households/me/notify/test", post_notify_test, HH,
          "Send a signed test notification to it now, in the household's own lane; what the endpoint answered",
          "household", {"200": ok_json("NotifyTest", "Delivered")},
          errors={**NOT_FOUND, "429": error("Too many bad tokens, or the household's notifications are being sent"),
                  "502": error("Not delivered: the endpoint answered non-2xx (endpoint_status) or was not "
                               "reachable")}),
    Route("GET", "/households/me/notifications", notifications, HH,
          "The household's inbox: the last 100 notifications, newest first", "household",
          {"200": ok_json("Notifications")}),
    Route("GET", "/households/me/appliances", list_appliances, HH, "The household's appliances", "household",
          {"200": ok_json("Appliances")}),
    Route("POST", "/households/me/appliances", add_appliance, HH,
          "Register an appliance on the household's network (private addresses allowed) and who may switch it",
          "household", {"201": ok_json("Appliance", "Registered")}, body="ApplianceIn",
          errors={"409": error("Name taken, too many, or the address (or the relay answering there, by its MAC) is "
                                "another household's appliance on this device (address_taken)")}),
    Route("DELETE", "/households/me/appliances/{appliance_id}", delete_appliance, HH, "Remove an appliance",
          "household", {"204": NO_CONTENT}, errors=NOT_FOUND),
    Route("GET", "/households/me/appliances/{appliance_id}/status", get_appliance_status, HH,
          "Read the appliance's relay now (nothing is switched)", "household", {"200": ok_json("ApplianceStatus")},
          errors={**NOT_FOUND, "502": error(f"The appliance could not be read ({Http.APPLIANCE_UNREACHABLE})")}),
)
