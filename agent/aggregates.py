"""Households' contributions to windows: each meter's mean power per UTC-aligned window, as live readings arrive.

No I/O, and no release rule: what is released from these windows, to whom, is decided once in agent/release/.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from agent.config import WINDOW_SECONDS
from drivers.reading import PHASES, Reading


@dataclass(slots=True)
class Contribution:
    """One household's part of one window: mean powers over the readings it sent in it."""

    consumption_w: float = 0.0
    production_w: float = 0.0
    samples: int = 0
    channels: dict[str, float] = field(default_factory=dict)
    # Grid quantities (agent/release/grid.py): mean voltage per phase reported, and whether the meter's count of
    # long power failures rose in this window (1), did not (0), or the meter reports none (None).
    voltage_v: dict[str, float] = field(default_factory=dict)
    long_failure: int | None = None


class Accumulator:
    __slots__ = ("imp", "exp", "n", "tag_sums", "tag_counts", "volt_sums", "volt_counts", "long_failure")

    def __init__(self) -> None:
        self.imp = self.exp = 0.0
        self.n = 0
        self.tag_sums: dict[str, float] = {}
        self.tag_counts: dict[str, int] = {}
        self.volt_sums: dict[str, float] = {}
        self.volt_counts: dict[str, int] = {}
        self.long_failure: int | None = None

    def add(self, reading: Reading, failed: int | None = None) -> None:
        counted = self.n
        self.add_values(reading.power_import_w, reading.power_export_w, reading.channels)
        if self.n == counted:
            return  # nothing this window can use: not a contribution at all
        for phase in PHASES:
            volts = getattr(reading, f"voltage_{phase}_v")
            if volts is not None:
                self.volt_sums[phase] = self.volt_sums.get(phase, 0.0) + volts
                self.volt_counts[phase] = self.volt_counts.get(phase, 0) + 1
        if failed is not None:
            self.long_failure = max(self.long_failure or 0, failed)

    def add_values(self, imp: float | None, exp: float | None, channels: dict[str, float] | None,
                   weight: int = 1) -> None:
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
                            {tag: total / self.tag_counts[tag] for tag, total in self.tag_sums.items()},
                            {p: total / self.volt_counts[p] for p, total in self.volt_sums.items()},
                            self.long_failure)


class WindowBook:
    """Recent windows of one width: {window start: {meter_id: accumulator}}, oldest dropped. When a window may be
    decided (its end, a consent change still being written) is the release module's question, not this one's."""

    def __init__(self, width_s: int, keep: int):
        self.width_s = width_s
        self.keep = keep
        self._windows: OrderedDict[int, dict[str, Accumulator]] = OrderedDict()
        self._failures_seen: dict[str, tuple[int, str]] = {}  # meter -> (long failures, newest logged end)

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
        acc.add(reading, self._long_failure(reading))

    def _long_failure(self, reading: Reading) -> int | None:
        """1 if the meter's long power failures rose since its last reading (its 96.7.9 count, or a newer end in
        its 99.97.0 log), 0 if not, None if it reports neither. A meter's first reading sets its baseline."""
        log = reading.power_failure_log
        count = reading.long_power_failures
        if count is None and log is None:
            return None
        newest = max((str(e.get("end") or "") for e in log or ()), default="")
        now = (-1 if count is None else int(count), newest)
        before = self._failures_seen.get(reading.meter_id)
        self._failures_seen[reading.meter_id] = now
        if before is None:
            return 0
        return int(now[0] > before[0] >= 0 or now[1] > before[1])

    def contributions(self, start: int) -> dict[str, Contribution]:
        window = self._windows.get(start, {})
        return {meter: c for meter, acc in window.items() if (c := acc.result()) is not None}


# Live windows kept in memory per width, until the release module has decided them.
KEEP = {"1s": 120, "1m": 120, "15m": 8, "1h": 4}


def new_books() -> dict[str, WindowBook]:
    return {name: WindowBook(WINDOW_SECONDS[name], KEEP[name]) for name in WINDOW_SECONDS}
