"""A household tests its endpoint and its appliances, on the page (plain forms, CSRF, no JavaScript) and by the API:
a real signed notification to a real aiohttp receiver on 127.0.0.1 (and one that fails, one that is down), and a
status read from fake Shelly Gen2 (`Switch.GetStatus`) and Tasmota (`cm?cmnd=Power`) devices that are real servers
speaking those protocols. Nothing is switched by a test."""

from __future__ import annotations

import json
import re
import socket

from aiohttp import web

from agent.config import DeliveryConfig
from agent.delivery import signing
from tests.helpers.agent import make_config
from tests.helpers.appliances import FakeDevice, FakeTasmota, MeteringShelly
from tests.helpers.web import signed_in


class Receiver(FakeDevice):
    """The household's webhook: checks the Standard Webhooks signature, then answers `status`."""

    def __init__(self, status: int = 204):
        self.status = status
        self.received: list[dict] = []
        self.secret: str | None = None

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        h = request.headers
        expected = signing.signature(self.secret, h["webhook-id"], int(h["webhook-timestamp"]), body)
        assert expected in h["webhook-signature"].split(" ")
        self.received.append(json.loads(body))
        return web.Response(status=self.status)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/hook", self.hook)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _agent(tmp_path, start_agent):
    config = make_config(tmp_path, delivery=DeliveryConfig(allow_http=True, allow_private_endpoints=True,
                                                           timeout_s=5.0))
    return await start_agent(config)


def _status_line(html: str, element: str) -> str:
    found = re.search(rf'<p role="status" id="{element}"[^>]*>(.*?)</p>', html, re.S)
    assert found, f"no {element} on the page"
    return found.group(1)


async def test_a_household_sends_itself_a_test_notification(tmp_path, start_agent):
    running = await _agent(tmp_path, start_agent)
    household_id, token = await running.create_household()
    receiver, failing = Receiver(), Receiver(status=500)
    for r in (receiver, failing):
        await r.start()
    try:
        browser = await signed_in(running, "household", household_id)
        await browser.get("/ui/me/devices")
        status, html, _ = await browser.post("/ui/me/devices/notify", {"url": receiver.address + "/hook",
                                                                        "kind": "webhook"})
        receiver.secret = re.search(r'<code id="webhook-secret">([^<]+)</code>', html).group(1)
        await browser.get("/ui/me/devices")
        assert (await browser.post("/ui/me/devices/notify/test", {}, csrf=""))[0] == 403  # no CSRF token: refused
        assert receiver.received == []
        await browser.get("/ui/me/devices")
        status, html, _ = await browser.post("/ui/me/devices/notify/test", {})
        assert status == 200 and "answered 204" in _status_line(html, "notify-test")
        [message] = receiver.received
        assert message["type"] == "notification" and message["test"] is True
        assert household_id not in json.dumps(message)  # the household's endpoint needs no id of it

        # by the API, to an endpoint that fails, then to one that is down: a clear error, never a 500
        status, out = await running.call("POST", "/households/me/notify/test", token=token)
        assert status == 200 and out == {"delivered": True, "status": 204, "error": None}
        failing.secret = (await running.call("PUT", "/households/me/notify", token=token,
                                             json={"url": failing.address + "/hook"}))[1]["secret"]
        status, out = await running.call("POST", "/households/me/notify/test", token=token)
        assert status == 502 and out["error"] == "not_delivered" and out["endpoint_status"] == 500, out
        await running.call("PUT", "/households/me/notify", token=token,
                           json={"url": f"http://127.0.0.1:{_free_port()}/hook"})
        status, out = await running.call("POST", "/households/me/notify/test", token=token)
        assert status == 502 and "not reachable" in out["detail"] and out["endpoint_status"] is None, out
        await browser.get("/ui/me/devices")
        status, html, _ = await browser.post("/ui/me/devices/notify/test", {})
        assert status == 200 and "not reachable" in _status_line(html, "notify-test")
        tests = [e for e in running.agent.audit.entries(who=household_id) if e["action"] == "notify.test"]
        assert [e["delivered"] for e in tests] == [True, True, False, False, False]
        await running.call("DELETE", "/households/me/notify", token=token)
        assert (await running.call("POST", "/households/me/notify/test", token=token))[0] == 404
        await browser.close()
    finally:
        for r in (receiver, failing):
            await r.runner.cleanup()


async def test_a_household_reads_its_appliances_state(tmp_path, start_agent):
    running = await _agent(tmp_path, start_agent)
    household_id, token = await running.create_household()
    _, other = await running.create_household()
    shelly, tasmota = MeteringShelly(switches=2), FakeTasmota(relays=2)
    for device in (shelly, tasmota):
        await device.start()
    shelly.state[1] = True
    tasmota.state[1] = "ON"
    try:
        made = {}
        for name, driver, address, channel in (("Boiler", "shelly", shelly.address, 1),
                                               ("Heater", "tasmota", tasmota.address, 2),
                                               ("Gone", "shelly", f"http://127.0.0.1:{_free_port()}", None)):
            status, body = await running.call("POST", "/households/me/appliances", token=token, json={
                "name": name, "driver": driver, "address": address, "channel": channel})
            assert status == 201, body
            made[name] = body["id"]
        status, out = await running.call("GET", f"/households/me/appliances/{made['Boiler']}/status", token=token)
        assert status == 200 and out == {"on": True, "error": None}  # never the power it meters (R6-9)
        status, out = await running.call("GET", f"/households/me/appliances/{made['Heater']}/status", token=token)
        assert status == 200 and out == {"on": True, "error": None}
        assert "cmnd=Power2" in tasmota.raw_queries  # a read, not a switch
        assert shelly.calls == [] and tasmota.state == ["OFF", "ON"]  # nothing was switched
        status, out = await running.call("GET", f"/households/me/appliances/{made['Gone']}/status", token=token)
        assert status == 502 and out["error"] == "appliance_unreachable", out
        assert out["detail"] == "it did not answer as a shelly relay at its address"  # whatever the cause
        assert (await running.call("GET", f"/households/me/appliances/{made['Boiler']}/status",
                                   token=other))[0] == 404  # another household's appliance

        browser = await signed_in(running, "household", household_id)
        await browser.get("/ui/me/devices")
        shelly.state[1] = False
        status, html, _ = await browser.post(f"/ui/me/devices/appliances/{made['Boiler']}/status", {})
        assert status == 200 and _status_line(html, f"status-{made['Boiler']}") == "It is off now."
        status, html, _ = await browser.post(f"/ui/me/devices/appliances/{made['Gone']}/status", {})  # its form
        assert status == 200 and "Could not read it: it did not answer" in _status_line(html, f"status-{made['Gone']}")
        assert (await browser.post(f"/ui/me/devices/appliances/{made['Boiler']}/status", {}, csrf=""))[0] == 403
        await browser.close()
    finally:
        for device in (shelly, tasmota):
            await device.runner.cleanup()
