"""The P1 meter emulator: its telegrams against our decoder and dsmr_parser, its faults against the
decoder's counters, and its outputs over real pseudo-terminals and sockets (no mocks).

Nothing here asserts on timing; timeouts only keep a broken run from hanging.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import serial
from dsmr_parser.parsers import TelegramParser

from drivers.emulator import (
    FAULT_KINDS,
    EMULATED_PROFILES,
    Emission,
    FaultInjector,
    TelegramGenerator,
)
from drivers.profiles import get_profile
from drivers.telegram import TelegramDecoder, check_crc
from tests.helpers.p1 import HANG_GUARD_S, start_emulator, stop_emulator

REPO = Path(__file__).resolve().parents[1]
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
WEDNESDAY = datetime(2024, 6, 12, tzinfo=AMSTERDAM)  # a summer weekday, local midnight
STEP = timedelta(minutes=1)
DAY_STEPS = 24 * 60


def local_hour(moment: datetime) -> float:
    local = moment.astimezone(AMSTERDAM)
    return local.hour + local.minute / 60


def simulate(profile: str, start: datetime, steps: int, step: timedelta = STEP, seed: int = 7, gas_channel: int = 1):
    """Run a generator through simulated time; decode every telegram. Returns [(snapshot, reading, bytes)]."""
    generator = TelegramGenerator(profile, seed=seed, gas_channel=gas_channel)
    decoder = TelegramDecoder("test", get_profile(profile), gas_channel=gas_channel)
    out = []
    for k in range(steps):
        moment = start + k * step
        telegram = generator.next_telegram(moment)
        readings, errors = decoder.feed(telegram, moment)
        assert not errors, (errors, telegram)
        assert len(readings) == 1
        out.append((generator.last, readings[0], telegram))
    assert decoder.stats.telegrams_ok == steps
    assert decoder.stats.crc_errors == decoder.stats.parse_errors == decoder.stats.bytes_discarded == 0
    return out


@pytest.fixture(scope="module", params=EMULATED_PROFILES)
def day(request):
    """One simulated summer weekday, a telegram a minute, decoded by our decoder."""
    return request.param, simulate(request.param, WEDNESDAY, DAY_STEPS)


# --- the telegrams -----------------------------------------------------------------------------
def test_every_telegram_is_framed_like_a_meter_and_valid_for_dsmr_parser(day):
    profile_name, rows = day
    profile = get_profile(profile_name)
    parser = TelegramParser(profile.specification, apply_checksum_validation=True)
    for index, (_, _, telegram) in enumerate(rows):
        text = telegram.decode("ascii")
        assert text.startswith("/") and text.count("/") == 1
        assert "\n" not in text.replace("\r\n", "")  # CRLF line ends only
        if profile.has_crc:
            assert re.search(r"\r\n![0-9A-F]{4}\r\n$", text)
            check_crc(text)
        else:
            assert text.endswith("\r\n!\r\n")
        if index % 20 == 0:  # dsmr_parser is slow; a sample of the day is enough
            parsed = parser.parse(text, throw_ex=True)  # raises on a bad CRC or an unparsable line
            assert parsed.ELECTRICITY_USED_TARIFF_1.value is not None


def test_equipment_ids_are_plainly_fake():
    generator = TelegramGenerator("dsmr5", seed=3)
    text = generator.next_telegram(WEDNESDAY).decode()
    ids = re.findall(r"96\.1\.[01]\(([0-9A-F]+)\)", text)
    assert ids and all("EMU" in bytes.fromhex(i).decode() for i in ids)
    assert text.startswith("/EDG5\\2EDGE-EMULATOR-DSMR5\r\n")


def test_same_seed_and_clock_give_the_same_bytes_and_other_seeds_do_not():
    times = [WEDNESDAY + k * timedelta(seconds=10) for k in range(50)]
    for profile in EMULATED_PROFILES:
        first, second, other = (TelegramGenerator(profile, seed=s) for s in (11, 11, 12))
        assert [first.next_telegram(t) for t in times] == [second.next_telegram(t) for t in times]
        assert [first.next_telegram(t + timedelta(hours=1)) for t in times] != \
               [other.next_telegram(t + timedelta(hours=1)) for t in times]


@pytest.mark.parametrize("profile", ["dsmr5", "dsmr4", "fluvius"])
@pytest.mark.parametrize("moment", [datetime(2024, 6, 12, 10, 15, 30, tzinfo=timezone.utc),
                                    datetime(2024, 1, 17, 10, 15, 30, tzinfo=timezone.utc)],
                         ids=["summer", "winter"])


def test_meter_clock_reads_back_as_the_simulated_time(profile, moment):
    generator = TelegramGenerator(profile, seed=1)
    decoder = TelegramDecoder("test", get_profile(profile))
    readings, _ = decoder.feed(generator.next_telegram(moment), moment)
    assert readings[0].timestamp == moment


def test_fluvius_telegrams_are_long_with_13_months_of_peaks():
    generator = TelegramGenerator("fluvius", seed=5)
    telegram = generator.next_telegram(WEDNESDAY)
    assert len(telegram) > 1500  # longer than ESPHome's default buffer, as real Belgian telegrams
    parsed = TelegramParser(get_profile("fluvius").specification).parse(telegram.decode(), throw_ex=True)
    peaks = parsed.BELGIUM_MAXIMUM_DEMAND_13_MONTHS
    assert len(peaks) == 13
    months = [p.datetime for p in peaks]
    assert months == sorted(months) and months[-1] == datetime(2024, 6, 1, tzinfo=AMSTERDAM)
    assert parsed.BELGIUM_CURRENT_AVERAGE_DEMAND.value is not None
    assert parsed.BELGIUM_MAXIMUM_DEMAND_MONTH.value > 0


def test_fluvius_month_peak_grows_within_a_month_and_rolls_into_the_history():
    generator = TelegramGenerator("fluvius", seed=5)
    parser = TelegramParser(get_profile("fluvius").specification)
    start = datetime(2024, 5, 31, 12, 0, tzinfo=AMSTERDAM)
    peaks, last = [], None
    for k in range(14 * 60):  # through midnight into June
        last = parser.parse(generator.next_telegram(start + k * STEP).decode(), throw_ex=True)
        if last.P1_MESSAGE_TIMESTAMP.value < datetime(2024, 6, 1, tzinfo=AMSTERDAM):
            peaks.append(last.BELGIUM_MAXIMUM_DEMAND_MONTH.value)
    assert peaks == sorted(peaks)  # a month's peak only grows
    history = last.BELGIUM_MAXIMUM_DEMAND_13_MONTHS
    assert len(history) == 13
    assert history[-1].datetime == datetime(2024, 6, 1, tzinfo=AMSTERDAM)  # May's peak, stamped 1 June
    assert history[-1].value == peaks[-1]
    assert last.BELGIUM_MAXIMUM_DEMAND_MONTH.value <= max(peaks) + 20  # restarted for June


# --- realistic values --------------------------------------------------------------------------
def test_energy_registers_never_go_down_and_follow_the_power(day):
    profile_name, rows = day
    names = ("energy_import_t1_wh", "energy_import_t2_wh", "energy_export_t1_wh", "energy_export_t2_wh")
    for (_, before, _), (snap, after, _) in zip(rows, rows[1:]):
        for name in names:
            assert getattr(after, name) >= getattr(before, name), name
        # The interval's energy is the reported power over it, to the register's Wh resolution.
        imported = after.energy_import_wh - before.energy_import_wh
        assert abs(imported - snap.import_w * STEP.total_seconds() / 3600) <= 1.0
    first, last = rows[0][1], rows[-1][1]
    assert 3_000 < last.energy_import_wh - first.energy_import_wh < 25_000  # a household's day
    assert last.energy_export_wh > first.energy_export_wh  # a sunny day with PV


def test_load_shape_night_base_peaks_and_pv_export_at_midday(day):
    profile_name, rows = day
    resolution = 10 if profile_name in ("dsmr22", "dsmr3") else 1
    night = [r.power_import_w for s, r, _ in rows if 1 <= local_hour(s.time) < 5]
    evening = [r.power_import_w for s, r, _ in rows if 17 <= local_hour(s.time) < 21]
    assert 100 <= statistics.median(night) <= 300  # base load around 150 W
    assert statistics.mean(evening) > 2 * statistics.mean(night)
    for snap, reading, _ in rows:
        assert abs(reading.power_import_w - snap.import_w) <= resolution
        assert abs(reading.power_export_w - snap.export_w) <= resolution
        assert not (reading.power_import_w and reading.power_export_w)
        if reading.power_export_w > 0:
            assert snap.pv_w > snap.load_w
            assert 8 <= local_hour(snap.time) < 18
        if snap.pv_w > snap.load_w + 20:
            assert reading.power_export_w > 0
    midday = [r.power_export_w for s, r, _ in rows if 11 <= local_hour(s.time) < 15]
    assert sum(1 for w in midday if w > 0) > 0.8 * len(midday)


def test_per_phase_powers_voltages_and_currents_are_consistent(day):
    profile_name, rows = day
    if profile_name in ("dsmr22", "dsmr3"):
        pytest.skip("DSMR 2.2/3 telegrams have no per-phase values")
    for snap, reading, _ in rows:
        for index, phase in enumerate(("l1", "l2", "l3")):
            net = getattr(reading, f"power_import_{phase}_w") - getattr(reading, f"power_export_{phase}_w")
            assert abs(net - snap.phase_net_w[index]) <= 1
            voltage = getattr(reading, f"voltage_{phase}_v")
            current = getattr(reading, f"current_{phase}_a")
            if voltage is None:  # DSMR 4.2 as the Kaifa sample: no voltages
                assert abs(current - abs(net) / 230) <= 1.0
                continue
            assert 220 <= voltage <= 240
            tolerance = 0.02 if profile_name == "fluvius" else 0.51  # DSMR 5 sends whole amperes
            assert abs(current - abs(net) / voltage) <= tolerance


@pytest.mark.parametrize("profile", EMULATED_PROFILES)
@pytest.mark.parametrize(("local", "expected"), [
    (datetime(2024, 6, 12, 3, 0), 1),  # weekday night
    (datetime(2024, 6, 12, 6, 59), 1),
    (datetime(2024, 6, 12, 7, 0), 2),  # weekday day
    (datetime(2024, 6, 12, 12, 0), 2),
    (datetime(2024, 6, 12, 22, 59), 2),
    (datetime(2024, 6, 12, 23, 0), 1),
    (datetime(2024, 6, 15, 12, 0), 1),  # Saturday
    (datetime(2024, 6, 16, 15, 0), 1),  # Sunday
])


def test_tariff_and_the_register_it_counts_on(profile, local, expected):
    """Edge's tariff 1 is the low (night/weekend) one for every profile, Belgian ones included."""
    generator = TelegramGenerator(profile, seed=2)
    decoder = TelegramDecoder("test", get_profile(profile))
    moment = local.replace(tzinfo=AMSTERDAM)
    before, _ = decoder.feed(generator.next_telegram(moment - timedelta(minutes=10)), moment)
    telegram = generator.next_telegram(moment)
    after, _ = decoder.feed(telegram, moment)
    assert after[0].tariff == expected
    meter_code = 3 - expected if profile == "fluvius" else expected  # Belgian codes are swapped on the wire
    assert f"0-0:96.14.0({meter_code:04d})" in telegram.decode()

    def registers(reading, tariff):  # import and export of one tariff; at noon the PV may export
        return (getattr(reading, f"energy_import_t{tariff}_wh"), getattr(reading, f"energy_export_t{tariff}_wh"))

    assert registers(after[0], 3 - expected) == registers(before[0], 3 - expected)
    assert sum(registers(after[0], expected)) > sum(registers(before[0], expected))


