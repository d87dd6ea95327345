"""The hub API's OpenAPI 3.1 description (GET /openapi.json): its paths are hub/api.py's route table (each row
names its operation here); the security, 401 and 403 of an operation come from the row's roles. The request
bodies' and the answers' schemas are generated from their msgspec Structs (hub/bodies.py, hub/answers.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from agent.config import WINDOWS
from agent.release.records import Json
from hub import answers, bodies

if TYPE_CHECKING:  # hub/api.py imports this module
    from hub.api import Route


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(answer: str, description: str = "ok") -> Json:
    return {"description": description, "content": {"application/json": {"schema": _ref(answer)}}}


def _op(summary: str, answer: str, parameters: Iterable[Json] = ()) -> Json:
    return {"summary": summary, "parameters": list(parameters),
            "responses": {"200": _ok(answer), "503": _error("the cluster could not answer now")}}


def _error(description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _query(name: str, schema: Json, required: bool = False, description: str = "") -> Json:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


HEALTH = _op("The hub's state", "Health")
AREAS = _op("Areas the caller may read", "Areas")
AREA_DATA = _op("An area's windows: the sum of its devices' releases, released once enough devices did", "AreaData",
                [{"name": "area", "in": "path", "required": True, "schema": {"type": "string"}},
                 _query("window", {"enum": list(WINDOWS), "default": "1h"}),
                 _query("since", {"type": "number"}, True, "UNIX seconds"),
                 _query("until", {"type": "number"}, True, "UNIX seconds"),
                 _query("tag", {"type": "string"}, False, "a channel tag of the devices' vocabulary")])
AREA_DATA["responses"] |= {"400": _error("a bad window, time or tag, or too many windows"),
                           "404": _error("no such area for this organization")}
DEVICES = _op("Devices: area, applied desired-state version, last release, last heartbeat (operator)", "Devices")
SUBSCRIPTIONS = _op("The organization's subscriptions", "Subscriptions")
SUBSCRIBE = {
    "summary": "Push an area's windows to an endpoint as Standard Webhooks, in order, at least once (the "
               "webhook-id is the subscription and the window); a window goes once every device of the area "
               "reported it or a grace time after its end",
    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SubscribeIn")}}},
    "responses": {"201": _ok("SubscriptionCreated", "created"),
                  "400": _error("a body not of the schema, or a bad endpoint, window or tag"),
                  "404": _error("no such area"),
                  "503": _error("the cluster could not answer now")}}
UNSUBSCRIBE = {"summary": "Stop a subscription",
               "parameters": [{"name": "sub_id", "in": "path", "required": True, "schema": {"type": "string"}}],
               "responses": {"200": _ok("Deleted", "deleted"), "404": _error("no such subscription")}}


def operation(doc: Json, roles: tuple[str, ...]) -> Json:
    """A route's operation: its own, and with roles a bearer key, 401 without a valid one, 403 for another role's."""
    if not roles:
        return doc
    return {**doc, "description": f"For: {', '.join(roles)}.", "security": [{"bearer": []}],
            "responses": {**doc["responses"], "401": _error("no key, or an unknown or revoked one"),
                          "403": _error(f"a key of another role than {' or '.join(roles)}")}}


def spec(routes: Iterable[Route]) -> Json:
    """The document of these routes (hub/api.py's ROUTES; a row without an operation is not in it)."""
    paths: Json = {}
    for route in routes:
        if route.operation is not None:
            paths.setdefault(route.path, {})[route.method.lower()] = operation(route.operation, route.roles)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Edge hub", "version": "1",
                 "description": "Area-level aggregates across Edge devices; the hub never holds a household's "
                                "data: devices send only what their release module released."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": msgspec.json.schema_components((*bodies.BODIES, *answers.ANSWERS),
                                                                 ref_template="#/components/schemas/{name}")[1]},
        "paths": paths,
    }
