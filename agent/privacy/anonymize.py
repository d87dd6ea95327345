"""Anonymized per-household data: generalization and suppression until a level's k, l and t hold.

No I/O. The caller hands over, per household, its static attributes and its mean consumption per
period (15 min or 1 h) of one UTC day; `release_day` returns the day's release as a JSON document
(the rows and a report, or the requirement that could not be met), which the caller records once and
answers every later request from (`select`). A release never falls below its level: every figure in
the report is measured on the rows actually released, and a release that misses one is refused.

The release grid is fixed: one release per whole UTC day at the level's resolution. Generalization and
suppression are decided once for the day, so a narrower or later request can only ever return a subset
of the day's recorded rows, never a row the day's release suppressed.

The model (what an attacker is assumed to know, and what is protected):
- quasi-identifiers: the period (time is always known) and the household's static attributes,
  which single a household out: has PV, has gas, single or three phase, connection size class;
- sensitive attribute: the household's consumption in the period, as a bin (`consumption_w_from`,
  the lower edge in watts; the top bin is open);
- an equivalence class is the set of rows with equal quasi-identifiers, i.e. the households of one
  period with the same (generalized) profile: every period is a release of its own whose classes
  meet k, l and t by themselves, and every released bin of a class holds at least `min_cell` rows (the
  threshold rule of frequency tables: a value held by one household of its class, such as an EV charging
  in the open top bin, would otherwise point at it in every period). Rarer values are recoded, never
  suppressed (`class_bins`): a suppressed row would leave its class one row short in exactly the periods
  its household stood out, and a count of them would say so too (red team 7, R7-2). k: the smallest
  class; l: the fewest distinct bins in a class;
  t: the largest earth mover's distance (ordered, over the whole bin grid, normalized by its
  length - 1) between a class's bin distribution and the level's fixed reference distribution
  (`Anonymization.reference_cdf`): the decision about one class never depends on other rows.
- linkage: unless the level is `linkable` (the custodian), rows carry no pseudonym and are sorted by
  their content, so neither an identifier nor a position links a household's periods; what still links
  rows is the static profile, and a profile is only released in a period where at least k households
  share it. A linkable level gets one fresh random pseudonym per household per day release.

Transformations, in order of preference (a lattice searched from the least generalized node):
each static attribute can be kept or replaced by "*", the connection class can first be coarsened
to "<=35A"/">35A", and the consumption bins can be widened x2 and x4; one node for the whole day.
At each node, every class's bins are first merged around those held by min_cell rows (`class_bins`), then
classes smaller than k, with fewer than l bins, or further than t from the reference are suppressed whole, and the
node is usable if it suppresses at most `max_suppression` of the day's rows. Among the least generalized usable
nodes the one suppressing the fewest rows wins (then the one recoding the fewest). How many rows were suppressed
is the operator's (`Release.audit`), never in the report: it depends on the households' values.
"""

from __future__ import annotations

import bisect
import itertools
import secrets
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

from agent.config import Anonymization
from drivers.reading import iso, unix_seconds

QUASI_IDENTIFIERS = ("period_start", "has_pv", "has_gas", "phases", "connection")
SENSITIVE_ATTRIBUTE = "consumption_w_from"
STATIC = ("has_pv", "has_gas", "phases", "connection")
TOP_W = 4000  # loads from about this many watts up share one open bin: a very high load would stand out
ANY = "*"


@dataclass(frozen=True)
class StaticAttributes:
    has_pv: bool
    has_gas: bool
    phases: int  # 1 or 3
    max_current_a: float | None  # the highest phase current seen (15-minute means)


@dataclass
class HouseholdSeries:
    household_id: str  # internal; never released
    static: StaticAttributes
    consumption_w: dict[int, float]  # period start (Unix s) -> mean consumption in W


