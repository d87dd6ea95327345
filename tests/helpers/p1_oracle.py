"""The oracle: what a Reading must hold, derived from dsmr_parser's own `TelegramParser.parse` of a telegram.

Written from dsmr_parser's attribute names, independently of drivers/obis.py's OBIS tables on purpose. Used by
tests/test_p1_fields.py and by bench/p1_pipeline.py (which checks the values are identical in its own run).
`expected` gives only what dsmr_parser reads; the tests check every other value against the telegram text.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from dsmr_parser import telegram_specifications as specs
from dsmr_parser.parsers import TelegramParser

from tests.helpers.telegrams import TELEGRAM_PROFILES, telegram_bytes

NUMBERS = {
    "CURRENT_ELECTRICITY_USAGE": "power_import_w", "CURRENT_ELECTRICITY_DELIVERY": "power_export_w",
    "ELECTRICITY_USED_TARIFF_1": "energy_import_t1_wh", "ELECTRICITY_USED_TARIFF_2": "energy_import_t2_wh",
    "ELECTRICITY_USED_TARIFF_3": "energy_import_t3_wh", "ELECTRICITY_USED_TARIFF_4": "energy_import_t4_wh",
    "ELECTRICITY_DELIVERED_TARIFF_1": "energy_export_t1_wh", "ELECTRICITY_DELIVERED_TARIFF_2": "energy_export_t2_wh",
    "ELECTRICITY_DELIVERED_TARIFF_3": "energy_export_t3_wh", "ELECTRICITY_DELIVERED_TARIFF_4": "energy_export_t4_wh",
    "ELECTRICITY_IMPORTED_TOTAL": "energy_import_wh", "ELECTRICITY_EXPORTED_TOTAL": "energy_export_wh",
    "ELECTRICITY_COMBINED": "energy_combined_wh",
    "CURRENT_REACTIVE_IMPORTED": "reactive_power_import_var", "CURRENT_REACTIVE_EXPORTED": "reactive_power_export_var",
    "ELECTRICITY_REACTIVE_IMPORTED_TOTAL": "reactive_energy_import_varh",
    "ELECTRICITY_REACTIVE_EXPORTED_TOTAL": "reactive_energy_export_varh",
    "ELECTRICITY_REACTIVE_IMPORTED_TARIFF_1": "reactive_energy_import_t1_varh",
    "ELECTRICITY_REACTIVE_IMPORTED_TARIFF_2": "reactive_energy_import_t2_varh",
    "ELECTRICITY_REACTIVE_EXPORTED_TARIFF_1": "reactive_energy_export_t1_varh",
    "ELECTRICITY_REACTIVE_EXPORTED_TARIFF_2": "reactive_energy_export_t2_varh",
    "BELGIUM_CURRENT_AVERAGE_DEMAND": "demand_avg_w",
    "INSTANTANEOUS_POWER_FACTOR_TOTAL": "power_factor", "FREQUENCY": "frequency_hz",
    "MSN_INSTANTANEOUS_APPARENT_POWER_POSITIVE": "apparent_power_import_va",
    "MSN_INSTANTANEOUS_APPARENT_POWER_NEGATIVE": "apparent_power_export_va",
}
for _n in (1, 2, 3):
    NUMBERS.update({
        f"INSTANTANEOUS_ACTIVE_POWER_L{_n}_POSITIVE": f"power_import_l{_n}_w",
        f"INSTANTANEOUS_ACTIVE_POWER_L{_n}_NEGATIVE": f"power_export_l{_n}_w",
        f"INSTANTANEOUS_REACTIVE_POWER_L{_n}_POSITIVE": f"reactive_power_import_l{_n}_var",
        f"INSTANTANEOUS_REACTIVE_POWER_L{_n}_NEGATIVE": f"reactive_power_export_l{_n}_var",
        f"INSTANTANEOUS_VOLTAGE_L{_n}": f"voltage_l{_n}_v", f"INSTANTANEOUS_CURRENT_L{_n}": f"current_l{_n}_a",
        f"INSTANTANEOUS_POWER_FACTOR_L{_n}": f"power_factor_l{_n}", f"FUSE_THRESHOLD_L{_n}": f"fuse_threshold_l{_n}_a",
        f"VOLTAGE_SAG_L{_n}_COUNT": f"voltage_sags_l{_n}", f"VOLTAGE_SWELL_L{_n}_COUNT": f"voltage_swells_l{_n}",
    })
for _q in (1, 2, 3, 4):
    NUMBERS[f"INSTANTANEOUS_REACTIVE_POWER_Q{_q}"] = f"reactive_power_q{_q}_var"
    NUMBERS[f"ELECTRICITY_REACTIVE_TOTAL_Q{_q}"] = f"reactive_energy_q{_q}_varh"
INTEGERS = {"SHORT_POWER_FAILURE_COUNT": "power_failures", "LONG_POWER_FAILURE_COUNT": "long_power_failures",
            "ELECTRICITY_ACTIVE_TARIFF": "tariff", "ACTUAL_SWITCH_POSITION": "breaker_state"}
for _n in (1, 2, 3):
    INTEGERS[f"VOLTAGE_SAG_L{_n}_COUNT"] = f"voltage_sags_l{_n}"
    INTEGERS[f"VOLTAGE_SWELL_L{_n}_COUNT"] = f"voltage_swells_l{_n}"
    NUMBERS.pop(f"VOLTAGE_SAG_L{_n}_COUNT")
    NUMBERS.pop(f"VOLTAGE_SWELL_L{_n}_COUNT")
BELGIAN = {"energy_import_t1_wh": "energy_import_t2_wh", "energy_import_t2_wh": "energy_import_t1_wh",
           "energy_export_t1_wh": "energy_export_t2_wh", "energy_export_t2_wh": "energy_export_t1_wh"}
EPOCH = datetime(1971, 1, 1, tzinfo=timezone.utc)
DEVICE_TYPES = {3: "gas", 4: "heat", 7: "water"}  # the ones in the real telegrams


def iso(moment):
    return None if moment is None else moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def scaled(obj) -> float:
    """A dsmr_parser value in SI units: k-prefixed units times 1000."""
    value = obj.value
    factor = 1000 if obj.unit and obj.unit[0] == "k" else 1
    return float(value * factor) if isinstance(value, Decimal) else float(value) * factor


def parse(text: str, spec_name: str):
    spec = getattr(specs, spec_name)
    if spec.get("general_global_cipher"):
        spec = dict(spec, general_global_cipher=False)  # the file is the decrypted telegram
    return TelegramParser(spec, apply_checksum_validation=spec["checksum_support"]).parse(text, throw_ex=True)


def hex_text(text):
    if not text:
        return None
    try:
        decoded = bytes.fromhex(text).decode("latin-1")
    except ValueError:
        return text
    return decoded if decoded.isprintable() else text


def expected(text: str, spec_name: str, belgian: bool = False) -> dict:
    """Every Reading value dsmr_parser reads in `text` (and the totals and gas it implies), by field."""
    telegram = parse(text, spec_name)
    out: dict = {}
    for attr, obj in telegram:
        if attr in NUMBERS and obj.value is not None:
            out[NUMBERS[attr]] = scaled(obj)
        elif attr in INTEGERS and obj.value is not None:
            out[INTEGERS[attr]] = int(obj.value)
        elif attr == "P1_MESSAGE_TIMESTAMP" and obj.value is not None:
            out["timestamp"] = obj.value
        elif attr == "ACTUAL_TRESHOLD_ELECTRICITY":
            out["current_threshold_a" if obj.unit == "A" else "power_threshold_w"] = scaled(obj)
        elif attr == "TEXT_MESSAGE" and hex_text(obj.value) is not None:
            out["text_message"] = hex_text(obj.value)
        elif attr == "TEXT_MESSAGE_CODE" and obj.value is not None:
            out["text_message_code"] = str(obj.value)
        elif attr == "BELGIUM_MAXIMUM_DEMAND_MONTH":
            out["demand_peak_month_w"] = scaled(obj)
            out["demand_peak_month_at"] = obj.datetime
        elif attr == "BELGIUM_MAXIMUM_DEMAND_13_MONTHS":
            out["demand_peaks"] = [{"month": iso(p.datetime), "at": iso(p.occurred), "w": scaled(p)} for p in obj]
        elif attr == "POWER_EVENT_FAILURE_LOG":
            out["power_failure_log"] = [{"end": iso(e.datetime), "duration_s": int(e.value)} for e in obj.buffer]
        elif attr == "MBUS_DEVICES":
            out["mbus"] = [_device(device) for device in sorted(obj, key=lambda d: d.channel_id)]
    if belgian:
        out = {BELGIAN.get(k, k): v for k, v in out.items()}
        if out.get("tariff") in (1, 2):
            out["tariff"] = 3 - out["tariff"]
    for direction in ("import", "export"):
        parts = [out[f"energy_{direction}_t{n}_wh"] for n in (1, 2, 3, 4) if f"energy_{direction}_t{n}_wh" in out]
        if f"energy_{direction}_wh" not in out and parts:
            out[f"energy_{direction}_wh"] = float(sum(parts))
    for device in out.get("mbus", ()):
        if device["type"] == "gas" and device["value"] is not None and device["unit"] in ("m3", None):
            out["gas_m3"] = device["value"]
            out["gas_timestamp"] = datetime.fromisoformat(device["timestamp"])
            break
    return out


def _device(device) -> dict:
    names = dict(device)
    kind = names.get("MBUS_DEVICE_TYPE") or names.get("DEVICE_TYPE")
    reading = names.get("MBUS_METER_READING") or names.get("HOURLY_GAS_METER_READING") or names.get("GAS_METER_READING")
    valve = names.get("MBUS_VALVE_POSITION") or names.get("VALVE_POSITION_GAS")
    device_type = int(kind.value) if kind is not None else None
    live = reading is not None and reading.datetime is not None and reading.datetime >= EPOCH
    return {"channel": device.channel_id, "type": DEVICE_TYPES.get(device_type, "unknown"), "device_type": device_type,
            "value": float(reading.value) if live else None, "unit": reading.unit if live else None,
            "timestamp": iso(reading.datetime) if live else None, "valve": int(valve.value) if valve else None}


# DSMR-reader's test telegrams (tests/telegrams_extra/README.md): file -> (our profile, dsmr_parser specification).
EXTRA_PROFILES = {
    "example_dsmr50.txt": ("dsmr5", "V5"), "iskra_dsmr5_bus2.txt": ("dsmr5", "V5"), "iskra.txt": ("dsmr3", "V3"),
    **{f"fluvius{s}.txt": ("fluvius", "BELGIUM_FLUVIUS")
       for s in ("", "_multiple_gas_devices", "_polyphase", "_with_peak_data", "_without_gas")},
    **{f"{n}.txt": ("dsmr4", "V4")
       for n in ("kaifa_dsmr42", "landisgyr350_dsmr40", "landisgyr350_dsmr42", "landisgyr350_other_dsmr42")},
    "luxembourg_smarty.txt": ("smarty", "LUXEMBOURG_SMARTY"), "sweden_kamstrup.txt": ("sweden", "SWEDEN"),
}


# --- a smaller oracle by telegram file (tests/test_telegram.py, test_ingest.py, test_agent.py): which dsmr_parser
# attribute each of 14 Reading fields must come from, and its scale; independently of drivers/telegram.py on purpose.
ORACLE = {
    "power_import_w": ("CURRENT_ELECTRICITY_USAGE", 1000),
    "power_export_w": ("CURRENT_ELECTRICITY_DELIVERY", 1000),
    "power_import_l1_w": ("INSTANTANEOUS_ACTIVE_POWER_L1_POSITIVE", 1000),
    "power_export_l3_w": ("INSTANTANEOUS_ACTIVE_POWER_L3_NEGATIVE", 1000),
    "voltage_l1_v": ("INSTANTANEOUS_VOLTAGE_L1", 1),
    "voltage_l3_v": ("INSTANTANEOUS_VOLTAGE_L3", 1),
    "current_l2_a": ("INSTANTANEOUS_CURRENT_L2", 1),
    "energy_import_t1_wh": ("ELECTRICITY_USED_TARIFF_1", 1000),
    "energy_import_t2_wh": ("ELECTRICITY_USED_TARIFF_2", 1000),
    "energy_export_t1_wh": ("ELECTRICITY_DELIVERED_TARIFF_1", 1000),
    "energy_export_t2_wh": ("ELECTRICITY_DELIVERED_TARIFF_2", 1000),
    "power_failures": ("SHORT_POWER_FAILURE_COUNT", 1),
    "long_power_failures": ("LONG_POWER_FAILURE_COUNT", 1),
    "voltage_sags_l1": ("VOLTAGE_SAG_L1_COUNT", 1),
}


def dsmr_parser_reads(name: str):
    spec = getattr(specs, TELEGRAM_PROFILES[name][1])
    if spec.get("general_global_cipher"):
        spec = dict(spec, general_global_cipher=False)  # the file is the decrypted telegram
    return TelegramParser(spec, apply_checksum_validation=True).parse(telegram_bytes(name).decode("latin-1"),
                                                                      throw_ex=True)


def expected_values(name: str) -> dict:
    """What the Reading must hold, derived from dsmr_parser's own parse of the file."""
    telegram = dsmr_parser_reads(name)
    profile = TELEGRAM_PROFILES[name][0]
    expected = {}
    for field, (attr, scale) in ORACLE.items():
        obj = getattr(telegram, attr, None)
        if obj is None:
            continue
        unit_scale = 1 if obj.unit in ("W", "Wh") else scale
        value = float(obj.value * unit_scale)
        if profile == "fluvius" and field in BELGIAN:
            field = BELGIAN[field]
        expected[field] = value
    return expected

