"""Households the operator marks as related to organizations (an employee's home, a test meter): set on
POST /households or PATCH /households/{id}, shown in GET /households/{id}, kept across a restart, and given to
the release module as `registry.related(org_id)` (such households never count toward that organization's k_min).
Also: consent to one trigger's events, `trigger_events:trg_<12 hex>`, is a service the API accepts (the registry
alone: tests/test_registry.py)."""

from __future__ import annotations

import pytest

from tests.helpers.agent import make_config


async def test_related_organizations_set_shown_and_given_to_the_release_module(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    a, _ = await running.create_org("Supplier A", "supplier")
    b, _ = await running.create_org("Supplier B", "supplier")
    status, employee = await running.call("POST", "/households", json={"related_organizations": [b, a]})
    assert status == 201, employee
    assert employee["related_organizations"] == sorted([a, b])
    plain, _ = await running.create_household()
    status, body = await running.call("GET", f"/households/{plain}")
    assert status == 200 and body["related_organizations"] == []
    registry = running.agent.registry
    assert registry.related(a) == {employee["id"]} and registry.related(b) == {employee["id"]}

    status, body = await running.call("PATCH", f"/households/{plain}", json={"related_organizations": [a]})
    assert status == 200 and body["related_organizations"] == [a]
    status, body = await running.call("PATCH", f"/households/{employee['id']}", json={"related_organizations": []})
    assert status == 200 and body["related_organizations"] == []
    assert registry.related(a) == {plain} and registry.related(b) == set()
    status, body = await running.call("GET", f"/households/{plain}")
    assert body["related_organizations"] == [a]
    status, audit = await running.get("/audit?who=operator")
    changes = [e for e in audit["entries"] if e["action"] == "household.update"]
    assert [(e["household_id"], e["related_organizations"]) for e in changes] == [(plain, [a]), (employee["id"], [])]


@pytest.mark.parametrize("related, words", [
    (["org_000000000000"], "no organization 'org_000000000000'"),
    ("org_x", "wrong type"),
    ([1], "list of organization ids"),
    ([None], "list of organization ids"),
    (["A", "A"], "twice"),
])


async def test_unknown_or_malformed_organizations_are_refused_and_nothing_changes(tmp_path, start_agent,
                                                                                 related, words):
    running = await start_agent(make_config(tmp_path))
    org, _ = await running.create_org()
    related = [org if r == "A" else r for r in related] if isinstance(related, list) else related
    household, _ = await running.create_household()
    before = len(running.agent.registry.households)
    status, body = await running.call("POST", "/households", json={"related_organizations": related})
    assert status == 422 and words in body["detail"], body
    assert len(running.agent.registry.households) == before
    status, body = await running.call("PATCH", f"/households/{household}", json={"related_organizations": related})
    assert status == 422 and words in body["detail"], body
    assert (await running.call("GET", f"/households/{household}"))[1]["related_organizations"] == []


async def test_patch_of_an_unknown_household_is_404_and_the_body_must_say_something(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    org, _ = await running.create_org()
    status, body = await running.call("PATCH", "/households/hh_000000000000", json={"related_organizations": [org]})
    assert status == 404 and body["error"] == "not_found"
    household, _ = await running.create_household()
    status, body = await running.call("PATCH", f"/households/{household}", json={})
    assert status == 422 and "related_organizations is required" in body["detail"]
    status, body = await running.call("PATCH", f"/households/{household}", json={"meter_id": "x"})
    assert status == 422 and "unknown field" in body["detail"]


async def test_related_households_survive_a_restart_and_a_deletion(tmp_path, start_agent):
    config = make_config(tmp_path)
    running = await start_agent(config)
    org, _ = await running.create_org()
    test_meter, _ = await running.create_household()
    status, employee = await running.call("POST", "/households", json={"related_organizations": [org]})
    assert status == 201
    assert (await running.call("PATCH", f"/households/{test_meter}", json={"related_organizations": [org]}))[0] == 200
    await running.http.close()
    await running.agent.stop()

    again = await start_agent(config)
    assert again.agent.registry.related(org) == {test_meter, employee["id"]}
    status, body = await again.call("GET", f"/households/{test_meter}")
    assert status == 200 and body["related_organizations"] == [org]
    # A deleted household stays related: past windows' cohorts still hold it.
    assert (await again.call("DELETE", f"/households/{test_meter}"))[0] == 204
    assert again.agent.registry.related(org) == {test_meter, employee["id"]}
    await again.http.close()
    await again.agent.stop()
    third = await start_agent(config)
    assert third.agent.registry.related(org) == {test_meter, employee["id"]}


# --- per-trigger event consent: the service form another part of the agent uses -------------------------------
TRIGGER = "trigger_events:trg_0123456789ab"


async def test_a_household_grants_and_revokes_one_triggers_events(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    org, _ = await running.create_org()
    household, token = await running.create_household()
    status, body = await running.call("PUT", f"/households/me/consents/{org}/{TRIGGER}", token=token)
    assert status == 200 and body["service"] == TRIGGER and body["granted"] is True
    registry = running.agent.registry
    assert registry.consent_state(household, org, TRIGGER) is True
    assert registry.consent_state(household, org, "triggers") is False  # a separate consent
    status, body = await running.call("GET", "/households/me/consents", token=token)
    assert [c["service"] for c in body["consents"]] == [TRIGGER]
    status, body = await running.call("DELETE", f"/households/me/consents/{org}/{TRIGGER}", token=token)
    assert status == 200 and body["granted"] is False
    assert registry.consent_state(household, org, TRIGGER) is False
    status, body = await running.call("PUT", f"/households/me/consents/{org}/trigger_events:trg_123", token=token)
    assert status == 404 and "trigger_events:<trigger id>" in body["detail"]


@pytest.mark.parametrize("delete", ["organization", "household"])
async def test_deleting_ends_trigger_event_consents_too(tmp_path, start_agent, delete):
    running = await start_agent(make_config(tmp_path))
    org, _ = await running.create_org()
    household, token = await running.create_household()
    for service in (TRIGGER, "aggregates"):
        assert (await running.call("PUT", f"/households/me/consents/{org}/{service}", token=token))[0] == 200
    registry = running.agent.registry
    path = f"/organizations/{org}" if delete == "organization" else f"/households/{household}"
    assert (await running.call("DELETE", path))[0] == 204
    assert registry.consent_state(household, org, TRIGGER) is False
    assert registry.consent_state(household, org, "aggregates") is False
    revoked = [(c["service"], c["granted"]) for c in registry.all_consents(household)]
    assert sorted(revoked) == [("aggregates", False), (TRIGGER, False)]
