"""Households' contributions to windows: each meter's mean power per UTC-aligned window, as live readings arrive.

No I/O, and no release rule: what is released from these windows, to whom, is decided once in agent/release/.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import attrgetter

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


_VOLTS = attrgetter(*(f"voltage_{phase}_v" for phase in PHASES))
_NO_VOLTS = (None,) * len(PHASES)
Volts = tuple[float | None, ...]  # one reading's voltages, in PHASES order
Sums = list[float]  # [sum, count] per phase, flat


class Accumulator:
    """One household's readings in one window. Small, since the 1 s book keeps one per household for KEEP["1s"]
    windows (120,000 at 1,000 households): no dict until a channel needs one; the voltages the first reading's
    own tuple (in PHASES order, each counted once), then a flat list [sum, count] per phase; the first reading's
    powers kept as they are (0.0 + x * 1 is x, and `or 0.0` makes -0.0 the 0.0 that sum gives)."""

    __slots__ = ("imp", "exp", "n", "tag_sums", "tag_counts", "volts", "long_failure")

    def __init__(self) -> None:
        self.imp = self.exp = 0.0
        self.n = 0
        self.tag_sums: dict[str, float] | None = None
        self.tag_counts: dict[str, int] | None = None
        self.volts: Volts | Sums | None = None
        self.long_failure: int | None = None

    def add(self, reading: Reading, failed: int | None = None, volts: Volts | None = None) -> None:
        """`volts`: the reading's voltages in PHASES order, when the caller has them (one tuple for every book)."""
        imp, exp, channels = reading.power_import_w, reading.power_export_w, reading.channels
        if imp is None and exp is None and not channels:
            return  # nothing this window can use: not a contribution at all
        if volts is None:
            volts = _VOLTS(reading)
        if channels:
            self.add_values(imp, exp, channels)
            self.add_volts(volts)
        else:
            self.add_plain(imp or 0.0, exp or 0.0, None if volts == _NO_VOLTS else volts)  # (x or 0.0) * 1 is x
        if failed is not None:
            self.long_failure = max(self.long_failure or 0, failed)

    def add_plain(self, imp: float, exp: float, volts: Volts | None) -> None:
        """One reading without channels (`or 0.0` applied; `volts` None if it has none): add_values' and
        add_volts' steps, inline (4 books a reading)."""
        n = self.n
        if n == 0:
            self.imp, self.exp, self.n = imp, exp, 1
        else:
            self.imp += imp
            self.exp += exp
            self.n = n + 1
        if volts is not None:
            kept = self.volts
            if kept is None:
                self.volts = volts
            elif isinstance(kept, tuple):
                self.volts = _sum_into(_summed(kept), volts)
            else:
                _sum_into(kept, volts)

    def add_volts(self, volts: Volts) -> None:
        if volts == _NO_VOLTS:
            return
        kept = self.volts
        if kept is None:
            self.volts = volts
            return
        if isinstance(kept, tuple):
            kept = self.volts = _summed(kept)
        _sum_into(kept, volts)

    def add_values(self, imp: float | None, exp: float | None, channels: dict[str, float] | None,
                   weight: int = 1) -> None:
        """`weight` readings with these means (a stored rollup counts as its `count` readings)."""
        if imp is None and exp is None and not channels:
            return  # nothing this window can use
        if self.n == 0 and weight == 1:
            self.imp, self.exp = imp or 0.0, exp or 0.0  # what 0.0 + (x or 0.0) * 1 gives, no new float
        else:
            self.imp += (imp or 0.0) * weight
            self.exp += (exp or 0.0) * weight
        self.n += weight
        if channels:
            sums, counts = self.tag_sums, self.tag_counts
            if sums is None or counts is None:
                sums, counts = self.tag_sums, self.tag_counts = {}, {}
            for tag, watts in channels.items():
                sums[tag] = sums.get(tag, 0.0) + watts * weight
                counts[tag] = counts.get(tag, 0) + weight

    def result(self) -> Contribution | None:
        n = self.n
        if not n:
            return None
        sums, counts, volts = self.tag_sums, self.tag_counts, self.volts
        channels = {tag: total / counts[tag] for tag, total in sums.items()} if sums and counts else {}
        if isinstance(volts, tuple):  # one reading's (each 1 s window's): 0.0 + v is the float _summed's mean gives
            voltages = {phase: 0.0 + v for phase, v in zip(PHASES, volts) if v is not None}
        else:
            voltages = {phase: volts[2 * i] / volts[2 * i + 1] for i, phase in enumerate(PHASES)
                        if volts[2 * i + 1]} if volts else {}
        return Contribution(self.imp / n, self.exp / n, n, channels, voltages, self.long_failure)


