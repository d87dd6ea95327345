"""The route table (agent/api/routes.py) is the one place an endpoint's path, handler and roles are stated:
the router, the role check and the OpenAPI paths come from it. tests/test_api_roles.py checks the roles against
a running agent and tests/test_openapi.py the document against the server; these check the derivation itself."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from agent.api.openapi import SPEC
from agent.api.routes import ROUTES, add_routes
from agent.api.spec import ANYONE, Route

API = Path(__file__).resolve().parent.parent / "agent" / "api"


def test_each_method_and_path_is_routed_once():
    seen = [(r.method, r.template) for r in ROUTES]
    assert len(seen) == len(set(seen))


def test_the_documents_paths_are_the_table():
    assert {(m.upper(), p) for p, ops in SPEC["paths"].items() for m in ops} == {(r.method, r.template) for r in ROUTES}


def test_a_path_parameters_pattern_is_the_routers():
    """/households/me must not be taken for a household id: the router's regex and the document's pattern are
    one declaration, so a client validating against the document and the server agree."""
    route = next(r for r in ROUTES if r.method == "GET" and r.template == "/households/{household_id}")
    (param,) = [p for p in route.operation()["parameters"] if p["in"] == "path"]
    pattern = re.compile(param["schema"]["pattern"])
    assert pattern.match("hh_0123abcd") and not pattern.match("me")
    app = web.Application()
    add_routes(app)
    resource = next(res for res in app.router.resources() if res.canonical == "/households/{household_id}")
    assert resource.get_info()["pattern"].match("/households/hh_0123abcd")
    assert not resource.get_info()["pattern"].match("/households/me")


def test_roles_decide_security_and_auth_errors():
    for route in ROUTES:
        op = route.operation()
        if route.roles == ANYONE:
            assert "security" not in op and "403" not in op["responses"], route.template
        else:
            assert op["security"] and {"401", "403", "429"} <= set(op["responses"]), route.template
            assert op["description"] == f"For: {', '.join(route.roles)}."


def test_a_body_route_documents_its_body_errors_and_its_own_win():
    route = Route("POST", "/x/{item_id:it_[0-9]+}", _handler, ("operator",), "s", "t", {"201": {}}, body="In",
                  errors={"422": {"description": "mine"}})
    op = route.operation()
    assert route.template == "/x/{item_id}"
    assert op["parameters"] == [{"name": "item_id", "in": "path", "required": True,
                                 "schema": {"type": "string", "pattern": "^it_[0-9]+$"}}]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/In"}
    assert {"400", "408", "413"} <= set(op["responses"]) and op["responses"]["422"] == {"description": "mine"}


def test_no_handler_checks_roles_itself():
    """Roles are declared once, in the table: a handler calling require() would be a second declaration that
    can disagree with the document."""
    for path in API.glob("*.py"):
        if path.name in ("common.py", "routes.py"):
            continue
        assert "require(" not in path.read_text(), path.name


async def _handler(request: web.Request) -> web.Response:
    return web.Response()
