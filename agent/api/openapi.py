"""The OpenAPI 3.1 description of the API (served by agent/api/docs.py): its paths are the route table's
(agent/api/routes.py); its component schemas are the request bodies' (agent/api/bodies.py) and the answers'
(agent/api/answers.py), both generated from msgspec Structs, the Reading's from its table (drivers/reading.py),
and here (the release module's records) and in openapi_triggers.py (the triggers' webhooks) by hand.

Tests check that every route of the app is described and nothing else, and schemathesis checks the running
server against it.
"""

from __future__ import annotations

from agent.api import answers, bodies, openapi_triggers
from agent.api.routes import ROUTES
from agent.api.spec import NUMBER_OR_NULL, OBJ, STRING, TIME, Route
from agent.api.spec import nullable as _nullable
from agent.api.spec import ref as _ref
from agent.ingest import MAX_CHANNELS, TAG
from drivers import reading as table
from drivers.reading import FIELD_NAMES, FIELDS, INPUT_FIELDS

VERSION = "0.1.0"

_ISO_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
# The items of the Reading's lists (read from P1 telegrams only); all else about a field is the table's
# (drivers/reading.py): its kind, bounds and description.
_LIST_ITEMS = {
    "demand_peaks": {"type": "object", "required": ["month", "at", "w"], "additionalProperties": False,
                     "properties": {"month": _ISO_OR_NULL, "at": _ISO_OR_NULL, "w": {"type": "number"}}},
    "power_failure_log": {"type": "object", "required": ["end", "duration_s"], "additionalProperties": False,
                          "properties": {"end": _ISO_OR_NULL, "duration_s": {"type": "integer", "minimum": 0}}},
    "mbus": {"type": "object", "additionalProperties": False,
             "required": ["channel", "type", "device_type", "value", "unit", "timestamp", "valve"],
             "properties": {"channel": {"type": "integer"}, "type": STRING,
                            "device_type": {"type": ["integer", "null"]}, "value": NUMBER_OR_NULL,
                            "unit": {"type": ["string", "null"]}, "timestamp": _ISO_OR_NULL,
                            "valve": {"type": ["integer", "null"]}}},
}


def _bounds(low: float | None, high: float | None) -> dict:
    bounds = {"minimum": low, "maximum": high}
    return {k: int(v) if v == int(v) else v for k, v in bounds.items() if v is not None}


def _bounded(kind: str, low: float | None, high: float | None) -> dict:
    return _nullable(kind, **_bounds(low, high))


def field_schema(name: str, for_input: bool) -> dict:
    """One Reading field's schema, from its row of the table. Input (HTTP JSON) states the bounds ingest
    enforces; output only what every stored reading keeps (whole counts are never negative)."""
    facts = FIELDS[name]
    if facts.kind == table.TIME:
        schema = dict(TIME if facts.required else _ISO_OR_NULL)
    elif facts.kind in (table.ID, table.TEXT):
        schema = dict(STRING if facts.required else _nullable("string"))
    elif facts.kind == table.LIST:
        schema = {"type": ["array", "null"], "items": _LIST_ITEMS[name]}
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


def _reading_schema(for_input: bool) -> dict:
    names = INPUT_FIELDS if for_input else FIELD_NAMES
    required = [name for name in names if FIELDS[name].required] if for_input else list(FIELD_NAMES)
    return {"type": "object", "properties": {name: field_schema(name, for_input) for name in names},
            "required": required, "additionalProperties": False}


# What GET /data, GET /data/dp and webhooks carry: one window's recorded release (agent/release/records.py).
DERIVED = {"type": "string", "pattern": "^[0-9]+ x (1s|1m|15m)$",
           "description": "wider windows only: the released finer windows this one is derived from (their sum)"}
PRIVACY_EXACT = {"type": "object", "required": ["kind"], "additionalProperties": False,
                 "properties": {"kind": {"const": "exact"}, "derived_from": DERIVED},
                 "description": "an exact level's audited exact sums"}
PRIVACY_NOISY = {"type": "object", "additionalProperties": False,
                 "required": ["kind", "mechanism", "clamp_w", "scale", "noise_sd_w", "rho", "guarantee",
                              "households", "quantities"],
                 "properties": {"kind": {"const": "noisy"},
                                "mechanism": {"enum": ["discrete_gaussian", "discrete_laplace"]},
                                "clamp_w": {"type": "array", "items": {"type": "integer", "minimum": 0},
                                            "minItems": 2, "maxItems": 2,
                                            "description": "[0, U]: the level's fixed clamp of one household's "
                                                           "mean power, in watts (never the caller's choice)"},
                                "scale": {"type": "number"},
                                "noise_sd_w": {"type": "number", "description": "of each released number"},
                                "rho": {"type": "number", "description": "zCDP loss each household of the "
                                                                         "cohort bears for this window"},
                                "guarantee": STRING, "households": STRING,
                                "quantities": {"type": "integer", "minimum": 1, "maximum": 2},
                                "derived_from": DERIVED},
                 "description": "a noisy level's release: one OpenDP draw per window, shared, charged to the "
                                "per-household ledger ([privacy] horizon_days, cap_rho)"}
