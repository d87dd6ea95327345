"""Appliance drivers and appliance actions against fake devices that are real aiohttp servers on
127.0.0.1 speaking the devices' HTTP APIs: Shelly Gen2 RPC (`POST /rpc/Switch.Set`) and Tasmota
(`GET /cm?cmnd=Power%20On`). Plus the household's appliance endpoints and their address policy."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from agent.triggers.actions import check_appliance_address, lan_address_allowed
from agent.delivery.targets import TargetError
from drivers.appliances import ApplianceError, driver, names
from tests.helpers.agent import make_config
from tests.helpers.triggers import b64, town  # noqa: F401  (town: the fixture)


class FakeDevice:
    """A real aiohttp server on 127.0.0.1 with a device's routes (`add_routes`)."""

    runner: web.AppRunner | None = None

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.add_routes(app)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"


class FakeShelly(FakeDevice):
    """A Shelly Plus 1PM / Plus 2PM: JSON-RPC over HTTP, switches 0..n."""

    def __init__(self, switches: int = 1):
        self.state = [False] * switches
        self.calls: list[dict] = []

    async def switch_set(self, request: web.Request) -> web.Response:
        params = await request.json()
        self.calls.append(params)
        sid = params.get("id", 0)
        if not isinstance(sid, int) or not 0 <= sid < len(self.state) or not isinstance(params.get("on"), bool):
            return web.json_response({"code": -105, "message": f"Argument 'id', value {sid} not found!"}, status=500)
        was_on, self.state[sid] = self.state[sid], params["on"]
        return web.json_response({"was_on": was_on})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/rpc/Switch.Set", self.switch_set)


class FakeTasmota(FakeDevice):
    """A Sonoff with Tasmota: `cm?cmnd=Power On`, `Power2 Off`; answers {"POWER": "ON"} / {"POWER2": "OFF"}."""

    def __init__(self, relays: int = 1):
        self.state = ["OFF"] * relays
        self.raw_queries: list[str] = []

    async def command(self, request: web.Request) -> web.Response:
        self.raw_queries.append(request.raw_path.partition("?")[2])
        relay, _, value = request.query.get("cmnd", "").partition(" ")
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


@pytest.fixture
async def shelly():
    device = FakeShelly(switches=2)
    await device.start()
    yield device
    await device.runner.cleanup()


@pytest.fixture
async def tasmota():
    device = FakeTasmota(relays=1)
    await device.start()
    yield device
    await device.runner.cleanup()


# --- the drivers alone -------------------------------------------------------------------------------
def test_registry_lists_the_drivers():
    assert {"shelly", "tasmota"} <= set(names())
    assert driver("shelly").name == "shelly" and driver("nope") is None


async def test_shelly_switch_set(shelly):
    async with aiohttp.ClientSession() as session:
        await driver("shelly").command(session, shelly.address, None, "on")
        await driver("shelly").command(session, shelly.address + "/", 1, "on")
        await driver("shelly").command(session, shelly.address, 0, "off")
        assert shelly.calls == [{"id": 0, "on": True}, {"id": 1, "on": True}, {"id": 0, "on": False}]
        assert shelly.state == [False, True]
        with pytest.raises(ApplianceError, match="HTTP 500"):
            await driver("shelly").command(session, shelly.address, 7, "on")
        with pytest.raises(ApplianceError):
            await driver("shelly").command(session, shelly.address, 0, "explode")


async def test_tasmota_power_commands(tasmota):
    async with aiohttp.ClientSession() as session:
        await driver("tasmota").command(session, tasmota.address, None, "on")
        assert tasmota.state == ["ON"] and tasmota.raw_queries == ["cmnd=Power%20On"]
        await driver("tasmota").command(session, tasmota.address, None, "off")
        assert tasmota.state == ["OFF"] and tasmota.raw_queries[-1] == "cmnd=Power%20Off"
        with pytest.raises(ApplianceError, match="relay reports"):
            await driver("tasmota").command(session, tasmota.address, 3, "on")  # no third relay


async def test_tasmota_second_relay():
    device = FakeTasmota(relays=2)
    await device.start()
    try:
        async with aiohttp.ClientSession() as session:
            await driver("tasmota").command(session, device.address, 2, "on")
        assert device.state == ["OFF", "ON"] and device.raw_queries == ["cmnd=Power2%20On"]
    finally:
        await device.runner.cleanup()


async def test_unreachable_device_is_an_error():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        with pytest.raises((ApplianceError, aiohttp.ClientError, OSError)):
            await driver("shelly").command(session, "http://127.0.0.1:9", 0, "on")


# --- the address policy ------------------------------------------------------------------------------
def test_lan_addresses_allowed_but_not_this_device_or_metadata():
    for ok in ("http://192.168.1.20", "http://10.0.0.7:8080/", "http://[fd00::12]", "http://shelly-plug.lan",
               "https://172.16.5.5"):
        assert check_appliance_address(ok, False) == ok.rstrip("/")
    for bad in ("http://127.0.0.1", "http://169.254.169.254", "http://[::1]", "http://[fe80::1]", "http://0.0.0.0",
                "http://224.0.0.1", "http://localhost", "ftp://192.168.1.2", "http://192.168.1.2/rpc",
                "http://user:pw@192.168.1.2", "http://192.168.1.2?x=1", "http://[::ffff:127.0.0.1]"):
        with pytest.raises(TargetError):
            check_appliance_address(bad, False)
    # a test bench (or an operator who wants it) may allow loopback
    assert check_appliance_address("http://127.0.0.1:8080", True) == "http://127.0.0.1:8080"
    assert lan_address_allowed("192.168.0.1", False) and not lan_address_allowed("169.254.169.254", False)