def connection_class(static: StaticAttributes) -> str:
    """A coarse connection size from the highest current seen (a lower bound of the fuse)."""
    if static.max_current_a is None:
        return ANY
    phases = "3x" if static.phases == 3 else "1x"
    if static.max_current_a <= 25:
        return f"{phases}<=25A"
    if static.max_current_a <= 35:
        return f"{phases}<=35A"
    return f"{phases}>35A"


def static_from_rollups(rows: list[dict]) -> StaticAttributes:
    """Derive the attributes from stored rollups: export ever > 0 -> PV; a gas reading -> gas;
    a voltage on L2 -> three phase; the highest phase current -> connection size."""
    has_pv = any((r.get("power_export_w_max") or r.get("power_export_w") or 0) > 0 for r in rows)
    has_gas = any(r.get("gas_m3") is not None for r in rows)
    three = any(r.get("voltage_l2_v") is not None or r.get("current_l2_a") is not None for r in rows)
    currents = [r[name] for r in rows for name in ("current_l1_a", "current_l2_a", "current_l3_a")
                if r.get(name) is not None]
    return StaticAttributes(has_pv, has_gas, 3 if three else 1, max(currents) if currents else None)


# --- the generalization lattice ----------------------------------------------------------------
def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _coarse_connection(label: str) -> str:
    if label == ANY:
        return ANY
    return ">35A" if label.endswith(">35A") else "<=35A"


# attribute -> one function per generalization level (the last one always gives "*")
LADDERS = {
    "has_pv": (lambda s: _yes_no(s.has_pv), lambda s: ANY),
    "has_gas": (lambda s: _yes_no(s.has_gas), lambda s: ANY),
    "phases": (lambda s: str(s.phases), lambda s: ANY),
    "connection": (connection_class, lambda s: _coarse_connection(connection_class(s)), lambda s: ANY),
}
BIN_FACTORS = (1, 2, 4)
LEVEL_NAMES = {"has_pv": ("exact", "suppressed"), "has_gas": ("exact", "suppressed"),
               "phases": ("exact", "suppressed"), "connection": ("exact", "coarse", "suppressed")}


@dataclass(frozen=True)
class Node:
    levels: tuple[int, int, int, int]  # per STATIC attribute
    bins: int  # index into BIN_FACTORS

    @property
    def height(self) -> int:
        return sum(self.levels) + self.bins


def lattice() -> list[Node]:
    ranges = [range(len(LADDERS[name])) for name in STATIC]
    nodes = [Node(tuple(levels), b) for levels in itertools.product(*ranges) for b in range(len(BIN_FACTORS))]
    # least generalized first; at equal height, generalize the static attributes before the values
    return sorted(nodes, key=lambda n: (n.height, n.bins, n.levels))


