"""The protocol's parameter catalogue: what organizations may ask about, and who may ask.

Household parameters are read from one household's latest Reading; neighbourhood parameters
come from a released aggregate. Per-tag channel parameters exist for every tag of the operator's vocabulary
(`[privacy] tags`: `household_channel_fridge`, `neighborhood_channel_fridge`).

The catalogue is a fact of the configuration, the same for every caller: it never depends on which tags
households carry. (When it listed the tags households had sent, an organization with households of its own
posting guessed tags learnt which rare tags real households carried, and how many carried them.)
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable

from agent.config import Level
from drivers.reading import FIELDS, Reading

HOUSEHOLD, NEIGHBORHOOD = "household", "neighborhood"
TIME_OF_DAY = "time_of_day_h"  # a fact of the window, not of any household: permitted to every level


@dataclass(frozen=True)
class Parameter:
    name: str
    unit: str
    level: str  # "household" or "neighborhood"
    description: str
    # household: Reading -> value; neighborhood: released aggregate dict -> value
    extract: Callable[[object], float | None]

    def public(self) -> dict:
        return {"name": self.name, "unit": self.unit, "level": self.level, "description": self.description}


# --- household parameters: one household's latest Reading ------------------------------------------------------
# Most are a Reading field's: the table of Reading fields (drivers/reading.py) names each one, describes it and
# ranks it in the catalogue. These few are computed from several fields or from a list, ranked among them.
def _net(reading: Reading) -> float | None:
    if reading.power_import_w is None and reading.power_export_w is None:
        return None
    return (reading.power_import_w or 0.0) - (reading.power_export_w or 0.0)


def _field(name: str) -> Callable[[Reading], float | None]:
    return lambda reading: getattr(reading, name)


def _mbus(kind: str, scales: dict[str, float]) -> Callable[[Reading], float | None]:
    """The first M-Bus device of this type with a value in one of these units, scaled to the first of them."""
    def extract(reading: Reading) -> float | None:
        for device in reading.mbus or ():
            if device["type"] == kind and device["value"] is not None and device["unit"] in scales:
                return device["value"] * scales[device["unit"]]
        return None
    return extract


def _last_long_outage(reading: Reading) -> float | None:
    log = reading.power_failure_log
    return log[0]["duration_s"] if log else None


_DERIVED: tuple[tuple[int, Parameter], ...] = (
    (3, Parameter("household_net_power", "W", HOUSEHOLD, "Consumption minus production (negative: exporting)", _net)),
    (48, Parameter("household_last_long_outage", "s", HOUSEHOLD,
                   "How long the most recent long power failure the meter logged lasted", _last_long_outage)),
    (70, Parameter("household_water_consumption", "m3", HOUSEHOLD, "The water meter's reading (an M-Bus device)",
                   _mbus("water", {"m3": 1.0}))),
    (71, Parameter("household_heat_consumption", "GJ", HOUSEHOLD, "The heat meter's reading (an M-Bus device)",
                   _mbus("heat", {"GJ": 1.0, "MJ": 0.001, "kWh": 0.0036, "MWh": 3.6}))),
)
_FROM_TABLE: tuple[tuple[int, Parameter], ...] = tuple(
    (facts.parameter.rank, Parameter(facts.parameter.name, facts.unit or "", HOUSEHOLD, facts.parameter.description,
                                     _field(name)))
    for name, facts in FIELDS.items() if facts.parameter)
HOUSEHOLD_PARAMETERS: tuple[Parameter, ...] = tuple(
    p for _, p in sorted((*_FROM_TABLE, *_DERIVED), key=lambda ranked: ranked[0]))


# --- neighbourhood parameters: a released aggregate ---------------------------------------------------------------
def _aggregate(key: str) -> Callable[[dict], float | None]:
    return lambda aggregate: aggregate.get(key)


def _grid(quantity: str, key: str) -> Callable[[dict], float | None]:
    return lambda aggregate: ((aggregate.get("grid") or {}).get(quantity) or {}).get(key)


_NEIGHBORHOOD: tuple[Parameter, ...] = (
    Parameter("neighborhood_power_consumption", "W", NEIGHBORHOOD,
              "Total power the consenting households take from the grid", _aggregate("consumption_w")),
    Parameter("neighborhood_power_production", "W", NEIGHBORHOOD,
              "Total power the consenting households feed into the grid", _aggregate("production_w")),
    Parameter("neighborhood_net_power", "W", NEIGHBORHOOD, "Consumption minus production", _aggregate("net_w")),
    Parameter("neighborhood_household_count", "", NEIGHBORHOOD, "Households in the released cohort",
              _aggregate("households")),
    # Grid quantities (agent/release/grid.py), read off the released record; None when not released for it.
    Parameter("neighborhood_peak_demand_month", "W", NEIGHBORHOOD, "Highest consumption_w released at this width "
              "since the UTC month began (15-minute windows: the capacity tariff's peak)", _aggregate("peak_month_w")),
    *(Parameter(f"neighborhood_voltage_{p}_{stat}", "V", NEIGHBORHOOD, f"{text} on phase {p.upper()}",
                _grid(f"voltage_{p}", f"{stat}_v"))
      for p in ("l1", "l2", "l3") for stat, text in (
          ("min", "Lowest household mean voltage, as the lower edge of the lowest band holding one"),
          ("max", "Highest household mean voltage, as the upper edge of the highest band holding one"),
          ("mean", "Mean of the households' mean voltages"))),
    Parameter("neighborhood_long_power_failures", "", NEIGHBORHOOD,
              "Meters whose count of long power failures rose in the window", _grid("long_power_failures", "meters")),
    # No household's data: the runner passes the evaluated window's start hour, so conditions never need a clock.
    Parameter(TIME_OF_DAY, "h", NEIGHBORHOOD, "The hour (UTC, 0-23) the evaluated window began in",
              _aggregate(TIME_OF_DAY)),
)
# The catalogue's order: household parameters, then neighbourhood ones.
_STATIC: tuple[Parameter, ...] = (*HOUSEHOLD_PARAMETERS, *_NEIGHBORHOOD)
STATIC_PARAMETERS = {p.name: p for p in _STATIC}
CHANNEL_PREFIXES = ("household_channel_", "neighborhood_channel_")


def channel_parameter(name: str) -> Parameter | None:
    if name.startswith("household_channel_"):
        tag = name.removeprefix("household_channel_")
        return Parameter(name, "W", HOUSEHOLD, f"Power of the household's '{tag}' channel",
                         lambda reading: (reading.channels or {}).get(tag))
    if name.startswith("neighborhood_channel_"):
        tag = name.removeprefix("neighborhood_channel_")
        return Parameter(name, "W", NEIGHBORHOOD, f"Total power of the '{tag}' channel over the cohort",
                         _aggregate("consumption_w"))
    return None


def lookup(name: str, tags: tuple[str, ...] | None = None) -> Parameter | None:
    """The parameter of this name; with `tags` (the vocabulary), a channel parameter only of one of them."""
    if tags is not None and name.startswith(CHANNEL_PREFIXES):
        tag = name.removeprefix("household_channel_").removeprefix("neighborhood_channel_")
        if tag not in tags:
            return None
    return STATIC_PARAMETERS.get(name) or channel_parameter(name)


def catalogue(tags: tuple[str, ...]) -> list[Parameter]:
    """Every parameter: the static ones, then both channel parameters of each tag of the vocabulary, in its
    order. Data-independent by construction: the argument is the configuration's, never the households'."""
    params = list(_STATIC)
    for tag in tags:
        params += [channel_parameter(f"household_channel_{tag}"), channel_parameter(f"neighborhood_channel_{tag}")]
    return params


def permitted(name: str, level: Level, narrowed_to: list[str] | None = None) -> bool:
    """The level allows it, and the operator's per-organization list (if any) does too."""
    if name != TIME_OF_DAY and not any(fnmatchcase(name, pattern) for pattern in level.parameters):
        return False
    return narrowed_to is None or any(fnmatchcase(name, pattern) for pattern in narrowed_to)
