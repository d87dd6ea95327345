"""Utility beside privacy, on synthetic neighbourhoods (agent/privacy/synthetic.py, seeded).

1. Noisy levels: the median relative error of the released consumption sum against the true one, for 10, 100
   and 1,000 households and each window at the defaults (discrete Gaussian, rho per window split over
   consumption and production, fixed clamp; wider windows are means of the noisy fine ones), with how many fine
   windows per horizon the level releases and what share of the household's cap that takes. Baseline in the
   same run: the analytic median |N(0, sd)| over the true sum. Then the CPU of deciding one exact window.
2. Anonymized releases: the share of rows and households suppressed, the k, l, t achieved and the
   generalization chosen, for the dso (15 min) and supplier (1 h) defaults over one day. Baseline:
   suppression alone, without generalizing anything (the lattice's bottom node).
3. Trajectory re-identification (P8): the share of households singled out by 3 known periods, and the chance
   of naming a household's row, before (one pseudonym per household per release and no threshold on rare bins,
   as every level had) and after (unlinked rows, every level but the custodian's; the custodian's row shows what
   unlinking would give it), for 10 / 100 / 1,000 households. Baseline: 1/k.

    .venv/bin/python bench/privacy.py [--releases 200]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import DEFAULT_LEVELS, WINDOW_SECONDS, PrivacyConfig  # noqa: E402
from agent.privacy import dp  # noqa: E402
from agent.privacy import linkage  # noqa: E402
from agent.privacy.anonymize import Refusal, anonymize, release_day  # noqa: E402
from agent.release.ledger import epsilon_of_rho  # noqa: E402
from agent.privacy.synthetic import consumption_at, household_static, neighbourhood  # noqa: E402

DAY = 1_790_000_000 // 86400 * 86400
EVENING = DAY + 19 * 3600
NIGHT = DAY + 3 * 3600


def window_values(n: int, seed: int, moment: float = EVENING) -> tuple[list[float], list[float]]:
    """One 15-minute window (19:00 by default): each household's mean consumption and fridge power."""
    rng = random.Random(seed)
    power, fridge = [], []
    for _ in range(n):
        static = household_static(rng)
        power.append(consumption_at(rng, static, rng.uniform(120, 450), moment))
        fridge.append(rng.uniform(25, 90))
    return power, fridge


def gaussian_error(values: list[float], clamp: int, rho: float, fine: int, releases: int) -> tuple[float, float]:
    """Median relative error of a sum released as the mean of `fine` noisy fine windows (each at `rho`),
    over `releases` draws through OpenDP, and the analytic median |N(0, sd)| / truth beside it."""
    mechanism = dp.calibrate_rho(clamp, rho)
    exact = sum(values)
    errors = []
    for _ in range(releases):
        noisy = statistics.fmean(mechanism.release(values) for _ in range(fine))
        errors.append(abs(noisy - exact) / exact)
    expected = 0.6745 * dp.standard_deviation(mechanism) / math.sqrt(fine) / sum(min(max(v, 0), clamp) for v in values)
    return statistics.median(errors), expected


def bench_dp(releases: int) -> None:
    """Noisy levels at their defaults (agent/config.py): the released window's consumption sum."""
    privacy = PrivacyConfig()
    print(f"Noisy levels (OpenDP {dp.OPENDP_VERSION}, discrete Gaussian; ledger: cap rho {privacy.cap_rho:g} per "
          f"household over {privacy.horizon_days} days = epsilon {epsilon_of_rho(privacy.cap_rho, 1e-7):.1f} at "
          f"delta 1e-7), median relative error of the consumption sum at 19:00, {releases} draws")
    print(f"{'level':<9} {'window':>6} {'households':>10} {'error':>8} {'analytic':>9} {'windows/horizon':>15} "
          f"{'share of cap':>12}")
    for name in ("supplier", "service"):
        level = DEFAULT_LEVELS[name]
        cfg = level.dp
        fine_s = WINDOW_SECONDS[level.finest]
        per_horizon = privacy.horizon_days * 86400 // fine_s
        share = per_horizon * cfg.loss() / privacy.cap_rho
        for window in level.windows:
            fine = WINDOW_SECONDS[window] // fine_s
            for n in (10, 100, 1000):
                power, _ = window_values(n, seed=n)
                err, expected = gaussian_error(power, cfg.clamp_w, cfg.rho / 2, fine, releases)
                print(f"{name:<9} {window:>6} {n:>10} {err:>8.1%} {expected:>9.1%} {per_horizon:>15} {share:>12.0%}")
    level = DEFAULT_LEVELS["supplier"]
    sd = dp.standard_deviation(dp.calibrate_rho(level.dp.clamp_w, level.dp.rho / 2))
    mean = statistics.fmean(window_values(1000, 1000)[0])
    for target in (0.2, 0.1):
        need = 0.6745 * sd / (target * mean)
        print(f"  supplier 15m: about {need:,.0f} households for a {target:.0%} median error at 19:00 "
              f"(mean load {mean:.0f} W; over the fleet, N devices of n add noise as sqrt(N))")
    print("  exact levels (dso): the exact sum (0% error), audited; see PRIVACY.md for what that does not stop")


