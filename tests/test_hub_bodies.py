"""The hub's request bodies (hub/bodies.py) decoded on data with the device's decoder (agent/api/bodies.py): the
shape and its errors in words; what a body means (the area, the window) is the handler's (tests/test_fleet_hub.py)."""

from __future__ import annotations

import msgspec
import pytest

from agent.api.bodies import decode
from agent.api.common import ApiError
from hub.bodies import BODIES, SubscribeIn
from hub.service import WIDTHS


def test_a_subscription_with_its_defaults():
    body = decode(b'{"endpoint": "https://org.example/hook", "area": "north"}', SubscribeIn)
    assert (body.endpoint, body.area, body.window, body.tag) == ("https://org.example/hook", "north", "15m", None)
    body = decode(b'{"endpoint": "https://x", "area": "a", "window": "1h", "tag": "heat_pump"}', SubscribeIn)
    assert (body.window, body.tag) == ("1h", "heat_pump")
    assert decode(b'{"endpoint": "https://x", "area": "a", "tag": null}', SubscribeIn).tag is None


@pytest.mark.parametrize("raw,status,detail", [
    (b'{"area": "north"}', 422, "endpoint is required"),
    (b'{"endpoint": "https://x"}', 422, "area is required"),
    (b'{"endpoint": "https://x", "area": "a", "devices": ["d"]}', 422, "unknown field 'devices'"),
    (b'{"endpoint": 5, "area": "a"}', 422, "endpoint has the wrong type: expected https:// URL"),
    (b'{"endpoint": "https://x", "area": "a", "tag": 3}', 422, "tag has the wrong type"),
    (b'["https://x", "a"]', 422, "the body must be a JSON object"),
    (b'{"endpoint": "https://x", "area": ', 400, "the body is not valid JSON"),
    (b"", 400, "the request needs a JSON body"),
])
def test_a_body_of_the_wrong_shape_says_which_field_and_why(raw, status, detail):
    with pytest.raises(ApiError) as refused:
        decode(raw, SubscribeIn)
    assert refused.value.status == status and refused.value.detail.startswith(detail), refused.value.detail


def test_the_schema_lists_the_windows_and_every_body_is_in_it():
    (schema,), components = msgspec.json.schema_components(BODIES, ref_template="#/components/schemas/{name}")
    properties = components["SubscribeIn"]["properties"]
    assert properties["window"]["enum"] == list(WIDTHS) and properties["window"]["default"] == "15m"
    assert set(components["SubscribeIn"]["required"]) == {"endpoint", "area"}
    assert properties["endpoint"]["description"] == "https:// URL"
    assert [b.__name__ for b in BODIES] == ["SubscribeIn"]
