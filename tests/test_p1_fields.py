"""Every value of the real telegrams, field by field against dsmr_parser's own parse (tests/helpers/p1_oracle.py), and
against the telegram's text where dsmr_parser reads nothing; the Reading's new fields stored and read back."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from dsmr_parser.value_types import timestamp as dsmr_timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.store import ReadingStore
from drivers.obis import decimal_float, meter_time
from drivers.profiles import get_profile
from drivers.reading import Reading
from drivers.telegram import TelegramDecoder
from tests.helpers.p1_oracle import EXTRA_PROFILES, expected
from tests.helpers.telegrams import TELEGRAM_PROFILES, telegram_bytes

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
EXTRA = Path(__file__).parent / "telegrams_extra"
# What dsmr_parser does not read in DSMR-reader's telegrams (its specification lacks the line, or gives no time
# for a lowercase DST flag), checked against the telegram's text.
TEXT_CHECKED = {
    "landisgyr350_dsmr40.txt": {  # 0-1:24.2.1(150701190000s)(00845.206*m3), 0-0:17.0.0(999.9*kW), 96.3.10(1)
        "gas_m3": 845.206, "gas_timestamp": datetime(2015, 7, 1, 17, 0, tzinfo=timezone.utc),
        "mbus": [{"channel": 1, "type": "gas", "device_type": 3, "value": 845.206, "unit": "m3",
                  "timestamp": "2015-07-01T17:00:00Z", "valve": 1}],
        "power_threshold_w": 999900.0, "breaker_state": 1},
    "luxembourg_smarty.txt": {  # 3.8.0(000120.721*kvarh) 4.8.0(000697.336*kvarh) 3.7.0/4.7.0(00.000*kvar)
        "reactive_energy_import_varh": 120721.0, "reactive_energy_export_varh": 697336.0,
        "reactive_power_import_var": 0.0, "reactive_power_export_var": 0.0,
        "apparent_power_threshold_va": 27600.0, "breaker_state": 1},  # 17.0.0(27.600*kVA), 96.3.10(1)
    "sweden_kamstrup.txt": {"reactive_power_import_var": 0.0, "reactive_power_export_var": 0.0},  # (0000.000*kVAr)
}


def decode(name: str, profile: str | None = None, **kwargs) -> Reading:
    text = telegram_bytes(name).decode("latin-1")
    return TelegramDecoder("m", get_profile(profile or TELEGRAM_PROFILES[name][0]), **kwargs).decode(text, NOW)


def present(reading: Reading) -> dict:
    return {k: v for k, v in reading.to_json().items() if v is not None and k not in ("meter_id", "received_at")}


@pytest.mark.parametrize("name", sorted(TELEGRAM_PROFILES))
def test_every_value_is_what_dsmr_parser_reads(name):
    profile, spec = TELEGRAM_PROFILES[name]
    reading = decode(name)
    oracle = expected(telegram_bytes(name).decode("latin-1"), spec, belgian=profile == "fluvius")
    for field, value in oracle.items():
        assert getattr(reading, field) == value, field
    # Nothing else, except the receive time standing in for the clock of meters that have none.
    others = {k for k, v in vars_of(reading).items() if v is not None} - set(oracle) - {"meter_id", "received_at"}
    assert others <= {"timestamp"} and (not others or reading.timestamp == NOW), others


@pytest.mark.parametrize("name", sorted(EXTRA_PROFILES))
def test_dsmr_reader_telegrams_too(name):
    profile, spec = EXTRA_PROFILES[name]
    text = (EXTRA / name).read_bytes().decode("latin-1")
    reading = TelegramDecoder("m", get_profile(profile)).decode(text, NOW)
    oracle = expected(text, spec, belgian=profile == "fluvius")
    oracle = {k: v for k, v in oracle.items() if k != "mbus" or name not in TEXT_CHECKED}  # no time: no value
    for field, value in {**oracle, **TEXT_CHECKED.get(name, {})}.items():
        assert getattr(reading, field) == value, field
    others = {k for k, v in vars_of(reading).items() if v is not None} - set(oracle) - set(TEXT_CHECKED.get(name, {}))
    assert others - {"meter_id", "received_at"} <= {"timestamp"}, others
    if "timestamp" in others:
        assert reading.timestamp == NOW


def vars_of(reading: Reading) -> dict:
    return {name: getattr(reading, name) for name in reading.__slots__}


def test_the_values_that_were_dropped_are_read():
    fluvius = decode("fluvius_v171.txt")  # the Belgian capacity tariff, and a water meter on channel 2
    assert (fluvius.demand_avg_w, fluvius.demand_peak_month_w) == (2351.0, 2589.0)  # 1.4.0(02.351*kW), 1.6.0
    assert fluvius.demand_peak_month_at == datetime(2020, 5, 9, 11, 45, 58, tzinfo=timezone.utc)  # 200509134558S
    assert [p["w"] for p in fluvius.demand_peaks] == [3695.0, 5980.0, 4318.0]
    assert fluvius.gas_m3 == 112.384
    water = fluvius.mbus[1]
    assert (water["channel"], water["type"], water["device_type"], water["value"], water["unit"]) == (
        2, "water", 7, 872.234, "m3")
    assert (fluvius.breaker_state, fluvius.power_threshold_w, fluvius.fuse_threshold_l1_a) == (1, 999900.0, 999.0)
    hu = decode("v5_eon_hu.txt")
    assert (hu.energy_import_t3_wh, hu.energy_export_t4_wh, hu.energy_combined_wh) == (0.0, 0.0, 800817.0)
    assert (hu.frequency_hz, hu.power_factor, hu.reactive_power_q3_var, hu.reactive_energy_q1_varh) == (
        50.0, 4.556, 504.0, 668.0)
    kaifa = decode("v4_2.txt")
    assert kaifa.power_failure_log[0] == {"end": "2000-01-04T17:03:20Z", "duration_s": 237126}
    assert len(kaifa.power_failure_log) == 3
    v3 = decode("v3.txt")
    assert v3.text_message.startswith("0123456789:;<=>?") and v3.current_threshold_a == 16.0  # 17.0.0(016*A)


def test_a_heat_or_water_meter_is_never_gas():
    heat = decode("unpadded_crc.txt")  # 0-1:24.1.0(004), 0-1:24.2.1(...)(240.860*GJ)
    assert heat.gas_m3 is None
    assert heat.mbus == [{"channel": 1, "type": "heat", "device_type": 4, "value": 240.86, "unit": "GJ",
                          "timestamp": "2026-02-15T19:05:23Z", "valve": None}]
    assert decode("unpadded_crc.txt", gas_channel=1).gas_m3 is None  # configured, but not a gas meter
    assert decode("fluvius_v171.txt", gas_channel=2).gas_m3 is None  # the water meter
    assert decode("fluvius_v171.txt", gas_channel=1).gas_m3 == 112.384


def test_a_nul_after_the_crc_is_accepted():
    raw = telegram_bytes("v5.txt")
    assert raw.endswith(b"!6EEE\r\n")
    decoder = TelegramDecoder("m", get_profile("dsmr5"))
    readings, errors = decoder.feed(raw[:-2] + b"\x00\r\n", NOW)
    assert errors == [] and len(readings) == 1
    assert readings[0].to_record() == decode("v5.txt").to_record()


def test_a_lowercase_dst_flag_keeps_the_gas_value():
    raw = telegram_bytes("v4_2.txt").replace(b"(161129200000W)", b"(161129200000w)")
    text = raw.decode("latin-1").replace("!6796", "!" + format(_crc(raw), "04X"))
    assert dsmr_timestamp("161129200000w") is None  # dsmr_parser gives no time: Edge used to drop the gas value
    reading = TelegramDecoder("m", get_profile("dsmr4")).decode(text, NOW)
    assert reading.gas_m3 == 981.443 and reading.gas_timestamp == decode("v4_2.txt").gas_timestamp
    assert meter_time("190000000000s") == dsmr_timestamp("190000000000S")


def _crc(raw: bytes) -> int:
    from drivers.telegram import crc16

    return crc16(raw[raw.index(b"/"): raw.rindex(b"!") + 1])


def test_a_register_in_a_unit_it_never_has_is_left_out():
    raw = telegram_bytes("v5.txt").replace(b"1-0:32.7.0(0230.0*V)", b"1-0:32.7.0(0230.0*kWh)")
    text = raw.decode("latin-1").replace("!6EEE", "!" + format(_crc(raw), "04X"))
    reading = TelegramDecoder("m", get_profile("dsmr5")).decode(text, NOW)
    assert reading.voltage_l1_v is None and reading.voltage_l2_v == 230.0


@settings(max_examples=400, deadline=None)
@given(st.integers(-10**15, 10**15), st.integers(0, 9), st.integers(0, 4), st.sampled_from([1, 1000]))
def test_numbers_are_exactly_what_dsmr_parser_makes_of_them(digits, places, zeros, scale):
    text = format(Decimal(digits).scaleb(-places), "f")
    text = text.replace("-", "-" + "0" * zeros) if text.startswith("-") else "0" * zeros + text  # meters pad
    assert decimal_float(text, scale) == float(Decimal(text) * scale)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2068, 12, 31)), st.sampled_from("SW"))
def test_meter_times_are_what_dsmr_parser_reads(moment, flag):
    text = moment.strftime("%y%m%d%H%M%S") + flag
    assert meter_time(text) == dsmr_timestamp(text)
    assert meter_time(text[:12]) == dsmr_timestamp(text[:12])


def test_new_fields_are_stored_and_read_back(tmp_path):
    store = ReadingStore(tmp_path / "store", flush_seconds=0.1)
    readings = [decode(name) for name in ("fluvius_v171.txt", "v4_2.txt", "v5_eon_hu.txt")]
    for i, reading in enumerate(readings):
        reading.meter_id = "m"
        reading.received_at = datetime(2026, 11, 22, 12, 0, i, tzinfo=timezone.utc)
        store.add(reading)
    store.flush()
    store.close()
    store = ReadingStore(tmp_path / "store", flush_seconds=0.1)
    rows = store.readings("m", resolution="raw")
    assert rows == [reading.to_json() for reading in readings]
    assert Reading.from_record(readings[0].to_record()) == readings[0]
    store.close()
