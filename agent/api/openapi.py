"""The OpenAPI 3.1 description of the API (served by agent/api/docs.py): its paths are the route table's
(agent/api/routes.py); its component schemas are the request bodies' (agent/api/bodies.py, POST /readings' from
ingest's type of a posted reading) and the answers' (agent/api/answers.py), the release module's records and the
webhook payloads (agent/api/records.py), all generated from msgspec Structs; the Reading's and the posted reading's
from its table (drivers/reading.py).

Tests check that every route of the app is described and nothing else, and schemathesis checks the running
server against it.
"""

from __future__ import annotations

import msgspec

from agent.api import answers, bodies, records
from agent.api.routes import ROUTES
from agent.api.spec import NUMBER_OR_NULL, STRING, TIME, Json, Route
from agent.api.spec import nullable as _nullable
from agent.api.spec import ref as _ref
from agent.ingest import MAX_CHANNELS, TAG
from drivers import reading as table
from drivers.reading import FIELD_NAMES, FIELDS, INPUT_FIELDS

VERSION = "0.1.0"

_ISO_OR_NULL: Json = {"type": ["string", "null"], "format": "date-time"}
def _bounds(low: float | None, high: float | None) -> Json:
    bounds: dict[str, float | None] = {"minimum": low, "maximum": high}
    return {k: int(v) if v == int(v) else v for k, v in bounds.items() if v is not None}


def _bounded(kind: str, low: float | None, high: float | None) -> Json:
    return _nullable(kind, **_bounds(low, high))


def field_schema(name: str, for_input: bool) -> Json:
    """One Reading field's schema, from its row of the table. Input (HTTP JSON) states the bounds ingest
    enforces; output only what every stored reading keeps (whole counts are never negative)."""
    facts = FIELDS[name]
    schema: Json
    if facts.kind == table.TIME:
        schema = dict(TIME if facts.required else _ISO_OR_NULL)
    elif facts.kind in (table.ID, table.TEXT):
        schema = dict(STRING if facts.required else _nullable("string"))
    elif facts.kind == table.LIST:
        assert facts.items is not None  # a list's entries have their Struct in the table
        schema = {"type": ["array", "null"], "items": _ref(facts.items.__name__)}
    elif facts.kind == table.MAP:  # channels: watts per tag of the vocabulary
        schema = {"type": ["object", "null"], "maxProperties": MAX_CHANNELS, "propertyNames": {"pattern": TAG.pattern},
                  "additionalProperties": {"type": "number", **_bounds(facts.low, facts.high)}}
    elif facts.kind == table.COUNT:
        schema = _bounded("integer", facts.low, facts.high) if for_input else _nullable("integer", minimum=0)
    else:
        schema = _bounded("number", facts.low, facts.high) if for_input else dict(NUMBER_OR_NULL)
    if facts.description:
        schema["description"] = facts.description
    return schema


def _reading_schema(for_input: bool) -> Json:
    names = INPUT_FIELDS if for_input else FIELD_NAMES
    required = [name for name in names if FIELDS[name].required] if for_input else list(FIELD_NAMES)
    return {"type": "object", "properties": {name: field_schema(name, for_input) for name in names},
            "required": required, "additionalProperties": False}


SCHEMAS: dict[str, Json] = {
    "Reading": _reading_schema(False),
    "ReadingInput": _reading_schema(True),
    # the entries of the Reading's lists: their Structs' (drivers/reading.py)
    **msgspec.json.schema_components([f.items for f in FIELDS.values() if f.items],
                                     ref_template="#/components/schemas/{name}")[1],
}


def _webhook(schema: str, summary: str, acknowledged: str) -> Json:
    return {"post": {"summary": summary, "requestBody": {"content": {"application/json": {"schema": _ref(schema)}}},
                     "responses": {"200": {"description": acknowledged}}}}


# What the agent sends: each payload's schema is its Struct's (agent/api/records.py).
WEBHOOKS: dict[str, Json] = {
    "aggregate": _webhook("WebhookMessage", "What a subscription's endpoint receives, signed per Standard Webhooks "
                          "(webhook-id, webhook-timestamp, webhook-signature)",
                          "Any 2xx acknowledges; 410 disables the subscription; anything else is retried with the "
                          "same webhook-id"),
    "trigger": _webhook("TriggerWebhook", "What a webhook action's endpoint receives, signed per Standard Webhooks "
                        "with the trigger's secret", "Any 2xx acknowledges; anything else is tried again, twice"),
    "notification": _webhook("HouseholdNotification", "What a household's webhook endpoint receives, signed with the "
                             "household's secret (an ntfy topic gets the content as text with a Title header)",
                             "Any 2xx acknowledges"),
}


def paths(routes: tuple[Route, ...]) -> Json:
    out: Json = {}
    for route in routes:
        out.setdefault(route.template, {})[route.method.lower()] = route.operation()
    return out


def build_spec(routes: tuple[Route, ...] = ROUTES) -> Json:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Edge", "version": VERSION,
                 "description": "The local API of an Edge device. Errors are JSON {error, detail}."},
        "paths": paths(routes),
        "webhooks": WEBHOOKS,
        "components": {
            "schemas": {**SCHEMAS, **bodies.schemas(), **answers.schemas(), **records.schemas()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                          "description": "Token <datalogger token> (or the household's own token)"},
                "authkey": {"type": "apiKey", "in": "header", "name": "X-AUTHKEY"}}},
    }


SPEC = build_spec()
