"""Red team 9, R9b-2: a household's notification endpoint reaches another household's relay, outside the bindings.

PRIVACY.md ("A household's own things on the device"): once you register an appliance "the device never connects to
it for anyone else ... So no organization can switch it through another household's registration: only through
yours, if you let it"; R6-9 and R8-1 bind the address and the relay's MAC. But those checks guard only the
connections made *for an appliance* (agent/triggers/actions.py `ApplianceBindings`, `LanResolver`, `lan_session`).
Every other request the device sends goes through the webhook policy alone (agent/delivery/targets.py
`PolicyResolver`: an address check, no binding): a household's notification endpoint (`PUT /households/me/notify`,
agent/triggers/runner.py `_notify_endpoint`, drivers/notify.py `send`) may be the relay's own switch URL, and an
`ntfy` endpoint's body is the notification's content, which the organization wrote. So a household of the
organization's own (or any household with a willing organization) sets its endpoint to
`http://<the target's relay>/rpc/Switch.Set` (kind ntfy); the organization's trigger notifies it with the content
`{"id": 0, "on": true}`; the device POSTs exactly the Shelly Gen2 switch request its own driver sends
(drivers/appliances/shelly.py `switch`: POST /rpc/Switch.Set with that JSON) to the target's relay, which is bound to
the target, whose consents and `allowed_organizations` say nothing of this organization.

Needs the operator to allow plain-http endpoints (`[delivery] allow_http`; a Shelly serves no https) and, for a
relay on a private LAN address, `allow_private_endpoints` (a household's Home Assistant endpoint is the usual reason
to set both); a relay's global IPv6 address (R8-1's case) passes the default address check. The Shelly is the
project's own model of one (tests/helpers/appliances.py: it reads the body as JSON whatever its content type, as the
RPC server does). Variant not tested here: a Tasmota relay's command is in the URL (`/cm?cmnd=Power%20Off`), so
if it takes the command on a POST as it does on a GET, any endpoint works with any body: an organization's own
trigger webhook or subscription endpoint at that URL, with no household at all.

Measured: the target's relay, registered and bound to the target (which allows no organization), switched on and
then off by the organization's two notification triggers, 2 of 2, through the spy household's endpoint.

Suggested fix: requests to notification endpoints, webhooks and subscription endpoints also refuse the addresses
registered or reached for appliances (`ApplianceBindings.taken` for any household, from the resolver of
`web_session`), and, better, never an address on a household's LAN: with `allow_private_endpoints` unset, keep
endpoints public-only and have it not cover the appliances' address space; or let only the household's own
appliances' rule (its own LAN) apply to its own endpoint.
"""

from __future__ import annotations

import pytest

from tests.helpers.appliances import FakeShelly
from tests.helpers.triggers import body, town  # noqa: F401  (fixture)


@pytest.mark.xfail(strict=True, reason="red team 9 R9b-2: a household's ntfy endpoint at another household's relay "
                   "switches it with the organization's notification content (agent/triggers/runner.py "
                   "_notify_endpoint uses the webhook policy, not the appliance bindings)")
async def test_no_one_switches_a_households_relay_but_through_its_own_registration(town):  # noqa: F811
    t = await town(2)
    (target_id, target), (spy_id, spy) = t.households
    heater = FakeShelly()
    await heater.start()
    try:
        # The target's heat pump relay: registered, bound to the target, no organization allowed to switch it.
        status, out = await t.running.call("POST", "/households/me/appliances", token=target, json={
            "name": "heat pump", "kind": "heater", "driver": "shelly", "address": heater.address,
            "allowed_organizations": []})
        assert status == 201, out
        # Another household's registration of it is refused (R6-9, R8-1): the relay is the target's.
        status, out = await t.running.call("POST", "/households/me/appliances", token=spy, json={
            "name": "x", "driver": "shelly", "address": heater.address})
        assert status == 409 and out["error"] == "address_taken", out
        # The spy's notification endpoint: the relay's switch URL, as an ntfy topic (the body is the content).
        status, out = await t.running.call("PUT", "/households/me/notify", token=spy,
                                           json={"url": heater.address + "/rpc/Switch.Set", "kind": "ntfy"})
        assert status == 200, out
        switched = []
        for on in (True, False):
            content = '{"id": 0, "on": %s}' % ("true" if on else "false")
            status, trig = await t.create(body(
                ["household_power_consumption"], "def condition(household_power_consumption):\n    return True\n",
                interval=60, action={"type": "notification", "content": content}))
            assert status == 201, trig
            await t.window(values=[{"power_import_w": 500.0}, {"power_import_w": 500.0}])
            switched.append(heater.state[0] == on and bool(heater.calls))
            status, _ = await t.running.call("DELETE", f"/triggers/{trig['id']}", token=t.org_key)
            assert status == 204
            t.clock.step(60)
        print(f"the target's relay switched by the organization through the spy's endpoint: {switched}, "
              f"requests it got: {heater.calls}")
        assert not any(switched), (f"another household's endpoint switched the target's relay: {switched} "
                                   f"({heater.calls})")
    finally:
        await heater.runner.cleanup()
