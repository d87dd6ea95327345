"""The local HTTP API (aiohttp). One module per audience; the route table (agent/api/routes.py) lists their
endpoints and `create_app` wires it."""

from __future__ import annotations

from aiohttp import web

from agent.api import openapi, routes
from agent.api.common import AGENT, MAX_BODY_BYTES, error_middleware
from agent.api.docs import DOCUMENT
from agent.services import Services


def create_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[AGENT] = services
    app[DOCUMENT] = openapi.SPEC
    routes.add_routes(app)
    return app