async def test_household_appliance_endpoints(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    org_id, _ = await running.create_org("Charger Co", "dso")
    _, token = await running.create_household()
    _, other = await running.create_household()
    status, app = await running.call("POST", "/households/me/appliances", token=token, json={
        "name": "EV charger", "kind": "ev_charger", "driver": "shelly", "address": "http://192.168.1.50",
        "allowed_organizations": [org_id]})
    assert status == 201, app
    assert app["address"] == "http://192.168.1.50" and app["allowed_organizations"] == [org_id]
    bad_bodies = [
        {"name": "ev charger", "driver": "shelly", "address": "http://192.168.1.51"},  # name taken
        {"name": "X", "driver": "zigbee", "address": "http://192.168.1.51"},
        {"name": "X", "driver": "shelly", "address": "http://169.254.169.254"},
        {"name": "X", "driver": "shelly", "address": "http://127.0.0.1:80"},
        {"name": "X", "driver": "shelly", "address": "http://192.168.1.51", "channel": 99},
        {"name": "X", "driver": "shelly", "address": "http://192.168.1.51", "allowed_organizations": ["org_nobody"]},
        {"name": "X", "driver": "shelly", "address": "http://192.168.1.51", "kind": "EV Charger!"},
        {"name": "", "driver": "shelly", "address": "http://192.168.1.51"},
        {"driver": "shelly", "address": "http://192.168.1.51"},
    ]
    for bad in bad_bodies:
        status, out = await running.call("POST", "/households/me/appliances", token=token, json=bad)
        assert status in (409, 422), (bad, status, out)
    status, out = await running.call("GET", "/households/me/appliances", token=token)
    assert [a["id"] for a in out["appliances"]] == [app["id"]] and "shelly" in out["drivers"]
    status, out = await running.call("GET", "/households/me/appliances", token=other)
    assert out["appliances"] == []
    # another household cannot remove it
    assert (await running.call("DELETE", f"/households/me/appliances/{app['id']}", token=other))[0] == 404
    assert (await running.call("DELETE", f"/households/me/appliances/{app['id']}", token=token))[0] == 204
    assert (await running.call("DELETE", f"/households/me/appliances/{app['id']}", token=token))[0] == 404


# --- appliance actions end to end --------------------------------------------------------------------
async def test_appliance_action_switches_allowed_devices_only(town, shelly, tasmota):  # noqa: F811
    t = await town(3)
    _, other_org_key = await t.running.create_org("Other Co", "dso")
    (_, first), (_, second), (_, third) = t.households
    # the first household lets the organization switch both its chargers (one Shelly, one Tasmota)
    for name, drv, address in (("Garage", "shelly", shelly.address), ("Driveway", "tasmota", tasmota.address)):
        status, out = await t.running.call("POST", "/households/me/appliances", token=first, json={
            "name": name, "kind": "ev_charger", "driver": drv, "address": address, "channel": 1 if drv == "shelly"
            else None, "allowed_organizations": [t.org_id]})
        assert status == 201, out
    # the second has a charger but did not allow this organization
    second_shelly = FakeShelly()
    await second_shelly.start()
    try:
        status, out = await t.running.call("POST", "/households/me/appliances", token=second, json={
            "name": "Charger", "kind": "ev_charger", "driver": "shelly", "address": second_shelly.address,
            "allowed_organizations": []})
        assert status == 201
        source = b64("""\
            def condition(household_power_production):
                return household_power_production > 2000
            """)
        status, created = await t.create({"parameters": ["household_power_production"], "function": source,
                                          "interval": 60, "action": {"type": "appliance", "appliance": "ev_charger",
                                                                     "command": "on"}})
        assert status == 201, created
        # another organization naming the same kind reaches nothing
        status, foreign = await t.create({"parameters": ["household_power_production"], "function": source,
                                          "interval": 60, "action": {"type": "appliance", "appliance": "Garage",
                                                                     "command": "off"}}, key=other_org_key)
        assert status == 201
        await t.window(power_import_w=0.0, power_export_w=1000.0)
        assert shelly.calls == [] and tasmota.raw_queries == []
        await t.window(power_import_w=0.0, power_export_w=3000.0)
        assert shelly.calls == [{"id": 1, "on": True}] and shelly.state == [False, True]
        assert tasmota.raw_queries == ["cmnd=Power%20On"] and tasmota.state == ["ON"]
        assert second_shelly.calls == []
        # one household acted for: below k_min, so the organization learns nothing of it, not even counts
        view = await t.trigger(created["id"])
        assert view["firings"] == 0 and view["deliveries"] == {"delivered": 0, "failed": 0}
        assert view["windows"]["withheld"] == 2
        assert (await t.trigger(foreign["id"], key=other_org_key))["firings"] == 0
        # a device that is down: not switched, and the household's other charger still is
        await shelly.runner.cleanup()
        t.clock.step(60)
        await t.window(power_import_w=0.0, power_export_w=3000.0)
        assert tasmota.raw_queries == ["cmnd=Power%20On"] * 2
        view = await t.trigger(created["id"])
        assert view["windows"]["withheld"] == 3
        assert json.dumps(view).count("127.0.0.1") == 0
    finally:
        await second_shelly.runner.cleanup()
