"""Grid quantities of a neighbourhood, as a release's `grid` part: voltage per phase and long power failures.

No I/O. Nothing here is an order statistic of raw values (a neighbourhood's highest voltage is one household's
exact value). Each household counts once per phase per window, in one voltage band fixed by this module (never by
the caller or the data): a band's count is a sum of 0/1 indicators, released like every sum (exact: audited;
noisy: OpenDP). Min and max are read off the released counts (post-processing); the mean is a released clamped
sum over the households counted. A meter's long power failures are one 0/1 indicator per window (its count rose).

Exact parts are computed by `WindowTable.part` for a cohort the door has audited; noisy parts by `noisy_part`, whose
noise is OpenDP's (agent/privacy/dp.py); wider windows are derived from the released fine parts (`derive`).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent.privacy import dp
from agent.release.records import RefusalCode
from drivers.reading import PHASES

if TYPE_CHECKING:
    from agent.aggregates import Contribution

Json = dict[str, Any]

# EN 50160 for a nominal 230 V: 10-minute means within +-10 % (207-253 V) 95 % of a week and within -15 %/+10 %
# always; between them, 2.5 % steps (5.75 V): the resolution of min_v and max_v.
BAND_EDGES_V = (195.5, 207.0, 212.75, 218.5, 224.25, 230.0, 235.75, 241.5, 247.25, 253.0, 264.5)
BANDS = len(BAND_EDGES_V) + 1  # the lowest and highest are open
# Noisy mean voltage: each household's mean clamped to [VOLT_FLOOR_V, VOLT_FLOOR_V + VOLT_SPAN_V], in 0.1 V.
VOLT_FLOOR_V, VOLT_SPAN_V = 180.0, 100.0
VOLTAGE = tuple(f"voltage_{p}" for p in PHASES)
FAILURES = "long_power_failures"
QUANTITIES = (*VOLTAGE, FAILURES)
# What an organization's parameters must permit for each quantity (agent/parameters.py names them).
PARAMETERS = {**{q: tuple(f"neighborhood_{q}_{s}" for s in ("min", "max", "mean")) for q in VOLTAGE},
              FAILURES: ("neighborhood_long_power_failures",)}
NOISY_BAND_SDS = 3  # noisy levels: a band counts toward min/max only when its count is 3 noise sds or more


def level_quantity(quantity: str) -> str:
    """The [levels.X.dp] grid name a quantity belongs to (config.GRID_QUANTITIES)."""
    return "voltage" if quantity in VOLTAGE else quantity


def band_of(volts: float) -> int:
    return bisect.bisect_right(BAND_EDGES_V, volts)


def band_range(band: int) -> tuple[float | None, float | None]:
    return (BAND_EDGES_V[band - 1] if band > 0 else None, BAND_EDGES_V[band] if band < len(BAND_EDGES_V) else None)


def value_of(quantity: str, c: Contribution | None) -> float | None:
    """One household's value of the quantity in the window (None: it does not report it)."""
    if c is None:
        return None
    if quantity == FAILURES:
        return c.long_failure
    return c.voltage_v.get(quantity.removeprefix("voltage_"))


def _extremes(counts: Sequence[int], threshold: float) -> tuple[float | None, float | None]:
    """The lower edge of the lowest band and the upper edge of the highest band holding at least `threshold`
    (an open band gives its one edge): bounds on the lowest and highest household mean, to one band."""
    held = [b for b, n in enumerate(counts) if n >= threshold]
    if not held:
        return None, None
    low, high = band_range(held[0]), band_range(held[-1])
    return (low[0] if low[0] is not None else low[1]), (high[1] if high[1] is not None else high[0])


class WindowTable:
    """One window's grid values, per meter, shared by every organization deciding it: each quantity's values
    and totals over every meter reporting it, computed once; an organization's part is the totals minus the
    few reporting meters outside its cohort (cohorts are mostly alike), and equal cohorts share one part."""

    def __init__(self, contributions: Mapping[str, Contribution]):
        self.contributions = contributions
        self._values: dict[str, dict[str, float]] = {}
        self._reporting: dict[str, frozenset[str]] = {}
        self._totals: dict[str, tuple[list[int], float]] = {}
        self._parts: dict[tuple[str, frozenset[str]], Json] = {}

    def values(self, quantity: str) -> dict[str, float]:
        found = self._values.get(quantity)
        if found is None:
            items = self.contributions.items()
            if quantity == FAILURES:
                found = {m: c.long_failure for m, c in items if c.long_failure is not None}
            else:
                phase = quantity.removeprefix("voltage_")
                found = {m: c.voltage_v[phase] for m, c in items if phase in c.voltage_v}
            self._values[quantity] = found
        return found

    def reporting(self, quantity: str) -> frozenset[str]:
        found = self._reporting.get(quantity)
        if found is None:
            found = self._reporting[quantity] = frozenset(self.values(quantity))
        return found

    def part(self, quantity: str, meters: frozenset[str]) -> Json:
        key = (quantity, meters)
        found = self._parts.get(key)
        if found is None:
            values = self.values(quantity)
            totals = self._totals.get(quantity)
            if totals is None:
                totals = self._totals[quantity] = _tally(values.values())
            counts, total = list(totals[0]), totals[1]
            for m in values.keys() - meters:  # reporting, but not in this cohort
                counts[band_of(values[m])] -= 1
                total -= values[m]
            found = self._parts[key] = _part(quantity, counts, total, len(meters))
        return dict(found)


