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
from aiohttp import web

from tests.helpers.appliances import FakeShelly, FakeTasmota
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
        switched = []
        for on in (True, False) if status == 200 else ():  # an endpoint refused: the attack fails here
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


class FirmwareTasmota(FakeTasmota):
    """Tasmota's web server registers `/cm` for every method (ESP8266WebServer's `on` is HTTP_ANY) and reads `cmnd`
    from the query string whatever the method: a POST runs the command as a GET does."""

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_post("/cm", self.command)


@pytest.mark.xfail(strict=True, reason="red team 9 R9b-3: an organization's webhook endpoint at a household's "
                   "Tasmota relay switches it, no household involved (webhooks use the webhook policy, not the "
                   "appliance bindings: agent/triggers/runner.py _webhook, actions.web_session)")
async def test_an_organization_switches_no_relay_it_was_not_allowed(town):  # noqa: F811
    """R9b-3, R9b-2's variant with no household at all: a Tasmota relay takes its command in the URL
    (`/cm?cmnd=Power%20Off`), and its firmware runs it on a POST as on a GET (`FirmwareTasmota`), so the body does
    not matter. The organization uploads a condition on the hour only (`time_of_day_h`: no household's data, no
    consent, no release needed) with a webhook to `http://<the household's relay>/cm?cmnd=Power%20On` (then Off):
    the device POSTs there at the window's release moment (agent/triggers/runner.py `_webhook`, on
    `actions.web_session`: the webhook policy, no appliance binding). Measured: the household's relay, registered
    and bound to it and allowing no organization, switched on and then off, 2 of 2. A subscription's endpoint
    (`POST /data/subscribe`) at that URL would switch it every window the same way, and its delivery errors (HTTP
    status or connection refused) probe which addresses answer. Same operator settings as R9b-2 (`allow_http`;
    `allow_private_endpoints` for a private address). Fix: R9b-2's (the endpoints' resolver refuses every address
    registered or reached for an appliance; endpoints stay off the households' LANs)."""
    t = await town(1)
    (_, target), = t.households
    relay = FirmwareTasmota()
    await relay.start()
    try:
        status, out = await t.running.call("POST", "/households/me/appliances", token=target, json={
            "name": "boiler", "kind": "heater", "driver": "tasmota", "address": relay.address,
            "allowed_organizations": []})
        assert status == 201, out
        status, out = await t.running.call("GET", f"/households/me/appliances/{out['id']}/status", token=target)
        assert status == 200 and out["on"] is False, out
        switched = []
        for command, expected in (("On", "ON"), ("Off", "OFF")):
            # a condition on the hour only: no household's data, no consent, no release needed
            status, trig = await t.create(body(["time_of_day_h"], "def condition(time_of_day_h):\n    return True\n",
                                               action={"type": "webhook",
                                                       "endpoint": f"{relay.address}/cm?cmnd=Power%20{command}"}))
            if status != 201:  # the endpoint refused: the attack fails here
                assert status == 422, trig
                continue
            ran = len(relay.raw_queries)
            await t.window()
            switched.append(relay.state[0] == expected and len(relay.raw_queries) > ran)
            assert (await t.running.call("DELETE", f"/triggers/{trig['id']}", token=t.org_key))[0] == 204
            t.clock.step(60)
        print(f"the household's relay switched by the organization's webhooks: {switched} "
              f"(commands it ran: {relay.raw_queries})")
        assert not any(switched), f"an organization switched a household's relay with its webhooks: {switched}"
    finally:
        await relay.runner.cleanup()


@pytest.mark.xfail(strict=True, reason="red team 9 R9b-3 (a household alone): a household's test notification to "
                   "another household's Tasmota switches it (agent/api/household_actions.py send_test_notification "
                   "uses the webhook policy, not the appliance bindings)")
async def test_a_household_switches_no_relay_of_another(town):  # noqa: F811
    """R9b-3 with neither an organization nor a trigger: the spy household sets its notification endpoint to
    `http://<the target's Tasmota>/cm?cmnd=Power%20Toggle` and presses "send a test notification"
    (`POST /households/me/notify/test`, or the devices page's button): the device POSTs there at once, as often as
    the spy likes, and answers the relay's HTTP status. Measured: the target's relay toggled on each of 3 tests."""
    t = await town(2)
    (_, target), (_, spy) = t.households
    relay = FirmwareTasmota()
    await relay.start()
    try:
        status, out = await t.running.call("POST", "/households/me/appliances", token=target, json={
            "name": "boiler", "driver": "tasmota", "address": relay.address, "allowed_organizations": []})
        assert status == 201, out
        status, out = await t.running.call("PUT", "/households/me/notify", token=spy,
                                           json={"url": f"{relay.address}/cm?cmnd=Power%20Toggle"})
        states = []
        for _ in range(3) if status == 200 else ():  # an endpoint refused: the attack fails here
            status, out = await t.running.call("POST", "/households/me/notify/test", token=spy)
            states.append(relay.state[0])
        print(f"the target's relay after each of the spy's test notifications: {states}; last answer {status} {out}")
        assert not relay.raw_queries, (f"another household's test notifications switched the target's relay: {states} "
                                       f"({relay.raw_queries})")
    finally:
        await relay.runner.cleanup()
