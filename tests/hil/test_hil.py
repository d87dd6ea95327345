"""Hardware-in-loop checks for maintainers.

    pytest tests/hil --p1-port=/dev/ttyUSB0 [--p1-profile=dsmr5] [--p1-telegrams=10] [--p1-replug]
    pytest tests/hil --p1-port=socket://gateway:2001
    pytest tests/hil --p1-port=/dev/ttyUSB0 --p1-power-off="uhubctl -l 1-1 -p 2 -a off" \
                     --p1-power-on="uhubctl -l 1-1 -p 2 -a on"        # a USB power switch pulls the "cable"

Without --p1-port they run against the meter emulator on a pseudo-terminal (as in CI).
`--p1-replug` asks the maintainer to pull and reinsert the P1 cable during the run.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest

from drivers.p1_reader import MeterSpec, MeterState, P1Reader
from tests.helpers.p1 import Collector
from tests.helpers.wait import wait_until


@pytest.fixture
def reader_for(p1_source):
    started = []

    def start(collector, stall_seconds: float = 30):
        reader = P1Reader(MeterSpec("hil", p1_source.port, p1_source.profile, stall_seconds=stall_seconds),
                          collector)
        reader.start()
        started.append(reader)
        return reader

    yield start
    for reader in started:
        reader.stop()


def telegram_budget(request) -> int:
    return int(request.config.getoption("--p1-telegrams"))


def test_reads_telegrams_with_valid_crc(p1_source, reader_for, request):
    wanted = telegram_budget(request)
    got = Collector()
    reader = reader_for(got)
    # DSMR 2.2-4 meters send every 10 s; auto-detection may take a probe round per serial setting.
    wait_until(lambda: len(got.readings) >= wanted, timeout=30 + wanted * 12, what=f"{wanted} telegrams")
    snap = reader.snapshot()
    print(f"\nHIL {p1_source.port}: profile {snap['profile']} at {snap['serial']}, {snap['telegrams_ok']} ok, "
          f"{snap['crc_errors']} CRC errors, {snap['parse_errors']} parse errors")
    assert snap["state"] == MeterState.READING
    assert snap["crc_errors"] + snap["parse_errors"] <= max(1, wanted // 10), "more than 10% bad telegrams"
    readings = list(got.readings)
    for reading in readings:  # physically plausible
        for phase in ("l1", "l2", "l3"):
            volts = getattr(reading, f"voltage_{phase}_v")
            assert volts is None or 150 <= volts <= 280, volts
        assert reading.power_import_w is None or 0 <= reading.power_import_w <= 60_000
    energy = [r.energy_import_wh for r in readings if r.energy_import_wh is not None]
    assert energy == sorted(energy), "energy registers went backwards"


def _switch(command: str) -> None:
    """A USB power switch (e.g. `uhubctl -l 1-1 -p 2 -a off`) cutting or restoring the adapter's power."""
    subprocess.run(shlex.split(command), check=True, timeout=60)


def test_pulled_cable_and_reinserted(p1_source, reader_for, request):
    power_off, power_on = request.config.getoption("--p1-power-off"), request.config.getoption("--p1-power-on")
    switched = bool(power_off and power_on)
    if p1_source.hardware and not (request.config.getoption("--p1-replug") or switched):
        pytest.skip("pass --p1-replug to be asked to pull and reinsert the P1 cable, or --p1-power-off/--p1-power-on "
                    "with a USB power switch's commands")
    got = Collector()
    reader = reader_for(got, stall_seconds=10)
    wait_until(lambda: len(got.readings) >= 2, timeout=60, what="the first telegrams")
    if p1_source.hardware and switched:
        _switch(power_off)
    elif p1_source.hardware:
        print("\n>>> Pull the P1 cable (or power off the gateway) now; put it back when told.", flush=True)
    else:
        p1_source.emulator.pull()
    wait_until(lambda: reader.state in (MeterState.DISCONNECTED, MeterState.STALLED), timeout=120,
               what="the reader to notice the pulled cable")
    before = len(got.readings)
    if p1_source.hardware and switched:
        _switch(power_on)
    elif p1_source.hardware:
        print(">>> Plug it back in now.", flush=True)
    else:
        p1_source.emulator.start()
    wait_until(lambda: len(got.readings) >= before + 2, timeout=180, what="reading to resume")
    assert reader.state == MeterState.READING
    assert reader.reconnects >= 1 or reader.stalls >= 1


@pytest.mark.parametrize("p1_source", [("--faults", "0.3", "--fault-kinds", "bad_crc,truncated,garbage")],
                         indirect=True)


def test_faulty_line_is_counted_and_read_through(p1_source, reader_for):
    if p1_source.hardware:
        pytest.skip("fault injection needs the emulator")
    got = Collector()
    reader = reader_for(got)
    wait_until(lambda: len(got.readings) >= 20, timeout=120, what="20 good telegrams through faults")
    snap = reader.snapshot()
    assert snap["crc_errors"] + snap["parse_errors"] >= 1
    assert snap["state"] == MeterState.READING
