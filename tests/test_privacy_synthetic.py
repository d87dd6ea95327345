"""Synthetic neighbourhoods (agent/privacy/synthetic.py) on data: seeded (a benchmark's figure can be reproduced),
plausible attributes, the day's shape (peaks morning and evening, PV households importing less by day)."""

from __future__ import annotations

import random

from agent.privacy.anonymize import StaticAttributes
from agent.privacy.synthetic import consumption_at, household_static, neighbourhood

DAY = 1_767_225_600  # a UTC midnight
PERIODS = [DAY + 900 * i for i in range(96)]


def test_a_seed_gives_the_same_neighbourhood_and_another_seed_another():
    first = neighbourhood(20, PERIODS, seed=3)
    assert first == neighbourhood(20, PERIODS, seed=3)
    assert first != neighbourhood(20, PERIODS, seed=4)
    assert [h.household_id for h in first] == [f"hh_{i:04d}" for i in range(20)]
    assert all(sorted(h.consumption_w) == PERIODS for h in first)


def test_attributes_are_plausible():
    rng = random.Random(0)
    homes = [household_static(rng) for _ in range(500)]
    assert {h.phases for h in homes} == {1, 3}
    assert all(0 < h.max_current_a <= 60.0 for h in homes)
    assert 0.2 < sum(h.has_pv for h in homes) / 500 < 0.5 and 0.55 < sum(h.has_gas for h in homes) / 500 < 0.85


def test_the_evening_peak_is_above_the_night_and_pv_imports_less_by_day():
    home, pv = StaticAttributes(False, True, 1, 16.0), StaticAttributes(True, True, 1, 16.0)

    def at(static, hour):  # the same draws for both: only the hour or the PV differs
        return consumption_at(random.Random(7), static, 200.0, DAY + hour * 3600)

    assert at(home, 19) > at(home, 7.5) > at(home, 3)
    assert at(pv, 12) < at(home, 12)
    assert at(pv, 3) == at(home, 3) and at(pv, 19) == at(home, 19)  # no sun, no difference
    assert at(home, 19) == at(home, 24 + 19)  # the time of day, not the date
    assert all(v > 0 for h in neighbourhood(10, PERIODS) for v in h.consumption_w.values())