AGGREGATE_PROPERTIES = {
    "window": {"enum": ["1s", "1m", "15m", "1h"]}, "window_start": TIME, "window_end": TIME,
    "households": {"type": "integer", "minimum": 1,
                   "description": "exact: consenting households with data (a household silent a few seconds is "
                                  "held at its last values); noisy: every consenting household (one that sent "
                                  "nothing, or whose ledger cannot bear the release, counts 0); wider windows: the "
                                  "fewest of their finer windows"},
    "tag": _nullable("string"),
    "consumption_w": {"type": "number", "description": "sum of the households' mean power (noisy: may be "
                                                       "negative)"},
    "production_w": NUMBER_OR_NULL, "net_w": NUMBER_OR_NULL,
    "energy_import_wh": {"type": "number"}, "energy_export_wh": NUMBER_OR_NULL,
    "privacy": {"$ref": "#/components/schemas/Privacy"},
}
AGGREGATE_OPTIONAL = {
    "mean_w": {**NUMBER_OR_NULL, "description": "tags only: consumption_w over households"},
    "households_max": {"type": "integer", "minimum": 1,
                       "description": "wider windows only: the most households in any of their finer windows"},
    "peak_month_w": {"type": "number", "description": "15m and 1h windows: the highest consumption_w released to "
                                                      "this organization at this width since the UTC month began"},
    "peak_month_at": {**TIME, "description": "the window_start of that window"},
    "grid": {"type": "object", "description": "grid quantities (PRIVACY.md, Grid quantities): per quantity "
                                              "(voltage_l1..l3: counts per band, min_v, max_v, mean_v; "
                                              "long_power_failures: meters) its part or {refused: {error, detail}}; "
                                              "noisy levels: privacy. The bands: GET /parameters, "
                                              "privacy.grid_band_edges_v"},
}
REFUSALS = {
    "cohort_too_small": "fewer than k_min households (not related to the organization) in the cohort",
    "isolating": "with sums already released for the same period, this one would single out a household "
                 "(the audit of exact sums)",
    "audit_resuming": "exact windows wait one audit period after a restart",
    "not_settled": "the window has not ended, or a consent change it depends on is still being written",
    "not_released": "the window was never decided (before the device started, while it was down, or too old)",
    "incomplete": "a shorter window inside this one was not released",
    "storage_error": "the release could not be written durably",
    "dp_unavailable": "a noisy level on a device without OpenDP",
}
REFUSAL_PROPERTIES = {"error": {"enum": list(REFUSALS)}, "detail": STRING,
                      "households": {"type": "integer", "minimum": 0},
                      "missing": {"type": "integer", "minimum": 1}}
