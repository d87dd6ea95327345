"""Red team 6: anonymized rows of two organizations whose cohorts differ by k households, all but one silent.

The withholding rule (agent/api/anonymized.py, `_too_close`) compares the two organizations' *consenting* cohorts
per period: at least k apart, both are released. But a release's rows come only from households that sent data
(`_gather`): households that consent and stay silent (the organization's own, or any that are away) widen the
consent difference and add no row. With k silent households of its own consenting to supplier A and not to
supplier B (colluding, or one registered twice), and the target consenting to A only, A's rows minus B's rows are
the target's row in every period: its day trajectory (profile and consumption bin per hour). PRIVACY.md states
only differencing "with k or more households' difference" as not stopped; here the rows differ by one household.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import datetime, timezone

import pytest

from agent.api.anonymized import SERVICE, SETTLE_S
from agent.privacy.anonymize import bin_of
from agent.privacy.synthetic import consumption_at, household_static
from drivers.reading import Reading
from tests.helpers.agent import make_config
from tests.helpers.clock import StepClock

DAY = 1_790_000_000 // 86400 * 86400
HOURS = [DAY + h * 3600 for h in range(24)]


def reading(meter: str, moment: float, static, power_w: float) -> Reading:
    when = datetime.fromtimestamp(moment, timezone.utc)
    return Reading(meter_id=meter, timestamp=when, received_at=when, power_import_w=power_w,
                   power_export_w=150.0 if static.has_pv else 0.0, voltage_l1_v=230.0,
                   voltage_l2_v=231.0 if static.phases == 3 else None, current_l1_a=static.max_current_a,
                   gas_m3=1000.0 if static.has_gas else None)


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat().replace("+00:00", "Z")


def rows_by_period(records: list[dict]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for r in records:
        key = tuple(sorted((k, v) for k, v in r.items() if k not in ("period_start", "period_end")))
        out.setdefault(r["period_start"], Counter())[key] += 1
    return out


@pytest.mark.parametrize("own", ["silent", "related"])
async def test_k_silent_households_do_not_let_two_releases_difference_to_one_households_rows(tmp_path, start_agent,
                                                                                              own):
    """A - B was the target's row in 24 of 24 hours until the rule compared, beside the consents, the households
    whose rows are in each release (data in the period, not related to any organization) (red team 6, R6-7). The
    same with the organization's own households posting but marked related (left out of every release)."""
    clock = StepClock(DAY - 600)
    running = await start_agent(make_config(tmp_path), clock=clock)
    a_id, a_key = await running.create_org("Supplier A", "supplier")
    b_id, b_key = await running.create_org("Supplier B", "supplier")
    rng = random.Random(7)
    homes = []  # (token, meter, static, values, organizations consented to)
    for i in range(30):
        static = household_static(rng)
        base = rng.uniform(120, 450)
        values = {p: consumption_at(rng, static, base, p) for p in HOURS}
        homes.append((static, values, (a_id,) if i == 0 else (a_id, b_id)))  # home 0: the target, A only
    own_silent = 10  # the organization's own households: consent to A, never send a reading
    made = []
    for static, values, orgs in [*homes, *[(None, None, (a_id,))] * own_silent]:
        household_id, token = await running.create_household()
        for org in orgs:
            status, out = await running.call("PUT", f"/households/me/consents/{org}/{SERVICE}", token=token)
            assert status == 200, out
        if static is None and own == "related":  # posts a profile of its own, marked by the operator
            static = household_static(rng)
            values = {p: consumption_at(rng, static, 300.0, p) for p in HOURS}
            status, out = await running.call("PATCH", f"/households/{household_id}",
                                             json={"related_organizations": [a_id]})
            assert status == 200, out
        made.append((running.agent.registry.household(household_id).meter_id, static, values))
    for hour in range(25):
        clock.now = DAY + hour * 3600 + 10
        for meter, static, values in made:
            if static is not None:
                running.agent.ingest_http(reading(meter, clock.now, static, values.get(DAY + hour * 3600, 300.0)))
    clock.now = DAY + 86400 + SETTLE_S + 60
    await asyncio.to_thread(running.agent.store.flush)
    answers = {}
    for name, key in (("A", a_key), ("B", b_key)):
        status, out = await running.call("GET", f"/data/anonymized?from={DAY}&to={DAY + 86400}", token=key)
        assert status == 200 or (status == 409 and out["error"] == "k_not_met"), out  # every hour withheld
        answers[name] = rows_by_period(out["records"]) if status == 200 else {}
    target_static, target_values, _ = homes[0]
    width = 250  # the supplier's bin (generalization x1)
    exact = 0
    for period in HOURS:
        difference = answers["A"].get(iso(period), Counter()) - answers["B"].get(iso(period), Counter())
        extra = answers["B"].get(iso(period), Counter()) - answers["A"].get(iso(period), Counter())
        [(row, n)] = difference.items() if len(difference) == 1 and not extra else [(None, 0)]
        if n == 1 and dict(row)["consumption_w_from"] == bin_of(target_values[period], width)[0]:
            exact += 1
    # The rule's intent: no period in which the two releases differ by one household's row.
    assert exact == 0, f"A - B is the target's row (its consumption bin) in {exact} of 24 hours"
