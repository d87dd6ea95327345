"""Synthetic neighbourhoods for the privacy tests and benchmark: plausible static attributes and
daily load profiles (base load, morning and evening peaks, PV households importing less by day).
Seeded, so a figure printed by the benchmark can be reproduced."""

from __future__ import annotations

import math
import random

from agent.privacy.anonymize import HouseholdSeries, StaticAttributes


def household_static(rng: random.Random) -> StaticAttributes:
    three = rng.random() < 0.3
    return StaticAttributes(has_pv=rng.random() < 0.35, has_gas=rng.random() < 0.7, phases=3 if three else 1,
                            max_current_a=round(min(60.0, rng.lognormvariate(math.log(12), 0.5)), 1))


def consumption_at(rng: random.Random, static: StaticAttributes, base: float, moment: float) -> float:
    hour = (moment % 86400) / 3600
    peak = 600 * math.exp(-((hour - 7.5) ** 2) / 2) + 1200 * math.exp(-((hour - 19) ** 2) / 4)
    value = base + peak * rng.uniform(0.3, 1.5) + rng.expovariate(1 / 150)
    if static.has_pv and 8 <= hour <= 17:
        value *= rng.uniform(0.1, 0.6)
    return round(value, 1)


def neighbourhood(households: int, periods: list[int], seed: int = 0) -> list[HouseholdSeries]:
    rng = random.Random(seed)
    out = []
    for i in range(households):
        static = household_static(rng)
        base = rng.uniform(120, 450)
        out.append(HouseholdSeries(f"hh_{i:04d}", static,
                                   {p: consumption_at(rng, static, base, p) for p in periods}))
    return out
