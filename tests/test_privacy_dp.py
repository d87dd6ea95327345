"""Differential privacy through OpenDP: the noise has the configured scale, the clamp holds, one
household's presence moves the output distribution by at most e^epsilon, and the per-organization
daily budget is exhausted, renews at midnight UTC and survives a restart."""

from __future__ import annotations

import math
import statistics

import pytest

from agent.config import DifferentialPrivacy
from agent.privacy import dp
from agent.privacy.budget import BudgetExceeded, PrivacyBudget
from tests.conftest import StepClock

DAY = 1_790_000_000 // 86400 * 86400
SAMPLES = 3000


def test_laplace_scale_is_clamp_over_epsilon_and_the_noise_has_it():
    mechanism = dp.calibrate("laplace", 1000, 0.5)
    assert mechanism.scale == pytest.approx(1000 / 0.5, rel=1e-6)
    assert mechanism.loss() <= 0.5 + 1e-12  # OpenDP's own privacy map
    values = [300.0] * 20
    truth = sum(values)
    noise = [mechanism.release(values) - truth for _ in range(SAMPLES)]
    # Laplace(b): mean 0, standard deviation sqrt(2) b, mean absolute deviation b
    sd = dp.standard_deviation(mechanism)
    assert abs(statistics.fmean(noise)) < 4 * sd / math.sqrt(SAMPLES)
    assert statistics.pstdev(noise) == pytest.approx(sd, rel=0.1)
    assert statistics.fmean(abs(x) for x in noise) == pytest.approx(mechanism.scale, rel=0.1)


def test_gaussian_noise_matches_its_scale_and_reports_epsilon_at_delta():
    mechanism = dp.calibrate("gaussian", 1000, 1.0, 1e-7)
    public = mechanism.public(1e-7)
    assert public["mechanism"] == "discrete_gaussian" and public["epsilon"] <= 1.0 + 1e-9
    assert public["rho"] == pytest.approx((1000 / mechanism.scale) ** 2 / 2, rel=1e-3)
    noise = [mechanism.release([0.0] * 10) for _ in range(SAMPLES)]
    assert statistics.pstdev(noise) == pytest.approx(mechanism.scale, rel=0.1)


def test_values_are_clamped_to_the_declared_bound():
    mechanism = dp.calibrate("laplace", 500, 100.0)  # tiny noise: scale 5 W
    released = [mechanism.release([10_000.0, -300.0, 200.0]) for _ in range(200)]
    assert statistics.median(released) == pytest.approx(500 + 0 + 200, abs=10)


def test_one_household_moves_the_distribution_by_at_most_e_to_the_epsilon():
    """Differencing: the answers with and without one household (its value at the clamp, the worst
    case) are distributions whose ratio on any interval stays within e^epsilon: what the difference of
    two releases around its consent change shows is noise, not the household."""
    epsilon = 1.0
    mechanism = dp.calibrate("laplace", 1000, epsilon)
    others = [400.0] * 15
    with_h = [mechanism.release(others + [1000.0]) for _ in range(SAMPLES)]
    without = [mechanism.release(others) for _ in range(SAMPLES)]
    base = sum(others)
    bound = math.exp(epsilon)
    for low, high in ((-math.inf, base - 1000), (base - 1000, base), (base, base + 1000),
                      (base + 1000, base + 2000), (base + 2000, math.inf)):
        p = sum(low <= x < high for x in with_h) / SAMPLES
        q = sum(low <= x < high for x in without) / SAMPLES
        # Sampling error of `q - e*p` (the tails sit exactly at the bound, so it must be the combined
        # error, at 4 standard deviations: a false alarm about once in 30,000 runs).
        slack = 4 * math.sqrt((max(p, q) + bound ** 2 * max(p, q)) / SAMPLES)
        assert p <= bound * q + slack and q <= bound * p + slack, (low, high, p, q)
    # The attacker's estimate of the household's value from one pair of releases: error of sd 2b.
    estimates = [a - b for a, b in zip(with_h, without)]
    assert statistics.pstdev(estimates) == pytest.approx(2 * mechanism.scale, rel=0.1)
    assert statistics.pstdev(estimates) > 1000  # more than the whole range of the value


