"""The triggers' webhooks in the OpenAPI document (what a webhook action's endpoint and a household's notification
endpoint receive), merged into agent/api/openapi.py's by `build_spec`. The triggers' request bodies and answers are
msgspec Structs (agent/api/bodies.py, agent/api/answers.py)."""

from __future__ import annotations

from agent.api.spec import STRING
from agent.api.spec import ref as _ref

SCHEMAS = {
    "TriggerWebhook": {"type": "object", "required": ["type", "trigger_id", "window", "window_start", "at"],
                       "properties": {"type": {"const": "trigger.fired"}, "trigger_id": STRING, "window": STRING,
                                      "household": {"type": "string", "description": "household conditions only, "
                                                    "for a household that consented: stable per organization"},
                                      "window_start": {"type": "string", "format": "date-time"},
                                      "at": {"type": "string", "format": "date-time",
                                             "description": "the release moment: the window's end plus a fixed "
                                                            "delay"}}},
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
