"""An appliance is bound by its relay's hardware address (red team 8, R8-1), not only by the address it is reached at.

The relays are real aiohttp servers on 127.0.0.1 (tests/helpers/appliances.py); two of them given one `mac` are one
relay reached at two ports (a port forward, as its IPv4 and IPv6 addresses are in tests/test_redteam8_appliances.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.triggers.actions import ApplianceBindings
from tests.helpers.agent import make_config
from tests.helpers.appliances import FakeTasmota, MeteringShelly

TAKEN = "this address is another household's appliance on this device"


def _private(tmp_path):
    config = make_config(tmp_path)
    return replace(config, delivery=replace(config.delivery, allow_private_endpoints=True))


async def _register(running, token, address, driver="shelly", name="my plug"):
    return await running.call("POST", "/households/me/appliances", token=token, json={
        "name": name, "driver": driver, "address": address})


async def _status(running, token, appliance_id):
    return await running.call("GET", f"/households/me/appliances/{appliance_id}/status", token=token)


@pytest.fixture
async def forwarded():
    """One Tasmota relay at two ports (its own, and a port forward to it)."""
    relay = FakeTasmota()
    forward = FakeTasmota(mac=relay.mac)
    await relay.start()
    await forward.start()
    yield relay, forward
    await relay.runner.cleanup()
    await forward.runner.cleanup()


async def test_one_relay_at_two_ports_is_one_households_and_a_restart_keeps_it(tmp_path, start_agent, forwarded):
    relay, forward = forwarded
    config = _private(tmp_path)
    running = await start_agent(config)
    target_id, target = await running.create_household()
    status, mine = await _register(running, target, relay.address, driver="tasmota", name="freezer")
    assert status == 201, mine
    _, spy = await running.create_household()
    status, out = await _register(running, spy, forward.address, driver="tasmota")
    assert (status, out["error"], out["detail"]) == (409, "address_taken", TAKEN), out
    assert target_id not in str(out) and "freezer" not in str(out)
    await running.http.close()
    await running.agent.stop()
    running = await start_agent(config)  # the binding is on the disk with the appliance
    _, other = await running.create_household()
    status, out = await _register(running, other, forward.address, driver="tasmota")
    assert (status, out["error"]) == (409, "address_taken"), out
    status, state = await _status(running, target, mine["id"])
    assert status == 200 and state["on"] is False, state


async def test_a_relay_first_reached_after_registration_is_bound_then(tmp_path, start_agent, forwarded):
    relay, forward = forwarded
    running = await start_agent(_private(tmp_path))
    _, target = await running.create_household()
    mac = relay.mac
    relay.mac = forward.mac = "unknown"  # not answering with an identity at the registrations (off, say)
    status, mine = await _register(running, target, relay.address, driver="tasmota")
    assert status == 201, mine
    _, spy = await running.create_household()
    status, theirs = await _register(running, spy, forward.address, driver="tasmota")
    assert status == 201, theirs  # neither is bound yet: first come
    relay.mac = forward.mac = mac
    assert (await _status(running, target, mine["id"]))[0] == 200  # the first reach binds it to the target
    await running.http.close()
    await running.agent.stop()
    running = await start_agent(_private(tmp_path))  # and that binding is on the disk too
    status, out = await _status(running, spy, theirs["id"])
    assert status == 502 and out["error"] == "appliance_unreachable", out
    assert forward.raw_queries == [], "the spy's registration reached the target's relay after it was bound"


async def test_an_address_that_answers_with_another_relay_or_none_is_not_read(tmp_path, start_agent):
    relay = MeteringShelly()
    await relay.start()
    try:
        running = await start_agent(_private(tmp_path))
        _, household = await running.create_household()
        status, mine = await _register(running, household, relay.address)
        assert status == 201, mine
        assert (await _status(running, household, mine["id"]))[0] == 200
        reads = relay.reads
        relay.mac = "24:0A:C4:00:00:99"  # its lease moved to another relay (a neighbour's)
        status, out = await _status(running, household, mine["id"])
        assert (status, out["error"]) == (502, "appliance_unreachable"), out
        relay.mac = ""  # a relay that reports no hardware address
        status, out = await _status(running, household, mine["id"])
        assert (status, out["error"]) == (502, "appliance_unreachable"), out
        assert relay.reads == reads, "the relay was read though it was not the one bound"
    finally:
        await relay.runner.cleanup()


def test_the_connections_of_one_request_go_to_one_address():
    """The identity read and the request that follows it reach one address: a name that resolves elsewhere for the
    second connection (rebinding) is refused."""
    bindings = ApplianceBindings({}, lambda household_id: True, None)
    appliance = {"id": "app_1", "household_id": "hh_1", "address": "http://plug.lan"}
    with bindings.acting(appliance):
        assert bindings.connect_allowed("127.0.0.1", 80)
        assert bindings.connect_allowed("127.0.0.1", 80)
        assert not bindings.connect_allowed("::1", 80)
        assert not bindings.connect_allowed("127.0.0.1", 8080)
    with bindings.acting(appliance):
        assert bindings.connect_allowed("::1", 80)
