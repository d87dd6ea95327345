"""The answers are what agent/api/answers.py declares: real answers of a running agent, for every main endpoint,
converted into the Struct its route documents (strictly: an undeclared field, a missing one or a wrong type fails)
and checked against the generated OpenAPI schema. schemathesis (tests/test_openapi.py) checks independently."""

from __future__ import annotations

import re

import msgspec
import pytest

from agent.api import answers, records
from agent.api.openapi import SPEC
from drivers.p1_reader import MeterSpec
from tests.helpers.agent import OPERATOR_TOKEN, delivery_config, grant, make_config
from tests.helpers.appliances import FakeTasmota
from tests.helpers.openapi import conforms
from tests.helpers.receiver import receiver  # noqa: F401  (the fixture)
from tests.helpers.triggers import body, town  # noqa: F401  (town: the fixture)

STRUCTS = {kind.__name__: kind for kind in answers.ANSWERS}
# What each test below sees; every other Struct is part of one of these (or an error, converted on its own).
OPERATOR_ANSWERS = {"HealthPublic", "Health", "OrganizationCreated", "Organizations", "Organization", "Household",
                    "HouseholdCreated", "Households", "KeyRotated", "OrganizationsForHousehold", "ConsentSet",
                    "MyConsents", "ConsentHistory", "Consents", "Parameters", "Meters", "Accepted", "ReadingsPage",
                    "SubscriptionCreated", "Subscriptions", "Subscription", "SecretRotated", "Audit"}
TRIGGER_ANSWERS = {"TriggerCreated", "Notify", "NotifyTest", "Notifications", "Triggers", "Trigger",
                   "ConsentableTriggers", "ConsentableTrigger", "Appliance", "Appliances", "ApplianceStatus"}
PARTS = {"Error", "TriggerRefused", "MeterHealth", "ConsentChange"}


def documented(method: str, path: str, status: int) -> list[str]:
    """The component schemas the document gives this answer (the route found by its template): one, or oneOf."""
    for template, operations in SPEC["paths"].items():
        if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", template), path.split("?")[0]) and method.lower() in operations:
            schema = operations[method.lower()]["responses"][str(status)]["content"]["application/json"]["schema"]
            return [ref["$ref"].rsplit("/", 1)[1] for ref in schema.get("oneOf", [schema])]
    raise AssertionError(f"{method} {path} is not documented")


def the_struct(names: list[str], out) -> str:
    """The one of `names` whose Struct the answer converts into, strictly."""
    errors = []
    for name in names:
        try:
            msgspec.convert(out, STRUCTS[name])
            return name
        except msgspec.ValidationError as err:
            errors.append(f"{name}: {err}")
    raise AssertionError(errors)


async def answer(checked: set[str], running, method: str, path: str, expect: int = 200,
                 token: str | None = OPERATOR_TOKEN, **request) -> dict:
    status, out = await running.call(method, path, token=token, **request)
    assert status == expect, (method, path, status, out)
    name = the_struct(documented(method, path, status), out)  # says which field if the answer is not the Struct
    conforms(name, out)
    checked.add(name)
    return out


