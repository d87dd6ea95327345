"""Red team 9, R9b-1: what a leaked household token set up outlives the token's rotation.

PRIVACY.md ("A household's sign-ins and live pages"): against "whoever holds a household's old token", rotating it
(`POST /households/{id}/token`) ends every session, link and live page at once, so that "whoever had the old token
or an old link keeps nothing, not even the next value of the live page". And it is the recipe PRIVACY.md gives for
a household whose (organization-supplied) datalogger held its whole token ("make a datalogger token ... then rotate
the household's token"). But the rotation ends only the *ways in*; what the token's holder set up with it stays and
keeps sending it the household's data:

1. its notification endpoint (`PUT /households/me/notify`, the thief's URL; the answer gave it the webhook secret,
   so the messages even verify): every notification of every organization's condition on the household's data
   goes there after the rotation (agent/triggers/runner.py `_notify_all` -> `_notify_endpoint`, reading
   `HouseholdStore.endpoints`; agent/registry.py `_rotate_household_token` ends sessions and links only, through
   `token_ended`);
2. the consents it granted (`PUT /households/me/consents/{org}/triggers` and `.../trigger_events:<its trigger>`
   for its own organization's trigger "power > 1 kW", with a webhook): the organization keeps receiving an event,
   under the household's pseudonym, in every window the condition holds for it, after the rotation.

Measured (this test, a supplier level: noise does not help, the channel is per household): after the rotation the
thief's endpoint got the notification "your consumption is above 1 kW" in exactly the quarter-hours it was (4 of 4
quarters' bits right: [True, False, True, False]), and its organization's webhook got the same 4 of 4 bits under the
household's pseudonym; `GET /households/me/notify` with the new token still answers the thief's URL as the
household's own (nothing says which token set it).

Suggested fix: a rotation (the operator's answer to a leak) also removes the household's notification endpoint and
revokes what the old token changed that the household has not confirmed since (consents granted, appliances
registered or their `allowed_organizations`), or at least removes the endpoint and suspends every consent granted
with the old token since its last rotation until the household confirms it on its pages; the consent history could
record which token generation made each change so the pages can show it. PRIVACY.md should say what rotation does
not undo.
"""

from __future__ import annotations

import pytest

from tests.helpers.receiver import Receiver
from tests.helpers.triggers import body, town  # noqa: F401  (fixture)

QUARTER = 900
SECRET_W = [1800.0, 300.0, 2400.0, 90.0]  # the target's consumption, quarter by quarter, after the rotation


@pytest.mark.xfail(strict=True, reason="red team 9 R9b-1: a rotated token's holder keeps the notification endpoint "
                   "and the consents it set (agent/registry.py _rotate_household_token ends sessions/links only)")
async def test_a_rotated_token_leaves_its_holder_nothing_of_the_household(town):  # noqa: F811
    t = await town(3, level="supplier")
    (target_id, leaked), *others = t.households
    thief_endpoint, thief_hooks = Receiver(), Receiver()
    await thief_endpoint.start()
    await thief_hooks.start()
    try:
        # The legitimate organization's household condition: a notification to the household only.
        status, out = await t.create(body(
            ["household_power_consumption"],
            "def condition(household_power_consumption):\n    return household_power_consumption > 1000\n",
            interval=QUARTER, window="15m",
            action={"type": "notification", "content": "your consumption is above 1 kW", "title": "Peak"}))
        assert status == 201, out
        # The thief's organization (holding the leaked token: a former lodger's employer, the supplier of a legacy
        # datalogger) and its own household condition with a webhook.
        thief_org, thief_key = await t.running.create_org("Thief Co", "supplier")
        status, trig = await t.create(body(
            ["household_power_consumption"],
            "def condition(household_power_consumption):\n    return household_power_consumption > 1000\n",
            interval=QUARTER, window="15m", action={"type": "webhook", "endpoint": thief_hooks.url},
            description="peak alerts"), key=thief_key)
        assert status == 201, trig
        # With the leaked token: the endpoint, and the consents, set up once.
        status, out = await t.running.call("PUT", "/households/me/notify", token=leaked,
                                           json={"url": thief_endpoint.url})
        assert status == 200 and out["secret"], out
        for service in ("triggers", f"trigger_events:{trig['id']}"):
            status, out = await t.running.call("PUT", f"/households/me/consents/{thief_org}/{service}", token=leaked)
            assert status == 200, out

        # The household finds out; the operator rotates its token.
        status, out = await t.running.call("POST", f"/households/{target_id}/token")
        assert status == 200, out
        fresh = out["token"]
        t.households[0] = (target_id, fresh)  # its readings from now on (its datalogger, or itself)
        assert (await t.running.call("GET", "/households/me", token=leaked))[0] == 401
        thief_endpoint.received.clear()
        thief_hooks.received.clear()

        t.clock.now = (t.clock.now // QUARTER + 1) * QUARTER + 1
        notified, evented = [], []
        for watts in SECRET_W:
            sent = len(thief_endpoint.received), len(thief_hooks.received)
            await t.window(QUARTER, values=[{"power_import_w": watts}, *[{"power_import_w": 500.0}] * len(others)])
            notified.append(len(thief_endpoint.received) > sent[0])
            evented.append(len(thief_hooks.received) > sent[1])
            t.clock.now = (t.clock.now // QUARTER + 1) * QUARTER + 1
        truth = [w > 1000 for w in SECRET_W]
        status, mine = await t.running.call("GET", "/households/me/notify", token=fresh)
        print(f"after the rotation: the thief's endpoint got {notified}, its webhook {evented}, truth {truth}; "
              f"the household's endpoint is still {mine.get('url') if status == 200 else None}")
        assert not any(notified), (f"the thief's endpoint still gets the household's notifications after the "
                                   f"rotation: {notified} (truth {truth})")
        assert not any(evented), (f"the consents granted with the leaked token still send the thief's organization "
                                  f"the household's condition after the rotation: {evented} (truth {truth})")
    finally:
        await thief_endpoint.stop()
        await thief_hooks.stop()
