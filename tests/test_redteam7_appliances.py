"""Red team 7, R7-3: an appliance switch on a household condition is a per-household channel the disclosure bound
does not count.

PRIVACY.md ("Triggers", "The bound"): the only per-household channel to an organization is a webhook event, sent
only with the household's consent to that trigger's events (`trigger_events:<id>`), at most N = 24 a day per
organization, each in its disclosure log (~394 bits a day at most). Appliance actions of household conditions "go to
the household's side only". But the appliance is switched by the organization's own condition, with the
organization's command, in the window the condition was true for that household (agent/triggers/runner.py,
`_evaluate_window` -> `_plan` -> `_act` -> `_switch`): no trigger_events consent, no daily cap (`_plan` applies
`event_allowed` to webhooks only), no disclosure entry. An organization that sees the appliance (the relay or
charger it supplies for its demand-response service and monitors, as red team 6's lane test assumed for an
organization's own households) reads the condition's bit for that household every interval: one trigger "on if
power > x", one "off otherwise", and the relay's state is the household's condition, window by window, at a noisy
level.
"""

from __future__ import annotations

from tests.helpers.appliances import FakeShelly
from tests.helpers.triggers import body, close_window, town  # noqa: F401  (fixture)

QUARTER = 900
SECRET_W = [650.0, 1800.0, 2400.0, 300.0, 1200.0, 90.0]  # the target's consumption, quarter by quarter


async def test_an_appliance_the_organization_sees_carries_no_more_than_the_disclosure_bound(town):  # noqa: F811
    t = await town(3, level="supplier")
    target, *others = t.households
    heater = FakeShelly()  # the organization's relay at the target's heat pump (it reads its state, as its product)
    await heater.start()
    try:
        status, out = await t.running.call("POST", "/households/me/appliances", token=target[1], json={
            "name": "heat pump", "kind": "heater", "driver": "shelly", "address": heater.address,
            "allowed_organizations": [t.org_id]})
        assert status == 201, out
        for test, command in (("> 1000", "on"), ("<= 1000", "off")):
            status, out = await t.create(body(
                ["household_power_consumption"], f"def condition(household_power_consumption):\n"
                f"    return household_power_consumption {test}\n", interval=QUARTER, window="15m",
                action={"type": "appliance", "appliance": "heater", "command": command}))
            assert status == 201, out
        t.clock.now = (t.clock.now // QUARTER + 1) * QUARTER + 1
        read = []
        for watts in SECRET_W:
            await t.window(QUARTER, values=[{"power_import_w": watts}, *[{"power_import_w": 500.0}] * len(others)])
            read.append(heater.state[0])
            t.clock.now = (t.clock.now // QUARTER + 1) * QUARTER + 1
        truth = [w > 1000 for w in SECRET_W]
        status, consents = await t.running.call("GET", "/households/me/consents", token=target[1])
        assert status == 200 and not any(c["service"].startswith("trigger_events") for c in consents["consents"])
        recovered = sum(r == b for r, b in zip(read, truth))
        # The bound's intent: without the household's consent to a trigger's events, nothing per household.
        assert recovered < len(truth), (f"the relay's state, quarter by quarter, is the target's condition: "
                                        f"{recovered}/{len(truth)} (read {read}, truth {truth})")
    finally:
        await heater.runner.cleanup()