SCHEMAS = {
    "Reading": _reading_schema(False),
    "ReadingInput": _reading_schema(True),
    "ReadingsIn": {"oneOf": [_ref("ReadingInput"),
                             {"type": "array", "items": _ref("ReadingInput"), "minItems": 1, "maxItems": 1000},
                             {"type": "object", "required": ["readings"], "additionalProperties": False,
                              "properties": {"readings": {"type": "array", "items": _ref("ReadingInput"),
                                                          "minItems": 1, "maxItems": 1000}}}]},
    "Accepted": {"type": "object", "required": ["accepted"], "properties": {"accepted": {"type": "integer"}}},
    "Aggregate": {"type": "object", "required": list(AGGREGATE_PROPERTIES), "additionalProperties": False,
                  "properties": {**AGGREGATE_PROPERTIES, **AGGREGATE_OPTIONAL},
                  "description": "One window's release, as recorded once when the window settled: every answer "
                                 "for it (live, history, GET /data/dp, a webhook) is this record"},
    "Privacy": {"oneOf": [PRIVACY_EXACT, PRIVACY_NOISY]},
    "Refusal": {"type": "object", "required": ["error", "detail"], "additionalProperties": False,
                "properties": REFUSAL_PROPERTIES,
                "description": "A window not released, and why: " + "; ".join(f"{k}: {v}" for k, v in
                                                                              REFUSALS.items())
                               + ". households and missing only for cohort_too_small without a tag"},
    "AggregateHistory": {"type": "object", "required": ["window", "tag", "released", "refused"],
                         "additionalProperties": False,
                         "properties": {"window": {"enum": ["1s", "1m", "15m", "1h"]}, "tag": _nullable("string"),
                                        "released": {"type": "array", "items": _ref("Aggregate")},
                                        "refused": {"type": "array", "items": {
                                            "type": "object", "required": ["window_start", "error", "detail"],
                                            "additionalProperties": False,
                                            "properties": {"window_start": TIME, **REFUSAL_PROPERTIES}}}},
                         "description": "Every decided window from since to until, from the release log; windows "
                                        "not yet decided are left out"},
    "WebhookMessage": {"type": "object", "required": ["type", "sequence"],
                       "properties": {"type": {"enum": ["aggregate", "heartbeat", "gap"]},
                                      "sequence": {"type": "integer", "minimum": 1},
                                      "subscription_id": STRING, "window": STRING, "window_start": TIME,
                                      "window_end": TIME, "aggregate": {
                                          "type": "object", "additionalProperties": False,
                                          "required": ["window", "window_start", "window_end", "tag", "privacy"],
                                          "properties": {**AGGREGATE_PROPERTIES, **AGGREGATE_OPTIONAL},
                                          "description": "the Aggregate record, projected to the filter's "
                                                         "fields (window, window_start, window_end, tag and "
                                                         "privacy always kept)"},
                                      "released": {"type": "boolean"}, "reason": {"enum": list(REFUSALS)},
                                      "lost_windows": {"type": "integer"}, "from": _nullable("string"),
                                      "to": _nullable("string"), "detail": STRING}},
    "AnonymizedRecord": {"type": "object",
                         "required": ["period_start", "period_end", "has_pv", "has_gas", "phases",
                                      "connection", "consumption_w_from", "consumption_w_to"],  # pseudonym: dso
                         "properties": {"pseudonym": STRING, "period_start": TIME, "period_end": TIME,
                                        "has_pv": {"enum": ["yes", "no", "*"]}, "has_gas": {"enum": ["yes", "no", "*"]},
                                        "phases": {"enum": ["1", "3", "*"]}, "connection": STRING,
                                        "consumption_w_from": {"type": "integer", "minimum": 0},
                                        "consumption_w_to": _nullable("integer")}},
    "PrivacyReport": {"type": "object",
                      "required": ["quasi_identifiers", "sensitive_attribute", "k", "l", "t", "epsilon", "rows",
                                   "epsilon_spent", "linkable", "days"],
                      "properties": {"level": STRING, "quasi_identifiers": {"type": "array", "items": STRING},
                                     "sensitive_attribute": STRING, "k": {"type": "integer"},
                                     "l": {"type": "integer"}, "t": {"type": "number"},
                                     "epsilon": NUMBER_OR_NULL, "epsilon_spent": {"type": "number"},
                                     "required": OBJ, "resolution": {"enum": ["15m", "1h"]},
                                     "generalization": OBJ, "bins": STRING, "rows": {"type": "integer"},
                                     "households": {"type": "integer"},
                                     "households_suppressed": {"type": "integer"}, "from": TIME, "to": TIME,
                                     "linkable": {"type": "boolean"}, "pseudonyms": STRING, "t_against": STRING,
                                     "grid": STRING, "days": {"type": "array", "items": OBJ}}},
    "AnonymizedRelease": {"type": "object", "required": ["records", "report"],
                          "properties": {"records": {"type": "array", "items": _ref("AnonymizedRecord")},
                                         "report": _ref("PrivacyReport")}},
}


def paths(routes: tuple[Route, ...]) -> dict:
    out: dict = {}
    for route in routes:
        out.setdefault(route.template, {})[route.method.lower()] = route.operation()
    return out


def build_spec(routes: tuple[Route, ...] = ROUTES) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Edge", "version": VERSION,
                 "description": "The local API of an Edge device. Errors are JSON {error, detail}."},
        "paths": paths(routes),
        "webhooks": {"aggregate": {"post": {
            "summary": "What a subscription's endpoint receives, signed per Standard Webhooks "
                       "(webhook-id, webhook-timestamp, webhook-signature)",
            "requestBody": {"content": {"application/json": {"schema": _ref("WebhookMessage")}}},
            "responses": {"200": {"description": "Any 2xx acknowledges; 410 disables the subscription; "
                                                 "anything else is retried with the same webhook-id"}}}},
                     **openapi_triggers.WEBHOOKS},
        "components": {
            "schemas": {**SCHEMAS, **bodies.schemas(), **answers.schemas(), **openapi_triggers.SCHEMAS},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                          "description": "Token <household token>"},
                "authkey": {"type": "apiKey", "in": "header", "name": "X-AUTHKEY"}}},
    }


SPEC = build_spec()
