"""Request bodies are typed schemas (agent/api/bodies.py): one declaration gives the decoding, its errors and
the OpenAPI component schema. Pure: no agent, no server."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest
from msgspec import UNSET

from agent.api.bodies import (BODIES, MAX_INTERVAL_S, MIN_INTERVAL_S, ApplianceIn, HouseholdIn, HouseholdPatch,
                              NotifyIn, OrganizationPatch, SubscribeIn, TriggerIn, decode)
from agent.api.common import ApiError
from agent.api.openapi import SPEC
from agent.ingest import IngestCode, IngestError, readings_from_json_bytes, readings_from_payload
from agent.triggers.model import KINDS, MAX_CONTENT_CHARS, MAX_PARAMETERS
from agent.triggers.model import MAX_INTERVAL_S as MAX_INTERVAL_S_T
from drivers import appliances, notify


def refused(raw: bytes, kind) -> ApiError:
    with pytest.raises(ApiError) as caught:
        decode(raw, kind)
    return caught.value


@pytest.mark.parametrize("raw, status, words", [
    (b"", 400, "needs a JSON body"),
    (b'{"endpoint": ', 400, "not valid JSON"),
    (b'{"bogus": ', 400, "not valid JSON"),  # msgspec would call it an unknown field before the JSON ends
    (b"[]", 422, "must be a JSON object"),
    (b'{"endpoint": "https://x"}', 422, "interval is required"),
    (b'{"endpoint": "https://x", "interval": 5, "intervall": 5}', 422, "unknown field 'intervall'"),
    (b'{"endpoint": 1, "interval": 5}', 422, "endpoint has the wrong type: expected https:// URL"),
    (b'{"endpoint": "https://x", "interval": true}', 422, "interval has the wrong type"),
    (b'{"endpoint": "https://x", "interval": 0}', 422, f"interval: expected `float` >= {MIN_INTERVAL_S}"),
    (b'{"endpoint": "https://x", "interval": 1e999}', 400, "out of range"),  # beyond a double: not a number
])
def test_a_subscription_body_is_refused_saying_which_field_and_why(raw, status, words):
    err = refused(raw, SubscribeIn)
    assert (err.status, err.error) == (status, "malformed_json" if status == 400 else "invalid")
    assert words in err.detail, err.detail


def test_a_list_items_wrong_type_says_what_the_field_is():
    err = refused(b'{"related_organizations": [1]}', HouseholdPatch)
    assert "related_organizations[0] has the wrong type: expected a list of organization ids" in err.detail


def test_a_patch_gives_only_what_was_sent():
    assert decode(b'{"name": "N"}', OrganizationPatch).given() == {"name": "N"}
    assert decode(b'{"parameters": null}', OrganizationPatch).given() == {"parameters": None}
    assert decode(b"{}", OrganizationPatch).given() == {}


def test_defaults_are_fresh_per_body():
    first = decode(b"{}", HouseholdIn)
    first.related_organizations.append("org_x")
    assert decode(b"{}", HouseholdIn).related_organizations == []


def test_the_documents_body_schemas_are_the_bodies():
    schemas = SPEC["components"]["schemas"]
    for body in BODIES:
        assert schemas[body.__name__]["additionalProperties"] is False, body
    interval = schemas["SubscribeIn"]["properties"]["interval"]
    assert (interval["minimum"], interval["maximum"]) == (MIN_INTERVAL_S, MAX_INTERVAL_S)
    assert schemas["SubscribeIn"]["required"] == ["endpoint", "interval"]


def test_the_documents_forms_of_posted_readings_are_the_ones_ingest_decodes():
    """POST /readings' body: the document's three forms (bodies.READINGS_IN) and ingest's decoder are two
    declarations (msgspec decodes no union of untagged Structs): every documented form decodes, the same readings,
    and a form the document does not allow (a reading with a batch in it) is refused."""
    forms = SPEC["components"]["schemas"]["ReadingsIn"]["oneOf"]
    assert [f.get("$ref", f.get("type")).rsplit("/", 1)[-1] for f in forms] == ["ReadingInput", "array", "Readings"]
    assert forms[1]["maxItems"] == SPEC["components"]["schemas"]["Readings"]["properties"]["readings"]["maxItems"]
    one = {"timestamp": "2026-12-01T10:00:00Z", "power_import_w": 100.0}
    now = datetime(2026, 12, 1, 10, 0, 1, tzinfo=timezone.utc)
    for body in (one, [one], {"readings": [one]}):
        (reading,) = readings_from_json_bytes(msgspec.json.encode(body), "m", now)
        assert (reading.timestamp, reading.power_import_w) == (now.replace(second=0), 100.0), body
    with pytest.raises(IngestError, match="unknown field 'readings'"):
        readings_from_json_bytes(msgspec.json.encode({**one, "readings": [one]}), "m", now)
    with pytest.raises(IngestError) as caught:
        readings_from_payload([one] * (forms[1]["maxItems"] + 1), "m", now)
    assert caught.value.code == IngestCode.BATCH_TOO_LARGE


# --- the triggers' and the household's bodies ---------------------------------------------------------------------
TRIGGER = b'{"parameters": ["household_power_consumption"], "function": "eA==", "interval": 60, "action": %s}'


@pytest.mark.parametrize("action, words", [
    (b'{"type": "sms", "content": "x"}', "action.type: invalid value 'sms'"),
    (b'{"content": "x"}', "action.type is required"),
    (b'{"type": "notification", "content": ""}', "action.content"),
    (b'{"type": "notification", "content": "x", "to": "everyone"}', "unknown field 'action.to'"),
    (b'{"type": "appliance", "appliance": "heater", "command": "explode"}', "action.command"),
    (b'{"type": "webhook"}', "action.endpoint is required"),
    (b'"notify me"', "action has the wrong type"),
])
def test_a_trigger_action_is_one_of_three_shapes(action, words):
    err = refused(TRIGGER % action, TriggerIn)
    assert (err.status, err.error) == (422, "invalid") and words in err.detail, err.detail


def test_a_trigger_body_keeps_what_the_handler_checks_and_stores():
    body = decode(TRIGGER % b'{"type": "notification", "content": "x"}', TriggerIn)
    assert body.window is UNSET and body.description == "" and body.interval == 60
    assert msgspec.to_builtins(body.action) == {"type": "notification", "content": "x"}  # as stored before
    assert refused(b'{"parameters": "x", "function": "", "interval": 1, "action": {}}', TriggerIn).status == 422


def test_the_households_bodies_have_their_defaults():
    assert decode(b'{"url": "https://ntfy.sh/t"}', NotifyIn).kind == "webhook"
    appliance = decode(b'{"name": "Boiler", "driver": "shelly", "address": "http://192.168.1.9"}', ApplianceIn)
    assert (appliance.kind, appliance.channel, appliance.allowed_organizations) == (None, None, [])
    assert "allowed_organizations" in refused(
        b'{"name": "B", "driver": "shelly", "address": "x", "allowed_organizations": [1]}', ApplianceIn).detail


def test_the_documents_trigger_schemas_state_the_models_bounds():
    schemas = SPEC["components"]["schemas"]
    trigger = schemas["TriggerIn"]["properties"]
    assert (trigger["parameters"]["maxItems"], trigger["interval"]["maximum"]) == (MAX_PARAMETERS, MAX_INTERVAL_S_T)
    kinds = {ref["$ref"].rsplit("/", 1)[1] for ref in trigger["action"]["anyOf"]}
    assert {schemas[k]["properties"]["type"]["enum"][0] for k in kinds} == set(KINDS)
    assert schemas["NotificationAction"]["properties"]["content"]["maxLength"] == MAX_CONTENT_CHARS
    assert schemas["ApplianceIn"]["properties"]["driver"]["enum"] == appliances.names()
    assert schemas["NotifyIn"]["properties"]["kind"]["enum"] == list(notify.KINDS)
