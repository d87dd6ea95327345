"""Utility beside privacy, on synthetic neighbourhoods (agent/privacy/synthetic.py, seeded).

1. DP aggregates: the median relative error of the released sum against the true one, for 10, 100 and
   1,000 households, at the default level settings (epsilon 1 per window, split over consumption and
   production; clamp 5 kW; a tagged appliance gets the whole epsilon and a 1 kW clamp). Baseline, in
   the same run: the analytic expectation for Laplace noise, median |noise| = b ln 2 with b = U/epsilon,
   over the true sum; and the same at the 17.25 kW clamp a 3x25 A connection would need.
2. Anonymized releases: the share of rows and households suppressed, the k, l, t achieved and the
   generalization chosen, for the dso (15 min) and supplier (1 h) defaults over one day. Baseline:
   suppression alone, without generalizing anything (the lattice's bottom node).

    .venv/bin/python bench/privacy.py [--releases 400]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import DEFAULT_LEVELS  # noqa: E402
from agent.privacy import dp  # noqa: E402
from agent.privacy.anonymize import Refusal, anonymize  # noqa: E402
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


def dp_error(values: list[float], clamp: int, epsilon: float, releases: int) -> tuple[float, float, float]:
    mechanism = dp.calibrate("laplace", clamp, epsilon)
    truth = sum(min(max(v, 0), clamp) for v in values)
    exact = sum(values)
    started = time.perf_counter()
    errors = [abs(mechanism.release(values) - exact) / exact for _ in range(releases)]
    per_release_us = (time.perf_counter() - started) / releases * 1e6
    expected = mechanism.scale * math.log(2) / truth  # median |Laplace(b)| = b ln 2
    return statistics.median(errors), expected, per_release_us


def bench_dp(releases: int) -> None:
    cfg = DEFAULT_LEVELS["dso"].dp
    print(f"DP sums (OpenDP {dp.OPENDP_VERSION}, discrete Laplace), median relative error over {releases} releases")
    print(f"{'households':>10}  {'quantity':<34}  {'error':>8}  {'expected':>8}  {'at 17.25 kW':>11}  {'us/release':>10}")
    for n in (10, 100, 1000):
        power, fridge = window_values(n, seed=n)
        half = cfg.epsilon / 2
        err, expected, us = dp_error(power, cfg.clamp_w, half, releases)
        wide, _, _ = dp_error(power, 17250, half, releases)
        print(f"{n:>10}  {'consumption 19:00, eps 0.5, 5 kW':<34}  {err:>8.1%}  {expected:>8.1%}  {wide:>11.1%}  {us:>10.0f}")
        night, _ = window_values(n, seed=n, moment=NIGHT)
        err, expected, us = dp_error(night, cfg.clamp_w, half, releases)
        wide, _, _ = dp_error(night, 17250, half, releases)
        print(f"{n:>10}  {'consumption 03:00, eps 0.5, 5 kW':<34}  {err:>8.1%}  {expected:>8.1%}  {wide:>11.1%}  {us:>10.0f}")
        err, expected, us = dp_error(fridge, cfg.tag_clamp_w, cfg.epsilon, releases)
        print(f"{n:>10}  {'tag fridge, eps 1, clamp 1 kW':<34}  {err:>8.1%}  {expected:>8.1%}  {'':>11}  {us:>10.0f}")
    print(f"  (mean load per household here: {statistics.fmean(window_values(1000, 1000)[0]):.0f} W at 19:00, "
          f"{statistics.fmean(window_values(1000, 1000, NIGHT)[0]):.0f} W at 03:00; "
          f"budget per organization and day: epsilon {cfg.epsilon_per_day:g})")


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
            print(f"{level:<9} {n:>10} {rows:>7} {r['rows_suppressed'] / rows:>10.1%} "
                  f"{r['households_suppressed'] / n:>8.1%} {r['k']:>4} {r['l']:>3} {r['t']:>6.3f} {general:<28} "
                  f"{only:>13} {seconds:>7.2f}")


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
    return f"{result.report['rows_suppressed'] / (len(series) * len(periods)):.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=400)
    args = parser.parse_args()
    if not dp.available():
        print(dp.unavailable_reason())
    else:
        bench_dp(args.releases)
    bench_anonymized()
    return 0


if __name__ == "__main__":
    sys.exit(main())