def _summed(volts: Volts) -> Sums:
    """[sum, count] per phase of one reading's voltages, summed as every later one is."""
    return _sum_into([0.0, 0] * len(PHASES), volts)


def _sum_into(kept: Sums, volts: Volts) -> Sums:
    v1, v2, v3 = volts  # PHASES, unrolled (a loop was a third of a book's cost of a reading)
    if v1 is not None:
        kept[0] += v1
        kept[1] += 1
    if v2 is not None:
        kept[2] += v2
        kept[3] += 1
    if v3 is not None:
        kept[4] += v3
        kept[5] += 1
    return kept


if len(PHASES) != 3:
    raise TypeError("_sum_into adds three phases' voltages")


class WindowBook:
    """Recent windows of one width: {window start: {meter_id: accumulator}}, oldest dropped. When a window may be
    decided (its end, a consent change still being written) is the release module's question, not this one's."""

    def __init__(self, width_s: int, keep: int, owner_since: Callable[[str], float] | None = None):
        """`owner_since(meter)`: when the meter's current household was created (inf if none): a meter's count of
        long failures is compared only with a reading of that household's (red team 8, R8-4's class: on a meter
        that changed hands, the new household's first reading is its baseline, not a rise over the previous
        one's)."""
        self.width_s = width_s
        self.keep = keep
        self.owner_since = owner_since
        self._windows: OrderedDict[int, dict[str, Accumulator]] = OrderedDict()
        # meter -> (long failures, newest logged end, when it was received)
        self._failures_seen: dict[str, tuple[int, str, float]] = {}

    def window_start(self, moment: float) -> int:
        return int(moment // self.width_s) * self.width_s

    def add(self, reading: Reading, moment: float | None = None, volts: Volts | None = None) -> None:
        """`moment`, `volts`: the reading's arrival in Unix seconds and its voltages, when the caller has them."""
        width = self.width_s
        if moment is None:
            moment = reading.received_at.timestamp()
        start = int(moment // width) * width  # window_start, inline: 4 books a reading
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
        if reading.long_power_failures is None and reading.power_failure_log is None:
            acc.add(reading, None, volts)  # reports no failures (_long_failure's None), as most readings
        else:
            acc.add(reading, self._long_failure(reading, moment), volts)

    def _long_failure(self, reading: Reading, moment: float) -> int | None:
        """1 if the meter's long power failures rose since its last reading (its 96.7.9 count, or a newer end in
        its 99.97.0 log), 0 if not, None if it reports neither. A meter's first reading of its current household
        sets its baseline."""
        log = reading.power_failure_log
        count = reading.long_power_failures
        if count is None and log is None:
            return None
        newest = max((str(e.get("end") or "") for e in log or ()), default="")
        now = (-1 if count is None else int(count), newest, moment)
        before = self._failures_seen.get(reading.meter_id)
        self._failures_seen[reading.meter_id] = now
        if before is None or (self.owner_since is not None and before[2] < self.owner_since(reading.meter_id)):
            return 0
        return int(now[0] > before[0] >= 0 or now[1] > before[1])

    def contributions(self, start: int) -> dict[str, Contribution]:
        window = self._windows.get(start, {})
        return {meter: c for meter, acc in window.items() if (c := acc.result()) is not None}


def add_to_books(books: Iterable[WindowBook], reading: Reading) -> None:
    """A reading into every book, what the books read of it read once for all of them. The usual reading (powers,
    no channels, no failure counts, into a window each book has already) takes the books' steps inline."""
    moment, volts = reading.received_at.timestamp(), _VOLTS(reading)
    imp, exp = reading.power_import_w, reading.power_export_w
    if (reading.channels or (imp is None and exp is None) or reading.long_power_failures is not None
            or reading.power_failure_log is not None):
        for book in books:
            book.add(reading, moment, volts)
        return
    imp, exp, meter = imp or 0.0, exp or 0.0, reading.meter_id
    given = None if volts == _NO_VOLTS else volts
    for book in books:
        width = book.width_s
        window = book._windows.get(int(moment // width) * width)  # WindowBook.add's steps
        if window is None:
            book.add(reading, moment, volts)  # a new window: its book's order and size kept
            continue
        acc = window.get(meter)
        if acc is None:
            acc = window[meter] = Accumulator()
        acc.add_plain(imp, exp, given)


# Live windows kept in memory per width, until the release module has decided them.
KEEP = {"1s": 120, "1m": 120, "15m": 8, "1h": 4}


def new_books(owner_since: Callable[[str], float] | None = None) -> dict[str, WindowBook]:
    return {name: WindowBook(WINDOW_SECONDS[name], KEEP[name], owner_since) for name in WINDOW_SECONDS}
