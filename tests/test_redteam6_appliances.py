"""Red team 6: a household's appliance "test" read any appliance on the device's LAN, another household's too.

`POST /households/me/appliances` accepted any private LAN address (agent/api/household_actions.py, `new_appliance`:
the address rules only, no check that the household owns the device at that address, none against another
household's appliance at the same address), and `GET /households/me/appliances/{id}/status` had the device read
it (`appliance_status`: Shelly `Switch.GetStatus`, with the power it meters). Households' Shellys answer without
authentication (drivers/appliances/shelly.py: digest auth is not supported, so it must be off) and are on the
device's LAN (the device switches them). So one household of an organization's own, with nothing but its token,
read the target's appliance, on/off and metered watts, whenever it liked, and let its organization switch it.
Closed (R6-9) by the appliance bindings (agent/triggers/actions.py): an address is one household's, in every
spelling and every DNS alias the device connects through; the status is on/off only, its failure one sentence.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.triggers.actions import appliance_key
from tests.helpers.agent import grant, make_config
from tests.helpers.appliances import FakeShelly, MeteringShelly
from tests.helpers.clock import StepClock, T0
from tests.helpers.triggers import body, close_window, town_config


@pytest.fixture
async def heat_pump():
    """The target household's heat pump: a Shelly Plus 1PM that meters its power."""
    device = MeteringShelly()
    await device.start()
    yield device
    await device.runner.cleanup()


async def _lan_agent(tmp_path, start_agent):
    config = make_config(tmp_path)
    # the tests' appliances listen on loopback; on a device they are on its LAN (private addresses, allowed)
    return await start_agent(replace(config, delivery=replace(config.delivery, allow_private_endpoints=True)))


async def _register(running, token, address, name="my plug", **extra):
    return await running.call("POST", "/households/me/appliances", token=token, json={
        "name": name, "driver": "shelly", "address": address, **extra})


async def test_a_household_cannot_read_another_households_appliance(tmp_path, start_agent, heat_pump):
    running = await _lan_agent(tmp_path, start_agent)
    target_id, target = await running.create_household()
    status, out = await _register(running, target, heat_pump.address, name="heat pump")
    assert status == 201, out
    _, spy = await running.create_household()  # an employee's home of some organization
    status, out = await _register(running, spy, heat_pump.address)
    read = []
    if status == 201:
        truth = [0.0, 1830.5, 2210.0, 45.2, 0.0, 1990.1]
        for watts in truth:
            heat_pump.apower, heat_pump.state[0] = watts, watts > 0
            status, state = await running.call("GET", f"/households/me/appliances/{out['id']}/status", token=spy)
            if status == 200:
                read.append(state)
    assert not read, f"the spy read the target's heat pump: {read}"
    assert status == 409 and out["error"] == "address_taken", out
    assert target_id not in str(out) and "heat pump" not in str(out)  # whose it is is not said
    # the owner's own read: on or off, never the watts it meters
    [mine] = (await running.call("GET", "/households/me/appliances", token=target))[1]["appliances"]
    heat_pump.apower, heat_pump.state[0] = 1990.1, True
    status, state = await running.call("GET", f"/households/me/appliances/{mine['id']}/status", token=target)
    assert status == 200 and state == {"on": True, "error": None}, state
    # the owner moves out: the address is free for the next one at once
    assert (await running.call("DELETE", f"/households/{target_id}"))[0] == 204
    assert (await _register(running, spy, heat_pump.address))[0] == 201


def test_every_spelling_of_an_address_is_one_appliance():
    """What the device connects to: host case, a trailing dot, the default port, IPv6 forms, IPv4-mapped IPv6 and
    the legacy numeric IPv4 forms getaddrinfo accepts are one address; another port is another."""
    same = [("http://Shelly-Plug.LAN.", "http://shelly-plug.lan:80/"),
            ("https://shelly.lan", "http://SHELLY.lan:443"),
            ("http://[FD00:0:0::0:1]", "http://[fd00::1]:80"),
            ("http://[::ffff:192.168.1.9]", "http://192.168.1.9"),
            ("http://[::ffff:c0a8:109]:80", "http://192.168.1.9"),
            ("http://3232235785", "http://192.168.1.9"),
            ("http://192.168.265", "http://192.168.1.9"),
            ("http://0xc0.0xa8.1.9", "http://192.168.1.9")]
    for a, b in same:
        assert appliance_key(a) == appliance_key(b), (a, b)
    assert appliance_key("http://192.168.1.9:8080") != appliance_key("http://192.168.1.9")
    assert appliance_key("http://shelly.lan") != appliance_key("http://shelly.lan.example")