CFG = DifferentialPrivacy(epsilon=1.0, epsilon_per_day=3.0)


def test_budget_is_exhausted_then_renews_at_midnight(tmp_path):
    clock = StepClock(DAY + 3600)
    budget = PrivacyBudget(tmp_path, clock=clock)
    mechanism = dp.calibrate("laplace", 5000, 1.0)
    for _ in range(3):
        budget.spend("org_a", CFG, [mechanism])
        budget.record("org_a", [mechanism], {})
    assert budget.status("org_a", CFG)["epsilon_remaining"] == 0
    with pytest.raises(BudgetExceeded) as refused:
        budget.spend("org_a", CFG, [mechanism])
    assert refused.value.renews_at == DAY + 86400
    assert "renews at" in refused.value.detail and refused.value.status["renews_at"].endswith("T00:00:00Z")
    # another organization has its own budget
    budget.spend("org_b", CFG, [mechanism])
    clock.step(86400 - 3600)  # midnight UTC
    budget.spend("org_a", CFG, [mechanism])
    assert budget.status("org_a", CFG)["epsilon_spent"] == 1.0  # only today's spend counts
    budget.close()


def test_a_refused_query_does_not_burn_the_rest_of_the_day(tmp_path):
    budget = PrivacyBudget(tmp_path, clock=StepClock(DAY))
    small, big = dp.calibrate("laplace", 5000, 0.5), dp.calibrate("laplace", 5000, 2.0)
    budget.spend("org", CFG, [small])
    budget.record("org", [small], {})
    with pytest.raises(BudgetExceeded):
        budget.spend("org", CFG, [big, big])
    budget.spend("org", CFG, [big])  # 0.5 + 2.0 <= 3: still fits
    budget.record("org", [big], {})
    assert budget.status("org", CFG)["epsilon_spent"] == pytest.approx(2.5)
    budget.close()


def test_budget_and_released_answers_survive_a_restart(tmp_path):
    clock = StepClock(DAY + 7200)
    budget = PrivacyBudget(tmp_path, clock=clock)
    mechanism = dp.calibrate("laplace", 5000, 1.0)
    budget.spend("org", CFG, [mechanism, mechanism])
    budget.record("org", [mechanism, mechanism], {"15m|1|": {"consumption_w": 1234}})
    budget.close()
    again = PrivacyBudget(tmp_path, clock=clock)
    assert again.status("org", CFG)["epsilon_spent"] == pytest.approx(2.0)
    assert again.cached("org", "15m|1|") == {"consumption_w": 1234}
    again.spend("org", CFG, [mechanism])
    again.record("org", [mechanism], {})
    with pytest.raises(BudgetExceeded):
        again.spend("org", CFG, [mechanism])
    again.close()
    # a restart after exhaustion is still exhausted
    third = PrivacyBudget(tmp_path, clock=clock)
    with pytest.raises(BudgetExceeded):
        third.spend("org", CFG, [mechanism])
    third.close()


def test_gaussian_budget_composes_in_zcdp(tmp_path):
    cfg = DifferentialPrivacy(noise="gaussian", epsilon=1.0, epsilon_per_day=3.0, delta=1e-7)
    budget = PrivacyBudget(tmp_path, clock=StepClock(DAY))
    mechanism = dp.calibrate("gaussian", 5000, 1.0, 1e-7)
    spent = 0
    while True:
        try:
            budget.spend("org", cfg, [mechanism])
        except BudgetExceeded:
            break
        budget.record("org", [mechanism], {})
        spent += 1
    # zCDP composes better than adding epsilons: more than 3 releases of epsilon 1 fit in epsilon 3
    assert spent > 3
    status = budget.status("org", cfg)
    assert status["epsilon_spent"] <= 3.0 and status["rho_spent"] <= status["rho_per_day"]
    budget.close()


def test_without_opendp_dp_is_unavailable_and_says_so():
    dp.set_unavailable(True)
    try:
        assert not dp.available()
        with pytest.raises(dp.DPUnavailable, match="OpenDP"):
            dp.Mechanism("laplace", 1000, 1000.0).release([1.0])
        assert "never fall back" in dp.unavailable_reason()
    finally:
        dp.set_unavailable(False)
