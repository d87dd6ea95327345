"""Rollups: per-meter aggregates over UTC-aligned windows (1 minute, 15 minutes), sans I/O.

``RollupAccumulator`` takes readings and hands back the rollups that closed; it never touches a disk, so
the store decides when they are written. A rollup (storage form, nulls left out, times in Unix seconds):

    meter_id, start, end, count
    <power/voltage/current field>   mean over the readings that had it (e.g. power_import_w)
    power_import_w_max, power_export_w_max
    <counter field>                 last value seen (energy_*_wh, gas_m3, tariff, failures, sags, swells, limits)
    replaces                        (storage only, true or absent) see ``RollupAccumulator.resume``

Windows are keyed by ``received_at`` (the device's NTP-synced clock), never the meter's ``timestamp``.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from operator import attrgetter

from drivers.reading import FIELDS, MEAN, VALUE_FIELDS, Reading, iso

# Instantaneous quantities are averaged; registers, counters, states, limits and this month's peak keep their last value.
MEAN_FIELDS: tuple[str, ...] = tuple(n for n in VALUE_FIELDS if FIELDS[n].rollup == MEAN)  # drivers/reading.py
MAX_FIELDS: tuple[str, ...] = ("power_import_w", "power_export_w")
LAST_FIELDS: tuple[str, ...] = tuple(n for n in VALUE_FIELDS if n not in MEAN_FIELDS)
_ROW = attrgetter(*MEAN_FIELDS, *MAX_FIELDS, *LAST_FIELDS)  # one C call reads a reading's rollup fields
_N_MEAN, _N_MAX = len(MEAN_FIELDS), len(MAX_FIELDS)


def rollup_row(reading: Reading) -> tuple:
    """What a window keeps of a reading until it is folded: its rollup fields' values, in one tuple."""
    return _ROW(reading)
_FOLD_EVERY = 16  # readings kept as rows, then folded column by column (C loops, not ~90 Python steps each)
ROLLUP_FIELDS: tuple[str, ...] = (
    ("meter_id", "start", "end", "count") + MEAN_FIELDS + tuple(f"{n}_max" for n in MAX_FIELDS) + LAST_FIELDS
)


class _Window:
    __slots__ = ("start", "replaces", "count", "sums", "counts", "maxes", "lasts", "rows")

    def __init__(self, start: int, replaces: bool = False):
        self.start = start
        self.replaces = replaces
        self.count = 0
        self.sums = [0.0] * len(MEAN_FIELDS)
        self.counts = [0] * len(MEAN_FIELDS)
        self.maxes: list[float | None] = [None] * len(MAX_FIELDS)
        self.lasts: list = [None] * len(LAST_FIELDS)
        self.rows: list[tuple] = []

    def add(self, reading: Reading, row: tuple | None = None) -> None:
        self.count += 1
        self.rows.append(_ROW(reading) if row is None else row)
        if len(self.rows) >= _FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        if not self.rows:
            return
        columns = list(zip(*self.rows))
        self.rows = []
        sums, counts = self.sums, self.counts
        for i in range(_N_MEAN):
            column = columns[i]
            present = len(column) - column.count(None)
            if present:
                sums[i] += sum(filter(None, column))  # None and 0.0 add nothing
                counts[i] += present
        for i in range(_N_MAX):
            values = [value for value in columns[_N_MEAN + i] if value is not None]
            if values and (self.maxes[i] is None or max(values) > self.maxes[i]):
                self.maxes[i] = max(values)
        lasts = self.lasts
        for i, column in enumerate(columns[_N_MEAN + _N_MAX:]):
            value = column[-1]
            if value is None:  # a field the last reading lacks (most, for a datalogger that posts a few fields)
                if column.count(None) == len(column):
                    continue  # none of the rows has it (found by a C loop, not the generator)
                value = next((v for v in reversed(column) if v is not None), None)
            if value is not None:
                lasts[i] = value

    def result(self, meter_id: str, width_s: int) -> dict:
        self._fold()
        out = {"meter_id": meter_id, "start": self.start, "end": self.start + width_s, "count": self.count}
        for name, total, n in zip(MEAN_FIELDS, self.sums, self.counts):
            if n:
                out[name] = round(total / n, 3)  # meters report at most 3 decimals; saves bytes
        for name, value in zip(MAX_FIELDS, self.maxes):
            if value is not None:
                out[f"{name}_max"] = value
        for name, value in zip(LAST_FIELDS, self.lasts):
            if value is not None:
                out[name] = value
        if self.replaces:
            out["replaces"] = True
        return out


