"""The hub API's OpenAPI 3.1 description (GET /openapi.json)."""

from __future__ import annotations

ERROR = {"type": "object", "required": ["error", "detail"],
         "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}
WINDOW_BASE = {
    "area": {"type": "string"}, "window": {"type": "string", "enum": ["1s", "1m", "15m", "1h"]},
    "window_start": {"type": "string", "format": "date-time"}, "window_end": {"type": "string", "format": "date-time"},
    "tag": {"type": ["string", "null"]},
    "devices": {"type": "integer", "description": "devices of the area that released this window"},
    "devices_refused": {"type": "integer"}, "devices_expected": {"type": "integer"},
    "complete": {"type": "boolean", "description": "every device of the area has reported this window"},
}
NUMBER_OR_NULL = {"type": ["number", "null"]}
RELEASED = {"type": "object", "properties": {
    **WINDOW_BASE, "households": {"type": "integer", "description": "households behind the sum, over all devices "
                                                                    "(disjoint across devices)"},
    "consumption_w": {"type": "number"}, "production_w": NUMBER_OR_NULL, "net_w": NUMBER_OR_NULL,
    "energy_import_wh": {"type": "number"}, "energy_export_wh": NUMBER_OR_NULL, "mean_w": NUMBER_OR_NULL,
    "privacy": {"type": "object", "properties": {"kind": {"enum": ["exact", "noisy", "mixed"]},
                                                 "noise_sd_w": {"type": "number"}, "combined": {"type": "string"}}}}}
REFUSED = {"type": "object", "properties": {**WINDOW_BASE, **ERROR["properties"]}}


def _get(summary: str, schema: dict, parameters=(), security=True) -> dict:
    op = {"summary": summary, "parameters": list(parameters),
          "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": schema}}},
                        "401": _error("no key, or an unknown or revoked one"),
                        "503": _error("the cluster could not answer now")}}
    if security:
        op["security"] = [{"bearer": []}]
    return {"get": op}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _query(name: str, schema: dict, required: bool = False, description: str = "") -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def spec() -> dict:
    data = _get("An area's windows: the sum of its devices' releases, released once enough devices did",
                {"type": "object", "properties": {"area": {"type": "string"}, "window": {"type": "string"},
                                                  "tag": {"type": ["string", "null"]},
                                                  "released": {"type": "array", "items": RELEASED},
                                                  "refused": {"type": "array", "items": REFUSED}}},
                [{"name": "area", "in": "path", "required": True, "schema": {"type": "string"}},
                 _query("window", {"enum": ["1s", "1m", "15m", "1h"], "default": "1h"}),
                 _query("since", {"type": "number"}, True, "UNIX seconds"),
                 _query("until", {"type": "number"}, True, "UNIX seconds"),
                 _query("tag", {"type": "string"}, False, "a channel tag of the devices' vocabulary")])
    data["get"]["responses"]["400"] = _error("a bad window, time or tag, or too many windows")
    data["get"]["responses"]["403"] = _error("not an organization's key")
    data["get"]["responses"]["404"] = _error("no such area for this organization")
    devices = _get("Devices: area, applied desired-state version, last release, last heartbeat (operator)",
                   {"type": "object", "properties": {"devices": {"type": "array", "items": {"type": "object"}}}})
    devices["get"]["responses"]["403"] = _error("not the operator's token")
    subscription = {"type": "object", "properties": {
        "id": {"type": "string"}, "org": {"type": "string"}, "area": {"type": "string"},
        "window": {"enum": ["1s", "1m", "15m", "1h"]}, "tag": {"type": ["string", "null"]},
        "endpoint": {"type": "string"}, "cursor": {"type": "integer"}, "failures": {"type": "integer"},
        "secret": {"type": "string", "description": "shown once, at creation: verify the Standard Webhooks "
                                                    "signature with it"}}}
    subscriptions = _get("The organization's subscriptions",
                         {"type": "object", "properties": {"subscriptions": {"type": "array", "items": subscription}}})
    subscriptions["get"]["responses"]["403"] = _error("not an organization's key")
    subscriptions["post"] = {
        "summary": "Push an area's windows to an endpoint as Standard Webhooks, in order, at least once (the "
                   "webhook-id is the subscription and the window); a window goes once every device of the area "
                   "reported it or a grace time after its end",
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["endpoint", "area"],
            "properties": {"endpoint": {"type": "string"}, "area": {"type": "string"},
                           "window": {"enum": ["1s", "1m", "15m", "1h"], "default": "15m"},
                           "tag": {"type": "string"}}}}}},
        "responses": {"201": {"description": "created", "content": {"application/json": {"schema": subscription}}},
                      "400": _error("a bad endpoint, window or tag"), "401": _error("no key, or a revoked one"),
                      "403": _error("not an organization's key"), "404": _error("no such area"),
                      "503": _error("the cluster could not answer now")}}
    unsubscribe = {"delete": {"summary": "Stop a subscription", "security": [{"bearer": []}],
                              "parameters": [{"name": "sub_id", "in": "path", "required": True,
                                              "schema": {"type": "string"}}],
                              "responses": {"200": {"description": "deleted"}, "401": _error("no key"),
                                            "403": _error("not an organization's key"),
                                            "404": _error("no such subscription")}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Edge hub", "version": "1",
                 "description": "Area-level aggregates across Edge devices; the hub never holds a household's "
                                "data: devices send only what their release module released."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/health": _get("The hub's state", {"type": "object"}, security=False),
            "/areas": _get("Areas the caller may read", {"type": "object"}),
            "/areas/{area}/data": data,
            "/devices": devices,
            "/subscriptions": subscriptions,
            "/subscriptions/{sub_id}": unsubscribe,
        },
    }
