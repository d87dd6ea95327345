"""One normalized meter reading, whatever the meter family or transport.

Units are in the field names (SI: W, Wh, V, A, m3); timestamps are aware UTC datetimes.
An absent value is None, never 0: a meter that does not report a phase must not look like
one that reports zero on it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone
from operator import attrgetter

PHASES = ("l1", "l2", "l3")


@dataclass(slots=True)
class Reading:
    meter_id: str  # the configured id, never the meter's serial number (personal data)
    timestamp: datetime  # the meter's clock, or received_at for meters without one
    received_at: datetime
    power_import_w: float | None = None
    power_export_w: float | None = None
    power_import_l1_w: float | None = None
    power_import_l2_w: float | None = None
    power_import_l3_w: float | None = None
    power_export_l1_w: float | None = None
    power_export_l2_w: float | None = None
    power_export_l3_w: float | None = None
    voltage_l1_v: float | None = None
    voltage_l2_v: float | None = None
    voltage_l3_v: float | None = None
    current_l1_a: float | None = None
    current_l2_a: float | None = None
    current_l3_a: float | None = None
    # t1 = low/night tariff, t2 = normal/day tariff (Belgian registers are mapped to match).
    energy_import_t1_wh: float | None = None
    energy_import_t2_wh: float | None = None
    energy_export_t1_wh: float | None = None
    energy_export_t2_wh: float | None = None
    # Totals: the meter's total register where it has one, else the sum of its tariff registers.
    energy_import_wh: float | None = None
    energy_export_wh: float | None = None
    tariff: int | None = None
    power_failures: int | None = None
    long_power_failures: int | None = None
    voltage_sags_l1: int | None = None
    voltage_sags_l2: int | None = None
    voltage_sags_l3: int | None = None
    voltage_swells_l1: int | None = None
    voltage_swells_l2: int | None = None
    voltage_swells_l3: int | None = None
    gas_m3: float | None = None
    gas_timestamp: datetime | None = None
    # Sub-metered appliances a household tags itself ({"fridge": 80.5}, watts); HTTP ingest only.
    channels: dict[str, float] | None = None
    # --- from P1 telegrams only (HTTP JSON ingest does not take them) ---
    # E.ON Hungary's tariffs 3 and 4 (they count towards the totals).
    energy_import_t3_wh: float | None = None
    energy_import_t4_wh: float | None = None
    energy_export_t3_wh: float | None = None
    energy_export_t4_wh: float | None = None
    energy_combined_wh: float | None = None  # |import| + |export| register (15.8.0)
    # Belgian capacity tariff: the current quarter-hour's average demand, this month's peak and when it was.
    demand_avg_w: float | None = None
    demand_peak_month_w: float | None = None
    demand_peak_month_at: datetime | None = None
    # The last 13 months' peaks, as the meter lists them: [{"month": iso, "at": iso | null, "w": float}].
    demand_peaks: list[dict] | None = None
    reactive_power_import_var: float | None = None
    reactive_power_export_var: float | None = None
    reactive_power_import_l1_var: float | None = None
    reactive_power_import_l2_var: float | None = None
    reactive_power_import_l3_var: float | None = None
    reactive_power_export_l1_var: float | None = None
    reactive_power_export_l2_var: float | None = None
    reactive_power_export_l3_var: float | None = None
    reactive_power_q1_var: float | None = None
    reactive_power_q2_var: float | None = None
    reactive_power_q3_var: float | None = None
    reactive_power_q4_var: float | None = None
    reactive_energy_import_varh: float | None = None
    reactive_energy_export_varh: float | None = None
    reactive_energy_import_t1_varh: float | None = None
    reactive_energy_import_t2_varh: float | None = None
    reactive_energy_export_t1_varh: float | None = None
    reactive_energy_export_t2_varh: float | None = None
    reactive_energy_q1_varh: float | None = None
    reactive_energy_q2_varh: float | None = None
    reactive_energy_q3_varh: float | None = None
    reactive_energy_q4_varh: float | None = None
    apparent_power_import_va: float | None = None
    apparent_power_export_va: float | None = None
    power_factor: float | None = None  # as the meter sends it (E.ON Hungary's meters send values above 1)
    power_factor_l1: float | None = None
    power_factor_l2: float | None = None
    power_factor_l3: float | None = None
    frequency_hz: float | None = None
    # Limits the meter enforces: 17.0.0 is a power (kW) on most meters, a current (A) on some DSMR 3 ones.
    power_threshold_w: float | None = None
    apparent_power_threshold_va: float | None = None  # Luxembourg (Smarty): 17.0.0 in kVA
    current_threshold_a: float | None = None
    fuse_threshold_l1_a: float | None = None
    fuse_threshold_l2_a: float | None = None
    fuse_threshold_l3_a: float | None = None
    breaker_state: int | None = None  # 96.3.10: 0 disconnected, 1 connected, 2 ready for reconnection
    text_message: str | None = None  # 96.13.0, hex-decoded where it is hex text
    text_message_code: str | None = None  # 96.13.1, as sent
    # The long power failures the meter logged (99.97.0), most recent first: [{"end": iso | null, "duration_s"}].
    power_failure_log: list[dict] | None = None
    # One entry per M-Bus device: {"channel", "type" (gas, water, heat, cold, ...), "device_type" (EN 13757-3),
    # "value", "unit" (as the meter sends it: m3, GJ, ...), "timestamp" (iso), "valve"}; gas_m3 is only ever gas.
    mbus: list[dict] | None = None

    def to_json(self) -> dict:
        """The API form: every field present, timestamps as ISO 8601 UTC strings."""
        out = {}
        for name in FIELD_NAMES:
            value = getattr(self, name)
            out[name] = iso(value) if isinstance(value, datetime) else value
        return out

    def to_record(self) -> dict:
        """The storage form: compact, nulls left out, timestamps as Unix seconds."""
        out = {name: value for name, value in zip(FIELD_NAMES, _ALL_VALUES(self)) if value is not None}
        for name in TIME_FIELDS & out.keys():
            out[name] = out[name].timestamp()
        return out

    @classmethod
    def from_values(cls, values: dict) -> Reading:
        """From a dict of field values, absent ones None. Positional, so it costs no keyword matching (a
        Reading has ~90 fields: Reading(**values) spends most of its time matching names)."""
        return cls(*map(values.get, FIELD_NAMES))

    @classmethod
    def from_record(cls, record: dict) -> Reading:
        kwargs = {}
        for name, value in record.items():
            if name in TIME_FIELDS and value is not None:
                value = datetime.fromtimestamp(value, timezone.utc)
            kwargs[name] = value
        return cls(**kwargs)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Reading))
_ALL_VALUES = attrgetter(*FIELD_NAMES)
TIME_FIELDS = frozenset({"timestamp", "received_at", "gas_timestamp", "demand_peak_month_at"})
# Lists and text, stored with the raw readings as they are; JSON-ready (their times are ISO strings).
STRUCTURED_FIELDS = frozenset({"channels", "demand_peaks", "power_failure_log", "mbus", "text_message",
                               "text_message_code"})
VALUE_FIELDS: tuple[str, ...] = tuple(n for n in FIELD_NAMES
                                      if n not in TIME_FIELDS and n not in STRUCTURED_FIELDS and n != "meter_id")
# What a reading over HTTP JSON may carry: the fields up to channels (the rest come from telegrams only).
INPUT_FIELDS: tuple[str, ...] = FIELD_NAMES[: FIELD_NAMES.index("channels") + 1]


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
