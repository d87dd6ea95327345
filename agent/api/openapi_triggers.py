"""The triggers' component schemas and webhooks in the OpenAPI document (organizations' triggers, households'
notifications and appliances), merged into agent/api/openapi.py's by `build_spec`."""

from __future__ import annotations

from agent.api.spec import OBJ, STRING
from agent.api.spec import nullable as _nullable
from agent.api.spec import ref as _ref

SCHEMAS = {
    "Trigger": {
        "type": "object",
        "required": ["id", "parameters", "interval", "window", "kind", "action", "state", "quarantined",
                     "evaluations", "firings", "errors", "deliveries", "windows"],
        "description": "Counts are sums of the per-window statistics the release module released (exact levels: "
                       "windows of at least k_min households; noisy levels: noised per UTC day)",
        "properties": {
            "id": STRING, "parameters": {"type": "array", "items": STRING}, "interval": {"type": "number"},
            "window": STRING, "kind": {"enum": ["household", "neighborhood"]}, "action": OBJ,
            "description": STRING, "created_at": {"type": "number"},
            "state": {"enum": ["active", "quarantined", "rejected", "suspended", "sandbox_unavailable"]},
            "quarantined": {"type": "boolean"},
            "evaluations": {"type": "number", "description": "households evaluated"},
            "firings": {"type": "number", "description": "households the condition was true for"},
            "errors": {"type": "number", "description": "evaluations that failed"},
            "deliveries": {"type": "object", "properties": {"delivered": {"type": "number"},
                                                            "failed": {"type": "number"}}},
            "windows": {"type": "object", "properties": {
                "released": {"type": "integer", "description": "windows whose counts were released"},
                "withheld": {"type": "integer", "description": "windows whose counts were not (too few households)"},
                "released_daily": {"type": "integer", "description": "windows of a noisy level, summed per day"},
                "inputs_withheld": {"type": "integer", "description": "windows not evaluated: their neighbourhood "
                                                                      "aggregate was not released"}}},
            "days_released": {"type": "integer", "description": "noisy levels: days whose counts were released"},
            "isolation": {"type": ["string", "null"], "enum": ["closed language", "process per row", None],
                          "description": "how the sandbox keeps households' rows apart: a condition in the closed "
                                         "language shares one locked evaluator (fast), any other gets a process per "
                                         "row; null until first evaluated (README, The sandbox)"}}},
    "TriggerCreated": {"allOf": [_ref("Trigger"), {"type": "object", "properties": {
        "secret": {"type": "string", "description": "webhook actions: the signing secret, shown once"}}}]},
    "Triggers": {"type": "object", "required": ["triggers"],
                 "properties": {"triggers": {"type": "array", "items": _ref("Trigger")}}},
    "TriggerRefused": {"type": "object", "required": ["error", "detail"],
                       "properties": {"error": STRING, "detail": STRING, "parameter": STRING, "reason": {
                           "type": "string", "description": "unknown parameter, parameter not permitted, syntax "
                           "error, does not define condition(...), too slow: exceeded N ms, did not return a bool, "
                           "reads the clock, or rejected by sandbox"}}},
    "Notify": {"type": "object", "required": ["url", "kind"],
               "properties": {"url": STRING, "kind": {"enum": ["webhook", "ntfy"]}, "updated_at": {"type": "number"},
                              "secret": {"type": "string", "description": "webhook: signing secret, shown once"}}},
    "Notifications": {"type": "object", "required": ["notifications"], "properties": {"notifications": {
        "type": "array", "items": {"type": "object", "required": ["id", "organization_id", "content", "at"],
                                   "properties": {"id": STRING, "organization_id": STRING,
                                                  "organization_name": STRING, "trigger_id": STRING, "title": STRING,
                                                  "content": STRING, "at": {"type": "number"}}}}}},
    "Appliance": {"type": "object", "required": ["id", "name", "driver", "address", "allowed_organizations"],
                  "properties": {"id": STRING, "name": STRING, "kind": _nullable("string"), "driver": STRING,
                                 "address": STRING, "channel": _nullable("integer"),
                                 "allowed_organizations": {"type": "array", "items": STRING},
                                 "created_at": {"type": "number"}}},
    "NotifyTest": {"type": "object", "required": ["delivered", "status", "error"],
                   "properties": {"delivered": {"const": True}, "status": {"type": "integer"},
                                  "error": {"type": "null"}}},
    "ApplianceStatus": {"type": "object", "required": ["on", "power_w", "error"],
                        "properties": {"on": {"type": "boolean"}, "power_w": _nullable("number"),
                                       "error": {"type": "null"}}},
    "Appliances": {"type": "object", "required": ["appliances"],
                   "properties": {"appliances": {"type": "array", "items": _ref("Appliance")},
                                  "drivers": {"type": "array", "items": STRING}}},
    "TriggerWebhook": {"type": "object", "required": ["type", "trigger_id", "window", "window_start", "at"],
                       "properties": {"type": {"const": "trigger.fired"}, "trigger_id": STRING, "window": STRING,
                                      "household": {"type": "string", "description": "household conditions only, "
                                                    "for a household that consented: stable per organization"},
                                      "window_start": {"type": "string", "format": "date-time"},
                                      "at": {"type": "string", "format": "date-time",
                                             "description": "the release moment: the window's end plus a fixed "
                                                            "delay"}}},
    "ConsentableTrigger": {
        "type": "object", "required": ["trigger_id", "organization_id", "description", "parameters", "service",
                                       "consented", "max_rate", "event"],
        "properties": {"trigger_id": STRING, "organization_id": STRING, "organization_name": _nullable("string"),
                       "description": STRING, "parameters": {"type": "array", "items": OBJ}, "window": STRING,
                       "service": {"type": "string", "description": "trigger_events:<trigger_id>: PUT "
                                   "/households/me/consents/{org_id}/{service} to consent"},
                       "consented": {"type": "boolean"}, "requires": {"type": "array", "items": STRING},
                       "max_rate": OBJ, "event": OBJ, "created_at": {"type": "number"}}},
    "ConsentableTriggers": {"type": "object", "required": ["triggers", "disclosure"],
                            "properties": {"triggers": {"type": "array", "items": _ref("ConsentableTrigger")},
                                           "disclosure": OBJ}},
    "HouseholdNotification": {"type": "object", "required": ["type", "id", "content", "at"],
                              "properties": {"type": {"const": "notification"}, "id": STRING,
                                             "organization_id": STRING, "organization_name": STRING,
                                             "trigger_id": STRING, "title": STRING, "content": STRING,
                                             "at": {"type": "string", "format": "date-time"}}},
}

WEBHOOKS = {
    "trigger": {"post": {
        "summary": "What a webhook action's endpoint receives, signed per Standard Webhooks with the trigger's secret",
        "requestBody": {"content": {"application/json": {"schema": _ref("TriggerWebhook")}}},
        "responses": {"200": {"description": "Any 2xx acknowledges; anything else is tried again, twice"}}}},
    "notification": {"post": {
        "summary": "What a household's webhook endpoint receives, signed with the household's secret (an ntfy "
                   "topic gets the content as text with a Title header)",
        "requestBody": {"content": {"application/json": {"schema": _ref("HouseholdNotification")}}},
        "responses": {"200": {"description": "Any 2xx acknowledges"}}}},
}
