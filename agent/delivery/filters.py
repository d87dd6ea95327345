"""Filters on what a subscription sends, evaluated on the released aggregate, never on a household's data.

A filter is a small class; adding one is a new class and a line in `FILTERS`.
- Change filters (`deadband`, `threshold`) decide whether a window is worth sending; with none
  configured every window is. With several, any one firing is enough.
- `min_interval` holds back sends that come sooner than N seconds after the last one.
- `max_silence` sends anyway when nothing went out for N seconds, so the receiver knows the device lives.
- `fields` keeps only the named fields of the aggregate (the window's times always stay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

Json = dict[str, Any]

NUMERIC_FIELDS = ("consumption_w", "production_w", "net_w", "energy_import_wh", "energy_export_wh", "households",
                  "mean_w")
ALWAYS_KEPT = ("window", "window_start", "window_end", "tag", "privacy")  # a number never travels without its terms


class FilterError(ValueError):
    pass


class ChangeFilter(Protocol):
    """Decides whether a window is worth sending, from the released aggregate and the last one sent."""

    @classmethod
    def parse(cls, spec: object) -> "ChangeFilter": ...

    def fires(self, aggregate: Json, last_sent: Json | None) -> bool: ...


def _field(value: object) -> str:
    if not isinstance(value, str) or value not in NUMERIC_FIELDS:
        raise FilterError(f"unknown field {value!r}; fields: {', '.join(NUMERIC_FIELDS)}")
    return value


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise FilterError(f"{name} must be a positive number")
    return float(value)


@dataclass(frozen=True)
class Deadband:
    """Send when a field moved by at least `absolute` units or `percent` % since the last send."""

    fields: tuple[str, ...]
    absolute: float | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, spec: object) -> "Deadband":
        if not isinstance(spec, dict) or set(spec) - {"fields", "absolute", "percent"}:
            raise FilterError("deadband takes fields, absolute and/or percent")
        fields = spec.get("fields", ["consumption_w"])
        if not isinstance(fields, list) or not fields:
            raise FilterError("deadband.fields must be a non-empty list")
        absolute = _positive(spec["absolute"], "deadband.absolute") if "absolute" in spec else None
        percent = _positive(spec["percent"], "deadband.percent") if "percent" in spec else None
        if absolute is None and percent is None:
            raise FilterError("deadband needs absolute or percent")
        return cls(tuple(_field(f) for f in fields), absolute, percent)

    def fires(self, aggregate: Json, last_sent: Json | None) -> bool:
        if last_sent is None:
            return True
        for name in self.fields:
            new, old = aggregate.get(name), last_sent.get(name)
            if new is None or old is None:
                if new != old:
                    return True
                continue
            change = abs(new - old)
            if self.absolute is not None and change >= self.absolute:
                return True
            if self.percent is not None and (old == 0 and change > 0 or old and change / abs(old) * 100 >= self.percent):
                return True
        return False


@dataclass(frozen=True)
class Threshold:
    """Send when a field crosses one of the levels, in either direction."""

    field: str
    levels: tuple[float, ...]

    @classmethod
    def parse(cls, spec: object) -> "Threshold":
        if not isinstance(spec, dict) or set(spec) - {"field", "levels"} or "levels" not in spec:
            raise FilterError("threshold takes field and levels")
        levels = spec["levels"]
        if not isinstance(levels, list) or not levels or not all(  # finite: NaN would make the API emit bad JSON
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in levels):
            raise FilterError("threshold.levels must be a non-empty list of numbers")
        return cls(_field(spec.get("field", "net_w")), tuple(sorted(float(v) for v in levels)))

    def _side(self, value: float) -> int:
        return sum(1 for level in self.levels if value >= level)

    def fires(self, aggregate: Json, last_sent: Json | None) -> bool:
        new = aggregate.get(self.field)
        if new is None:
            return False
        old = None if last_sent is None else last_sent.get(self.field)
        return old is None or self._side(new) != self._side(old)


CHANGE_FILTERS: dict[str, type[ChangeFilter]] = {"deadband": Deadband, "threshold": Threshold}


@dataclass(frozen=True)
class FilterSet:
    change: tuple[ChangeFilter, ...] = ()
    fields: tuple[str, ...] | None = None
    min_interval_s: float | None = None
    max_silence_s: float | None = None

    @classmethod
    def parse(cls, spec: object) -> "FilterSet":
        if spec is None:
            return cls()
        if not isinstance(spec, dict):
            raise FilterError("filter must be an object")
        unknown = set(spec) - set(CHANGE_FILTERS) - {"fields", "min_interval", "max_silence"}
        if unknown:
            raise FilterError(f"unknown filter {sorted(unknown)[0]!r}; filters: "
                              f"{', '.join([*CHANGE_FILTERS, 'fields', 'min_interval', 'max_silence'])}")
        change = tuple(CHANGE_FILTERS[name].parse(spec[name]) for name in CHANGE_FILTERS if name in spec)
        fields = None
        if "fields" in spec:
            if not isinstance(spec["fields"], list) or not spec["fields"]:
                raise FilterError("fields must be a non-empty list")
            fields = tuple(_field(f) for f in spec["fields"])
        min_interval = _positive(spec["min_interval"], "min_interval") if "min_interval" in spec else None
        max_silence = _positive(spec["max_silence"], "max_silence") if "max_silence" in spec else None
        return cls(change, fields, min_interval, max_silence)

    def decide(self, aggregate: Json, last_sent: Json | None, now: float, last_sent_at: float | None) -> bool:
        """Whether this window's aggregate goes out."""
        since = None if last_sent_at is None else now - last_sent_at
        if self.max_silence_s is not None and since is not None and since >= self.max_silence_s:
            return True
        if self.min_interval_s is not None and since is not None and since < self.min_interval_s:
            return False
        return not self.change or any(f.fires(aggregate, last_sent) for f in self.change)

    def project(self, aggregate: Json) -> Json:
        if self.fields is None:
            return aggregate
        return {k: v for k, v in aggregate.items() if k in ALWAYS_KEPT or k in self.fields}