def top_of(width: int) -> int:
    """The lower edge of the open top bin: TOP_W rounded down to a whole bin (at least one bin)."""
    return max(width, TOP_W // width * width)


def bin_of(value_w: float, width: int) -> tuple[int, int | None]:
    low = max(0, int(value_w // width)) * width
    top = top_of(width)
    return (top, None) if low >= top else (low, low + width)


def class_bins(lows: list[int], width: int, min_cell: int) -> dict[int, tuple[int, int | None]]:
    """A class's released bin for each grid bin (lower edge) its rows are in: (from, to), to None for open.

    With the threshold rule (min_cell > 1) the class's bins are the grid bins that at least min_cell of its rows
    hold, each widened up to the next such bin, the lowest from 0 and the highest open: a row alone (or too rare)
    in its grid bin is released in the class's bin that contains it. The bins' edges are a function of which grid
    bins are held by min_cell rows, never of where the rarer rows are; every released row is in its class and its
    bin is true. Without the rule, the grid's own bins."""
    top = top_of(width)
    if min_cell <= 1:
        return {low: (low, None if low >= top else low + width) for low in set(lows)}
    cells = Counter(lows)
    held = sorted(low for low, n in cells.items() if n >= min_cell)
    if not held:  # no bin of the class is held by min_cell rows: one bin, everything (l then decides)
        return {low: (0, None) for low in cells}
    starts = [0, *held[1:]]
    ends: list[int | None] = [*held[1:], None]
    return {low: (starts[i], ends[i]) for low in cells for i in [max(0, bisect.bisect_right(held, low) - 1)]}


# --- the measures ---------------------------------------------------------------------------------
def grid(width: int) -> list[int]:
    """The lower edges of every bin at this width, the open top bin last: the support t is measured over."""
    return list(range(0, top_of(width) + 1, width))


def _cdf(reference: tuple[tuple[float, float], ...], watts: float) -> float:
    """The reference's cumulative share at `watts`, linear between its points."""
    for (w0, s0), (w1, s1) in zip(reference, reference[1:]):
        if watts <= w1:
            return s0 + (s1 - s0) * (watts - w0) / (w1 - w0) if watts > w0 else s0
    return 1.0


def reference_masses(reference: tuple[tuple[float, float], ...], width: int) -> dict[int, float]:
    """The reference's share in each bin of the grid at this width (the top bin takes the rest)."""
    edges = grid(width)
    masses = {low: _cdf(reference, low + width) - _cdf(reference, low) for low in edges[:-1]}
    masses[edges[-1]] = 1.0 - _cdf(reference, edges[-1])
    return masses


def emd_ordered(class_counts: Counter, reference: dict[int, float]) -> float:
    """Earth mover's distance between a class's bin distribution and the reference's, over the whole
    ordered grid (the reference's keys), normalized by (m - 1) so that it lies in [0, 1]."""
    values = sorted(reference)
    m = len(values)
    if m <= 1:
        return 0.0
    n_class = sum(class_counts.values())
    running = distance = 0.0
    for value in values:
        running += class_counts.get(value, 0) / n_class - reference[value]
        distance += abs(running)
    return distance / (m - 1)


def measure(classes: dict[tuple, list], reference: dict[int, float]) -> tuple[int, int, float]:
    """(k, l, t) of released rows grouped into classes of sensitive values; t against the reference."""
    if not classes:
        return 0, 0, 0.0
    k = min(len(values) for values in classes.values())
    l_div = min(len(set(values)) for values in classes.values())
    t = max(emd_ordered(Counter(values), reference) for values in classes.values())
    return k, l_div, t


# --- one release -------------------------------------------------------------------------------
@dataclass
class Refusal:
    requirement: str  # "k", "l", "t" or "data"
    detail: str
    households: int  # for the audit log only: never shown to an organization
    rows: int


@dataclass
class Release:
    records: list[dict]
    report: dict
    audit: dict  # the operator's: rows suppressed, per requirement (they depend on values; never in a report)


@dataclass
class _Outcome:
    node: Node
    kept: dict[tuple, list]  # class key -> [(household index, period, bin from, bin to)]
    suppressed: dict[str, int] = field(default_factory=lambda: {"k": 0, "l": 0, "t": 0})
    recoded: int = 0  # rows of grid bins fewer than min_cell rows of their class hold (the threshold rule)

    @property
    def suppressed_rows(self) -> int:
        return sum(self.suppressed.values())


TIGHT = 1e-9  # float slack when comparing a measured t with the level's bound


def _evaluate(node: Node, rows: list[tuple[int, int, float]], profiles: list[tuple[str, ...]],
              rules: Anonymization, width: int) -> _Outcome:
    classes: dict[tuple, list] = defaultdict(list)
    for household, period, value in rows:
        classes[(period, profiles[household])].append((household, period, bin_of(value, width)[0]))
    reference = reference_masses(rules.reference_cdf, width) if rules.t < 1.0 else None
    outcome = _Outcome(node, {})
    for key, grid_members in classes.items():
        # each class is decided on its own rows and fixed facts (k, l, t, the reference): never on other classes.
        # The threshold rule recodes, so the class keeps every row: its size is a matter of who sent data only.
        bins = class_bins([m[2] for m in grid_members], width, rules.min_cell)
        members = [(household, period, *bins[low]) for household, period, low in grid_members]
        if rules.min_cell > 1:
            cells = Counter(m[2] for m in grid_members)
            outcome.recoded += sum(n for n in cells.values() if n < rules.min_cell)
        if len(members) < rules.k:
            outcome.suppressed["k"] += len(members)
        elif len({m[2] for m in members}) < rules.l:
            outcome.suppressed["l"] += len(members)
        elif reference and emd_ordered(Counter(m[2] for m in members), reference) > rules.t + TIGHT:
            outcome.suppressed["t"] += len(members)
        else:
            outcome.kept[key] = members
    return outcome


def anonymize(series: list[HouseholdSeries], rules: Anonymization, *, resolution_s: int, level: str,
              periods: list[int]) -> Release | Refusal:
    """Anonymize one release: `series` are the cohort's households, `periods` the period starts it covers."""
    wanted = set(periods)
    rows = [(i, period, value) for i, hh in enumerate(series)
            for period, value in sorted(hh.consumption_w.items()) if period in wanted]
    households = len({r[0] for r in rows})
    if not rows or households < rules.k:
        return Refusal("k", f"fewer than {rules.k} consenting households have data in this release; level "
                       f"{level!r} needs k >= {rules.k}", households, len(rows))
    best: _Outcome | None = None
    closest: _Outcome | None = None
    best_height = None
    for node in lattice():
        if best_height is not None and node.height > best_height:
            break
        ladders = [LADDERS[name][level_i] for name, level_i in zip(STATIC, node.levels)]
        profiles = [tuple(f(hh.static) for f in ladders) for hh in series]
        width = rules.value_bin_w * BIN_FACTORS[node.bins]
        outcome = _evaluate(node, rows, profiles, rules, width)
        if closest is None or outcome.suppressed_rows < closest.suppressed_rows:
            closest = outcome
        if outcome.kept and outcome.suppressed_rows <= rules.max_suppression * len(rows):
            if best is None or (outcome.suppressed_rows, outcome.recoded) < (best.suppressed_rows, best.recoded):
                best, best_height = outcome, node.height
    if best is None:
        return _refusal(closest, rules, households, len(rows), level)
    return _release(best, rows, rules, resolution_s, level, households)


def _refusal(closest: _Outcome, rules: Anonymization, households: int, rows: int, level: str) -> Refusal:
    limit = rules.max_suppression * rows
    s = closest.suppressed
    if s["k"] > limit or not closest.kept and s["l"] == s["t"] == 0:
        requirement, what = "k", f"k >= {rules.k} (classes of the same period and profile too small)"
    elif s["k"] + s["l"] > limit or not closest.kept and s["t"] == 0:
        requirement, what = "l", f"l >= {rules.l} (too few distinct consumption bins in a class)"
    else:
        requirement, what = "t", f"t <= {rules.t:g} (a class's consumption too far from the level's reference)"
    # No share of rows: how many a generalization would suppress depends on the households' values (R7-2).
    return Refusal(requirement, f"cannot meet {what} for level {level!r}: every generalization would suppress "
                   f"more than {rules.max_suppression:.0%} of the day's rows; wait for more households to consent",
                   households, rows)


def _release(outcome: _Outcome, rows: list, rules: Anonymization, resolution_s: int, level: str,
             households: int) -> Release:
    node = outcome.node
    width = rules.value_bin_w * BIN_FACTORS[node.bins]
    pseudonyms: dict[int, str] = {}
    records = []
    for (period, profile), members in outcome.kept.items():
        for household, _, low, high in members:
            record = {
                "period_start": iso(datetime.fromtimestamp(period, timezone.utc)),
                "period_end": iso(datetime.fromtimestamp(period + resolution_s, timezone.utc)),
                **dict(zip(STATIC, profile)),
                "consumption_w_from": low,
                "consumption_w_to": high,
            }
            if rules.linkable:  # the custodian: one fresh random pseudonym per household in this release
                record = {"pseudonym": pseudonyms.setdefault(household, "p_" + secrets.token_hex(6)), **record}
            else:
                pseudonyms.setdefault(household, "")
            records.append(record)
    # The order says nothing the content does not: by period then pseudonym (random) or then content.
    records.sort(key=_record_order)
    reference = reference_masses(rules.reference_cdf, width)
    k, l_div, t = measure({key: [m[2] for m in members] for key, members in outcome.kept.items()}, reference)
    report = {
        "level": level,
        "quasi_identifiers": list(QUASI_IDENTIFIERS),
        "sensitive_attribute": SENSITIVE_ATTRIBUTE,
        "k": k, "l": l_div, "t": round(t, 6),
        "t_against": "the level's fixed reference distribution (reference_cdf)",
        "epsilon": None,
        "epsilon_spent": 0.0,
        "required": {"k": rules.k, "l": rules.l, "t": rules.t, "min_cell": rules.min_cell,
                     "max_suppression": rules.max_suppression},
        "resolution": "15m" if resolution_s == 900 else "1h",
        "generalization": {**{name: LEVEL_NAMES[name][lvl] for name, lvl in zip(STATIC, node.levels)},
                           "value_bin_w": width, "top_bin_from_w": top_of(width)},
        "bins": (f"per class: from a grid edge held by at least {rules.min_cell} of its rows to the next such "
                 "edge, the lowest from 0, the highest open" if rules.min_cell > 1 else "the grid's"),
        "rows": len(records),
        "linkable": rules.linkable,
        "pseudonyms": "one per household, fresh per day release" if rules.linkable else "none: rows are not linked",
    }
    if rules.linkable:  # unlinked rows do not say how many households they came from
        report["households"] = len(pseudonyms)
        report["households_suppressed"] = households - len(pseudonyms)
    assert k >= rules.k and l_div >= rules.l and t <= rules.t + TIGHT, report  # never below the level
    return Release(records, report, {"rows_suppressed": outcome.suppressed_rows,
                                     "suppressed_for": dict(outcome.suppressed), "rows_recoded": outcome.recoded})


def _record_order(record: dict) -> tuple:
    return (record["period_start"], record.get("pseudonym", ""), *(record[name] for name in STATIC),
            record["consumption_w_from"])


# --- the day: the unit that is released once and recorded ----------------------------------------
DAY_S = 86400


def day_of(moment: float) -> int:
    return int(moment // DAY_S) * DAY_S


def day_periods(day: int, resolution_s: int) -> list[int]:
    return list(range(day, day + DAY_S, resolution_s))


def release_day(series: list[HouseholdSeries], rules: Anonymization, *, resolution_s: int, level: str,
                day: int) -> dict:
    """The whole day's release as the JSON document that is recorded: {"day", "records", "report", "audit"} or
    {"day", "refused": {"requirement", "detail"}, "audit": {...}}; "audit" is the operator's, never answered."""
    result = anonymize(series, rules, resolution_s=resolution_s, level=level, periods=day_periods(day, resolution_s))
    stamp = iso(datetime.fromtimestamp(day, timezone.utc))
    if isinstance(result, Refusal):
        return {"day": stamp, "refused": {"requirement": result.requirement, "detail": result.detail},
                "audit": {"households": result.households, "rows": result.rows}}
    return {"day": stamp, "records": result.records, "report": {**result.report, "day": stamp}, "audit": result.audit}


def select(document: dict, since: float, until: float) -> list[dict]:
    """The recorded rows of the periods that overlap [since, until): never anything else."""
    out = []
    for record in document.get("records", ()):
        start = unix_seconds(record["period_start"])
        end = unix_seconds(record["period_end"])
        if start < until and end > since:
            out.append(record)
    return out