def bench_release_cost(rounds: int = 200, grid_quantities: bool = True) -> None:
    """CPU of deciding one 1-second window for 1,000 households and three exact organizations (cohorts, k_min,
    the audit, the bodies) beside a bare sum over the same contributions. With `grid_quantities`, every meter
    reports three phases' voltages and its failure count (issue 15: bands, the count audit); without, the
    organizations are narrowed to power parameters (no grid part), as before."""
    import tempfile

    from agent.aggregates import Contribution
    from agent.registry import Registry
    from agent.release import Releases
    from agent.release.door import Grid
    from tests.helpers.agent import make_config

    with tempfile.TemporaryDirectory() as tmp:
        now = [float(DAY)]
        config = make_config(Path(tmp))
        registry = Registry(Path(tmp) / "registry.seg", clock=lambda: now[0])
        households = [registry.create_household(None, "http")[0] for _ in range(1000)]
        orgs = [registry.create_organization(f"Org {i}", "dso")[0] for i in range(3)]
        if not grid_quantities:
            orgs = [registry.update_organization(o.id, parameters=["neighborhood_power_*"]) for o in orgs]
        for i, org in enumerate(orgs):
            for j, h in enumerate(households):
                if j % 50 != i:  # three slightly different cohorts: the audit has work to do
                    registry.set_consent(h.id, org.id, "aggregates", True)
        now[0] += 10
        volts = {p: 230.0 for p in ("l1", "l2", "l3")} if grid_quantities else {}
        contributions = {h.meter_id: Contribution(300.0 + j % 97, 10.0, 1, {}, {p: v + j % 13 for p, v in volts.items()},
                                                  0 if grid_quantities else None)
                         for j, h in enumerate(households)}

        class Book:
            keep = 120

            def contributions(self, start):
                return contributions

        releases = Releases(config, registry, {"1s": Book()}, lambda: now[0], Path(tmp) / "releases")
        grid = Grid(1, False, False)
        started = time.perf_counter()
        for r in range(rounds):
            releases._decide(grid, orgs, int(DAY) + 20 + r, {}, {})
        per_window = (time.perf_counter() - started) / rounds
        started = time.perf_counter()
        for _ in range(rounds):
            for _ in orgs:
                sum(c.consumption_w for c in contributions.values())
        bare = (time.perf_counter() - started) / rounds
        registry.close()
    what = "with grid quantities (3 phases' voltage bands, failures)" if grid_quantities else "power only"
    print(f"\nDeciding one 1 s window, 1,000 households, 3 exact organizations, {what}: {per_window * 1e3:.2f} ms "
          f"({per_window * 100:.1f}% of one core at one window a second; a Pi core is ~4x slower) beside a bare "
          f"sum per organization: {bare * 1e3:.2f} ms")


def bench_grid(releases: int = 40) -> None:
    """Noisy grid quantities (issue 15) for one window: the noise on a band count and the median error of the
    mean voltage on L1, at the default grid_rho and ten times it, beside the exact values."""
    import random

    from agent.aggregates import Contribution
    from agent.release import grid

    print("\nNoisy grid quantities for one window (voltage on 3 phases + long failures = 7 OpenDP measurements)")
    print(f"{'grid_rho':>9} {'households':>10} {'count sd':>9} {'mean V error (median)':>22} {'min/max found':>14}")
    for rho in (5e-4, 5e-3):
        for n in (100, 1000, 10000):
            rng = random.Random(n)
            rows = [Contribution(300.0, 0.0, 1, {}, {p: rng.gauss(231, 3) for p in ("l1", "l2", "l3")}, 0)
                    for _ in range(n)]
            truth = sum(c.voltage_v["l1"] for c in rows) / n
            errors, found = [], 0
            for _ in range(releases):
                part = grid.noisy_part(grid.QUANTITIES, rows, rho)
                mean = part["voltage_l1"]["mean_v"]
                errors.append(abs(mean - truth) if mean is not None else float("inf"))
                found += part["voltage_l1"]["min_v"] is not None
            sd = part["privacy"]["count_sd"]
            print(f"{rho:>9g} {n:>10} {sd:>9.1f} {statistics.median(errors):>20.2f} V {found / releases:>13.0%}")


