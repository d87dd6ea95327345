"""The triggers' part of the OpenAPI document (organizations' triggers, households' notifications and
appliances), merged into agent/api/openapi.py's by `build_spec`."""

from __future__ import annotations

from agent.api.openapi import HH, NOT_FOUND, ORG, OBJ, STRING, _error, _json, _nullable, _op, _path_param, _ref

ACTION = {"oneOf": [
    {"type": "object", "required": ["type", "content"], "additionalProperties": False,
     "description": "Delivered to each household it fires for (its inbox and its own endpoint), never to the "
                    "organization",
     "properties": {"type": {"const": "notification"}, "content": {"type": "string", "minLength": 1,
                                                                   "maxLength": 1000},
                    "title": {"type": "string", "minLength": 1, "maxLength": 100}}},
    {"type": "object", "required": ["type", "appliance", "command"], "additionalProperties": False,
     "description": "Switches the household's appliances of this name or kind that it lets the organization "
                    "control",
     "properties": {"type": {"const": "appliance"}, "appliance": {"type": "string", "minLength": 1, "maxLength": 64},
                    "command": {"enum": ["on", "off"]}}},
    {"type": "object", "required": ["type", "endpoint"], "additionalProperties": False,
     "description": "A signed call to the organization's endpoint with the trigger id, a per-organization "
                    "pseudonym of the household and the time",
     "properties": {"type": {"const": "webhook"}, "endpoint": {"type": "string", "description": "https:// URL"}}}]}

SCHEMAS = {
    "TriggerIn": {
        "type": "object", "required": ["parameters", "function", "interval", "action"], "additionalProperties": False,
        "properties": {
            "parameters": {"type": "array", "items": STRING, "minItems": 1, "maxItems": 16,
                           "description": "names from GET /parameters, in the order of condition()'s arguments"},
            "function": {"type": "string", "contentEncoding": "base64",
                         "description": "base64 of UTF-8 Python source defining condition(<parameters>) -> bool"},
            "interval": {"type": "number", "minimum": 1, "maximum": 2592000,
                         "description": "seconds: the least time between two actions for one household "
                                        "(the operator sets the minimum, 60 s by default)"},
            "action": ACTION,
            "window": {"enum": ["1s", "1m", "15m", "1h"],
                       "description": "evaluation cadence; default 1m (or the level's finest)"}}},
    "Trigger": {
        "type": "object",
        "required": ["id", "parameters", "interval", "window", "kind", "action", "state", "quarantined",
                     "evaluations", "firings", "errors", "deliveries"],
        "properties": {
            "id": STRING, "parameters": {"type": "array", "items": STRING}, "interval": {"type": "number"},
            "window": STRING, "kind": {"enum": ["household", "neighborhood"]}, "action": OBJ,
            "created_at": {"type": "number"},
            "state": {"enum": ["active", "quarantined", "rejected", "suspended", "sandbox_unavailable"]},
            "quarantined": {"type": "boolean"},
            "evaluations": {"type": "integer", "description": "windows in which the condition ran"},
            "withheld": {"type": "integer", "description": "windows whose aggregate was not released"},
            "firings": {"type": "integer", "description": "actions taken (at most one per household per interval)"},
            "errors": {"type": "integer", "description": "intervals in which the condition failed at least once"},
            "deliveries": {"type": "object", "properties": {"delivered": {"type": "integer"},
                                                            "failed": {"type": "integer"}}}}},
    "TriggerCreated": {"allOf": [_ref("Trigger"), {"type": "object", "properties": {
        "secret": {"type": "string", "description": "webhook actions: the signing secret, shown once"}}}]},
    "Triggers": {"type": "object", "required": ["triggers"],
                 "properties": {"triggers": {"type": "array", "items": _ref("Trigger")}}},
    "TriggerRefused": {"type": "object", "required": ["error", "detail"],
                       "properties": {"error": STRING, "detail": STRING, "parameter": STRING, "reason": {
                           "type": "string", "description": "unknown parameter, parameter not permitted, syntax "
                           "error, does not define condition(...), too slow: exceeded N ms, did not return a bool, "
                           "or rejected by sandbox"}}},
    "NotifyIn": {"type": "object", "required": ["url"], "additionalProperties": False,
                 "properties": {"url": {"type": "string", "description": "https:// URL"},
                                "kind": {"enum": ["webhook", "ntfy"]}}},
    "Notify": {"type": "object", "required": ["url", "kind"],
               "properties": {"url": STRING, "kind": {"enum": ["webhook", "ntfy"]}, "updated_at": {"type": "number"},
                              "secret": {"type": "string", "description": "webhook: signing secret, shown once"}}},
    "Notifications": {"type": "object", "required": ["notifications"], "properties": {"notifications": {
        "type": "array", "items": {"type": "object", "required": ["id", "organization_id", "content", "at"],
                                   "properties": {"id": STRING, "organization_id": STRING,
                                                  "organization_name": STRING, "trigger_id": STRING, "title": STRING,
                                                  "content": STRING, "at": {"type": "number"}}}}}},
    "ApplianceIn": {"type": "object", "required": ["name", "driver", "address"], "additionalProperties": False,
                    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64},
                                   "kind": _nullable("string", pattern="^[a-z][a-z0-9_-]{0,31}$"),
                                   "driver": {"enum": ["shelly", "tasmota"]},
                                   "address": {"type": "string", "description": "http://<LAN address>"},
                                   "channel": _nullable("integer", minimum=0, maximum=15),
                                   "allowed_organizations": {"type": "array", "items": STRING, "maxItems": 64}}},
    "Appliance": {"type": "object", "required": ["id", "name", "driver", "address", "allowed_organizations"],
                  "properties": {"id": STRING, "name": STRING, "kind": _nullable("string"), "driver": STRING,
                                 "address": STRING, "channel": _nullable("integer"),
                                 "allowed_organizations": {"type": "array", "items": STRING},
                                 "created_at": {"type": "number"}}},
    "Appliances": {"type": "object", "required": ["appliances"],
                   "properties": {"appliances": {"type": "array", "items": _ref("Appliance")},
                                  "drivers": {"type": "array", "items": STRING}}},
    "TriggerWebhook": {"type": "object", "required": ["type", "trigger_id", "household", "at"],
                       "properties": {"type": {"const": "trigger.fired"}, "trigger_id": STRING,
                                      "household": {"type": "string", "description": "stable per organization"},
                                      "at": {"type": "string", "format": "date-time"}}},
    "HouseholdNotification": {"type": "object", "required": ["type", "id", "content", "at"],
                              "properties": {"type": {"const": "notification"}, "id": STRING,
                                             "organization_id": STRING, "organization_name": STRING,
                                             "trigger_id": STRING, "title": STRING, "content": STRING,
                                             "at": {"type": "string", "format": "date-time"}}},
}