def _tally(values: Iterable[float]) -> tuple[list[int], float]:
    counts, total = [0] * BANDS, 0.0
    for v in values:
        counts[bisect.bisect_right(BAND_EDGES_V, v)] += 1
        total += v
    return counts, total


def _part(quantity: str, counts: list[int], total: float, households: int) -> Json:
    if quantity == FAILURES:
        return {"households": households, "meters": int(round(total))}
    low, high = _extremes(counts, 1)
    return {"households": households, "counts": counts, "min_v": low, "max_v": high,
            "mean_v": round(total / households, 2)}


def quantities_cost(quantities: Sequence[str]) -> int:
    """Noisy measurements the quantities take: a histogram and a sum per phase, one count for failures."""
    return sum(2 if q in VOLTAGE else 1 for q in quantities)


def noisy_part(quantities: Sequence[str], rows: list[Contribution | None], rho: float) -> Json:
    """Noisy quantities over the whole consenting cohort (a household without the value adds nothing to a
    histogram or sum, and counts 0 toward failures): `rho` split evenly over the measurements, each OpenDP's."""
    share = rho / quantities_cost(quantities)
    bands = dp.calibrate_histogram(BANDS, share)
    volts = dp.calibrate_rho(int(VOLT_SPAN_V * 10), share)
    failures = dp.calibrate_rho(1, share)
    out: Json = {}
    for q in quantities:
        values = [value_of(q, c) for c in rows]
        if q == FAILURES:
            out[q] = {"meters": failures.release([v or 0 for v in values])}
            continue
        present = [v for v in values if v is not None]
        counts = bands.release([band_of(v) for v in present])
        low, high = _extremes(counts, NOISY_BAND_SDS * bands.scale)
        total = volts.release([(min(max(v, VOLT_FLOOR_V), VOLT_FLOOR_V + VOLT_SPAN_V) - VOLT_FLOOR_V) * 10
                               for v in present])
        reporting = sum(counts)
        mean = VOLT_FLOOR_V + total / 10 / reporting if reporting > 0 else None
        out[q] = {"counts": counts, "min_v": low, "max_v": high,
                  "mean_v": None if mean is None else round(min(max(mean, VOLT_FLOOR_V), VOLT_FLOOR_V + VOLT_SPAN_V), 2)}
    out["privacy"] = {"kind": "noisy", "mechanism": "discrete_gaussian", "rho": rho,
                      "measurements": quantities_cost(quantities), "count_sd": round(bands.scale, 3),
                      "voltage_clamp_v": [VOLT_FLOOR_V, VOLT_FLOOR_V + VOLT_SPAN_V],
                      "voltage_sum_sd_v": round(volts.scale / 10, 3), "failures_sd": round(failures.scale, 3),
                      "band_threshold": round(NOISY_BAND_SDS * bands.scale, 3)}
    return out


@functools.lru_cache(maxsize=64)
def refused(error: str, detail: str) -> Json:
    """One shared object per refusal (records are never changed once made): a dso keeps an hour of 1 s records."""
    return {"refused": {"error": error, "detail": detail}}


def derive(parts: list[Json]) -> Json:
    """A wider window's grid part from its released fine parts: counts summed (household-windows per band;
    meters whose count rose, per window), min of mins, max of maxes, means weighted by households (noisy: plain
    mean). A quantity refused in any fine window is refused."""
    out: Json = {}
    names = [q for q in QUANTITIES if q in parts[0]]
    for q in names:
        fine: list[Json] = [p[q] for p in parts if q in p]
        if len(fine) < len(parts) or any("refused" in f for f in fine):
            out[q] = refused(RefusalCode.INCOMPLETE, "a shorter window in it did not release it")
            continue
        if q == FAILURES:
            out[q] = {"meters": sum(f["meters"] for f in fine)}
            if "households" in fine[0]:
                out[q] = {"households": max(f["households"] for f in fine), **out[q]}
            continue
        part: Json = {"counts": [sum(col) for col in zip(*(f["counts"] for f in fine))]}
        lows = [f["min_v"] for f in fine if f["min_v"] is not None]
        highs = [f["max_v"] for f in fine if f["max_v"] is not None]
        part["min_v"], part["max_v"] = (min(lows) if lows else None), (max(highs) if highs else None)
        means = [f["mean_v"] for f in fine]
        if "households" in fine[0]:
            weights = [f["households"] for f in fine]
            part = {"households": max(weights), **part,
                    "mean_v": round(sum(m * w for m, w in zip(means, weights)) / sum(weights), 2)}
        else:
            part["mean_v"] = None if any(m is None for m in means) else round(sum(means) / len(means), 2)
        out[q] = part
    if "privacy" in parts[0]:
        privacy = dict(parts[0]["privacy"])
        privacy["derived_from"] = len(parts)
        out["privacy"] = privacy
    return out

