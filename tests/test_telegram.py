"""The telegram decoder on real telegrams, and on everything a broken line can send."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from dsmr_parser.parsers import TelegramParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.profiles import PROFILES, get_profile
from drivers.telegram import DEFAULT_MAX_BUFFER, TelegramDecoder, check_crc, crc16, CrcError
from tests.helpers.p1_oracle import dsmr_parser_reads, expected_values
from tests.helpers.telegrams import TELEGRAM_PROFILES, TELEGRAMS, telegram_bytes

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def test_repo_copy_of_telegrams_matches_shared():
    shared = Path(__file__).resolve().parents[2] / "shared" / "telegrams"
    if not shared.is_dir():
        pytest.skip("../shared/telegrams is not beside this checkout")
    for path in shared.glob("*.txt"):
        assert (TELEGRAMS / path.name).read_bytes() == path.read_bytes(), path.name


def test_every_shared_telegram_is_listed():
    assert {p.name for p in TELEGRAMS.glob("*.txt")} == set(TELEGRAM_PROFILES)


@pytest.mark.parametrize("name", sorted(TELEGRAM_PROFILES))
def test_real_telegram_decodes_to_what_dsmr_parser_reads(name):
    decoder = TelegramDecoder("m1", get_profile(TELEGRAM_PROFILES[name][0]))
    readings, errors = decoder.feed(telegram_bytes(name), NOW)
    assert errors == [] and len(readings) == 1
    reading = readings[0]
    for field, value in expected_values(name).items():
        assert getattr(reading, field) == pytest.approx(value), field
    assert reading.meter_id == "m1" and reading.received_at == NOW
    assert decoder.stats.telegrams_ok == 1 and decoder.stats.crc_errors == 0


def test_meter_timestamp_and_serial_number():
    reading = TelegramDecoder("kitchen", get_profile("dsmr5")).decode(telegram_bytes("v5.txt").decode(), NOW)
    assert reading.timestamp == dsmr_parser_reads("v5.txt").P1_MESSAGE_TIMESTAMP.value
    # the meter's serial number is personal data and appears nowhere in the reading
    assert "4B384547303034303436333935353037" not in str(reading.to_json())


def test_meters_without_a_clock_use_the_receive_time():
    reading = TelegramDecoder("m", get_profile("dsmr22")).decode(telegram_bytes("v2_2.txt").decode(), NOW)
    assert reading.timestamp == NOW


def test_absent_values_are_null_not_zero():
    reading = TelegramDecoder("m", get_profile("dsmr5")).decode(telegram_bytes("unpadded_crc.txt").decode(), NOW)
    assert reading.power_import_w is None and reading.voltage_l1_v is None and reading.gas_m3 is None


def test_gas_found_on_channel_2_when_channel_1_is_empty():
    reading = TelegramDecoder("m", get_profile("dsmr5")).decode(telegram_bytes("v5_two_mbus.txt").decode(), NOW)
    assert reading.gas_m3 == pytest.approx(246.138)
    assert reading.gas_timestamp == datetime(2020, 4, 26, 20, 30, 1, tzinfo=timezone.utc)


def test_gas_channel_can_be_forced():
    decoder = TelegramDecoder("m", get_profile("dsmr5"), gas_channel=1)
    reading = decoder.decode(telegram_bytes("v5_two_mbus.txt").decode(), NOW)
    assert reading.gas_m3 == 0.0  # what channel 1 says, as configured


def test_belgian_gas_on_24_2_3_and_water_meter_ignored():
    reading = TelegramDecoder("m", get_profile("fluvius")).decode(telegram_bytes("fluvius_v171.txt").decode(), NOW)
    assert reading.gas_m3 == pytest.approx(112.384)  # channel 2 is a water meter in m3


def test_belgian_tariff_codes_are_mapped_to_dutch_numbering():
    raw = dsmr_parser_reads("fluvius_v171.txt").ELECTRICITY_ACTIVE_TARIFF.value
    reading = TelegramDecoder("m", get_profile("fluvius")).decode(telegram_bytes("fluvius_v171.txt").decode(), NOW)
    assert int(raw) == 1 and reading.tariff == 2  # Belgian 1 = day = Edge's 2 (normal)


def test_totals_come_from_registers_or_sums():
    reading = TelegramDecoder("m", get_profile("dsmr5")).decode(telegram_bytes("v5.txt").decode(), NOW)
    assert reading.energy_import_wh == reading.energy_import_t1_wh + reading.energy_import_t2_wh
    sag = TelegramDecoder("m", get_profile("sagemcom_t210_d_r")).decode(
        telegram_bytes("sagemcom_t210_d_r.txt").decode(), NOW)
    assert sag.energy_import_wh == 6545766.0  # its own 1.8.0 register, in Wh


# --- CRC -----------------------------------------------------------------------------------
def test_crc_matches_dsmr_parser():
    for name in ("v5.txt", "v4_2.txt", "fluvius_v171.txt", "unpadded_crc.txt"):
        text = telegram_bytes(name).decode("latin-1")
        body = text[text.index("/") : text.rindex("!") + 1]
        assert crc16(body.encode("latin-1")) == TelegramParser.crc16(body)
        check_crc(text)


def test_bad_crc_is_counted_and_dropped():
    raw = bytearray(telegram_bytes("v5.txt"))
    raw[raw.index(b"1-0:1.8.1(") + 12] ^= 0x01  # one bit flipped in a register
    decoder = TelegramDecoder("m", get_profile("dsmr5"))
    readings, errors = decoder.feed(bytes(raw), NOW)
    assert readings == [] and len(errors) == 1 and isinstance(errors[0], CrcError)
    assert decoder.stats.crc_errors == 1 and decoder.stats.telegrams_ok == 0


def test_truncated_frame_then_good_one():
    good = telegram_bytes("v5.txt")
    decoder = TelegramDecoder("m", get_profile("dsmr5"))
    readings, _ = decoder.feed(good[:400] + good, NOW)
    assert len(readings) == 1
    assert decoder.stats.parse_errors == 1 and decoder.stats.frames_truncated == 1


def test_garbage_is_capped():
    decoder = TelegramDecoder("m", get_profile("dsmr5"), max_buffer=4096)
    for _ in range(100):
        decoder.feed(b"\x00\xff garbage without any frame markers " * 30, NOW)
    assert decoder._buffer.pending <= 4096
    readings, _ = decoder.feed(telegram_bytes("v5.txt"), NOW)
    assert len(readings) == 1


def test_belgian_long_telegram_fits_the_default_buffer():
    long = telegram_bytes("fluvius_v171.txt")
    decoder = TelegramDecoder("m", get_profile("fluvius"))
    for chunk in range(0, len(long), 7):  # arriving a few bytes at a time
        readings, _ = decoder.feed(long[chunk : chunk + 7], NOW)
    assert decoder.stats.telegrams_ok == 1 and len(long) < DEFAULT_MAX_BUFFER


# --- property tests: nothing a line can send makes the decoder raise ------------------------
GOOD = telegram_bytes("v5.txt")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(garbage):
    decoder = TelegramDecoder("m", get_profile("dsmr5"), max_buffer=2048)
    decoder.feed(garbage, NOW)
    readings, _ = decoder.feed(b"\r\n" + GOOD, NOW)  # a good telegram right after garbage is read
    assert decoder._buffer.pending <= 2048
    assert readings and readings[-1].power_import_w == 244.0


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_telegrams_are_counted_never_raise(data):
    name = data.draw(st.sampled_from(sorted(n for n, (p, _) in TELEGRAM_PROFILES.items())))
    profile = get_profile(TELEGRAM_PROFILES[name][0])
    raw = bytearray(telegram_bytes(name))
    for _ in range(data.draw(st.integers(1, 5))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 50))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=20))
        if not raw:
            raw = bytearray(b"x")
    decoder = TelegramDecoder("m", profile)
    readings, errors = decoder.feed(bytes(raw), NOW)
    s = decoder.stats
    # every complete frame is accounted for exactly once: read or counted as an error
    assert len(readings) == s.telegrams_ok and len(errors) == s.crc_errors + s.parse_errors - s.frames_truncated
    if profile.has_crc:
        # with a CRC, whatever is read is exactly the original telegram
        for reading in readings:
            assert reading.to_record() == decoder.decode(telegram_bytes(name).decode("latin-1"), NOW).to_record()


def test_every_profile_has_a_specification():
    for profile in PROFILES.values():
        assert profile.specification["objects"]
