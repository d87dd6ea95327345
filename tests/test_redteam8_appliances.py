"""Red team 8: an appliance is bound by its address, and one relay has more than one.

R6-9's binding (agent/triggers/actions.py, `ApplianceBindings`, `appliance_key`) makes an address one household's
in every spelling and every DNS alias the device connects through. But a relay on a household's LAN is reachable
at more than one address: a Shelly Gen2+ or a Tasmota with IPv6 has its IPv4 lease and its IPv6 (ULA or global,
SLAAC) addresses, all allowed appliance addresses, and a DHCP lease that changes gives it a new IPv4 the old
registration does not cover. Nothing binds the *device*: a second household registers the relay's other address,
reads its state whenever it likes and lets its organization switch it.

Here the relay is a real aiohttp server listening on two loopback addresses, 127.0.0.1 and ::1 (as a dual-stack
relay listens on its IPv4 and IPv6 address); the target registers the IPv4 one, as the Shelly app shows it.
Closed (R8-1) by binding the relay's MAC too (`ApplianceBindings.reach`, read at registration and before every
request; tests/test_appliance_identity.py for ports, restarts, leases and relays that report none).
"""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest
from aiohttp import web

from tests.helpers.agent import grant, make_config
from tests.helpers.appliances import MeteringShelly
from tests.helpers.clock import StepClock, T0
from tests.helpers.triggers import body, close_window, town_config


def _loopback_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _loopback_ipv6(), reason="the relay's second address is ::1: this host's "
                                "loopback has no IPv6 (the port-forward case is tests/test_appliance_identity.py)")


class DualStackShelly(MeteringShelly):
    """One relay, two addresses: the same app on 127.0.0.1 and on ::1, one port."""

    async def start(self) -> None:
        await super().start()
        await web.TCPSite(self.runner, "::1", self.port).start()

    @property
    def other_address(self) -> str:
        return f"http://[::1]:{self.port}"


@pytest.fixture
async def relay():
    device = DualStackShelly()
    await device.start()
    yield device
    await device.runner.cleanup()


async def _register(running, token, address, name="my plug", **extra):
    return await running.call("POST", "/households/me/appliances", token=token, json={
        "name": name, "driver": "shelly", "address": address, **extra})


@pytest.mark.parametrize("by_name", [False, True], ids=["by-address", "by-name"])
async def test_another_address_of_the_targets_relay_is_not_the_targets(tmp_path, start_agent, relay, by_name):
    """The target registers its relay's IPv4 address, or its name (localhost here: 127.0.0.1 and ::1, as an mDNS
    name of a dual-stack relay), and reads it once (so the device has reached it)."""
    config = make_config(tmp_path)
    running = await start_agent(replace(config, delivery=replace(config.delivery, allow_private_endpoints=True)))
    _, target = await running.create_household()
    mine = f"http://localhost:{relay.port}" if by_name else relay.address
    assert (await _register(running, target, mine, name="freezer"))[0] == 201
    [mine] = (await running.call("GET", "/households/me/appliances", token=target))[1]["appliances"]
    assert (await running.call("GET", f"/households/me/appliances/{mine['id']}/status", token=target))[0] == 200
    _, spy = await running.create_household()
    status, out = await _register(running, spy, relay.other_address)
    read = []
    if status == 201:
        truth = [True, False, True, True, False, True]
        for on in truth:
            relay.state[0] = on
            status, state = await running.call("GET", f"/households/me/appliances/{out['id']}/status", token=spy)
            if status == 200:
                read.append(state["on"] == on)
    # measured on main: 6 of 6 of the target's freezer states read by the spy, whenever it asks
    assert not read, f"the spy read the target's relay through its other address: {sum(read)} of 6 states"
    assert status == 409 and out["error"] == "address_taken", out


async def test_an_organization_cannot_switch_the_targets_relay_through_its_other_address(tmp_path, start_agent,
                                                                                         relay):
    clock = StepClock(T0)
    running = await start_agent(town_config(tmp_path), clock=clock)
    org_id, key = await running.create_org("Energy Co", "dso")
    _, target = await running.create_household()
    assert (await _register(running, target, relay.address, name="freezer"))[0] == 201
    _, spy = await running.create_household()
    await grant(running, spy, org_id, "aggregates", "triggers")
    status, out = await _register(running, spy, relay.other_address, name="boiler", kind="heater",
                                  allowed_organizations=[org_id])
    status, out = await running.call("POST", "/triggers/create", token=key, json=body(
        ["household_power_consumption"], "def condition(household_power_consumption):\n    return True\n",
        action={"type": "appliance", "appliance": "heater", "command": "on"}))
    assert status == 201, out
    # the spy consents to the switches of a condition on its data (R7-3 needs it; the spy is the organization's)
    await grant(running, spy, org_id, f"trigger_events:{out['id']}")
    clock.step(60)
    assert (await running.call("POST", "/readings", token=spy, json={"timestamp": clock.now,
                                                                    "power_import_w": 100.0}))[0] == 201
    await close_window(running, clock)
    # measured on main: the target's relay was switched on by the spy's organization
    assert relay.calls == [] and relay.state == [False], f"the organization switched the target's: {relay.calls}"
