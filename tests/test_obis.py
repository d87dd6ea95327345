"""drivers/obis.py's pure pieces on data: meter times (summer and winter flags, the ambiguous hour, no time),
and the M-Bus channels (which one is the gas meter, an empty channel). The values of real telegrams against
dsmr_parser: tests/test_p1_fields.py; each OBIS code's field: tests/test_reading_fields.py."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from drivers.obis import decimal_float, find_gas, is_gas, mbus_entries, meter_time, meter_time_iso

UTC = timezone.utc


def test_a_meter_time_is_dutch_local_time_made_utc():
    assert meter_time("240612143000S") == datetime(2024, 6, 12, 12, 30, tzinfo=UTC)  # CEST, UTC+2
    assert meter_time("240112143000W") == datetime(2024, 1, 12, 13, 30, tzinfo=UTC)  # CET, UTC+1
    assert meter_time("240612143000") == datetime(2024, 6, 12, 12, 30, tzinfo=UTC)  # DSMR 2.2: no flag
    assert meter_time("240612143000s") == meter_time("240612143000S")  # Landis+Gyr's lowercase flag


def test_the_flag_tells_the_repeated_autumn_hour_apart():
    # 2024-10-27 02:30 happens twice in Amsterdam: first in summer time (S), then in winter time (W)
    assert meter_time("241027023000S") == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
    assert meter_time("241027023000W") == datetime(2024, 10, 27, 1, 30, tzinfo=UTC)


def test_two_digit_years_from_1969_are_the_last_century():
    assert meter_time("690601120000S").year == 1969
    assert meter_time("680601120000S").year == 2068


@pytest.mark.parametrize("text", ["", None, "2406121430", "24061214300X", "241312143000W", "240230120000W",
                                  "24061214300aS", "2406121430000W"])
def test_what_is_no_time(text):
    assert meter_time(text) is None
    if text:
        assert meter_time_iso(text) is None


def test_the_iso_form_is_utc_with_a_z():
    assert meter_time_iso("240612143000S") == "2024-06-12T12:30:00Z"
    assert meter_time_iso("240612143000S") == "2024-06-12T12:30:00Z"  # remembered, the same


@pytest.mark.parametrize("text, scale, value", [("001234.567", 1000, 1234567.0), ("00.032", 1000, 32.0),
                                                ("-0.5", 1000, -500.0), ("12", 1000, 12000.0), ("1E3", 1, 1000.0),
                                                ("230.1", 1, 230.1), ("5.", 1000, 5000.0)])
def test_decimal_float_is_decimals_value(text, scale, value):
    assert decimal_float(text, scale) == value


def device(device_type, value=1234.5, unit="m3", moment=datetime(2024, 6, 12, 12, 0, tzinfo=UTC), stamp=None):
    out = {"device_type": device_type, "unit": unit, "timestamp": moment, "stamp": stamp or "240612140000S"}
    if value is not None:
        out["value"] = value
    return out


def test_which_devices_are_gas_meters():
    assert is_gas(device(3)) and is_gas(device(None)) and is_gas(device(3, unit=None))
    assert not is_gas(device(7)) and not is_gas(device(None, unit="GJ")) and not is_gas(device(3, unit="GJ"))


def test_the_gas_reading_is_the_first_live_gas_meters_or_the_configured_channels():
    empty = device(3, moment=datetime(1970, 1, 1, tzinfo=UTC))  # DSMR 5's empty channel
    water, gas = device(7, 55.0), device(3, 99.0)
    devices = {1: empty, 2: water, 3: gas}
    assert find_gas(devices, None) == (99.0, gas["timestamp"])
    assert find_gas(devices, 2) == (None, None)  # the configured channel is not a gas meter
    assert find_gas(devices, 1) == (1234.5, empty["timestamp"])  # asked for it: even an empty channel's value
    assert find_gas({1: device(3, value=None)}, None) == (None, None)


def test_mbus_entries_one_per_channel_an_empty_ones_reading_null():
    devices = {2: device(7, 55.0, "m3"), 1: device(3, moment=datetime(1970, 1, 1, tzinfo=UTC)), 4: device(99, 1.0)}
    entries = mbus_entries(devices)
    assert [e["channel"] for e in entries] == [1, 2, 4]
    assert entries[0] == {"channel": 1, "type": "gas", "device_type": 3, "value": None, "unit": None,
                          "timestamp": None, "valve": None}
    assert entries[1]["type"] == "water" and entries[1]["value"] == 55.0
    assert entries[1]["timestamp"] == "2024-06-12T12:00:00Z"  # the meter's own stamp, made UTC
    assert entries[2]["type"] == "type_99"
    assert mbus_entries({5: device(None)})[0]["type"] == "unknown"
