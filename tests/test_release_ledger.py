"""agent/release/ledger.py on data: zCDP conversions, charges per UTC day, the rolling horizon, the cap, the
household's own view. No agent, no files."""

from __future__ import annotations

import math

import pytest

from agent.release.ledger import DAY, EVERYONE, Ledger, day_of, epsilon_of_rho, rho_of_epsilon
from tests.helpers.clock import HOUR

MIDNIGHT = HOUR // DAY * DAY


def test_days_are_utc_days():
    assert day_of(MIDNIGHT) == day_of(MIDNIGHT + DAY - 0.001) == MIDNIGHT // DAY
    assert day_of(MIDNIGHT + DAY) == MIDNIGHT // DAY + 1


def test_zcdp_conversions():
    assert rho_of_epsilon(1.0) == 0.5 and rho_of_epsilon(0.2) == pytest.approx(0.02)
    assert epsilon_of_rho(0.0, 1e-6) == 0.0 and epsilon_of_rho(-1.0, 1e-6) == 0.0
    rho, delta = 0.5, 1e-6
    assert epsilon_of_rho(rho, delta) == pytest.approx(rho + 2 * math.sqrt(rho * math.log(1e6)))
    # more loss, or a smaller delta, is a larger epsilon
    assert epsilon_of_rho(1.0, delta) > epsilon_of_rho(rho, delta) < epsilon_of_rho(rho, 1e-9)


def test_charges_add_up_per_household():
    ledger = Ledger(horizon_days=30, cap_rho=1.0)
    ledger.charge(["a", "b"], 0.25, MIDNIGHT + 10)
    ledger.charge(["a"], 0.25, MIDNIGHT + 20)
    assert ledger.spent("a", MIDNIGHT + 30) == 0.5 and ledger.spent("b", MIDNIGHT + 30) == 0.25
    assert ledger.spent("nobody", MIDNIGHT) == 0


def test_the_horizon_is_whole_utc_days_back_from_the_current_one():
    """A charge counts for at least `horizon_days` days and is gone once its day is more than `horizon_days` days
    back. (Whether the day exactly `horizon_days` back still counts is the horizon's edge, decided in ledger.py.)"""
    ledger = Ledger(horizon_days=2, cap_rho=1.0)
    ledger.charge(["a"], 0.3, MIDNIGHT + DAY - 1)  # the last second of a day
    assert ledger.spent("a", MIDNIGHT) == 0.3  # that day, from its first second: a day is the unit
    assert ledger.spent("a", MIDNIGHT + 2 * DAY - 1) == 0.3  # the next day: still in a 2-day horizon
    assert ledger.spent("a", MIDNIGHT + 3 * DAY) == 0  # three days on: out


def test_the_cap_is_met_exactly_and_not_exceeded():
    ledger = Ledger(horizon_days=1, cap_rho=0.3)
    for _ in range(3):
        ledger.charge(["a"], 0.1, MIDNIGHT)  # 0.1 * 3 is 0.30000000000000004 in floats
    assert ledger.spent("a", MIDNIGHT) > 0.3
    assert not ledger.affords("a", 0.001, MIDNIGHT)
    fresh = Ledger(horizon_days=1, cap_rho=0.3)
    fresh.charge(["a"], 0.2, MIDNIGHT)
    assert fresh.affords("a", 0.1, MIDNIGHT)  # up to the cap, float slack included
    assert not fresh.affords("a", 0.1001, MIDNIGHT)
    assert fresh.affords("a", 0.3, MIDNIGHT + 2 * DAY)  # two days on the horizon holds nothing


def test_forget_before_drops_only_days_out_of_the_horizon():
    ledger = Ledger(horizon_days=2, cap_rho=1.0)
    ledger.charge(["old"], 0.5, MIDNIGHT)
    ledger.charge(["both"], 0.1, MIDNIGHT)
    ledger.charge(["both"], 0.2, MIDNIGHT + 3 * DAY)
    ledger.forget_before(MIDNIGHT + 3 * DAY)  # the first day is more than two days back
    assert ledger.of("old", MIDNIGHT, 1e-6)["days"] == []  # gone, even asked about the day it was charged
    assert ledger.of("both", MIDNIGHT, 1e-6)["days"] == [{"day": MIDNIGHT + 3 * DAY, "rho": 0.2}]
    assert ledger.spent("both", MIDNIGHT + 3 * DAY) == 0.2


def test_the_households_view():
    ledger = Ledger(horizon_days=3, cap_rho=1.0)
    ledger.charge(["a"], 0.25, MIDNIGHT + DAY)
    ledger.charge(["a"], 0.125, MIDNIGHT)
    ledger.charge(["a"], 0.5, MIDNIGHT - 3 * DAY)  # out of the horizon
    view = ledger.of("a", MIDNIGHT + DAY + 5, 1e-6)
    assert view["days"] == [{"day": MIDNIGHT, "rho": 0.125}, {"day": MIDNIGHT + DAY, "rho": 0.25}]  # oldest first
    assert (view["spent_rho"], view["remaining_rho"], view["cap_rho"], view["horizon_days"]) == (0.375, 0.625, 1.0, 3)
    assert view["spent_epsilon"] == round(epsilon_of_rho(0.375, 1e-6), 6)
    assert view["cap_epsilon"] == round(epsilon_of_rho(1.0, 1e-6), 6)
    over = Ledger(horizon_days=1, cap_rho=0.1)
    over.charge(["a"], 0.2, MIDNIGHT)
    assert over.of("a", MIDNIGHT, 1e-6)["remaining_rho"] == 0.0  # never negative


def test_undo_restores_every_charge_since_begin_exactly():
    """A settle pass whose record the disk refused released nothing: its charges are undone to the bit (restored,
    not subtracted: 0.1 + 0.2 - 0.2 is not 0.1), the days it added are gone, the lost-day marks it added too, and
    what was charged before `begin` or after `keep` stays (red team 9a, R9a-6)."""
    ledger = Ledger(horizon_days=30, cap_rho=1.0)
    ledger.charge(["a"], 0.1, MIDNIGHT)
    before = ledger.of("a", MIDNIGHT + 10, 1e-6)
    ledger.begin()
    ledger.charge(["a", "b"], 0.2, MIDNIGHT + 5)
    ledger.charge(["a"], 0.2, MIDNIGHT + DAY)
    ledger.charge([EVERYONE], 0.2, MIDNIGHT + 2 * DAY)
    assert ledger.spent("a", MIDNIGHT + 2 * DAY) == 1.0  # a lost day counts as the cap
    ledger.undo()
    assert ledger.of("a", MIDNIGHT + 10, 1e-6) == before and ledger.spent("a", MIDNIGHT) == 0.1
    assert ledger.spent("b", MIDNIGHT + 5) == 0 and ledger.lost_until(MIDNIGHT + 2 * DAY) is None
    assert ledger.spent("a", MIDNIGHT + 2 * DAY) == 0.1
    ledger.begin()
    ledger.charge(["a"], 0.3, MIDNIGHT)
    ledger.keep()
    ledger.undo()  # nothing to undo once kept
    ledger.charge(["a"], 0.3, MIDNIGHT)  # nor a charge made with no pass begun
    ledger.undo()
    assert ledger.spent("a", MIDNIGHT) == pytest.approx(0.7)
