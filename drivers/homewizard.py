"""HomeWizard P1 meter (HWE-P1), local APIs v1 and v2: where its telegram and its JSON are, the JSON as a Reading.

API v1 (http://): the meter's raw telegram at GET /api/v1/telegram (read by the same decoder as a serial port) and
the dongle's own summary at GET /api/v1/data (older firmware has only that one). API v2 (https://, firmware 6 and
later; drivers/homewizard_https.py connects): the same at GET /api/telegram and GET /api/measurement, with a token.
No I/O here: drivers/p1_reader.py polls.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from drivers.obis import MBUS_TYPES, meter_time, meter_time_iso
from drivers.reading import NON_NEGATIVE, Reading

TELEGRAM_PATH = "/api/v1/telegram"
DATA_PATH = "/api/v1/data"
V2_TELEGRAM_PATH = "/api/telegram"
V2_MEASUREMENT_PATH = "/api/measurement"
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
# /api/measurement (v2) names the same values without v1's prefixes (and spells "monthly" right).
_V2_NAMES = {"total_power_import_kwh": "energy_import_kwh", "total_power_export_kwh": "energy_export_kwh",
             **{f"total_power_{d}_t{n}_kwh": f"energy_{d}_t{n}_kwh" for d in ("import", "export") for n in (1, 2, 3, 4)},
             **{f"active_{q}_l{n}_{u}": f"{q}_l{n}_{u}" for q, u in (("voltage", "v"), ("current", "a"), ("power", "w"))
                for n in (1, 2, 3)},
             "active_frequency_hz": "frequency_hz", "active_power_average_w": "average_power_15m_w",
             "montly_power_peak_w": "monthly_power_peak_w", "active_tariff": "tariff", "active_power_w": "power_w"}
_EXTERNAL_TYPES = {"gas_meter": 3, "water_meter": 7, "heat_meter": 4, "warm_water_meter": 6, "inlet_heat_meter": 12}


class HomeWizardError(ValueError):
    """A /api/v1/data body that is not a HomeWizard P1 meter's."""


def base_url(port: str) -> str:
    """http(s)://host[:port][/] -> http(s)://host[:port]; anything else is refused (a config error, said at once)."""
    parts = urlsplit(port)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"a HomeWizard port is http://<host>[:<port>] (API v1) or https://<host>[:<port>] (API v2), "
                         f"got {port!r}")
    return f"{parts.scheme}://{parts.netloc}"


def is_v2(port: str) -> bool:
    return port.startswith("https://")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _stamp(value: object) -> str | None:
    """The meter's YYMMDDhhmmss: v1 writes it as a number, v2 as ISO 8601 local time without an offset."""
    if isinstance(value, str) and len(value) == 19 and value[4] == "-" and value[10] == "T":
        digits = value[2:4] + value[5:7] + value[8:10] + value[11:13] + value[14:16] + value[17:19]
        return digits if digits.isdecimal() else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10 ** 12:
        return None
    return f"{value:012d}"


def _time(value: object) -> datetime | None:
    stamp = _stamp(value)
    return None if stamp is None else meter_time(stamp)


def reading_from_measurement(doc: object, meter_id: str, received_at: datetime) -> Reading:
    """API v2's /api/measurement: v1's values under their v2 names (monthly_power_peak_timestamp and the
    external devices' timestamps as ISO local times)."""
    if not isinstance(doc, dict) or not any(key in doc for key in _V2_NAMES.values()):
        raise HomeWizardError("not a HomeWizard P1 meter's /api/measurement")
    renamed = {_V1_NAMES.get(key, key): value for key, value in doc.items() if key not in _V1_ONLY}
    renamed["montly_power_peak_timestamp"] = doc.get("monthly_power_peak_timestamp")
    return reading_from_data(renamed, meter_id, received_at)


_V1_NAMES = {v2: v1 for v1, v2 in _V2_NAMES.items()}
_V1_ONLY = frozenset(_V2_NAMES) - frozenset(_V2_NAMES.values())  # a v1 name in a v2 document is not v2's


def reading_from_data(doc: object, meter_id: str, received_at: datetime) -> Reading:
    """API v1's /api/v1/data."""
    if not isinstance(doc, dict) or not any(key in doc for key in (*_DATA, *_SIGNED)):
        raise HomeWizardError("not a HomeWizard P1 meter's /api/v1/data")
    values: dict[str, Any] = {"meter_id": meter_id, "received_at": received_at, "timestamp": received_at}
    for key, (field, scale) in _DATA.items():
        number = _number(doc.get(key))
        if number is not None and (number >= 0 or field not in NON_NEGATIVE):  # currents are signed
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


def _external(items: object) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        return []
    devices = []
    for channel, item in enumerate(items[:4], start=1):  # a P1 port has at most four M-Bus channels
        if isinstance(item, dict) and item.get("type") in _EXTERNAL_TYPES:
            unit = item.get("unit") if isinstance(item.get("unit"), str) else None
            devices.append(_device(channel, _EXTERNAL_TYPES[item["type"]], item.get("value"), unit,
                                   item.get("timestamp")))
    return devices


def _device(channel: int, device_type: int, value: object, unit: str | None, stamp: object) -> dict[str, Any]:
    number = _number(value)
    text = _stamp(stamp)
    moment = None if text is None else meter_time(text)
    return {"channel": channel, "type": MBUS_TYPES[device_type], "device_type": device_type,
            "value": number if number is not None and number >= 0 else None, "unit": unit,
            "timestamp": meter_time_iso(text) if text is not None and moment is not None else None, "valve": None}


def _time_of(device: dict[str, Any]) -> datetime | None:
    return None if device["timestamp"] is None else datetime.fromisoformat(device["timestamp"])
