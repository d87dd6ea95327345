"""The linkage attacks anonymized releases are measured against (tests and bench/privacy.py): what an
organization that knows a few facts about a household can do with the released rows alone. No I/O.

The attacker knows of each target household its static attributes (what a DSO or supplier holds per
connection) and either its consumption in 3 periods (a smart plug, a visit, an earlier bill) or its energy
over the day (what a supplier bills on). It links rows into *entities* in every way the release allows:
- by every field that is not the period or the value (a pseudonym when there is one, the static profile);
- by position in the response within each period, and by position within each (period, profile).
An entity stands for m households: 1 when its rows are one row per period (a pseudonym, a position), or the
fewest rows it has in one period when it groups several (a profile: its rows cannot be told apart).

The figure is the probability that the attacker, picking the household most consistent with what it knows,
names the target's row in a period it did not know: 1 for an entity whose rows are the target's, 1/m for a
group of m; averaged over targets. Rows that nothing links give at most 1/k (every class holds k rows); a
linked series gives up to 1 (the P8 finding: 3 known quarter-hours singled out 91%).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.privacy.anonymize import LADDERS, LEVEL_NAMES, STATIC, HouseholdSeries, bin_of, top_of
from drivers.reading import iso

VALUE_FIELDS = ("period_start", "period_end", "consumption_w_from", "consumption_w_to")
KNOWN_PERIODS = 3


@dataclass(frozen=True)
class Target:
    """The ground truth of one household as the release would show it: its generalized profile and, per
    period (ISO start), its grid bin's lower edge (`as_released`: its class's released bin's)."""

    profile: tuple[str, ...]
    bins: Mapping[str, int | None]
    energy_wh: float  # over the day, exactly (the bill)


@dataclass
class Entity:
    rows: dict[str, list[tuple[tuple[str, ...], int]]]  # period -> [(profile, bin)]
    grouped: bool  # several households' rows (a profile group), not one row per period

    @property
    def households(self) -> int:
        return min(len(r) for r in self.rows.values()) if self.grouped else 1


def targets(series: list[HouseholdSeries], report: dict[str, Any], resolution_s: int) -> list[Target]:
    """What each household looks like under the release's generalization (read from its report)."""
    gen = report["generalization"]
    levels = [LEVEL_NAMES[name].index(gen[name]) for name in STATIC]
    width = gen["value_bin_w"]
    out = []
    for hh in series:
        profile = tuple(LADDERS[name][lvl](hh.static) for name, lvl in zip(STATIC, levels))
        bins = {iso(p): bin_of(v, width)[0] for p, v in hh.consumption_w.items()}
        energy = sum(hh.consumption_w.values()) * resolution_s / 3600
        out.append(Target(profile, bins, energy))
    return out


def as_released(known: list[Target], records: list[dict[str, Any]]) -> list[Target]:
    """The targets' bins as the release shows them: the lower edge of the released bin of their class that holds
    their value (a class's bins may be wider than the grid's: the threshold rule), None where none does."""
    shown: dict[tuple[str, tuple[str, ...]], list[tuple[int, int | None]]] = defaultdict(list)
    for record in records:
        shown[(record["period_start"], _profile(record))].append((record["consumption_w_from"],
                                                                  record["consumption_w_to"]))

    def released(period: str, profile: tuple[str, ...], low: int | None) -> int | None:
        if low is None:  # not shown: stays so
            return None
        return next((a for a, b in shown.get((period, profile), ()) if a <= low and (b is None or low < b)), None)

    return [Target(t.profile, {p: released(p, t.profile, low) for p, low in t.bins.items()}, t.energy_wh)
            for t in known]


def _profile(record: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(record[name]) for name in STATIC)


def entities(records: list[dict[str, Any]]) -> dict[str, list[Entity]]:
    """Every way of linking the rows, by strategy."""
    by_key: dict[tuple[tuple[str, str], ...], Entity] = {}
    by_position: dict[int, Entity] = {}
    by_class_position: dict[tuple[tuple[str, ...], int], Entity] = {}
    seen_in_period: dict[str, int] = defaultdict(int)
    seen_in_class: dict[tuple[str, tuple[str, ...]], int] = defaultdict(int)
    for record in records:
        period, row = record["period_start"], (_profile(record), record["consumption_w_from"])
        key = tuple(sorted((k, str(v)) for k, v in record.items() if k not in VALUE_FIELDS))
        by_key.setdefault(key, Entity(defaultdict(list), grouped=True)).rows[period].append(row)
        index = seen_in_period[period]
        seen_in_period[period] += 1
        by_position.setdefault(index, Entity(defaultdict(list), grouped=False)).rows[period].append(row)
        class_index = seen_in_class[(period, row[0])]
        seen_in_class[(period, row[0])] += 1
        by_class_position.setdefault((row[0], class_index), Entity(defaultdict(list), grouped=False)) \
            .rows[period].append(row)
    # A key that gives one row per period is one household's series (a pseudonym), not a group.
    for entity in by_key.values():
        entity.grouped = any(len(r) > 1 for r in entity.rows.values())
    return {"fields": list(by_key.values()), "position": list(by_position.values()),
            "position_in_class": list(by_class_position.values())}


