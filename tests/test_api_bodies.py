"""Request bodies are typed schemas (agent/api/bodies.py): one declaration gives the decoding, its errors and
the OpenAPI component schema. Pure: no agent, no server."""

from __future__ import annotations

import pytest

from agent.api.bodies import (BODIES, MAX_INTERVAL_S, MIN_INTERVAL_S, HouseholdIn, HouseholdPatch, OrganizationPatch,
                              SubscribeIn, decode)
from agent.api.common import ApiError
from agent.api.openapi import SPEC


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