async def test_the_operators_organizations_and_subscriptions_answers_are_their_structs(tmp_path, start_agent,
                                                                                       receiver):  # noqa: F811
    config = make_config(tmp_path, [MeterSpec("p1-a", str(tmp_path / "absent"), "dsmr5")], delivery=delivery_config())
    running = await start_agent(config)
    seen: set[str] = set()
    await answer(seen, running, "GET", "/health", 200, token=None)  # no token: the device's status only, not its meter's
    health = await answer(seen, running, "GET", "/health", 503)
    assert set(health["meters"]) == {"p1-a"}
    org = await answer(seen, running, "POST", "/organizations", 201, json={"name": "Grid", "level": "dso"})
    org_id, org_key = org["id"], org["api_key"]
    await answer(seen, running, "GET", "/organizations")
    await answer(seen, running, "GET", f"/organizations/{org_id}")
    await answer(seen, running, "PATCH", f"/organizations/{org_id}",
                 json={"parameters": ["neighborhood_*", "household_*"]})
    await answer(seen, running, "POST", "/organizations", 201, json={"name": "Other", "level": "supplier"})
    hh = await answer(seen, running, "POST", "/households", 201, json={"related_organizations": [org_id]})
    hh_id = hh["id"]
    await answer(seen, running, "POST", "/households", 201, json={"meter_id": "p1-a"})
    await answer(seen, running, "GET", "/households")
    await answer(seen, running, "GET", f"/households/{hh_id}")
    await answer(seen, running, "PATCH", f"/households/{hh_id}", json={"related_organizations": []})
    token = (await answer(seen, running, "POST", f"/households/{hh_id}/token"))["token"]
    await answer(seen, running, "GET", "/households/me", token=token)
    await answer(seen, running, "GET", "/households/me/organizations", token=token)
    await answer(seen, running, "PUT", f"/households/me/consents/{org_id}/aggregates", token=token)
    await answer(seen, running, "DELETE", f"/households/me/consents/{org_id}/aggregates", token=token)
    await grant(running, token, org_id, "aggregates", "triggers")
    await answer(seen, running, "GET", "/households/me/consents", token=token)
    await answer(seen, running, "GET", "/households/me/consents/history", token=token)
    await answer(seen, running, "GET", "/consents")
    await answer(seen, running, "GET", f"/consents?household_id={hh_id}")
    for who in (OPERATOR_TOKEN, org_key, token):
        await answer(seen, running, "GET", "/parameters", token=who)
    posted = await answer(seen, running, "POST", "/readings", 201, token=token, json=[
        {"timestamp": f"2026-12-01T10:00:0{i}Z", "power_import_w": 100.0 + i} for i in range(3)])
    assert posted == {"accepted": 3}
    meters = await answer(seen, running, "GET", "/meters")
    http_meter = next(m["id"] for m in meters["meters"] if m["source"] == "http")
    page = await answer(seen, running, "GET", f"/meters/{http_meter}/readings?resolution=raw")
    assert page["count"] == 3, page
    sub = await answer(seen, running, "POST", "/data/subscribe", 201, token=org_key,
                       json={"endpoint": receiver.url, "interval": 60, "window": "1m",
                             "filter": {"deadband": {"fields": ["consumption_w"], "absolute": 50}}})
    await answer(seen, running, "GET", "/data/subscriptions", token=org_key)
    await answer(seen, running, "GET", f"/data/subscriptions/{sub['id']}", token=org_key)
    await answer(seen, running, "POST", f"/data/subscriptions/{sub['id']}/secret", token=org_key)
    await answer(seen, running, "POST", f"/data/subscriptions/{sub['id']}/enable", token=org_key)
    await answer(seen, running, "POST", f"/organizations/{org_id}/key")
    await answer(seen, running, "GET", "/audit?since=0")
    status, error = await running.call("GET", "/organizations/org_nobody")
    assert status == 404
    msgspec.convert(error, answers.Error)
    assert seen == OPERATOR_ANSWERS


