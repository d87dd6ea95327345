"""Red team 9a (session 8), R9a-1: the anonymized withholding rule tells an organization when a household of its
cohort changed its `anonymized_data` consent to *another* organization.

The rule (agent/api/anonymized.py, `_too_close`) withholds a period from an organization whenever some other
organization's cohort in that period differs from its own by 1..k-1 households (R6-7's defence against two
colluding organizations differencing their releases), and says so: the day's report lists them
(`report.days[].withheld_periods`), and those periods simply have no rows. So whether a period of A's release is
withheld is a function of the households' consents to other organizations, which A does not hold: PRIVACY.md
states the principle for the noisy levels after R7-1 ("No count, refusal, field or shared-answer choice depends
on [...]: each is a function of the consents *to that organization*") and lists for
anonymized data only that withholding depends on who *sent data* (presence).

Request sequence (test below): supplier A (the attacker's key) and supplier C (a competitor, not colluding).
15 households consent `anonymized_data` to both and send readings every hour. The target revokes its consent to
C at 10:00 (PUT/DELETE /households/me/consents/C/anonymized_data, its own token) and grants it again at 14:00.
After the day, A asks `GET /data/anonymized?from=DAY&to=DAY+1d` once. Recovered: the day's `withheld_periods` is
exactly 10:00, 11:00, 12:00, 13:00 (4 of 4 hours, none wrong), and those hours have no rows: the hours in which a
household of A's cohort did not consent to C, i.e. when it changed its consent to someone else. Where A knows the
households (its customers), or the others' consents to C are steady, that is the target's consent history with C.
With households of its own that consent to C (not to A), A also counts (second test): 15 households consent to A,
12 of them to C; A's 9 (k - 1) own households grant C one an hour; A's release has no rows in hours 0-6 exactly,
and k - 1 - 6 = 3: how many of A's households do not consent to C, 3 of 3, from one day, assuming nothing.

Code: agent/api/anonymized.py `_too_close` (compares with every other organization's cohort), `keyed_day_release`
(withheld periods emptied and reported).
Suggested fix: any withholding decided from other organizations' cohorts says something of them to each, so:
(1) drop the cross-organization rule and keep R6-7 closed another way, e.g. release an unlinked level's period
only over classes whose households are the same in every unlinked organization's cohort (still reads the others'),
or by noise (k = 0 for the level, the noisy aggregates), which is the only rule that reads nobody's consent; or
(2) at the least, state it in PRIVACY.md ("an organization learns in which periods another organization's
anonymized cohort differs from its own by fewer than k households, e.g. when one of its households changed its
consent to another organization") and drop `withheld_periods` from the answer (the empty periods still say it).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from agent.api.anonymized import SERVICE, SETTLE_S
from drivers.reading import Reading, iso
from tests.helpers.agent import make_config
from tests.helpers.clock import StepClock
from tests.helpers.privacy import DAY

HOURS = [DAY + h * 3600 for h in range(24)]
NOT_TO_C = {10, 11, 12, 13}  # the hours the target did not consent to C: what A wants


def reading(meter: str, moment: float, watts: float) -> Reading:
    when = datetime.fromtimestamp(moment, timezone.utc)
    return Reading(meter_id=meter, timestamp=when, received_at=when, power_import_w=watts, power_export_w=0.0,
                   voltage_l1_v=230.0, current_l1_a=16.0, gas_m3=1000.0)


@pytest.mark.xfail(strict=True, reason="red team 9a R9a-1: the anonymized withholding rule (agent/api/anonymized.py "
                   "_too_close) withholds and reports the periods in which another organization's cohort differs "
                   "from the asker's by under k: an organization reads when a household changed its consent to "
                   "another organization, 4 of 4 hours")
async def test_withheld_periods_do_not_say_when_a_household_changed_its_consent_to_another_organization(
        tmp_path, start_agent):
    clock = StepClock(DAY - 600)
    running = await start_agent(make_config(tmp_path), clock=clock)
    a_id, a_key = await running.create_org("Supplier A", "supplier")
    c_id, _ = await running.create_org("Supplier C", "supplier")
    homes = []
    for _ in range(15):
        household_id, token = await running.create_household()
        for org in (a_id, c_id):
            status, out = await running.call("PUT", f"/households/me/consents/{org}/{SERVICE}", token=token)
            assert status == 200, out
        homes.append((token, running.agent.registry.household(household_id).meter_id))
    target = homes[0][0]
    usual = [100.0, 300.0, 600.0]  # 5 households in each of three bins: k and l hold in every hour
    for hour in range(25):
        clock.now = DAY + hour * 3600 + 10
        if hour in (min(NOT_TO_C), max(NOT_TO_C) + 1):  # the target's own consent changes, its own token
            method = "DELETE" if hour == min(NOT_TO_C) else "PUT"
            clock.now = DAY + hour * 3600
            status, out = await running.call(method, f"/households/me/consents/{c_id}/{SERVICE}", token=target)
            assert status == 200, out
            clock.now += 10
        for i, (_, meter) in enumerate(homes):
            running.agent.ingest_http(reading(meter, clock.now, usual[i % 3]))
    clock.now = DAY + 86400 + SETTLE_S + 60
    await asyncio.to_thread(running.agent.store.flush)
    # The attacker: A's own request for its own day, nothing else.
    status, out = await running.call("GET", f"/data/anonymized?from={DAY}&to={DAY + 86400}", token=a_key)
    assert status == 200, out
    with_rows = {r["period_start"] for r in out["records"]}
    empty = {h for h, start in enumerate(HOURS) if iso(start) not in with_rows}
    reported = [p for day in out["report"]["days"] for p in day.get("withheld_periods", [])]
    said = {h for h, start in enumerate(HOURS) if iso(start) in reported}
    assert NOT_TO_C not in (empty, said), (
        f"A's release is withheld in hours {sorted(said)} and has no rows in {sorted(empty)}: the hours in which "
        f"the target did not consent to supplier C (truth {sorted(NOT_TO_C)}), read by A off its own release")


DIFFER = 3  # households of A's cohort that do not consent to C: what A counts
OWN = 9  # k - 1 households of A's own (their tokens), each consenting to C only, one more every hour


@pytest.mark.xfail(strict=True, reason="red team 9a R9a-1, count: with k - 1 households of its own granting C "
                   "one an hour, the last withheld hour gives how many of A's households do not consent to C")
async def test_withheld_periods_do_not_count_the_households_that_do_not_consent_to_another_organization(
        tmp_path, start_agent):
    """The threshold variant: 15 households consent to A, 12 of them to C too (DIFFER = 3 do not). A's own
    households (k - 1 = 9, posting readings like anyone) grant their consent to C one an hour, from hour 1, so in
    hour h the cohorts differ by DIFFER + h households: withheld while that is under k. The last withheld hour is
    k - 1 - DIFFER: A reads DIFFER exactly (3 of 3) from one day's release, with no assumption about anyone."""
    clock = StepClock(DAY - 600)
    running = await start_agent(make_config(tmp_path), clock=clock)
    a_id, a_key = await running.create_org("Supplier A", "supplier")
    c_id, _ = await running.create_org("Supplier C", "supplier")
    meters, own = [], []
    for i in range(15):
        household_id, token = await running.create_household()
        for org in (a_id, c_id) if i >= DIFFER else (a_id,):
            status, out = await running.call("PUT", f"/households/me/consents/{org}/{SERVICE}", token=token)
            assert status == 200, out
        meters.append(running.agent.registry.household(household_id).meter_id)
    for _ in range(OWN):
        household_id, token = await running.create_household()
        own.append(token)
        meters.append(running.agent.registry.household(household_id).meter_id)
    usual = [100.0, 300.0, 600.0]
    for hour in range(25):
        if 1 <= hour <= OWN:  # one more of A's own consents to C, a second before the hour
            clock.now = DAY + hour * 3600 - 1
            status, out = await running.call("PUT", f"/households/me/consents/{c_id}/{SERVICE}",
                                             token=own[hour - 1])
            assert status == 200, out
        clock.now = DAY + hour * 3600 + 10
        for i, meter in enumerate(meters):
            running.agent.ingest_http(reading(meter, clock.now, usual[i % 3]))
    clock.now = DAY + 86400 + SETTLE_S + 60
    await asyncio.to_thread(running.agent.store.flush)
    status, out = await running.call("GET", f"/data/anonymized?from={DAY}&to={DAY + 86400}", token=a_key)
    assert status == 200, out
    with_rows = {r["period_start"] for r in out["records"]}
    withheld = [h for h, start in enumerate(HOURS) if iso(start) not in with_rows]
    k = running.agent.config.levels["supplier"].anonymized.k
    counted = k - 1 - max(withheld) if withheld else None
    assert counted != DIFFER, (
        f"A's release has no rows in hours {withheld}: the last withheld hour says {counted} of A's households do "
        f"not consent to supplier C (truth {DIFFER})")
