"""Red team 9a (session 8), R9a-4 (low: exact levels, the custodian's): a household the operator marks as related to
one organization loses the audit's protection against every organization.

The exact audit (agent/release/door.py `_decide_exact`) removes from every cohort the households related to *any*
organization (`_known`): "Households related to any organization are known to it (its test meters, its employees'
homes)". Known to *that* organization; to every other one they are households like the rest, but the audit no
longer has a column for them, so no difference that isolates one is ever refused. PRIVACY.md, exact levels, rule
2: the audit "must not let any linear combination of those sums equal one household's value"; the operator marks
an employee's home as related to its employer so that the employer cannot pad k_min with it, not so that
everyone else may read it.

Request sequence (test below): dso organization Y; supplier X (the target's employer: the operator marks the
target `related_organizations: [X]`, PATCH /households/{id}). 13 households, the target among them, consent
`aggregates` to Y and post steady loads every second; 5 s in, the target revokes its consent to Y (its own
token). Y: `GET /data?window=1s&since=..&until=..` over the 30 s. Recovered: the second before the revocation
minus the second after it is the target's load to the watt (1000.0 W), both released (a household that is not
marked: refused `isolating` for the audit period). The same holds for two exact organizations whose cohorts
differ by the target (P5), and for its joining, its datalogger stopping, ...: every differencing the audit
exists to stop.

Code: agent/release/door.py `_decide_exact` (`known = self._known()`, `released = [c - known ...]`,
`admissible_if_one_known(released, members - known)`) and `_grid_exact` (`known_meters`).
Closed (agent/release/door.py `_isolates_known`): when the audit checks whether a release isolates a related household r, r must not be among the
known: admissible iff no household h is isolated with known = (related to any organization) - {h}. That keeps
the colluding case (r counts as known when *another* household's isolation is checked: A - B - r = x is still
refused) and gives r the protection of every other household. In `audit`, one more rank test per related
household in the cohorts' difference (few); the count audit (`_grid_exact`, `known_meters`) alike.
Measured on main: the control (the target not marked) is never read (every pair across the revocation refused).
"""

from __future__ import annotations

import pytest

from tests.helpers.attacks import town  # noqa: F401  (fixture)

STEADY = [1000.0 + 37.7 * i for i in range(13)]  # constant loads: the attacker's best case; the target is 0
SECONDS, REVOKE_AT = 30, 5


async def test_a_household_related_to_one_organization_is_not_read_by_another(town):
    y_id, y_key = await town.org("dso", "Y")
    x_id, _ = await town.org("supplier", "X (the target's employer)")
    homes = await town.households_(13)
    target = homes[0]
    await town.mark_related(target, [x_id])
    await town.grant(y_id, homes)
    start = await town.to_next(60)
    for s in range(SECONDS):
        if s == REVOKE_AT:
            await town.revoke(y_id, target)
        for i, h in enumerate(homes):
            await town.post(h, STEADY[i])
        town.clock.step(1)
    bodies = await town.windows(y_key, "1s", start, start + SECONDS)
    released = [(s, b) for s, b in enumerate(bodies) if "refused" not in b]
    reads = [(s1, s2) for s1, b1 in released for s2, b2 in released
             if s1 < REVOKE_AT <= s2 and abs(b1["consumption_w"] - b2["consumption_w"] - STEADY[0]) < 0.01]
    assert not reads, (f"Y's second {reads[0][0]} minus second {reads[0][1]} is the target's load, "
                       f"{STEADY[0]} W: both released, the audit had no column for a household related to X "
                       f"({len(reads)} such pairs)")


async def test_a_related_households_voltage_band_is_not_read_by_another_organization(town):
    """The count audit alike (`_grid_exact`): the target, related to X, stays in Y's power cohort but reports its
    voltage only in the first second. Y's band counts of that second minus a later one's would be the target's
    band; for a household not marked, the later counts are refused `isolating` (tests/test_attacks_grid.py), and
    so they must be for one related to another organization. Before the fix Y read it in every later second."""
    from agent.release import grid

    y_id, y_key = await town.org("dso", "Y")
    x_id, _ = await town.org("supplier", "X (the target's employer)")
    homes = await town.households_(13)
    target = homes[0]
    await town.mark_related(target, [x_id])
    await town.grant(y_id, homes)
    start = await town.to_next(60)
    for s in range(6):
        for i, h in enumerate(homes):
            volts = {"voltage_l1_v": 250.0 if i == 0 else 231.0} if s == 0 or i > 0 else {}
            await town.post(h, STEADY[i], **volts)
        town.clock.step(1)
    bodies = await town.windows(y_key, "1s", start, start + 6)
    first = bodies[0]["grid"]["voltage_l1"]["counts"]
    assert first[grid.band_of(250.0)] == 1  # the first second is released: all 13 report, 12 unrelated to Y
    later = [b["grid"]["voltage_l1"] for b in bodies[1:] if "refused" not in b]
    assert later, "the power sums of the later seconds (the same cohort) are released"
    read = [g for g in later if "counts" in g and g["counts"][grid.band_of(250.0)] == 0]
    assert not read, (f"{len(read)} later seconds' band counts released: minus the first second's they give the "
                      "target's band")
