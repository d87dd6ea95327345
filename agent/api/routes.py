"""The route table: every endpoint of the API, once. The router, the role check before each handler and the
OpenAPI document's paths (agent/api/openapi.py) are derived from it."""

from __future__ import annotations

from aiohttp import web

from agent.api import (admin, anonymized, data, docs, household_actions, household_triggers, households, meters,
                       privacy, subscriptions, triggers)
from agent.api.common import KeyedLocks, authenticate
from agent.api.spec import Handler, Route

ROUTES: tuple[Route, ...] = (
    *meters.ROUTES, *households.ROUTES, *household_actions.ROUTES, *household_triggers.ROUTES, *admin.ROUTES,
    *data.ROUTES, *privacy.ROUTES, *anonymized.ROUTES, *subscriptions.ROUTES, *triggers.ROUTES, *docs.ROUTES,
)
# State some handlers share across requests, made once per app.
LOCKS = (households.METER_LOCKS, household_actions.HOUSEHOLD_LOCKS, triggers.ORGANIZATION_LOCKS)


def guarded(route: Route) -> Handler:
    """The handler behind the route's role check: nothing of the request is looked at before it passed."""
    if not route.roles:
        return route.handler

    async def checked(request: web.Request) -> web.StreamResponse:
        authenticate(request, route.roles, route.schemes)
        return await route.handler(request)

    checked.__name__ = route.handler.__name__
    return checked


def add_routes(app: web.Application) -> None:
    for key in LOCKS:
        app[key] = KeyedLocks()
    for route in ROUTES:
        if route.method == "GET":  # and HEAD, as aiohttp's add_get does
            app.router.add_get(route.path, guarded(route))
        else:
            app.router.add_route(route.method, route.path, guarded(route))
