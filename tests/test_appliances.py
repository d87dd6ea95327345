"""Appliance actions against fake devices that are real aiohttp servers on 127.0.0.1 speaking the devices' HTTP
APIs: Shelly Gen2 RPC (`POST /rpc/Switch.Set`) and Tasmota (`GET /cm?cmnd=Power%20On`). Plus the household's
appliance endpoints and their address policy. The drivers alone: tests/test_appliances_*.py."""

from __future__ import annotations

import json
import math

import pytest

from agent.triggers.actions import check_appliance_address, lan_address_allowed
from agent.delivery.targets import TargetError
from tests.helpers.agent import grant, make_config
from tests.helpers.appliances import FakeShelly, shelly, tasmota  # noqa: F401  (shelly, tasmota: the fixtures)
from tests.helpers.receiver import receiver  # noqa: F401  (the fixture)
from tests.helpers.triggers import b64, body, close_window, town  # noqa: F401  (town: the fixture)
from tests.helpers.web import access_rows, signed_in


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
        # a condition on household data: its switches are events the organization may see (red team 7, R7-3),
        # so both households consent to them; the second's charger still does not allow the organization
        for token in (first, second):
            await grant(t.running, token, t.org_id, f"trigger_events:{created['id']}")
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


async def test_a_household_conditions_switches_are_events_it_consents_to_within_its_daily_budget(
        town, receiver):  # noqa: F811
    """Red team 7, R7-3: an organization that supplies or monitors an appliance reads its state, so a switch by a
    condition on one household's data is an event about that household. It happens only with the household's
    consent to that trigger's events, shown before at GET /households/me/triggers; it spends the same daily budget
    as the organization's webhooks about the household; and it is on the household's access page, sent or
    tried."""
    t = await town(2, max_events_per_household_per_day=3)
    (target_id, target), (other_id, other) = t.households
    heaters = [FakeShelly(), FakeShelly()]
    try:
        for heater, token in zip(heaters, (target, other)):
            await heater.start()
            status, out = await t.running.call("POST", "/households/me/appliances", token=token, json={
                "name": "heat pump", "kind": "heater", "driver": "shelly", "address": heater.address,
                "allowed_organizations": [t.org_id]})
            assert status == 201, out
        pair = []
        for test, command in (("> 1000", "on"), ("<= 1000", "off")):
            status, out = await t.create(body(
                ["household_power_consumption"], f"def condition(household_power_consumption):\n"
                f"    return household_power_consumption {test}\n",
                action={"type": "appliance", "appliance": "heater", "command": command}))
            assert status == 201, out
            pair.append(out["id"])
        status, out = await t.create(body(
            ["household_power_consumption"], "def condition(household_power_consumption):\n    return True\n",
            action={"type": "webhook", "endpoint": receiver.url}, description="tells us you are at home"))
        assert status == 201, out
        beacon = out["id"]

        status, offered = await t.running.call("GET", "/households/me/triggers", token=target)
        assert status == 200, offered
        switches = {o["trigger_id"]: o for o in offered["triggers"] if o["action_type"] == "appliance"}
        assert set(switches) == set(pair)
        assert all(not o["consented"] and o["requires"] == ["triggers", f"trigger_events:{o['trigger_id']}"]
                   and "observed" in o["event"] for o in switches.values())
        assert "appliance switch" in offered["disclosure"]["events"]

        browser = await signed_in(t.running, "household", target_id, "nl")  # the Permissions page, in Dutch too
        status, html, _ = await browser.get("/ui/me/consents")
        await browser.close()
        assert status == 200 and html.count("schakelt ze uw apparaat “heater” aan") == 1, html
        assert html.count("schakelt ze uw apparaat “heater” uit") == 1

        # consent to triggers and an allowed appliance are not enough: nothing is switched
        await t.window(values=[{"power_import_w": 2000.0}, {"power_import_w": 2000.0}])
        assert heaters[0].calls == [] and heaters[1].calls == []

        for trigger_id in (*pair, beacon):
            await grant(t.running, target, t.org_id, f"trigger_events:{trigger_id}")
        status, offered = await t.running.call("GET", f"/households/me/triggers/{pair[0]}", token=target)
        assert status == 200 and offered["consented"], offered
        for watts in (2000.0, 500.0, 2000.0, 500.0):  # each window: the beacon's event and one switch fire
            await t.window(values=[{"power_import_w": watts}, {"power_import_w": watts}])
        events = [m for m in receiver.messages() if m.get("trigger_id") == beacon]
        # one budget of 3 for the day across the webhook and the switches: 8 firings, 3 events
        assert len(heaters[0].calls) + len(events) == 3, (heaters[0].calls, events)
        assert heaters[0].calls and events
        assert heaters[1].calls == []  # the other household consented to no switch

        _, html = await access_rows(t.running, target_id)
        shown = html.count("Your appliance switched by a trigger on your data")
        assert shown == len(heaters[0].calls) and html.count("event about your household") == len(events)
        _, html = await access_rows(t.running, other_id)
        assert "Your appliance switched" not in html
    finally:
        for heater in heaters:
            if heater.runner is not None:
                await heater.runner.cleanup()


async def test_a_switch_on_household_data_revoked_before_its_release_moment_is_not_made(town):  # noqa: F811
    """A window's switches wait for its release moment; a household that revokes its consent to the trigger's
    events meanwhile is not switched (as for webhooks), and the next window's switch is not made either."""
    t = await town(1)
    (household_id, token), = t.households
    heater = FakeShelly()
    await heater.start()
    try:
        status, out = await t.running.call("POST", "/households/me/appliances", token=token, json={
            "name": "heat pump", "kind": "heater", "driver": "shelly", "address": heater.address,
            "allowed_organizations": [t.org_id]})
        assert status == 201, out
        status, out = await t.create(body(
            ["household_power_consumption"], "def condition(household_power_consumption):\n    return True\n",
            action={"type": "appliance", "appliance": "heater", "command": "on"}))
        assert status == 201, out
        service = f"trigger_events:{out['id']}"
        await grant(t.running, token, t.org_id, service)
        await t.window(power_import_w=100.0)
        assert heater.calls == [{"id": 0, "on": True}]  # consented: switched
        heater.calls.clear()
        # the next window evaluated and held (its condition true), then the consent revoked before it leaves
        assert (await t.running.call("POST", "/readings", token=token,
                                     json={"timestamp": t.clock.now, "power_import_w": 100.0}))[0] == 201
        runner = t.runner
        close = (math.floor(t.clock.now / 60) + 1) * 60
        t.clock.now = close + 0.06
        await t.running.agent.releases.settle()
        await runner.run_due()
        assert any(o.acting for o in runner.held), "the window was not held with its switch"
        status, _ = await t.running.call("DELETE", f"/households/me/consents/{t.org_id}/{service}", token=token)
        assert status == 200
        await close_window(t.running, t.clock)  # its release moment and statistics moment
        await t.window(power_import_w=100.0)
        assert heater.calls == [], heater.calls
    finally:
        await heater.runner.cleanup()
