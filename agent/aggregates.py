"""Households' contributions to windows: each meter's mean power per UTC-aligned window, as live readings arrive.

No I/O, and no release rule: what is released from these windows, to whom, is decided once in agent/release/.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from agent.config import WINDOW_SECONDS
from drivers.reading import Reading


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
    """Recent windows of one width: {window start: {meter_id: accumulator}}, oldest dropped. When a window may be
    decided (its end, a consent change still being written) is the release module's question, not this one's."""

    def __init__(self, width_s: int, keep: int):
        self.width_s = width_s
        self.keep = keep
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

    def contributions(self, start: int) -> dict[str, Contribution]:
        window = self._windows.get(start, {})
        return {meter: c for meter, acc in window.items() if (c := acc.result()) is not None}


# Live windows kept in memory per width, until the release module has decided them.
KEEP = {"1s": 120, "1m": 120, "15m": 8, "1h": 4}


def new_books() -> dict[str, WindowBook]:
    return {name: WindowBook(WINDOW_SECONDS[name], KEEP[name]) for name in WINDOW_SECONDS}
