"""The local HTTP API (aiohttp). One module per audience; `create_app` wires them."""

from __future__ import annotations

from aiohttp import web

from agent.api import admin, anonymized, data, household_actions, household_triggers, households, meters, openapi, privacy, subscriptions, triggers
from agent.api.common import AGENT, MAX_BODY_BYTES, error_middleware


def create_app(agent) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[AGENT] = agent
    meters.add_routes(app)
    households.add_routes(app)  # before admin: /households/me must not be read as an id
    household_actions.add_routes(app)
    household_triggers.add_routes(app)
    admin.add_routes(app)
    data.add_routes(app)
    privacy.add_routes(app)
    anonymized.add_routes(app)
    subscriptions.add_routes(app)
    triggers.add_routes(app)
    openapi.add_routes(app)
    return app