@pytest.mark.parametrize("profile", EMULATED_PROFILES)
def test_gas_is_on_the_configured_channel_and_updates_per_period(profile):
    rows = simulate(profile, WEDNESDAY, 6 * 60, gas_channel=3)
    period = 300 if profile in ("dsmr5", "fluvius") else 3600
    for (_, before, _), (_, after, _) in zip(rows, rows[1:]):
        assert after.gas_m3 >= before.gas_m3
        assert after.gas_timestamp.timestamp() % period == 0
        if after.gas_timestamp == before.gas_timestamp:
            assert after.gas_m3 == before.gas_m3  # a captured reading, not a live one
    stamps = {r.gas_timestamp for _, r, _ in rows}
    assert len(stamps) in (6 * 3600 // period, 6 * 3600 // period + 1)
    assert rows[-1][1].gas_m3 > rows[0][1].gas_m3

    telegram = rows[-1][2]
    parsed = TelegramParser(get_profile(profile).specification).parse(telegram.decode(), throw_ex=True)
    assert 3 in [device.channel_id for device in parsed.MBUS_DEVICES]
    gas_obis = {"fluvius": "24.2.3", "dsmr22": "24.3.0", "dsmr3": "24.3.0"}.get(profile, "24.2.1")
    assert f"0-3:{gas_obis}(" in telegram.decode()
    wrong_channel = TelegramDecoder("test", get_profile(profile), gas_channel=4)  # empty (Fluvius: water on 1)
    assert wrong_channel.feed(telegram, WEDNESDAY)[0][0].gas_m3 is None
    any_channel = TelegramDecoder("test", get_profile(profile), gas_channel=None)
    assert any_channel.feed(telegram, WEDNESDAY)[0][0].gas_m3 == rows[-1][1].gas_m3


# --- faults --------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["dsmr5", "dsmr22", "fluvius"])
def test_decoder_counters_match_the_injected_faults(profile):
    generator = TelegramGenerator(profile, seed=21)
    injector = FaultInjector(0.3, seed=22)
    decoder = TelegramDecoder("test", get_profile(profile))
    seen = {kind: 0 for kind in FAULT_KINDS}
    moment = WEDNESDAY
    for _ in range(600):
        moment += timedelta(seconds=10)
        emission = injector.apply(generator.next_telegram(moment))
        if emission.fault in seen:
            seen[emission.fault] += 1
        readings, errors = decoder.feed(emission.data, moment)
        if emission.fault in (None, "garbage"):
            assert len(readings) == 1 and not errors  # every good telegram is read, garbage or not before it
        elif emission.fault == "bad_crc":
            assert not readings and errors[0].kind == "crc"
        else:
            assert not readings
    # A truncated frame is only known to be truncated when the next telegram starts.
    readings, _ = decoder.feed(generator.next_telegram(moment + timedelta(seconds=10)), moment)
    assert len(readings) == 1

    counts = injector.counts
    assert counts.telegrams == 600
    assert decoder.stats.crc_errors == counts.bad_crc
    assert decoder.stats.parse_errors == counts.truncated == decoder.stats.frames_truncated
    assert decoder.stats.telegrams_ok == counts.intact + 1
    assert counts.intact + counts.bad_crc + counts.truncated + counts.dropped == counts.telegrams
    assert 3 * counts.disconnects - 2 <= counts.dropped <= 3 * counts.disconnects  # an outage is 3 telegrams
    for kind in ("truncated", "garbage", "disconnect"):
        assert seen[kind] > 0, kind
    if profile == "dsmr22":
        assert counts.bad_crc == 0  # no CRC to corrupt
    else:
        assert counts.bad_crc > 0


def test_faults_survive_arbitrary_read_chunking():
    """A serial port hands over bytes in whatever pieces; the counts must not depend on them."""
    generator = TelegramGenerator("dsmr5", seed=31)
    injector = FaultInjector(0.4, seed=32, kinds=("bad_crc", "truncated", "garbage"))
    stream = b"".join(injector.apply(generator.next_telegram(WEDNESDAY + k * timedelta(seconds=1))).data
                      for k in range(300))
    stream += generator.next_telegram(WEDNESDAY + timedelta(seconds=300))
    decoder = TelegramDecoder("test", get_profile("dsmr5"))
    position, size = 0, 1
    while position < len(stream):
        decoder.feed(stream[position : position + size], WEDNESDAY)
        position += size
        size = size * 7 % 509 + 1
    assert decoder.stats.crc_errors == injector.counts.bad_crc
    assert decoder.stats.parse_errors == injector.counts.truncated
    assert decoder.stats.telegrams_ok == injector.counts.intact + 1
    assert decoder.stats.bytes_discarded >= injector.counts.garbage_bytes


def test_fault_injection_is_seedable_and_off_at_zero():
    telegram = TelegramGenerator("dsmr5", seed=1).next_telegram(WEDNESDAY)
    first, second = FaultInjector(0.5, seed=9), FaultInjector(0.5, seed=9)
    assert [first.apply(telegram) for _ in range(100)] == [second.apply(telegram) for _ in range(100)]
    clean = FaultInjector(0.0, seed=9)
    assert all(clean.apply(telegram) == Emission(telegram) for _ in range(100))
    with pytest.raises(ValueError):
        FaultInjector(1.5)


def test_a_bad_crc_changes_exactly_one_crc_digit():
    telegram = TelegramGenerator("dsmr5", seed=1).next_telegram(WEDNESDAY)
    damaged = FaultInjector(1.0, seed=4, kinds=("bad_crc",)).apply(telegram).data
    assert len(damaged) == len(telegram)
    differences = [i for i, (a, b) in enumerate(zip(telegram, damaged)) if a != b]
    assert len(differences) == 1 and differences[0] > telegram.rfind(b"!")
    assert re.search(rb"![0-9A-F]{4}\r\n$", damaged)


# --- outputs, each in a real subprocess -----------------------------------------------------------
def read_readings(port, decoder: TelegramDecoder, wanted: int) -> list:
    """Read from a pyserial port until `wanted` telegrams decoded, or the hang guard expires."""
    readings = []
    deadline = datetime.now() + timedelta(seconds=HANG_GUARD_S)
    while len(readings) < wanted and datetime.now() < deadline:
        data = port.read(port.in_waiting or 1)
        if data:
            readings.extend(decoder.feed(data, datetime.now(timezone.utc))[0])
    return readings


def test_pty_output_serves_a_pyserial_reader_through_the_link(tmp_path):
    link = tmp_path / "p1"
    process, path = start_emulator("--pty", "--speed", "10", "--count", "5", "--seed", "1",
                                   "--link", str(link), tmp_path=tmp_path)
    try:
        assert path.startswith("/dev/pts/")
        assert os.readlink(link) == path
        decoder = TelegramDecoder("test", get_profile("dsmr5"))
        with serial.Serial(str(link), baudrate=115200, timeout=1) as port:
            readings = read_readings(port, decoder, 5)
        assert len(readings) == 5
        assert decoder.stats.crc_errors == decoder.stats.parse_errors == 0
        stamps = [r.timestamp for r in readings]
        assert stamps == sorted(stamps) and len(set(stamps)) == 5
        assert process.wait(HANG_GUARD_S) == 0  # --count ends it by itself
        assert not os.path.lexists(link)  # and it cleans up its link
    finally:
        stop_emulator(process)


def test_pty_output_stops_cleanly_on_sigterm_with_faults_on(tmp_path):
    process, path = start_emulator("--pty", "--profile", "fluvius", "--speed", "20", "--faults", "0.3",
                                   "--seed", "3", tmp_path=tmp_path)
    try:
        decoder = TelegramDecoder("test", get_profile("fluvius"))
        with serial.Serial(path, timeout=1) as port:
            readings = read_readings(port, decoder, 5)
        assert len(readings) == 5
    finally:
        assert stop_emulator(process) == 0
    assert "faults FaultCounts(" in (tmp_path / "emulator.stderr").read_text()


def test_tcp_output_serves_every_client_and_outlives_them(tmp_path):
    process, url = start_emulator("--tcp", "0", "--profile", "dsmr4", "--speed", "50", "--seed", "4",
                                  "--gas-channel", "2", tmp_path=tmp_path)
    try:
        assert re.fullmatch(r"socket://127\.0\.0\.1:\d+", url)
        profile = get_profile("dsmr4")
        first = serial.serial_for_url(url, timeout=1)
        first_decoder = TelegramDecoder("first", profile, gas_channel=2)
        assert len(read_readings(first, first_decoder, 3)) == 3
        with serial.serial_for_url(url, timeout=1) as second:
            second_decoder = TelegramDecoder("second", profile, gas_channel=2)
            readings = read_readings(second, second_decoder, 3)
            assert len(readings) == 3 and readings[-1].gas_m3 is not None
            assert len(read_readings(first, first_decoder, 2)) == 2  # the first is still served
            first.close()  # a client leaving does not stop the emulator
            assert len(read_readings(second, second_decoder, 3)) == 3
        for decoder in (first_decoder, second_decoder):
            assert decoder.stats.crc_errors == 0
        with serial.serial_for_url(url, timeout=1) as third:  # and new clients are still welcome
            assert len(read_readings(third, TelegramDecoder("third", profile), 2)) == 2
    finally:
        assert stop_emulator(process) == 0


def test_a_tcp_disconnect_fault_closes_the_client_connection(tmp_path):
    process, url = start_emulator("--tcp", "0", "--speed", "10", "--faults", "1", "--fault-kinds", "disconnect",
                                  "--seed", "5", tmp_path=tmp_path)
    try:
        with serial.serial_for_url(url, timeout=1) as port:
            with pytest.raises(serial.SerialException):
                deadline = datetime.now() + timedelta(seconds=HANG_GUARD_S)
                while datetime.now() < deadline:
                    port.read(1)
    finally:
        assert stop_emulator(process) == 0


def test_stdout_output_writes_decodable_telegrams(tmp_path):
    process, _ = start_emulator("--stdout", "--profile", "dsmr22", "--speed", "1000", "--count", "4",
                                "--start", "2024-06-12T03:00:00", tmp_path=tmp_path)
    try:
        output, _ = process.communicate(timeout=HANG_GUARD_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    decoder = TelegramDecoder("test", get_profile("dsmr22"))
    readings, errors = decoder.feed(output, datetime.now(timezone.utc))
    assert len(readings) == 4 and not errors
    assert all(r.tariff == 1 for r in readings)  # 03:00 local: night tariff
    assert readings[0].gas_timestamp == datetime(2024, 6, 12, 3, 0, tzinfo=AMSTERDAM)


def test_bad_usage_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "drivers.emulator", "--tcp", "0", "--link", str(tmp_path / "x")],
                            cwd=REPO, capture_output=True, timeout=HANG_GUARD_S)
    assert result.returncode == 2 and b"--link" in result.stderr
    result = subprocess.run([sys.executable, "-m", "drivers.emulator", "--profile", "q3d"],
                            cwd=REPO, capture_output=True, timeout=HANG_GUARD_S)
    assert result.returncode == 2