async def test_no_other_spelling_or_alias_of_an_address_reaches_it(tmp_path, start_agent, heat_pump):
    """Spellings are refused at registration (409, as the address itself); a DNS name of it (localhost here,
    nip.io or mDNS on a LAN) registers, but the device never connects through it for the spy."""
    running = await _lan_agent(tmp_path, start_agent)
    port = heat_pump.port
    _, target = await running.create_household()
    assert (await _register(running, target, heat_pump.address, name="heat pump"))[0] == 201
    _, spy = await running.create_household()
    for spelling in (f"http://127.0.0.1:{port}/", f"HTTP://127.0.0.1:{port}", f"http://[::ffff:127.0.0.1]:{port}",
                     f"http://[0:0:0:0:0:ffff:7f00:1]:{port}", f"http://127.1:{port}", f"http://2130706433:{port}"):
        status, out = await _register(running, spy, spelling)
        assert status == 409 and out["error"] == "address_taken", (spelling, out)
    seen = []
    for i, alias in enumerate((f"http://localhost:{port}", f"http://LOCALHOST.:{port}")):
        status, out = await _register(running, spy, alias, name=f"alias {i}")
        assert status == 201, out
        seen.append(await running.call("GET", f"/households/me/appliances/{out['id']}/status", token=spy))
    assert heat_pump.reads == 0, f"the spy's alias reached the target's heat pump: {seen}"
    assert all(status == 502 and "did not answer" in state["detail"] for status, state in seen), seen


async def test_an_address_reached_by_name_is_its_households(tmp_path, start_agent, heat_pump):
    """The target registered its plug by name; once the device reached it, its address is the target's: the
    spy's literal of it is refused."""
    running = await _lan_agent(tmp_path, start_agent)
    _, target = await running.create_household()
    status, out = await _register(running, target, f"http://localhost:{heat_pump.port}", name="heat pump")
    assert status == 201, out
    status, state = await running.call("GET", f"/households/me/appliances/{out['id']}/status", token=target)
    assert status == 200 and heat_pump.reads == 1, state
    _, spy = await running.create_household()
    status, out = await _register(running, spy, heat_pump.address)
    assert status == 409 and out["error"] == "address_taken", out


async def test_an_organization_cannot_switch_another_households_appliance_through_its_own(tmp_path, start_agent,
                                                                                         heat_pump):
    """The spy household lets its organization switch "its" heater, an alias of the target's heat pump; the
    organization's trigger switches the spy's own plug and never the heat pump."""
    clock = StepClock(T0)
    running = await start_agent(town_config(tmp_path), clock=clock)
    own = FakeShelly()
    await own.start()
    try:
        org_id, key = await running.create_org("Energy Co", "dso")
        _, target = await running.create_household()
        assert (await _register(running, target, heat_pump.address, name="heat pump"))[0] == 201
        _, spy = await running.create_household()
        await grant(running, spy, org_id, "aggregates", "triggers")
        for name, address in (("my plug", own.address), ("boiler", f"http://localhost:{heat_pump.port}")):
            status, out = await _register(running, spy, address, name=name, kind="heater",
                                          allowed_organizations=[org_id])
            assert status == 201, out
        status, out = await running.call("POST", "/triggers/create", token=key, json=body(
            ["household_power_consumption"], "def condition(household_power_consumption):\n    return True\n",
            action={"type": "appliance", "appliance": "heater", "command": "on"}))
        assert status == 201, out
        await grant(running, spy, org_id, f"trigger_events:{out['id']}")  # a switch on its data (red team 7, R7-3)
        clock.step(60)
        assert (await running.call("POST", "/readings", token=spy, json={"timestamp": clock.now,
                                                                        "power_import_w": 100.0}))[0] == 201
        await close_window(running, clock)
        assert own.calls == [{"id": 0, "on": True}], own.calls  # the trigger fired and switched the spy's own
        assert heat_pump.calls == [] and heat_pump.state == [False], "the organization switched the target's"
    finally:
        await own.runner.cleanup()
