"""The route table's vocabulary: a `Route` states, once, an endpoint's method and path, its handler, who may
call it and what the OpenAPI document says of it. The app's router, the role check before every handler and the
document's paths are all derived from the routes (agent/api/routes.py lists them); tests/test_api_roles.py's
matrix and schemathesis stay independent checks of what is derived.

Also here: the small builders of OpenAPI fragments that routes and component schemas share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from agent.api.common import MAX_LIMIT
from agent.api.errors import STATUS, Http
from agent.auth import DATALOGGER, HOUSEHOLD, OPERATOR, ORGANIZATION
from agent.store.disk import StorageCode

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Json = dict[str, Any]

OP, ORG, HH = (OPERATOR,), (ORGANIZATION,), (HOUSEHOLD,)
ANY_ROLE = (OPERATOR, ORGANIZATION, HOUSEHOLD)  # any valid token but a datalogger's
# Posting a household's readings: the household, or its datalogger's token (which may do nothing else)
INGEST = (HOUSEHOLD, DATALOGGER)
ANYONE: tuple[str, ...] = ()  # no token needed (the handler decides what it tells)


# --- OpenAPI fragments ----------------------------------------------------------------------
def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(kind: str, **extra: object) -> Json:
    return {"type": [kind, "null"], **extra}


NUMBER_OR_NULL = nullable("number")
STRING = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
OBJ = {"type": "object"}
TIME_PARAM = {"type": "string", "description": "Unix seconds or ISO 8601"}


def error(description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def ok_json(schema: str, description: str = "OK") -> Json:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def query(name: str, schema: Json, description: str = "") -> Json:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


NO_CONTENT = {"description": "Removed"}
LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})  # common.parse_limit's
NOT_FOUND = {"404": error("Not found")}
REFUSED = {"description": "Not released (the record says why; nothing else is told)",
           "content": {"application/json": {"schema": ref("Refusal")}}}
AUTH_ERRORS = {"401": error("No valid token"), "403": error("The token may not use this endpoint"),
               "429": error("Too many bad tokens from this address")}


def _storage(status: int) -> str:
    return ", ".join(code.value for code in StorageCode if STATUS[code] == status)


# A durable write the disk refused: nothing of the change happened (agent/store/disk.py); Retry-After says when.
STORAGE_ERRORS = {"503": error(f"Storage failed or the data directory was lost: nothing was saved ({_storage(503)}; "
                               "Retry-After)"),
                  "507": error(f"Storage full: nothing was saved ({_storage(507)}; Retry-After)")}
BODY_ERRORS = {"400": error("Malformed JSON"),
               "408": error(f"The body did not arrive in time ({Http.REQUEST_TIMEOUT})"),
               "413": error("Body too large"), "422": error("Invalid content")}


# --- routes -------------------------------------------------------------------------------
_PATH_PARAM = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # aiohttp's: {name} or {name:regex}; the regex is the OpenAPI parameter's pattern too
    handler: Handler
    roles: tuple[str, ...]  # who may call it (ANYONE: no token needed)
    summary: str
    tag: str
    responses: Json
    params: tuple[Json, ...] = ()  # query parameters (path parameters come from the path)
    body: str | None = None  # a component schema: a required JSON body
    errors: Json = field(default_factory=dict)
    schemes: tuple[str, ...] = ("bearer",)
    path_docs: dict[str, str] = field(default_factory=dict)  # a path parameter's description
    openapi: Json = field(default_factory=dict)  # operation keys written as they are (other media types)

    @property
    def template(self) -> str:
        """The path as OpenAPI writes it: {name}, without aiohttp's regex."""
        return _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", self.path)

    def operation(self) -> Json:
        op: Json = {"summary": self.summary, "tags": [self.tag], "responses": dict(self.responses)}
        if self.roles:
            op["security"] = [{scheme: []} for scheme in self.schemes]
            op["description"] = f"For: {', '.join(self.roles)}."
            op["responses"].update(AUTH_ERRORS)
            for status, err in STORAGE_ERRORS.items():
                op["responses"].setdefault(status, err)
        params = [self._path_param(m.group(1), m.group(2)) for m in _PATH_PARAM.finditer(self.path)]
        if params or self.params:
            op["parameters"] = [*params, *self.params]
        if self.body:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(self.body)}}}
            op["responses"].update(BODY_ERRORS)
        op["responses"].update(self.errors)
        op.update(self.openapi)
        return op

    def _path_param(self, name: str, pattern: str | None) -> Json:
        schema = {"type": "string", **({"pattern": f"^{pattern}$"} if pattern else {})}
        param: Json = {"name": name, "in": "path", "required": True, "schema": schema}
        if name in self.path_docs:
            param["description"] = self.path_docs[name]
        return param