def bench_anonymized() -> None:
    print("\nAnonymized releases over one day (synthetic neighbourhood), suppression beside suppression-only")
    print(f"{'level':<9} {'households':>10} {'rows':>7} {'supp. rows':>10} {'supp. hh':>8} {'k':>4} {'l':>3} "
          f"{'t':>6} {'generalized':<28} {'suppress-only':>13} {'seconds':>7}")
    for level in ("dso", "supplier"):
        rules = DEFAULT_LEVELS[level].anonymized
        res = 900 if rules.resolution == "15m" else 3600
        periods = list(range(DAY, DAY + 86400, res))
        for n in (10, 100, 1000):
            series = neighbourhood(n, periods, seed=n)
            started = time.perf_counter()
            result = anonymize(series, rules, resolution_s=res, level=level, periods=periods)
            seconds = time.perf_counter() - started
            only = _suppression_only(series, rules, res, periods)
            rows = n * len(periods)
            if isinstance(result, Refusal):
                print(f"{level:<9} {n:>10} {rows:>7} {'refused: ' + result.requirement:>10} {'':>8} {'':>4} {'':>3} "
                      f"{'':>6} {'':<28} {only:>13} {seconds:>7.2f}")
                continue
            r = result.report
            general = ",".join(f"{k}" for k, v in r["generalization"].items()
                               if v in ("suppressed", "coarse")) or "none"
            if r["generalization"]["value_bin_w"] > rules.value_bin_w:
                general += f",bins x{r['generalization']['value_bin_w'] // rules.value_bin_w}"
            # unlinked rows (non-custodian levels) do not say how many households were left out
            households = f"{r['households_suppressed'] / n:>8.1%}" if "households_suppressed" in r else f"{'-':>8}"
            print(f"{level:<9} {n:>10} {rows:>7} {result.audit['rows_suppressed'] / rows:>10.1%} "
                  f"{households} {r['k']:>4} {r['l']:>3} {r['t']:>6.3f} {general:<28} "
                  f"{only:>13} {seconds:>7.2f}")


def bench_linkage() -> None:
    """P8: the trajectory re-identification rate of a day's release, before (one pseudonym per household:
    the release every level got until now) and after (rows nothing links: every level but the custodian)."""
    print("\nTrajectory re-identification over one day (agent/privacy/linkage.py): share of households singled "
          "out by 3 known periods,\nthe chance of naming a household's row in another period (3 known periods; "
          "the day's energy), beside the chance rate 1/k")
    print(f"{'level':<9} {'households':>10}  {'linked: singled':>15} {'row':>6} {'energy':>6}  "
          f"{'unlinked: singled':>17} {'row':>6} {'energy':>6}  {'1/k':>5}  {'default':<8} {'seconds':>7}")
    for level in ("dso", "supplier"):
        rules = DEFAULT_LEVELS[level].anonymized
        res = WINDOW_SECONDS[rules.resolution]
        for n in (10, 100, 1000):
            series = neighbourhood(n, list(range(DAY, DAY + 86400, res)), seed=n)
            started = time.perf_counter()
            cells = []
            # before: one pseudonym per household, no threshold on rare bins (the first design); after: the level
            before, after = replace(rules, linkable=True, min_cell=1), replace(rules, linkable=False)
            for linkable, variant in ((True, before), (False, after)):
                doc = release_day(series, variant, resolution_s=res, level=level, day=DAY)
                if "refused" in doc:
                    cells.append(f"{'refused: ' + doc['refused']['requirement']:>29}")
                    continue
                known = linkage.targets(series, doc["report"], res)
                rate, singled = linkage.trajectory_rate(doc["records"], known)
                energy = linkage.energy_rate(doc["records"], known, doc["report"], res)
                cells.append(f"{singled:>{15 if linkable else 17}.1%} {rate:>6.1%} {energy:>6.1%}")
            default = "linked" if rules.linkable else "unlinked"
            print(f"{level:<9} {n:>10}  {cells[0]}  {cells[1]}  {1 / rules.k:>5.1%}  {default:<8} "
                  f"{time.perf_counter() - started:>7.1f}")


def _suppression_only(series, rules, res, periods) -> str:
    """The baseline: keep every attribute exact and suppress what does not meet the level."""
    from agent.privacy import anonymize as module

    lattice = module.lattice
    module.lattice = lambda: [node for node in lattice() if node.height == 0]
    try:
        result = anonymize(series, rules, resolution_s=res, level="baseline", periods=periods)
    finally:
        module.lattice = lattice
    if isinstance(result, Refusal):
        return f"refused ({result.requirement})"
    return f"{result.audit['rows_suppressed'] / (len(series) * len(periods)):.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=200)
    args = parser.parse_args()
    if not dp.available():
        print(dp.unavailable_reason())
    else:
        bench_dp(args.releases)
    bench_release_cost(grid_quantities=False)
    bench_release_cost()
    bench_grid()
    bench_anonymized()
    bench_linkage()
    return 0


if __name__ == "__main__":
    sys.exit(main())
