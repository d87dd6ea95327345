"""One normalized meter reading, whatever the meter family or transport.

Units are in the field names (SI: W, Wh, V, A, m3); timestamps are aware UTC datetimes.
An absent value is None, never 0: a meter that does not report a phase must not look like
one that reports zero on it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone

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

    def to_json(self) -> dict:
        """The API form: every field present, timestamps as ISO 8601 UTC strings."""
        out = {}
        for name in FIELD_NAMES:
            value = getattr(self, name)
            out[name] = iso(value) if isinstance(value, datetime) else value
        return out

    def to_record(self) -> dict:
        """The storage form: compact, nulls left out, timestamps as Unix seconds."""
        out = {}
        for name in FIELD_NAMES:
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = value.timestamp() if isinstance(value, datetime) else value
        return out

    @classmethod
    def from_record(cls, record: dict) -> Reading:
        kwargs = {}
        for name, value in record.items():
            if name in TIME_FIELDS and value is not None:
                value = datetime.fromtimestamp(value, timezone.utc)
            kwargs[name] = value
        return cls(**kwargs)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Reading))
TIME_FIELDS = frozenset({"timestamp", "received_at", "gas_timestamp"})
VALUE_FIELDS: tuple[str, ...] = tuple(n for n in FIELD_NAMES if n not in TIME_FIELDS and n not in ("meter_id", "channels"))


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
