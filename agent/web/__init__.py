"""The device's own web pages (/ui): households see and decide, installers see every P1 port.

`add_routes(app)` mounts them on the API's application; `sign_in_url(agent, base, role, subject)` makes a
one-time sign-in link (the installer's page and the demo print them).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from agent.api.common import AGENT
from agent.web import household, installer, signin_pages
from agent.web.live import LiveHub
from agent.web.render import PREFIX, security_headers, sign_in_url

__all__ = ["add_routes", "sign_in_url"]

STATIC = Path(__file__).parent / "static"
LIVE = web.AppKey("web_live", LiveHub)


def add_routes(app: web.Application) -> None:
    agent = app[AGENT]
    hub = LiveHub()
    app[LIVE] = hub
    agent.pipeline.subscribe(hub.on_reading)

    async def end_streams(_app) -> None:
        hub.shutdown()

    app.on_shutdown.append(end_streams)
    app.on_response_prepare.append(security_headers)
    signin_pages.add_routes(app)
    household.add_routes(app, hub)
    installer.add_routes(app)
    app.router.add_static(PREFIX + "/static", STATIC, append_version=False)
    app.router.add_get("/", to_pages)


async def to_pages(request: web.Request) -> web.Response:
    """http://<device>:8080/ in a browser: the pages (the API has no root)."""
    return web.Response(status=303, headers={"Location": PREFIX})