async def test_the_triggers_and_the_households_devices_answers_are_their_structs(town, receiver):  # noqa: F811
    t = await town(3)
    running, (_, token) = t.running, t.households[0]
    seen: set[str] = set()
    source = "def condition(household_power_consumption):\n    return household_power_consumption > 100\n"
    note = await answer(seen, running, "POST", "/triggers/create", 201, token=t.org_key,
                        json=body(["household_power_consumption"], source))
    hook = await answer(seen, running, "POST", "/triggers/create", 201, token=t.org_key, json=body(
        ["household_power_consumption"], source, action={"type": "webhook", "endpoint": receiver.url},
        description="Tells us when you use more than 100 W"))
    assert hook["secret"]
    status, refused = await running.call("POST", "/triggers/create", token=t.org_key,
                                         json=body(["household_nonsense"], source))
    assert status == 422
    msgspec.convert(refused, answers.TriggerRefused)
    conforms("TriggerRefused", refused)
    await answer(seen, running, "PUT", "/households/me/notify", token=token, json={"url": receiver.url})
    await answer(seen, running, "PUT", "/households/me/notify", token=token,
                 json={"url": receiver.url, "kind": "ntfy"})
    await answer(seen, running, "GET", "/households/me/notify", token=token)
    await answer(seen, running, "POST", "/households/me/notify/test", token=token)
    await t.window(power_import_w=500.0)  # every condition true: notifications in every inbox
    inbox = await answer(seen, running, "GET", "/households/me/notifications", token=token)
    assert inbox["notifications"]
    await answer(seen, running, "GET", "/triggers", token=t.org_key)
    await answer(seen, running, "GET", f"/triggers/{hook['id']}", token=t.org_key)
    view = await answer(seen, running, "GET", f"/triggers/{note['id']}", token=t.org_key)
    assert view["evaluations"] > 0
    listed = await answer(seen, running, "GET", "/households/me/triggers", token=token)
    await answer(seen, running, "GET", f"/households/me/triggers/{listed['triggers'][0]['trigger_id']}", token=token)
    tasmota = FakeTasmota()
    await tasmota.start()
    try:
        appliance = await answer(seen, running, "POST", "/households/me/appliances", 201, token=token, json={
            "name": "Boiler", "kind": "heater", "driver": "tasmota", "address": tasmota.address,
            "allowed_organizations": [t.org_id]})
        await answer(seen, running, "POST", "/households/me/appliances", 201, token=token, json={
            "name": "Lamp", "driver": "shelly", "address": tasmota.address, "channel": 0})
        await answer(seen, running, "GET", "/households/me/appliances", token=token)
        await answer(seen, running, "GET", f"/households/me/appliances/{appliance['id']}/status", token=token)
    finally:
        await tasmota.runner.cleanup()
    assert seen == TRIGGER_ANSWERS


def test_the_tests_above_see_every_answer():
    assert OPERATOR_ANSWERS | TRIGGER_ANSWERS | PARTS == set(STRUCTS)


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_the_documents_answer_schemas_are_the_structs(name):
    schema = SPEC["components"]["schemas"][name]
    assert schema == answers.schemas()[name]
    strict = issubclass(STRUCTS[name], answers.Answer)
    assert schema.get("additionalProperties") is (False if strict else None), name


def test_an_undeclared_field_fails_the_conversion():
    """The check above can fail: a field the Struct does not name is refused."""
    good = {"id": "org_x", "name": "N", "level": "dso", "created_at": 1.0, "parameters": None}
    msgspec.convert(good, answers.Organization)
    with pytest.raises(msgspec.ValidationError, match="unknown field `extra`"):
        msgspec.convert({**good, "extra": 1}, answers.Organization)
    with pytest.raises(msgspec.ValidationError, match="missing required field `level`"):
        msgspec.convert({k: v for k, v in good.items() if k != "level"}, answers.Organization)


@pytest.mark.parametrize("name", sorted(records.schemas()))
def test_the_documents_record_schemas_are_the_structs(name):
    """The release records and the webhook payloads: generated from agent/api/records.py, as the answers are."""
    assert SPEC["components"]["schemas"][name] == records.schemas()[name]
    assert set(SPEC["webhooks"]) == {"aggregate", "trigger", "notification"}
    for hook in SPEC["webhooks"].values():
        ref = hook["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[1] in records.schemas()


def test_a_record_with_a_field_it_does_not_name_fails_the_conversion():
    refusal = {"error": "cohort_too_small", "detail": "too few", "households": 3, "missing": 7}
    msgspec.convert(refusal, records.Refusal)
    with pytest.raises(msgspec.ValidationError, match="unknown field `suppressed`"):
        msgspec.convert({**refusal, "suppressed": True}, records.Refusal)
    with pytest.raises(msgspec.ValidationError, match="Expected `str` matching"):
        msgspec.convert({"kind": "exact", "derived_from": "4 x 2h"}, records.Privacy)
