"""Differential privacy through OpenDP: the noise has the configured scale, the clamp holds, one
household's presence moves the output distribution by at most e^epsilon; the noisy levels' mechanism (discrete
Gaussian calibrated to a zCDP rho) has OpenDP's own loss, and the per-household ledger is a rolling horizon shared
by every release (not the first design's budget per organization renewed every UTC midnight). The ledger inside
the release module, across organizations and restarts: tests/test_release.py, tests/test_event_loop_io_budget.py."""

from __future__ import annotations

import math
import statistics

import pytest

from agent.config import DifferentialPrivacy
from agent.privacy import dp
from agent.release.ledger import DAY as LEDGER_DAY
from agent.release.ledger import Ledger, epsilon_of_rho

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


def test_the_noisy_levels_mechanism_has_the_rho_it_is_charged_and_its_noise():
    """The default noisy level: a window's two sums (consumption, production) share rho; each is OpenDP's discrete
    Gaussian whose own privacy map gives exactly its half, with noise of the stated standard deviation."""
    cfg = DifferentialPrivacy()
    assert cfg.noise == "gaussian" and cfg.loss() == cfg.rho
    mechanism = dp.calibrate_rho(cfg.clamp_w, cfg.rho / 2)
    assert mechanism.loss() <= cfg.rho / 2 * (1 + 1e-9)
    assert mechanism.loss() == pytest.approx(cfg.rho / 2, rel=1e-3)  # the least noise that meets it
    assert mechanism.scale == pytest.approx(cfg.clamp_w / math.sqrt(2 * cfg.rho / 2), rel=1e-3)
    noise = [mechanism.release([0.0] * 10) for _ in range(SAMPLES)]
    assert statistics.pstdev(noise) == pytest.approx(dp.standard_deviation(mechanism), rel=0.1)
    # a Laplace level is charged its pure epsilon as zCDP: epsilon^2 / 2
    laplace = DifferentialPrivacy(noise="laplace", epsilon=0.03)
    assert laplace.loss() == pytest.approx(0.03 ** 2 / 2)


@pytest.mark.parametrize("rho", [1e-4, 5e-4, 0.1, 2.0])
def test_the_stated_epsilon_never_understates_opendps_own_conversion(rho):
    """The guarantee every noisy answer states (epsilon at delta for the ledger's rho) is at least what OpenDP's
    zCDP -> (epsilon, delta) conversion gives for the same measurement: never weaker than it says."""
    delta = 1e-7
    mechanism = dp.calibrate_rho(1000, rho)
    opendp_epsilon = float(dp._approx(mechanism.measurement(), delta).map(dp.D_IN)[0])
    assert epsilon_of_rho(mechanism.loss(), delta) >= opendp_epsilon


def test_the_ledger_is_a_rolling_horizon_shared_by_every_release_not_a_daily_budget():
    day0 = DAY + 3600
    ledger = Ledger(horizon_days=30, cap_rho=1.0)
    ledger.charge(["h1", "h2"], 0.6, day0)  # one release, whichever organization it is told to
    ledger.charge(["h1"], 0.3, day0)  # another organization's release with another cohort: the same ledger
    assert ledger.spent("h1", day0) == pytest.approx(0.9) and ledger.spent("h2", day0) == pytest.approx(0.6)
    assert not ledger.affords("h1", 0.2, day0) and ledger.affords("h2", 0.4, day0)
    # midnight renews nothing (the first design's budget did): the charge counts for the whole horizon
    assert not ledger.affords("h1", 0.2, day0 + LEDGER_DAY)
    assert not ledger.affords("h1", 0.2, day0 + 29 * LEDGER_DAY)
    # 30 days of real time touch 31 UTC days: on day 30 the charge still counts (a charge late on day 0 and one
    # early on day 30 are under 30 days apart), on day 31 it is out
    assert not ledger.affords("h1", 0.2, day0 + 30 * LEDGER_DAY)
    assert ledger.spent("h1", day0 + 31 * LEDGER_DAY) == 0 and ledger.affords("h1", 1.0, day0 + 31 * LEDGER_DAY)
    # a household nothing was released about has spent nothing
    assert ledger.spent("h3", day0) == 0
    view = ledger.of("h1", day0, 1e-7)
    assert view["spent_rho"] == pytest.approx(0.9) and view["remaining_rho"] == pytest.approx(0.1)
    assert view["spent_epsilon"] == pytest.approx(epsilon_of_rho(0.9, 1e-7), abs=1e-6)
    assert view["days"] == [{"day": (day0 // LEDGER_DAY) * LEDGER_DAY, "rho": pytest.approx(0.9)}]


def test_the_default_cap_and_rho_fit_a_stated_number_of_windows():
    """zCDP composes by adding rho: at the defaults a household bears cap / rho windows per horizon in all, and
    the cap's epsilon is over ten times below what adding the windows' own epsilons would claim."""
    from agent.config import PrivacyConfig

    cfg, privacy = DifferentialPrivacy(), PrivacyConfig()
    ledger = Ledger(privacy.horizon_days, privacy.cap_rho)
    windows = 0
    while ledger.affords("h", cfg.loss(), DAY):
        ledger.charge(["h"], cfg.loss(), DAY)
        windows += 1
    assert windows == round(privacy.cap_rho / cfg.rho)
    assert epsilon_of_rho(privacy.cap_rho, cfg.delta) < windows * epsilon_of_rho(cfg.rho, cfg.delta) / 10


def test_without_opendp_dp_is_unavailable_and_says_so():
    dp.set_unavailable(True)
    try:
        assert not dp.available()
        with pytest.raises(dp.DPUnavailable, match="OpenDP"):
            dp.Mechanism("laplace", 1000, 1000.0).release([1.0])
        assert "never fall back" in dp.unavailable_reason()
    finally:
        dp.set_unavailable(False)
