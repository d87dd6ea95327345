"""HomeWizard P1 meter (HWE-P1), local API v1: where its telegram and its JSON are, and the JSON as a Reading.

The dongle serves the meter's raw telegram at GET /api/v1/telegram (read by the same decoder as a serial port)
and its own summary at GET /api/v1/data (older firmware has only that one). No I/O here: drivers/p1_reader.py polls.
"""

from __future__ import annotations

import math
from datetime import datetime
from urllib.parse import urlsplit

from drivers.obis import MBUS_TYPES, meter_time, meter_time_iso
from drivers.reading import Reading

TELEGRAM_PATH = "/api/v1/telegram"
DATA_PATH = "/api/v1/data"
POLL_S = 1.0  # the dongle refreshes once a second with a DSMR 5 meter
MAX_BODY = 64 * 1024

# /api/v1/data key -> Reading field, and the factor to SI units.
_DATA = {
    "total_power_import_kwh": ("energy_import_wh", 1000), "total_power_export_kwh": ("energy_export_wh", 1000),
    **{f"total_power_{d}_t{n}_kwh": (f"energy_{d}_t{n}_wh", 1000) for d in ("import", "export") for n in (1, 2, 3, 4)},
    **{f"active_voltage_l{n}_v": (f"voltage_l{n}_v", 1) for n in (1, 2, 3)},
    **{f"active_current_l{n}_a": (f"current_l{n}_a", 1) for n in (1, 2, 3)},
    "active_frequency_hz": ("frequency_hz", 1),
    "active_power_average_w": ("demand_avg_w", 1), "montly_power_peak_w": ("demand_peak_month_w", 1),
}
_COUNTS = {"active_tariff": "tariff", "any_power_fail_count": "power_failures",
           "long_power_fail_count": "long_power_failures",
           **{f"voltage_sag_l{n}_count": f"voltage_sags_l{n}" for n in (1, 2, 3)},
           **{f"voltage_swell_l{n}_count": f"voltage_swells_l{n}" for n in (1, 2, 3)}}
# Signed powers (negative: export) -> (import field, export field).
_SIGNED = {"active_power_w": ("power_import_w", "power_export_w"),
           **{f"active_power_l{n}_w": (f"power_import_l{n}_w", f"power_export_l{n}_w") for n in (1, 2, 3)}}
_EXTERNAL_TYPES = {"gas_meter": 3, "water_meter": 7, "heat_meter": 4, "warm_water_meter": 6, "inlet_heat_meter": 12}


class HomeWizardError(ValueError):
    """A /api/v1/data body that is not a HomeWizard P1 meter's."""


def base_url(port: str) -> str:
    """http://host[:port][/] -> http://host[:port]; anything else is refused (a config error, said at once)."""
    parts = urlsplit(port)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"a HomeWizard port is http://<host>[:<port>], got {port!r}")
    return f"http://{parts.netloc}"


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _time(value) -> datetime | None:
    """HomeWizard writes the meter's YYMMDDhhmmss as a number."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10 ** 12:
        return None
    return meter_time(f"{value:012d}")


def reading_from_data(doc, meter_id: str, received_at: datetime) -> Reading:
    if not isinstance(doc, dict) or not any(key in doc for key in (*_DATA, *_SIGNED)):
        raise HomeWizardError("not a HomeWizard P1 meter's /api/v1/data")
    values: dict = {"meter_id": meter_id, "received_at": received_at, "timestamp": received_at}
    for key, (field, scale) in _DATA.items():
        number = _number(doc.get(key))
        if number is not None and number >= 0:
            values[field] = number * scale if scale == 1 else float(round(number * scale, 6))
    for key, field in _COUNTS.items():
        value = doc.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            values[field] = value
    for key, (imp, exp) in _SIGNED.items():
        number = _number(doc.get(key))
        if number is not None:
            values[imp], values[exp] = max(number, 0.0), max(-number, 0.0)
    peak_at = _time(doc.get("montly_power_peak_timestamp"))
    if peak_at is not None and "demand_peak_month_w" in values:
        values["demand_peak_month_at"] = peak_at
    devices = _external(doc.get("external"))
    if not devices and _number(doc.get("total_gas_m3")) is not None:  # firmware before "external"
        devices = [_device(1, 3, doc.get("total_gas_m3"), "m3", doc.get("gas_timestamp"))]
    if devices:
        values["mbus"] = devices
        gas = next((d for d in devices if d["type"] == "gas" and d["value"] is not None), None)
        if gas is not None:
            values["gas_m3"], values["gas_timestamp"] = gas["value"], _time_of(gas)
    return Reading.from_values(values)


def _external(items) -> list[dict]:
    if not isinstance(items, list):
        return []
    devices = []
    for channel, item in enumerate(items[:4], start=1):  # a P1 port has at most four M-Bus channels
        if isinstance(item, dict) and item.get("type") in _EXTERNAL_TYPES:
            unit = item.get("unit") if isinstance(item.get("unit"), str) else None
            devices.append(_device(channel, _EXTERNAL_TYPES[item["type"]], item.get("value"), unit,
                                   item.get("timestamp")))
    return devices


def _device(channel: int, device_type: int, value, unit: str | None, stamp) -> dict:
    number = _number(value)
    moment = _time(stamp)
    return {"channel": channel, "type": MBUS_TYPES[device_type], "device_type": device_type,
            "value": number if number is not None and number >= 0 else None, "unit": unit,
            "timestamp": meter_time_iso(f"{stamp:012d}") if moment is not None else None, "valve": None}


def _time_of(device: dict) -> datetime | None:
    return None if device["timestamp"] is None else datetime.fromisoformat(device["timestamp"])