TRIGGER_ID = _path_param("trigger_id")
APPLIANCE_ID = _path_param("appliance_id")
UNAVAILABLE = {"503": _error("The kernel does not enforce the sandbox: triggers are disabled")}


def paths() -> dict:
    create = _op("Upload a condition (base64 Python) and an action; a trial run in the sandbox decides", ORG,
                 {"201": _json("TriggerCreated", "Accepted")}, body="TriggerIn",
                 extra_errors={"409": _error("Too many triggers"),
                               "429": _error("Too many bad tokens, or too many uploads today (Retry-After)"),
                               **UNAVAILABLE}, tag="triggers")
    create["responses"]["422"] = {"description": "Refused, with a fixed reason",
                                  "content": {"application/json": {"schema": _ref("TriggerRefused")}}}
    return {
        "/triggers/create": {"post": create},
        "/triggers": {"get": _op("The organization's triggers, with counts only", ORG, {"200": _json("Triggers")},
                                 tag="triggers")},
        "/triggers/{trigger_id}": {
            "get": _op("One trigger: state and counts, never which household", ORG, {"200": _json("Trigger")},
                       params=[TRIGGER_ID], extra_errors=NOT_FOUND, tag="triggers"),
            "delete": _op("Delete a trigger; its debounce still holds for the organization", ORG,
                          {"204": {"description": "Deleted"}}, params=[TRIGGER_ID], extra_errors=NOT_FOUND,
                          tag="triggers")},
        "/households/me/notify": {
            "get": _op("The household's notification endpoint", HH, {"200": _json("Notify")},
                       extra_errors=NOT_FOUND, tag="household"),
            "put": _op("Set it: a webhook (signed, secret shown once) or an ntfy-style topic URL", HH,
                       {"200": _json("Notify")}, body="NotifyIn", tag="household"),
            "delete": _op("Remove it (notifications stay in the inbox)", HH, {"204": {"description": "Removed"}},
                          extra_errors=NOT_FOUND, tag="household")},
        "/households/me/notifications": {"get": _op("The household's inbox: the last 100 notifications, newest "
                                                    "first", HH, {"200": _json("Notifications")}, tag="household")},
        "/households/me/appliances": {
            "get": _op("The household's appliances", HH, {"200": _json("Appliances")}, tag="household"),
            "post": _op("Register an appliance on the household's network (private addresses allowed) and who may "
                        "switch it", HH, {"201": _json("Appliance", "Registered")}, body="ApplianceIn",
                        extra_errors={"409": _error("Name taken, or too many")}, tag="household")},
        "/households/me/appliances/{appliance_id}": {"delete": _op(
            "Remove an appliance", HH, {"204": {"description": "Removed"}}, params=[APPLIANCE_ID],
            extra_errors=NOT_FOUND, tag="household")},
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
