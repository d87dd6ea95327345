"""The device's own web pages (/ui): households see and decide, installers see every P1 port.

`add_routes(app, agent)` mounts them on the API's application; `sign_in_url(agent, base, role, subject)` makes a
one-time sign-in link (the installer's page and the demo print them).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from agent.web import household, installer, signin_pages
from agent.web.access_index import AccessIndex
from agent.web.live import LIVE, LiveHub
from agent.web.render import PAGE_SERVICES, PREFIX, Page, PageServices, add_pages, security_headers, sign_in_url

__all__ = ["add_routes", "sign_in_url"]

STATIC = Path(__file__).parent / "static"


def add_routes(app: web.Application, agent: PageServices) -> None:
    app[PAGE_SERVICES] = agent
    hub = LiveHub()
    app[LIVE] = hub
    agent.pipeline.subscribe(hub.on_reading)

    def token_ended(household_id: str) -> None:  # rotated or deleted: the old token's holder is out, now
        agent.sign_in.end(household_id)
        hub.end(household_id)

    agent.registry.token_ended.append(token_ended)

    async def end_streams(_app: web.Application) -> None:
        hub.shutdown()

    app.on_shutdown.append(end_streams)
    app.on_response_prepare.append(security_headers)
    app[household.ACCESS_INDEX] = AccessIndex(agent.audit.directory, agent.audit.pending_runs)
    add_pages(app, PAGES)
    app.router.add_static(PREFIX + "/static", STATIC, append_version=False)
    app.router.add_get("/", to_pages)


async def to_pages(request: web.Request) -> web.Response:
    """http://<device>:8080/ in a browser: the pages (the API has no root)."""
    return web.Response(status=303, headers={"Location": PREFIX})


# The route table of the pages: every page, once (each module's PAGES); tests/test_web_signin.py checks that the
# app has these routes and no other under /ui.
PAGES: tuple[Page, ...] = (*signin_pages.PAGES, *household.PAGES, *installer.PAGES)
