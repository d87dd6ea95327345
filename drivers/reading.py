"""One normalized meter reading, whatever the meter family or transport, and the table of its fields.

Units are in the field names (SI: W, Wh, V, A, m3); timestamps are aware UTC datetimes.
An absent value is None, never 0: a meter that does not report a phase must not look like
one that reports zero on it.

The `Reading` class is the one table of Reading fields (as Home Assistant's dsmr has its SENSORS table): each
field's row (`Facts`, its dataclass metadata) says its unit, kind, bounds, OBIS codes, how rollups keep it, whether
HTTP JSON may post it, the household parameter that exposes it and what it is. The OBIS dispatch
(drivers/obis.py), normalization (drivers/telegram.py), ingest's bounds (agent/ingest.py), rollups
(agent/store/rollup.py), the OpenAPI Reading schemas and the household parameters (agent/parameters.py) are
derived from it; tests/test_reading_fields.py checks that they agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as _dataclass_field
from dataclasses import fields
from datetime import datetime, timezone
from operator import attrgetter
from typing import Annotated, Any

import msgspec

PHASES = ("l1", "l2", "l3")

# Kinds of field: what its values are.
ID, TIME, NUMBER, COUNT, TEXT, LIST, MAP = "id", "time", "number", "count", "text", "list", "map"
MEAN, LAST = "mean", "last"  # a rollup averages instantaneous quantities, keeps the last of registers and states


@dataclass(frozen=True, slots=True)
class HouseholdParameter:
    """The household parameter exposing a field to organizations (agent/parameters.py): its name, its
    description, and its place in the catalogue (GET /parameters lists the household parameters by it)."""

    name: str
    description: str
    rank: int


@dataclass(frozen=True, slots=True)
class Facts:
    """One row of the table: everything said about a Reading field, said here only."""

    kind: str
    unit: str | None = None  # the SI unit ("" a plain number or count); meters' units are scaled to it
    low: float | None = None  # no value below it, over HTTP JSON or in a telegram; None: signed
    high: float | None = None  # HTTP JSON's bound (a telegram's meter is not second-guessed above)
    obis: tuple[str, ...] = ()  # C.D.E of the main meter's lines that carry it
    line: str | None = None  # the method of obis.LineParser reading its line's own shape; None: a plain register
    rollup: str | None = None  # MEAN or LAST; None: not in rollups
    posted: bool = False  # HTTP JSON may carry it (the others come from telegrams only)
    required: bool = False
    sum_of: tuple[str, ...] = ()  # a total: the sum of these registers where the meter sends none
    export_of: str | None = None  # an export: what a negative value of this import register is (one signed register)
    parameter: HouseholdParameter | None = None
    items: type[msgspec.Struct] | None = None  # a list's: the shape of one entry (its OpenAPI schema too)
    description: str = ""


# The entries of the lists read from P1 telegrams (drivers/obis.py, drivers/homewizard.py build them as dicts).
MeterTime = Annotated[datetime, msgspec.Meta(tz=True)]  # ISO 8601 with its offset; null where the meter sent none


class _Entry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class DemandPeak(_Entry):
    month: MeterTime | None
    at: MeterTime | None
    w: float


class PowerFailure(_Entry):
    end: MeterTime | None
    duration_s: Annotated[int, msgspec.Meta(ge=0)]


class MbusDevice(_Entry):
    channel: int
    type: str  # gas, water, heat, cold, ...
    device_type: int | None  # EN 13757-3
    value: float | None
    unit: str | None  # as the meter sends it: m3, GJ, ...
    timestamp: MeterTime | None
    valve: int | None


def _row(kind: str, unit: str | None = None, low: float | None = None, high: float | None = None,
         obis: str = "", *, parameter: tuple[str, str, int] | None = None, required: bool = False,
         **facts: Any) -> Any:
    """A dataclass field (default None unless required) carrying its row of the table."""
    row = Facts(kind, unit, low, high, tuple(obis.split()), parameter=parameter and HouseholdParameter(*parameter),
                required=required, **facts)
    metadata = {"facts": row}
    return _dataclass_field(metadata=metadata) if required else _dataclass_field(default=None, metadata=metadata)


# Shorthands for the kinds of row the table has many of.
def _power(obis: str, doc: str, **facts: Any) -> Any:
    return _row(NUMBER, "W", 0, 1e6, obis, rollup=MEAN, posted=True, description=doc, **facts)


def _register(obis: str, doc: str, posted: bool = True, **facts: Any) -> Any:
    return _row(NUMBER, "Wh", 0, 1e13, obis, rollup=LAST, posted=posted, description=doc, **facts)


def _counter(obis: str, doc: str, low: float = 0, high: float = 1e9, **facts: Any) -> Any:
    return _row(COUNT, "", low, high, obis, rollup=LAST, posted=True, description=doc, **facts)


def _reactive(obis: str, doc: str) -> Any:
    return _row(NUMBER, "var", None, None, obis, rollup=MEAN, description=doc)


def _reactive_register(obis: str, doc: str) -> Any:
    return _row(NUMBER, "varh", None, None, obis, rollup=LAST, description=doc)


def _limit(unit: str, obis: str, doc: str, **facts: Any) -> Any:
    return _row(NUMBER, unit, 0, None, obis, rollup=LAST, description=doc, **facts)


@dataclass(slots=True)
class Reading:
    meter_id: str = _row(ID, required=True, description="the configured id, never the meter's serial number "
                                                        "(personal data)")
    timestamp: datetime = _row(TIME, obis="1.0.0", line="_timestamp", posted=True, required=True,
                               description="the meter's clock, or received_at for meters without one")
    received_at: datetime = _row(TIME, required=True, description="when the device received it (its NTP clock)")
    power_import_w: float | None = _power(
        "1.7.0", "power taken from the grid now",
        parameter=("household_power_consumption", "Power the household takes from the grid now", 1))
    power_export_w: float | None = _power(
        "2.7.0", "power fed into the grid now", export_of="power_import_w",
        parameter=("household_power_production", "Power the household feeds into the grid now", 2))
    power_import_l1_w: float | None = _power("21.7.0", "power taken on phase L1")
    power_import_l2_w: float | None = _power("41.7.0", "power taken on phase L2")
    power_import_l3_w: float | None = _power("61.7.0", "power taken on phase L3")
    power_export_l1_w: float | None = _power("22.7.0", "power fed in on phase L1", export_of="power_import_l1_w")
    power_export_l2_w: float | None = _power("42.7.0", "power fed in on phase L2", export_of="power_import_l2_w")
    power_export_l3_w: float | None = _power("62.7.0", "power fed in on phase L3", export_of="power_import_l3_w")
    voltage_l1_v: float | None = _row(NUMBER, "V", 0, 1000, "32.7.0", rollup=MEAN, posted=True,
                                      parameter=("household_voltage_l1", "Voltage on phase L1", 8),
                                      description="voltage on phase L1")
    voltage_l2_v: float | None = _row(NUMBER, "V", 0, 1000, "52.7.0", rollup=MEAN, posted=True,
                                      parameter=("household_voltage_l2", "Voltage on phase L2", 9),
                                      description="voltage on phase L2")
    voltage_l3_v: float | None = _row(NUMBER, "V", 0, 1000, "72.7.0", rollup=MEAN, posted=True,
                                      parameter=("household_voltage_l3", "Voltage on phase L3", 10),
                                      description="voltage on phase L3")
    # Signed on meters that sign it (negative: feeding in).
    current_l1_a: float | None = _row(NUMBER, "A", -1000, 1000, "31.7.0", rollup=MEAN, posted=True,
                                      parameter=("household_current_l1", "Current on phase L1", 11),
                                      description="current on phase L1")
    current_l2_a: float | None = _row(NUMBER, "A", -1000, 1000, "51.7.0", rollup=MEAN, posted=True,
                                      parameter=("household_current_l2", "Current on phase L2", 12),
                                      description="current on phase L2")
    current_l3_a: float | None = _row(NUMBER, "A", -1000, 1000, "71.7.0", rollup=MEAN, posted=True,
                                      parameter=("household_current_l3", "Current on phase L3", 13),
                                      description="current on phase L3")
    # t1 = low/night tariff, t2 = normal/day tariff (Belgian registers are mapped to match).
    energy_import_t1_wh: float | None = _register(
        "1.8.1", "energy taken at tariff 1 (low/night)",
        parameter=("household_energy_import_t1", "The meter's import register of tariff 1 (low/night)", 20))
    energy_import_t2_wh: float | None = _register(
        "1.8.2", "energy taken at tariff 2 (normal/day)",
        parameter=("household_energy_import_t2", "The meter's import register of tariff 2 (normal/day)", 21))
    energy_export_t1_wh: float | None = _register(
        "2.8.1", "energy fed in at tariff 1 (low/night)",
        parameter=("household_energy_export_t1", "The meter's export register of tariff 1 (low/night)", 24))
    energy_export_t2_wh: float | None = _register(
        "2.8.2", "energy fed in at tariff 2 (normal/day)",
        parameter=("household_energy_export_t2", "The meter's export register of tariff 2 (normal/day)", 25))
    # Totals: the meter's total register where it has one, else the sum of its tariff registers.
    energy_import_wh: float | None = _register(
        "1.8.0", "energy taken in total: the meter's total register, else the sum of its tariff registers",
        sum_of=tuple(f"energy_import_t{n}_wh" for n in (1, 2, 3, 4)),
        parameter=("household_energy_import", "The meter's import register", 5))
    energy_export_wh: float | None = _register(
        "2.8.0", "energy fed in in total: the meter's total register, else the sum of its tariff registers",
        sum_of=tuple(f"energy_export_t{n}_wh" for n in (1, 2, 3, 4)),
        parameter=("household_energy_export", "The meter's export register", 6))
    tariff: int | None = _counter("96.14.0", "the active tariff (1 low/night, 2 normal/day; 3 and 4 in Hungary)",
                                  low=1, high=9,
                                  parameter=("household_tariff", "Active tariff: 1 low/night, 2 normal", 7))
    power_failures: int | None = _counter(
        "96.7.21", "power failures the meter counted",
        parameter=("household_outages", "Power failures the meter counted (all lengths)", 40))
    long_power_failures: int | None = _counter(
        "96.7.9", "long power failures the meter counted",
        parameter=("household_long_outages", "Long power failures the meter counted", 41))
    voltage_sags_l1: int | None = _counter("32.32.0", "voltage sags counted on phase L1",
                                           parameter=("household_voltage_sags_l1", "Voltage sags on phase L1", 42))
    voltage_sags_l2: int | None = _counter("52.32.0", "voltage sags counted on phase L2",
                                           parameter=("household_voltage_sags_l2", "Voltage sags on phase L2", 43))
    voltage_sags_l3: int | None = _counter("72.32.0", "voltage sags counted on phase L3",
                                           parameter=("household_voltage_sags_l3", "Voltage sags on phase L3", 44))
    voltage_swells_l1: int | None = _counter(
        "32.36.0", "voltage swells counted on phase L1",
        parameter=("household_voltage_swells_l1", "Voltage swells on phase L1", 45))
    voltage_swells_l2: int | None = _counter(
        "52.36.0", "voltage swells counted on phase L2",
        parameter=("household_voltage_swells_l2", "Voltage swells on phase L2", 46))
    voltage_swells_l3: int | None = _counter(
        "72.36.0", "voltage swells counted on phase L3",
        parameter=("household_voltage_swells_l3", "Voltage swells on phase L3", 47))
    gas_m3: float | None = _row(NUMBER, "m3", 0, 1e9, rollup=LAST, posted=True,
                                parameter=("household_gas_consumption", "The gas meter's reading", 4),
                                description="the gas meter's reading (an M-Bus device that is a gas meter, never "
                                            "water or heat)")
    gas_timestamp: datetime | None = _row(TIME, posted=True, description="when the gas meter took its reading")
    # Sub-metered appliances a household tags itself ({"fridge": 80.5}, watts); HTTP ingest only.
    channels: dict[str, float] | None = _row(MAP, "W", 0, 1e5, posted=True,
                                             description="watts per appliance tag; tags only from the device's "
                                                         "vocabulary ([privacy] tags), otherwise 422 unknown_tag")
    # --- from P1 telegrams only (HTTP JSON ingest does not take them) ---
    # E.ON Hungary's tariffs 3 and 4 (they count towards the totals).
    energy_import_t3_wh: float | None = _register(
        "1.8.3", "energy taken at tariff 3", posted=False,
        parameter=("household_energy_import_t3", "The meter's import register of tariff 3", 22))
    energy_import_t4_wh: float | None = _register(
        "1.8.4", "energy taken at tariff 4", posted=False,
        parameter=("household_energy_import_t4", "The meter's import register of tariff 4", 23))
    energy_export_t3_wh: float | None = _register(
        "2.8.3", "energy fed in at tariff 3", posted=False,
        parameter=("household_energy_export_t3", "The meter's export register of tariff 3", 26))
    energy_export_t4_wh: float | None = _register(
        "2.8.4", "energy fed in at tariff 4", posted=False,
        parameter=("household_energy_export_t4", "The meter's export register of tariff 4", 27))
    energy_combined_wh: float | None = _register("15.8.0", "the |import| + |export| register", posted=False)
    # Belgian capacity tariff: the current quarter-hour's average demand, this month's peak and when it was.
    demand_avg_w: float | None = _row(
        NUMBER, "W", 0, None, "1.4.0", rollup=MEAN, description="the current quarter-hour's average demand "
                                                                "(the Belgian capacity tariff)",
        parameter=("household_demand_average", "The current quarter-hour's average demand (capacity tariff)", 30))
    demand_peak_month_w: float | None = _row(
        NUMBER, "W", 0, None, "1.6.0", line="_demand_peak", rollup=LAST,
        description="this month's highest quarter-hour average demand",
        parameter=("household_demand_peak_month", "This month's peak quarter-hour demand (capacity tariff)", 31))
    demand_peak_month_at: datetime | None = _row(TIME, obis="1.6.0", line="_demand_peak",
                                                 description="when this month's peak was")
    # The last 13 months' peaks, as the meter lists them.
    demand_peaks: list[dict[str, Any]] | None = _row(LIST, obis="98.1.0", line="_demand_peaks", items=DemandPeak,
                                           description="the Belgian capacity tariff's monthly peaks (0-0:98.1.0), "
                                                       "as the meter lists them")
    reactive_power_import_var: float | None = _row(
        NUMBER, "var", None, None, "3.7.0", rollup=MEAN, description="reactive power taken (Q+)",
        parameter=("household_reactive_power_import", "Reactive power the household takes (Q+)", 50))
    reactive_power_export_var: float | None = _row(
        NUMBER, "var", None, None, "4.7.0", rollup=MEAN, description="reactive power fed in (Q-)",
        parameter=("household_reactive_power_export", "Reactive power the household feeds in (Q-)", 51))
    reactive_power_import_l1_var: float | None = _reactive("23.7.0", "reactive power taken on phase L1")
    reactive_power_import_l2_var: float | None = _reactive("43.7.0", "reactive power taken on phase L2")
    reactive_power_import_l3_var: float | None = _reactive("63.7.0", "reactive power taken on phase L3")
    reactive_power_export_l1_var: float | None = _reactive("24.7.0", "reactive power fed in on phase L1")
    reactive_power_export_l2_var: float | None = _reactive("44.7.0", "reactive power fed in on phase L2")
    reactive_power_export_l3_var: float | None = _reactive("64.7.0", "reactive power fed in on phase L3")
    reactive_power_q1_var: float | None = _reactive("5.7.0", "reactive power in quadrant 1")
    reactive_power_q2_var: float | None = _reactive("6.7.0", "reactive power in quadrant 2")
    reactive_power_q3_var: float | None = _reactive("7.7.0", "reactive power in quadrant 3")
    reactive_power_q4_var: float | None = _reactive("8.7.0", "reactive power in quadrant 4")
    reactive_energy_import_varh: float | None = _reactive_register("3.8.0", "reactive energy taken")
    reactive_energy_export_varh: float | None = _reactive_register("4.8.0", "reactive energy fed in")
    reactive_energy_import_t1_varh: float | None = _reactive_register("3.8.1", "reactive energy taken, tariff 1")
    reactive_energy_import_t2_varh: float | None = _reactive_register("3.8.2", "reactive energy taken, tariff 2")
    reactive_energy_export_t1_varh: float | None = _reactive_register("4.8.1", "reactive energy fed in, tariff 1")
    reactive_energy_export_t2_varh: float | None = _reactive_register("4.8.2", "reactive energy fed in, tariff 2")
    reactive_energy_q1_varh: float | None = _reactive_register("5.8.0", "reactive energy in quadrant 1")
    reactive_energy_q2_varh: float | None = _reactive_register("6.8.0", "reactive energy in quadrant 2")
    reactive_energy_q3_varh: float | None = _reactive_register("7.8.0", "reactive energy in quadrant 3")
    reactive_energy_q4_varh: float | None = _reactive_register("8.8.0", "reactive energy in quadrant 4")
    apparent_power_import_va: float | None = _row(
        NUMBER, "VA", None, None, "9.7.0", rollup=MEAN, description="apparent power taken",
        parameter=("household_apparent_power_import", "Apparent power the household takes", 52))
    apparent_power_export_va: float | None = _row(
        NUMBER, "VA", None, None, "10.7.0", rollup=MEAN, description="apparent power fed in",
        parameter=("household_apparent_power_export", "Apparent power the household feeds in", 53))
    power_factor: float | None = _row(
        NUMBER, "", None, None, "13.7.0", rollup=MEAN,
        description="the power factor as the meter sends it (E.ON Hungary's meters send values above 1)",
        parameter=("household_cos_phi", "The power factor as the meter sends it (1-0:13.7.0)", 54))
    power_factor_l1: float | None = _row(NUMBER, "", None, None, "33.7.0", rollup=MEAN,
                                         description="the power factor on phase L1")
    power_factor_l2: float | None = _row(NUMBER, "", None, None, "53.7.0", rollup=MEAN,
                                         description="the power factor on phase L2")
    power_factor_l3: float | None = _row(NUMBER, "", None, None, "73.7.0", rollup=MEAN,
                                         description="the power factor on phase L3")
    frequency_hz: float | None = _row(NUMBER, "Hz", None, None, "14.7.0", rollup=MEAN,
                                      description="the grid's frequency",
                                      parameter=("household_frequency", "The grid frequency at the meter", 55))
    # Limits the meter enforces: 17.0.0 is a power (kW) on most meters, a current (A) on some DSMR 3 ones.
    power_threshold_w: float | None = _limit(
        "W", "17.0.0", "the power limit the meter enforces", line="_threshold",
        parameter=("household_threshold_power", "The power limit the meter enforces", 60))
    apparent_power_threshold_va: float | None = _limit(
        "VA", "17.0.0", "the apparent power limit the meter enforces (Luxembourg: 17.0.0 in kVA)", line="_threshold",
        parameter=("household_threshold_apparent_power", "The apparent power limit the meter enforces", 61))
    current_threshold_a: float | None = _limit(
        "A", "17.0.0", "the current limit the meter enforces (some DSMR 3 meters: 17.0.0 in A)", line="_threshold",
        parameter=("household_threshold_current", "The current limit the meter enforces", 62))
    fuse_threshold_l1_a: float | None = _limit(
        "A", "31.4.0", "the fuse limit on phase L1",
        parameter=("household_threshold_fuse_l1", "The fuse limit on phase L1", 63))
    fuse_threshold_l2_a: float | None = _limit(
        "A", "51.4.0", "the fuse limit on phase L2",
        parameter=("household_threshold_fuse_l2", "The fuse limit on phase L2", 64))
    fuse_threshold_l3_a: float | None = _limit(
        "A", "71.4.0", "the fuse limit on phase L3",
        parameter=("household_threshold_fuse_l3", "The fuse limit on phase L3", 65))
    breaker_state: int | None = _row(
        COUNT, "", 0, None, "96.3.10", rollup=LAST,
        description="the breaker: 0 disconnected, 1 connected, 2 ready for reconnection",
        parameter=("household_breaker_state", "The breaker: 0 disconnected, 1 connected, 2 ready for reconnection",
                   66))
    text_message: str | None = _row(TEXT, obis="96.13.0", line="_text",
                                    description="the meter's text message (0-0:96.13.0), hex-decoded where it is "
                                                "hex text")
    text_message_code: str | None = _row(TEXT, obis="96.13.1", line="_text_code",
                                         description="the meter's message code (0-0:96.13.1), as sent")
    # The long power failures the meter logged (99.97.0), most recent first.
    power_failure_log: list[dict[str, Any]] | None = _row(LIST, obis="99.97.0", line="_failure_log", items=PowerFailure,
                                                description="long power failures the meter logged (1-0:99.97.0): "
                                                            "when each ended, how long it lasted")
    # One entry per M-Bus device; gas_m3 is only ever gas.
    mbus: list[dict[str, Any]] | None = _row(LIST, items=MbusDevice,
                                             description="one entry per M-Bus device (gas, water, heat, cold, ...), "
                                                         "value in the meter's own unit")

    def to_json(self) -> dict[str, Any]:
        """The API form: every field present, timestamps as ISO 8601 UTC strings."""
        out = {}
        for name in FIELD_NAMES:
            value = getattr(self, name)
            out[name] = iso(value) if isinstance(value, datetime) else value
        return out

    def to_record(self) -> dict[str, Any]:
        """The storage form: compact, nulls left out, timestamps as Unix seconds."""
        out = {name: value for name, value in zip(FIELD_NAMES, _ALL_VALUES(self)) if value is not None}
        for name in TIME_FIELDS & out.keys():
            out[name] = out[name].timestamp()
        return out

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Reading:
        """From a dict of field values, absent ones None. Positional, so it costs no keyword matching (a
        Reading has ~90 fields: Reading(**values) spends most of its time matching names); each value put in its
        place, the rest None (a reading has a few fields of ~90). Names that are not fields are ignored."""
        args: list[Any] = list(_NONES)
        for name, value in values.items():
            index = _INDEX.get(name)
            if index is not None:
                args[index] = value
        return cls(*args)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Reading:
        kwargs = {}
        for name, value in record.items():
            if name in TIME_FIELDS and value is not None:
                value = datetime.fromtimestamp(value, timezone.utc)
            kwargs[name] = value
        return cls(**kwargs)


# --- what the rest of the code reads off the table ------------------------------------------------
FIELDS: dict[str, Facts] = {f.name: f.metadata["facts"] for f in fields(Reading)}
FIELD_NAMES: tuple[str, ...] = tuple(FIELDS)
_ALL_VALUES = attrgetter(*FIELD_NAMES)
_INDEX = {name: i for i, name in enumerate(FIELD_NAMES)}
_NONES = (None,) * len(FIELD_NAMES)
TIME_FIELDS = frozenset(name for name, facts in FIELDS.items() if facts.kind == TIME)
# Lists and text, stored with the raw readings as they are; JSON-ready (their times are ISO strings).
STRUCTURED_FIELDS = frozenset(name for name, facts in FIELDS.items() if facts.kind in (TEXT, LIST, MAP))
# Numbers and counts: what rollups keep (MEAN or LAST).
VALUE_FIELDS: tuple[str, ...] = tuple(name for name, facts in FIELDS.items() if facts.rollup)
# What a reading over HTTP JSON may carry (meter_id and received_at are the device's).
INPUT_FIELDS: tuple[str, ...] = tuple(name for name, facts in FIELDS.items() if facts.posted)
# Never negative, in a telegram or in JSON (a negative import would be summed into an exact total unclamped).
NON_NEGATIVE = frozenset(name for name, facts in FIELDS.items() if facts.low is not None and facts.low >= 0)


def iso(moment: datetime | float) -> str:
    """A time (or Unix seconds) as the API writes times: ISO 8601 in UTC with a Z."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def unix_seconds(stamp: str | float) -> float:
    """A time as `iso` writes it (or already Unix seconds), in Unix seconds."""
    return float(stamp) if isinstance(stamp, (int, float)) else datetime.fromisoformat(stamp).timestamp()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