def _contains(entity: Entity, target: Target) -> bool:
    if entity.grouped:
        return all(any(row[0] == target.profile for row in rows) for rows in entity.rows.values())
    return all(target.bins.get(period) == rows[0][1] and rows[0][0] == target.profile
               for period, rows in entity.rows.items())


def _success(consistent: list[Entity], target: Target) -> float:
    """The chance of naming the target's row: pick a household among the consistent ones, all alike."""
    total = sum(e.households for e in consistent)
    if not total:
        return 0.0
    return sum((e.households / total) * ((1 / e.households) if e.grouped else 1.0)
               for e in consistent if _contains(e, target))


Cell = tuple[str, tuple[str, ...], int | None]  # (period, profile, bin): a row as the release shows it (None: not)


def _index(strategy: list[Entity]) -> tuple[dict[Cell, list[int]], dict[tuple[str, ...], list[int]]]:
    """(period, profile, bin) -> entities showing that row; profile -> entities showing that profile."""
    by_cell: dict[Cell, list[int]] = defaultdict(list)
    by_profile: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, entity in enumerate(strategy):
        cells = {(period, *row) for period, rows in entity.rows.items() for row in rows}
        for cell in cells:
            by_cell[cell].append(i)
        for profile in {cell[1] for cell in cells}:
            by_profile[profile].append(i)
    return by_cell, by_profile


def trajectory_rate(records: list[dict[str, Any]], known: list[Target], seed: int = 0) -> tuple[float, float]:
    """3 known periods per target: (the attacker's success rate, the share of targets singled out, i.e.
    exactly one consistent household and it is the target), under the best linking strategy."""
    known = as_released(known, records)
    rng = random.Random(seed)
    picks = [rng.sample(sorted(t.bins), min(KNOWN_PERIODS, len(t.bins))) for t in known]
    best = (0.0, 0.0)
    for strategy in entities(records).values():
        by_cell, by_profile = _index(strategy)
        rates, singled = [], 0
        for target, periods in zip(known, picks):
            # a known period whose value the release does not show: the target was suppressed there
            facts = [(p, target.profile, target.bins[p]) for p in periods if (p, target.profile, target.bins[p])
                     in by_cell]
            ids = set(by_profile.get(target.profile, ()))
            for fact in facts:
                ids &= set(by_cell[fact])
            consistent = [strategy[i] for i in sorted(ids)]
            rates.append(_success(consistent, target))
            if sum(e.households for e in consistent) == 1 and _contains(consistent[0], target):
                singled += 1
        best = max(best, (sum(rates) / len(rates) if rates else 0.0, singled / len(known) if known else 0.0))
    return best


def energy_rate(records: list[dict[str, Any]], known: list[Target], report: dict[str, Any],
                resolution_s: int) -> float:
    """The day's energy per target (the bill): the attacker names the entity of the target's profile whose
    rows add up closest (a group: its mean household)."""
    known = as_released(known, records)
    width = report["generalization"]["value_bin_w"]
    top = top_of(width)
    hours = resolution_s / 3600

    # a bin's middle; a class's bins may be wider than the grid's (the threshold rule), an open one gets half a bin
    upper = {(r["period_start"], _profile(r), r["consumption_w_from"]): r["consumption_w_to"] for r in records}

    def middle(period: str, profile: tuple[str, ...], low: int) -> float:
        high: int | None = upper.get((period, profile, low))
        return (low + high) / 2 if high is not None else min(low, top) + width / 2

    def estimate(entity: Entity) -> float:
        return sum(sum(middle(period, p, b) for p, b in rows) / len(rows) * hours
                   for period, rows in entity.rows.items())

    best = 0.0
    for strategy in entities(records).values():
        pure: dict[tuple[str, ...], list[tuple[float, Entity]]] = defaultdict(list)  # entities of one profile only
        for entity in strategy:
            profiles = {row[0] for rows in entity.rows.values() for row in rows}
            if len(profiles) == 1:
                pure[profiles.pop()].append((estimate(entity), entity))
        rates = []
        for target in known:
            mine = pure.get(target.profile, [])
            if not mine:
                rates.append(0.0)
                continue
            closest = min(abs(value - target.energy_wh) for value, _ in mine)
            named = [e for value, e in mine if abs(value - target.energy_wh) == closest]
            rates.append(sum(((1 / e.households) if e.grouped else 1.0) for e in named if _contains(e, target))
                         / len(named))
        best = max(best, sum(rates) / len(rates) if rates else 0.0)
    return best