class RollupAccumulator:
    """Aggregates readings per meter over windows of width_s seconds aligned to UTC.

    ``add`` returns the rollups that a reading closed (a reading in a later window closes the open one);
    ``close`` returns the open windows, partial. A reading a little older than its meter's open window
    (arrived out of order) is left out of the rollups and counted in ``late``. One more than
    ``CLOCK_STEP_S`` (and a window) older means the device clock was stepped back: the open window is closed and a new
    one starts, so that a clock fixed by NTP does not starve the rollups; a window that thereby gets two
    rollups is merged when read (``merge_rollups``). After a restart, ``resume`` reopens the windows that were
    open from the readings on disk.
    """

    CLOCK_STEP_S = 600

    def __init__(self, width_s: int):
        self.width_s = width_s
        self.late = 0
        self._open: dict[str, _Window] = {}

    def add(self, reading: Reading, row: tuple | None = None, moment: float | None = None) -> list[dict]:
        """`row`, `moment`: the reading's `rollup_row` and its arrival in Unix seconds, when the caller has them (one
        for every width)."""
        start = window_start(reading.received_at.timestamp() if moment is None else moment, self.width_s)
        window = self._open.get(reading.meter_id)
        closed = []
        if window is None or start > window.start:
            if window is not None:
                closed.append(window.result(reading.meter_id, self.width_s))
            window = self._open[reading.meter_id] = _Window(start)
        elif start < window.start:
            if window.start - start <= max(self.CLOCK_STEP_S, self.width_s):
                self.late += 1
                return closed
            closed.append(window.result(reading.meter_id, self.width_s))
            window = self._open[reading.meter_id] = _Window(start)
        window.add(reading, row)
        return closed

    def resume(self, meter_id: str, readings: list[Reading]) -> None:
        """Reopen the meter's newest window from its readings already on disk (at start, after a restart).

        ``readings``: the meter's stored readings in the order they were written, at least every one of the window
        of the last one written; the others are ignored. That window, not the one of the latest ``received_at``,
        is the one that was open: after the clock was stepped back, the readings written last are older than
        those written before the step (``add`` moved on to their window). The window's rollup then counts every reading
        of the window that reached the disk, including those of rollups already written for it (partial, at a
        clean close; or closed before a clock step), so it is marked ``replaces``: when read, it replaces the
        window's earlier rollups instead of being merged with them (``combine_same_window``).
        """
        if not readings:
            return
        start = window_start(readings[-1].received_at.timestamp(), self.width_s)
        window = self._open[meter_id] = _Window(start, replaces=True)
        for reading in readings:
            if window_start(reading.received_at.timestamp(), self.width_s) == start:
                window.add(reading)

    def close(self) -> list[dict]:
        closed = [window.result(meter_id, self.width_s) for meter_id, window in self._open.items()]
        self._open.clear()
        return closed


def window_start(moment: float, width_s: int) -> int:
    # Unix time has no leap seconds, so multiples of 60/900/3600/86400 fall on UTC boundaries.
    return math.floor(moment / width_s) * width_s


def combine_same_window(earlier: dict, later: dict) -> dict:
    """The rollup of a window that has two, ``later`` written after ``earlier``.

    A rollup marked ``replaces`` counts everything of its window that reached the disk (``resume``), so it
    stands alone; otherwise the two parts are merged.
    """
    if later.get("replaces"):
        return later
    return merge_rollups(earlier, later)


def merge_rollups(earlier: dict, later: dict) -> dict:
    """Combine two rollups of the same meter and window (a clock step, or a restart inside the window that
    found no raw readings to rebuild it from).

    Means are weighted by count; where one part lacks a field, the other part's mean stands. Exact unless a
    field came and went within a part, which meters do not do.
    """
    out = dict(earlier)
    count_a, count_b = earlier.get("count", 0), later.get("count", 0)
    out["count"] = count_a + count_b
    for name in MEAN_FIELDS:
        a, b = earlier.get(name), later.get(name)
        if a is not None and b is not None and count_a + count_b:
            out[name] = round((a * count_a + b * count_b) / (count_a + count_b), 3)
        elif b is not None:
            out[name] = b
    for name in MAX_FIELDS:
        key = f"{name}_max"
        values = [v for v in (earlier.get(key), later.get(key)) if v is not None]
        if values:
            out[key] = max(values)
    for name in LAST_FIELDS:
        if later.get(name) is not None:
            out[name] = later[name]
    return out


def rollup_to_json(rollup: dict) -> dict:
    """The API form: every field present (None where absent), start/end as ISO 8601 UTC strings."""
    out = {name: rollup.get(name) for name in ROLLUP_FIELDS}
    for name in ("start", "end"):
        out[name] = iso(datetime.fromtimestamp(rollup[name], timezone.utc))
    return out
