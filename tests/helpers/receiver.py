"""An organization's webhook endpoint: a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web


class Receiver:
    """An organization's endpoint. `mode` decides the answer: ok, fail, hang, gone, slow_down."""

    def __init__(self):
        self.received: list[tuple[dict, bytes]] = []
        self.mode = "ok"
        self.retry_after = "1"
        self.arrivals: list[float] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrivals.append(time.monotonic())
        if self.mode == "hang":
            await asyncio.sleep(30)
        if self.mode == "fail":
            return web.Response(status=500)
        if self.mode == "gone":
            return web.Response(status=410)
        if self.mode == "slow_down":
            return web.Response(status=429, headers={"Retry-After": self.retry_after})
        self.received.append((dict(request.headers), body))
        return web.Response(status=204)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port or self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def messages(self) -> list[dict]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()
