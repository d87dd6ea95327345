"""Appliances on loopback: real aiohttp servers that answer like a Shelly Gen2 or a Tasmota relay.

Each fake has its own hardware address (`mac`, as the relay's API reports it); two fakes given the same `mac` are
one relay at two addresses (red team 8, R8-1)."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from aiohttp import web


_MACS = itertools.count(1)


def new_mac() -> str:
    """A MAC no other fake of this test run has, in the 12-digit uppercase form a Shelly reports."""
    return f"A8032A{next(_MACS):06X}"


class FakeDevice:
    """A real aiohttp server on 127.0.0.1 with a device's routes (`add_routes`)."""

    runner: web.AppRunner | None = None
    mac: str = ""

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.add_routes(app)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()

    @property
    def port(self) -> int:
        return self.runner.addresses[0][1]

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class FakeShelly(FakeDevice):
    """A Shelly Plus 1PM / Plus 2PM: JSON-RPC over HTTP, switches 0..n."""

    def __init__(self, switches: int = 1, hold: asyncio.Event | None = None, mac: str | None = None):
        self.mac = mac or new_mac()
        self.state = [False] * switches
        self.calls: list[dict] = []
        self.hold = hold  # set: every switch answers only once it is set (a device that holds requests)

    async def switch_set(self, request: web.Request) -> web.Response:
        params = await request.json()
        self.calls.append(params)
        if self.hold is not None:
            await self.hold.wait()
        sid = params.get("id", 0)
        if not isinstance(sid, int) or not 0 <= sid < len(self.state) or not isinstance(params.get("on"), bool):
            return web.json_response({"code": -105, "message": f"Argument 'id', value {sid} not found!"}, status=500)
        was_on, self.state[sid] = self.state[sid], params["on"]
        return web.json_response({"was_on": was_on})

    async def device_info(self, request: web.Request) -> web.Response:
        return web.json_response({"name": None, "id": f"shellyplus1pm-{self.mac.lower()}", "mac": self.mac,
                                  "model": "SNSW-001P16EU", "gen": 2, "fw_id": "20231107-164738/1.0.8-g8c7bb8d",
                                  "ver": "1.0.8", "app": "Plus1PM", "auth_en": False, "auth_domain": None})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/rpc/Switch.Set", self.switch_set)
        app.router.add_get("/rpc/Shelly.GetDeviceInfo", self.device_info)


class MeteringShelly(FakeShelly):
    """A Shelly Plus 1PM / Plus 2PM: `GET /rpc/Switch.GetStatus?id=N`, its switch's state and the power it meters
    (`apower`); `reads` counts those requests."""

    apower = 8.5

    def __init__(self, switches: int = 1, mac: str | None = None):
        super().__init__(switches, mac=mac)
        self.reads = 0

    async def get_status(self, request: web.Request) -> web.Response:
        self.reads += 1
        sid = int(request.query.get("id", "0"))
        if not 0 <= sid < len(self.state):
            return web.json_response({"code": -105, "message": f"Argument 'id', value {sid} not found!"},
                                     status=500)
        return web.json_response({"id": sid, "source": "init", "output": self.state[sid], "apower": self.apower,
                                  "voltage": 231.2})

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_get("/rpc/Switch.GetStatus", self.get_status)


class FakeTasmota(FakeDevice):
    """A Sonoff with Tasmota: `cm?cmnd=Power On`, `Power2 Off`; answers {"POWER": "ON"} / {"POWER2": "OFF"}."""

    def __init__(self, relays: int = 1, mac: str | None = None):
        self.mac = mac or ":".join(f"{b:02X}" for b in bytes.fromhex(new_mac()))  # Tasmota's colon form
        self.state = ["OFF"] * relays
        self.raw_queries: list[str] = []

    async def command(self, request: web.Request) -> web.Response:
        relay, _, value = request.query.get("cmnd", "").partition(" ")
        if relay.lower() == "status" and value == "5":  # its identity: not one of the commands `raw_queries` lists
            return web.json_response({"StatusNET": {"Hostname": "tasmota-0001", "IPAddress": "192.168.1.9",
                                                    "Mac": self.mac, "Webserver": 2}})
        self.raw_queries.append(request.raw_path.partition("?")[2])
        index = relay[5:] if relay.lower().startswith("power") else None
        if index is None or (index and not index.isdigit()) or int(index or 1) > len(self.state):
            return web.json_response({"Command": "Unknown"})
        n = int(index or 1)
        self.state[n - 1] = {"on": "ON", "off": "OFF", "toggle": "ON" if self.state[n - 1] == "OFF" else "OFF"}.get(
            value.lower(), self.state[n - 1])
        key = "POWER" if len(self.state) == 1 and not index else f"POWER{n}"
        return web.json_response({key: self.state[n - 1]})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/cm", self.command)


class Answering(FakeDevice):
    """A device that answers every GET and POST with `status`, `body` (bytes) and `headers` whatever was asked: a
    relay with other firmware, a broken one, or a web server that is no relay. `paths` lists what was asked."""

    def __init__(self, body: bytes = b"{}", status: int = 200, headers: dict[str, str] | None = None):
        self.body, self.status, self.headers = body, status, headers
        self.paths: list[str] = []

    async def answer(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        return web.Response(body=self.body, status=self.status, headers=self.headers, content_type="application/json")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.answer)


@pytest.fixture
async def shelly():
    """A two-switch Shelly on loopback."""
    device = FakeShelly(switches=2)
    await device.start()
    yield device
    await device.runner.cleanup()


@pytest.fixture
async def tasmota():
    """A one-relay Tasmota on loopback."""
    device = FakeTasmota(relays=1)
    await device.start()
    yield device
    await device.runner.cleanup()


@pytest.fixture
async def answering():
    """Starts Answering devices (`await answering(body, status, headers)`), stopped at the end of the test."""
    devices: list[Answering] = []

    async def start(body: bytes = b"{}", status: int = 200, headers: dict[str, str] | None = None) -> Answering:
        device = Answering(body, status, headers)
        await device.start()
        devices.append(device)
        return device
    yield start
    for device in devices:
        await device.runner.cleanup()
