"""Neighbourhood aggregates: windows of households' contributions, and the rules for releasing them.

No I/O. `WindowBook` collects each meter's mean power per UTC-aligned window as live readings
arrive; `release()` turns one window's contributions over one cohort into an answer, or refuses:
- fewer than `k_min` cohort households with data in the window (DESIGN.md: Dutch grid operators
  publish small-consumer data only over at least 10 connections);
- one household above `max_share` of the consumption total (it would be all but named). Above it in the
  production total only (at dawn and dusk one solar roof may be the only one exporting), the window goes out with
  its production fields (and net) left out and named in `suppressed`;
The cohort is fixed per window by the caller (consent at the window's start and end), so every
release of a window, now or later, is the same answer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from datetime import datetime, timezone

from agent.config import WINDOW_SECONDS
from drivers.reading import Reading, iso


@dataclass(slots=True)
class Contribution:
    """One household's part of one window: mean powers over the readings it sent in it."""

    consumption_w: float = 0.0
    production_w: float = 0.0
    samples: int = 0
    channels: dict[str, float] = field(default_factory=dict)


class Accumulator:
    __slots__ = ("imp", "exp", "n", "tag_sums", "tag_counts")

    def __init__(self):
        self.imp = self.exp = 0.0
        self.n = 0
        self.tag_sums: dict[str, float] = {}
        self.tag_counts: dict[str, int] = {}

    def add(self, reading: Reading) -> None:
        self.add_values(reading.power_import_w, reading.power_export_w, reading.channels)

    def add_values(self, imp: float | None, exp: float | None, channels: dict | None, weight: int = 1) -> None:
        """`weight` readings with these means (a stored rollup counts as its `count` readings)."""
        if imp is None and exp is None and not channels:
            return  # nothing this window can use
        self.n += weight
        self.imp += (imp or 0.0) * weight
        self.exp += (exp or 0.0) * weight
        for tag, watts in (channels or {}).items():
            self.tag_sums[tag] = self.tag_sums.get(tag, 0.0) + watts * weight
            self.tag_counts[tag] = self.tag_counts.get(tag, 0) + weight

    def result(self) -> Contribution | None:
        if not self.n:
            return None
        return Contribution(self.imp / self.n, self.exp / self.n, self.n,
                            {tag: total / self.tag_counts[tag] for tag, total in self.tag_sums.items()})


class WindowBook:
    """Recent windows of one width: {window start: {meter_id: accumulator}}, oldest dropped.

    `held_from` (the registry's `pending_since`) gives the time of a consent change still being written, or
    None: a window that ends after it is not closed yet, whatever the clock says, because its cohort depends on
    whether that write lands (releasing it now could disagree with what the durable history answers later)."""

    def __init__(self, width_s: int, keep: int, held_from: Callable[[], float | None] | None = None):
        self.width_s = width_s
        self.keep = keep
        self.held_from = held_from
        self._windows: OrderedDict[int, dict[str, Accumulator]] = OrderedDict()

    def window_start(self, moment: float) -> int:
        return int(moment // self.width_s) * self.width_s

    def add(self, reading: Reading) -> None:
        start = self.window_start(reading.received_at.timestamp())
        window = self._windows.get(start)
        if window is None:
            if self._windows and start < next(iter(self._windows)):
                return  # older than anything kept
            window = self._windows[start] = {}
            if len(self._windows) > 1 and start < next(reversed(self._windows)):
                self._windows = OrderedDict(sorted(self._windows.items()))
            while len(self._windows) > self.keep:
                self._windows.popitem(last=False)
        acc = window.get(reading.meter_id)
        if acc is None:
            acc = window[reading.meter_id] = Accumulator()
        acc.add(reading)

    def last_closed(self, now: float) -> int:
        """Start of the most recent window that has ended and is not held back by a consent change being
        written (a window ending exactly at the change's time is not affected by it)."""
        held = self.held_from() if self.held_from is not None else None
        if held is not None and held < now:
            now = held
        return self.window_start(now) - self.width_s

    def holds(self, start: int) -> bool:
        """Whether this window is still in memory (older ones are answered from the store)."""
        return start in self._windows or bool(self._windows) and start > next(iter(self._windows))

    def contributions(self, start: int) -> dict[str, Contribution]:
        window = self._windows.get(start, {})
        return {meter: c for meter, acc in window.items() if (c := acc.result()) is not None}

    def tags(self) -> set[str]:
        return {tag for window in self._windows.values() for acc in window.values() for tag in acc.tag_sums}


# Live windows kept in memory per width; older windows are answered from the store.
KEEP = {"1s": 120, "1m": 120, "15m": 8, "1h": 4}


def new_books(held_from: Callable[[], float | None] | None = None) -> dict[str, WindowBook]:
    return {name: WindowBook(WINDOW_SECONDS[name], KEEP[name], held_from) for name in WINDOW_SECONDS}


@dataclass(frozen=True)
class Refusal:
    error: str  # "cohort_too_small" or "dominated"
    detail: str
    households: int
    missing: int = 0


def release(contributions: dict[str, Contribution], cohort_meters: set[str], *, window: str, start: int,
            k_min: int, max_share: float, tag: str | None = None) -> dict | Refusal:
    width = WINDOW_SECONDS[window]
    if tag is None:
        members = [c for meter, c in contributions.items() if meter in cohort_meters]
        consumption = [c.consumption_w for c in members]
        production = [c.production_w for c in members]
    else:
        members = [c for meter, c in contributions.items() if meter in cohort_meters and tag in c.channels]
        consumption = [c.channels[tag] for c in members]
        production = []
    n = len(members)
    what = f"households with a '{tag}' channel" if tag else "consenting households"
    if n < k_min:
        return Refusal("cohort_too_small",
                       f"{n} {what} have data in this window; at least {k_min} are needed "
                       f"({k_min - n} missing)", n, k_min - n)
    def dominated(values: list[float]) -> bool:
        total = sum(values)
        return total > 0 and max(values) > max_share * total

    if dominated(consumption):
        return Refusal("dominated", f"one household would make up more than {max_share:.0%} of the "
                       "consumption total; not released", n)
    hide_production = bool(production) and dominated(production)
    total_in, total_out = sum(consumption), sum(production)
    body = {
        "window": window,
        "window_start": iso(datetime.fromtimestamp(start, timezone.utc)),
        "window_end": iso(datetime.fromtimestamp(start + width, timezone.utc)),
        "households": n,
        "tag": tag,
        "consumption_w": round(total_in, 3),
        "production_w": None if tag or hide_production else round(total_out, 3),
        "net_w": None if tag or hide_production else round(total_in - total_out, 3),
        # estimated from mean power: windows are short and counters tick in whole Wh
        "energy_import_wh": round(total_in * width / 3600, 3),
        "energy_export_wh": None if tag or hide_production else round(total_out * width / 3600, 3),
    }
    if hide_production:
        body["suppressed"] = ["production_w", "net_w", "energy_export_wh"]
    if tag:
        body["mean_w"] = round(total_in / n, 3)
    return body
