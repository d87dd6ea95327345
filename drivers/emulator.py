"""A P1 meter emulator: realistic telegrams for DSMR 2.2/3, 4, 5 and Belgian (Fluvius) meters, with faults.

The core is sans-I/O and deterministic given a seed and a clock:

- `TelegramGenerator.next_telegram(now)` simulates a household (daily load shape, PV, gas) up to `now`
  and returns the telegram a meter of the chosen profile would send then, byte for byte.
- `FaultInjector.apply(telegram)` damages some telegrams (bad CRC, truncation, garbage, disconnects)
  and counts what it did, so tests can compare with the decoder's counters.

Thin outputs pace it in real time: a pseudo-terminal (`PtyOutput`), a TCP server (`TcpOutput`) or stdout.
`run_emulator(args)` / `add_emulator_arguments(parser)` serve `edge-agent emulate-meter` and
`python -m drivers.emulator`. The first line on stdout is where to read the meter: the pty path, or
`socket://HOST:PORT`.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import math
import os
import random
import select
import selectors
import signal
import socket
import sys
import termios
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from drivers.profiles import Profile, get_profile
from drivers.telegram import crc16

EMULATED_PROFILES = ("dsmr5", "dsmr4", "dsmr22", "dsmr3", "fluvius")
DUTCH_TIME = ZoneInfo("Europe/Amsterdam")  # dsmr_parser reads meter timestamps in this zone
BELGIAN_TIME = ZoneInfo("Europe/Brussels")  # same rules as Amsterdam; named for clarity
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# --- the household ---------------------------------------------------------------------------
def _bump(hour: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((hour - centre) / width) ** 2)


class _Wander:
    """An Ornstein-Uhlenbeck process: noise that drifts with a correlation time, whatever the step."""

    def __init__(self, rng: random.Random, tau_s: float, sigma: float):
        self.rng, self.tau_s, self.sigma = rng, tau_s, sigma
        self.value = rng.gauss(0.0, sigma)

    def step(self, dt_s: float) -> float:
        decay = math.exp(-dt_s / self.tau_s)
        self.value = self.value * decay + self.sigma * math.sqrt(1 - decay * decay) * self.rng.gauss(0.0, 1.0)
        return self.value


@dataclass(frozen=True, slots=True)
class _Appliance:
    name: str
    power_w: float
    minutes: float
    phase: int  # 0..2
    starts_per_day: float
    from_hour: float  # local hours in which it may be switched on
    to_hour: float


APPLIANCES = (
    _Appliance("fridge", 90, 15, 0, 24, 0, 24),
    _Appliance("kettle", 2000, 3, 1, 4, 6.5, 23),
    _Appliance("microwave", 1100, 4, 0, 2, 7, 22),
    _Appliance("cooking", 2200, 40, 2, 1, 17, 19.5),
    _Appliance("washing machine", 2000, 25, 0, 0.5, 8, 21),
    _Appliance("dishwasher", 1900, 30, 1, 0.7, 19, 23),
)
STANDBY_W = (50.0, 40.0, 30.0)  # per phase: about 150 W at night with the fridge cycling
ACTIVITY_W = 500.0  # people at home, lights, screens: scaled by the time of day
ACTIVITY_SPLIT = (0.40, 0.35, 0.25)


class Household:
    """Per-phase load and PV production of one house, stepped through (local) time."""

    def __init__(self, rng: random.Random, pv_peak_w: float):
        self.rng = rng
        self.pv_peak_w = pv_peak_w
        self._activity_noise = _Wander(rng, tau_s=1200, sigma=0.3)
        self._clouds = _Wander(rng, tau_s=900, sigma=0.15)
        self._voltage_noise = [_Wander(rng, tau_s=300, sigma=1.5) for _ in range(3)]
        self._gas_noise = _Wander(rng, tau_s=1800, sigma=0.3)
        self._running: dict[str, float] = {}  # appliance -> seconds left

    @staticmethod
    def activity(hour: float, weekend: bool) -> float:
        """How busy the house is: about 0 at night, morning and evening peaks."""
        awake = 0.2 if 6.5 <= hour < 23.5 else 0.0
        morning = 9.0 if weekend else 7.3
        midday = 0.8 if weekend else 0.4
        return (awake + 1.2 * _bump(hour, morning, 0.6) + midday * _bump(hour, 12.5, 0.8)
                + 1.5 * _bump(hour, 18.3, 1.0) + 0.9 * _bump(hour, 20.8, 1.2))

    def pv_clear_sky_w(self, hour: float) -> float:
        if not 8.0 < hour < 18.0:
            return 0.0
        return self.pv_peak_w * math.sin(math.pi * (hour - 8.0) / 10.0)

    def step(self, local: datetime, dt_s: float) -> tuple[list[float], list[float]]:
        """Advance by dt_s to `local`; returns (load per phase, PV per phase) in W."""
        hour = local.hour + local.minute / 60 + local.second / 3600
        weekend = local.weekday() >= 5
        loads = list(STANDBY_W)

        busy = max(0.0, self.activity(hour, weekend) * (1 + self._activity_noise.step(dt_s)))
        for phase in range(3):
            loads[phase] += ACTIVITY_W * busy * ACTIVITY_SPLIT[phase]

        for appliance in APPLIANCES:
            left = self._running.get(appliance.name, 0.0) - dt_s
            if left <= 0 and appliance.from_hour <= hour < appliance.to_hour:
                window_h = appliance.to_hour - appliance.from_hour
                if self.rng.random() < appliance.starts_per_day / window_h * dt_s / 3600:
                    left = appliance.minutes * 60 * self.rng.uniform(0.7, 1.3)
            if left > 0:
                self._running[appliance.name] = left
                loads[appliance.phase] += appliance.power_w
            else:
                self._running.pop(appliance.name, None)

        loads = [w * self.rng.uniform(0.98, 1.02) for w in loads]  # small flicker per telegram
        clouds = min(1.0, max(0.2, 0.85 + self._clouds.step(dt_s)))
        pv_total = self.pv_clear_sky_w(hour) * clouds
        return loads, [pv_total / 3] * 3  # a three-phase inverter

    def voltages(self, dt_s: float, net_w: list[float]) -> list[float]:
        # Export raises the local voltage, import lowers it a little.
        return [230.0 + noise.step(dt_s) - 0.0013 * net for noise, net in zip(self._voltage_noise, net_w)]

    def gas_m3_per_h(self, local: datetime, dt_s: float) -> float:
        hour = local.hour + local.minute / 60
        rate = 0.03 + 0.45 * _bump(hour, 6.8, 0.6) + 0.15 * _bump(hour, 12.5, 1.0) + 0.35 * _bump(hour, 18.5, 1.5)
        return max(0.0, rate * (1 + self._gas_noise.step(dt_s)))

    @staticmethod
    def water_m3_per_h(local: datetime) -> float:
        hour = local.hour + local.minute / 60
        return 0.004 + 0.06 * _bump(hour, 7.0, 0.5) + 0.03 * _bump(hour, 19.0, 1.5)


# --- the generator ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    """What the generator simulated for the last telegram: the ground truth tests compare against."""

    time: datetime
    load_w: float
    pv_w: float
    import_w: float
    export_w: float
    phase_net_w: tuple[float, float, float]  # load minus PV per phase; negative is export
    voltages_v: tuple[float, float, float]
    tariff: int  # Edge numbering: 1 = low (night, weekend), 2 = normal
    meter_tariff: int  # as the meter sends it (swapped for Belgian meters)
    gas_m3: float  # the last captured gas reading, as sent
    gas_time: datetime


def _stamp(moment: datetime, zone: ZoneInfo, dst_flag: bool = True) -> str:
    """A DSMR timestamp, YYMMDDhhmmss in local time, plus S (summer) or W (winter)."""
    local = moment.astimezone(zone)
    text = local.strftime("%y%m%d%H%M%S")
    if dst_flag:
        text += "S" if local.dst() else "W"
    return text


def _floor(moment: datetime, period_s: int) -> datetime:
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return _EPOCH + timedelta(seconds=seconds - seconds % period_s)


def _month_start(moment: datetime, zone: ZoneInfo, months_back: int = 0) -> datetime:
    local = moment.astimezone(zone)
    index = local.year * 12 + local.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=zone).astimezone(timezone.utc)


def _kwh(wh: float, digits: int) -> str:
    """An energy register: Wh resolution, truncated so it never goes down, as kWh with 3 decimals."""
    whole = int(wh)
    return f"{whole // 1000:0{digits}d}.{whole % 1000:03d}"


def _kw(w: float, digits: int = 2, decimals: int = 3) -> str:
    limit = 10**digits - 10**-decimals
    return f"{min(max(w, 0.0) / 1000, limit):0{digits + decimals + 1}.{decimals}f}"


def _fake_id(text: str) -> str:
    """Equipment ids are hex-encoded ASCII on the wire; ours say plainly that they are fake."""
    return text.encode("ascii").hex().upper()


class TelegramGenerator:
    """Telegrams of one emulated meter. Pure: the same seed and the same clock give the same bytes.

    Each `next_telegram(now)` advances the simulation from the previous call to `now` (aware datetime):
    powers for `now`, energy registers integrating them (import/export energy of the interval goes to
    the tariff register active at `now`), gas captured every 5 minutes (DSMR 5, Fluvius) or hourly.
    A clock that goes backwards adds nothing (dt = 0).
    """

    def __init__(self, profile: str | Profile = "dsmr5", seed: int | None = None, gas_channel: int = 1,
                 pv_peak_w: float = 3500.0):
        self.profile = profile if isinstance(profile, Profile) else get_profile(profile)
        if self.profile.name not in EMULATED_PROFILES:
            raise ValueError(f"no emulation for profile {self.profile.name!r}; "
                             f"emulated: {', '.join(EMULATED_PROFILES)}")
        if not 1 <= gas_channel <= 4:
            raise ValueError("the gas meter's M-Bus channel is 1 to 4")
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self.gas_channel = gas_channel
        self.water_channel = 2 if gas_channel == 1 else 1  # Fluvius meters only
        self.name = self.profile.name
        self.belgian = self.profile.belgian_tariffs
        self.zone = BELGIAN_TIME if self.belgian else DUTCH_TIME
        self.gas_period_s = 300 if self.name in ("dsmr5", "fluvius") else 3600
        self._rng = random.Random(self.seed)
        self.house = Household(self._rng, pv_peak_w)
        self.last: MeterSnapshot | None = None

        rng = self._rng
        number = rng.randrange(10_000)
        self.equipment_id = f"EDGE-EMULATOR-{number:04d}"
        self.gas_equipment_id = f"EDGE-EMU-GAS-{number:04d}"
        self.water_equipment_id = f"EDGE-EMU-WATER-{number:04d}"
        # Registers by (direction, register number as the meter numbers them).
        has_pv = pv_peak_w > 0
        self._energy_wh = {
            ("import", 1): rng.uniform(3e6, 9e6), ("import", 2): rng.uniform(2.5e6, 8e6),
            ("export", 1): rng.uniform(5e5, 2.5e6) if has_pv else 0.0,
            ("export", 2): rng.uniform(1e6, 4e6) if has_pv else 0.0,
        }
        self._gas_m3 = rng.uniform(1000, 8000)
        self._water_m3 = rng.uniform(100, 900)
        self._power_failures = rng.randrange(0, 20)
        self._long_power_failures = rng.randrange(0, 5)
        self._sags = [rng.randrange(0, 5) for _ in range(3)]
        self._swells = [rng.randrange(0, 3) for _ in range(3)]
        self._failure_log: deque[tuple[datetime, int]] = deque(maxlen=10)  # (end, duration s)
        self._failure_log_ages_days = sorted((rng.uniform(1, 365) for _ in range(self._long_power_failures)),
                                             reverse=True)
        self._time: datetime | None = None

    # -- simulation --
    def next_telegram(self, now: datetime) -> bytes:
        if now.tzinfo is None:
            raise ValueError("next_telegram needs an aware datetime")
        now = now.astimezone(timezone.utc)
        if self._time is None:
            self._start(now)
        dt_s = max(0.0, (now - self._time).total_seconds())
        self._time = max(now, self._time)
        local = now.astimezone(self.zone)

        loads, pvs = self.house.step(local, dt_s)
        net = [load - pv for load, pv in zip(loads, pvs)]
        total_net = sum(net)
        import_w, export_w = round(max(total_net, 0.0)), round(max(-total_net, 0.0))
        volts = self.house.voltages(dt_s, net)

        low = local.weekday() >= 5 or local.hour >= 23 or local.hour < 7
        tariff = 1 if low else 2
        meter_tariff = 3 - tariff if self.belgian else tariff
        self._energy_wh[("import", meter_tariff)] += import_w * dt_s / 3600
        self._energy_wh[("export", meter_tariff)] += export_w * dt_s / 3600
        self._gas_m3 += self.house.gas_m3_per_h(local, dt_s) * dt_s / 3600
        self._water_m3 += self.house.water_m3_per_h(local) * dt_s / 3600
        self._capture_mbus(now)
        self._power_events(now, dt_s)
        if self.belgian:
            self._track_demand(now, import_w, dt_s)

        self.last = MeterSnapshot(
            time=now, load_w=sum(loads), pv_w=sum(pvs), import_w=import_w, export_w=export_w,
            phase_net_w=tuple(net), voltages_v=tuple(round(v, 1) for v in volts), tariff=tariff,
            meter_tariff=meter_tariff, gas_m3=self._gas_captured[1], gas_time=self._gas_captured[0])
        lines = {"dsmr5": self._dsmr5_lines, "dsmr4": self._dsmr4_lines, "fluvius": self._fluvius_lines,
                 "dsmr22": self._dsmr22_lines, "dsmr3": self._dsmr22_lines}[self.name](now, net, volts)
        return self._frame(lines)

    def _start(self, now: datetime) -> None:
        self._time = now
        boundary = _floor(now, self.gas_period_s)
        self._gas_captured = (boundary, math.floor(self._gas_m3 * 1000) / 1000)
        self._water_captured = (boundary, math.floor(self._water_m3 * 1000) / 1000)
        for age in self._failure_log_ages_days:
            self._failure_log.append((now - timedelta(days=age), self._rng.randrange(200, 20_000)))
        if self.belgian:
            self._start_demand(now)

    def _capture_mbus(self, now: datetime) -> None:
        """M-Bus meters report a reading captured at the last period boundary, not a live one."""
        boundary = _floor(now, self.gas_period_s)
        if boundary > self._gas_captured[0]:
            self._gas_captured = (boundary, math.floor(self._gas_m3 * 1000) / 1000)
            self._water_captured = (boundary, math.floor(self._water_m3 * 1000) / 1000)

    def _power_events(self, now: datetime, dt_s: float) -> None:
        # Rare: a short outage about once a month, a long one about once a year.
        if self._rng.random() < dt_s / (30 * 86400):
            self._power_failures += 1
            self._sags[self._rng.randrange(3)] += 1
        if self._rng.random() < dt_s / (365 * 86400):
            self._long_power_failures += 1
            self._failure_log.append((now, self._rng.randrange(200, 20_000)))

    # -- Belgian capacity tariff: 15-minute average demand, monthly peak, 13 months of peaks --
    def _start_demand(self, now: datetime) -> None:
        rng = self._rng
        quarter = timedelta(minutes=15)
        self._quarter_start = _floor(now, 900)
        self._quarter_wh = 0.0
        self._quarter_s = 0.0
        self._month = _month_start(now, self.zone)
        elapsed_quarters = (now - self._month) // quarter
        if elapsed_quarters >= 1:
            self._month_peak = (self._month + rng.randint(1, elapsed_quarters) * quarter,
                                round(rng.uniform(1.5, 4.5), 3))
        else:
            self._month_peak = (self._month, 0.0)
        self._peak_history: deque[tuple[datetime, datetime, float]] = deque(maxlen=13)
        for back in range(13, 0, -1):
            month = _month_start(now, self.zone, back)
            next_month = _month_start(now, self.zone, back - 1)
            peak_at = month + rng.randrange((next_month - month) // quarter) * quarter
            self._peak_history.append((next_month, peak_at, round(rng.uniform(2.5, 6.5), 3)))

    def _track_demand(self, now: datetime, import_w: float, dt_s: float) -> None:
        quarter_start = _floor(now, 900)
        if quarter_start > self._quarter_start:
            if self._quarter_s > 0:
                average_kw = self._quarter_wh * 3600 / self._quarter_s / 1000
                if average_kw > self._month_peak[1]:
                    self._month_peak = (quarter_start, round(average_kw, 3))
            month = _month_start(now, self.zone)
            if month > self._month:
                self._peak_history.append((month, *self._month_peak))
                self._month, self._month_peak = month, (month, 0.0)
            self._quarter_start, self._quarter_wh, self._quarter_s = quarter_start, 0.0, 0.0
        self._quarter_wh += import_w * dt_s / 3600
        self._quarter_s += dt_s

    def _average_demand_w(self) -> float:
        if self._quarter_s < 1:
            return self.last.import_w if self.last else 0.0
        return self._quarter_wh * 3600 / self._quarter_s

    # -- formatting, modelled line by line on the real telegrams in /work/shared/telegrams --
    def _header(self) -> str:
        return f"/EDG5\\2EDGE-EMULATOR-{self.name.upper()}"

    def _registers(self, digits: int) -> list[str]:
        return [f"1-0:{obis}({_kwh(self._energy_wh[key], digits)}*kWh)" for obis, key in (
            ("1.8.1", ("import", 1)), ("1.8.2", ("import", 2)), ("2.8.1", ("export", 1)), ("2.8.2", ("export", 2)))]

    def _failure_lines(self) -> list[str]:
        log = "".join(f"({_stamp(end, self.zone)})({duration:010d}*s)" for end, duration in self._failure_log)
        return [f"0-0:96.7.21({self._power_failures:05d})", f"0-0:96.7.9({self._long_power_failures:05d})",
                f"1-0:99.97.0({len(self._failure_log)})(0-0:96.7.19){log}",
                *(f"1-0:{obis}.32.0({count:05d})" for obis, count in zip((32, 52, 72), self._sags)),
                *(f"1-0:{obis}.36.0({count:05d})" for obis, count in zip((32, 52, 72), self._swells))]

    @staticmethod
    def _phase_power_lines(net: list[float], order: str) -> list[str]:
        imports = [f"1-0:{obis}.7.0({_kw(max(w, 0.0))}*kW)" for obis, w in zip((21, 41, 61), net)]
        exports = [f"1-0:{obis}.7.0({_kw(max(-w, 0.0))}*kW)" for obis, w in zip((22, 42, 62), net)]
        if order == "interleaved":  # DSMR 4: 21, 22, 41, 42, 61, 62
            return [line for pair in zip(imports, exports) for line in pair]
        return imports + exports

    @staticmethod
    def _currents(net: list[float], volts: list[float]) -> list[float]:
        return [abs(w) / v for w, v in zip(net, volts)]

    def _gas_lines_dutch(self, identifier_obis: str = "96.1.0") -> list[str]:
        n = self.gas_channel
        when, value = self._gas_captured
        return [f"0-{n}:24.1.0(003)", f"0-{n}:{identifier_obis}({_fake_id(self.gas_equipment_id)})",
                f"0-{n}:24.2.1({_stamp(when, self.zone)})({value:09.3f}*m3)"]

    def _dsmr5_lines(self, now: datetime, net: list[float], volts: list[float]) -> list[str]:
        snap = self.last
        return [
            "1-3:0.2.8(50)", f"0-0:1.0.0({_stamp(now, self.zone)})", f"0-0:96.1.1({_fake_id(self.equipment_id)})",
            *self._registers(6), f"0-0:96.14.0({snap.meter_tariff:04d})",
            f"1-0:1.7.0({_kw(snap.import_w)}*kW)", f"1-0:2.7.0({_kw(snap.export_w)}*kW)",
            *self._failure_lines(), "0-0:96.13.0()",
            *(f"1-0:{obis}.7.0({v:05.1f}*V)" for obis, v in zip((32, 52, 72), volts)),
            *(f"1-0:{obis}.7.0({round(a):03d}*A)" for obis, a in zip((31, 51, 71), self._currents(net, volts))),
            *self._phase_power_lines(net, "grouped"), *self._gas_lines_dutch(),
        ]

    def _dsmr4_lines(self, now: datetime, net: list[float], volts: list[float]) -> list[str]:
        snap = self.last
        # DSMR 4.2 (as the Kaifa sample): no voltages; currents from the (unreported) voltage.
        return [
            "1-3:0.2.8(42)", f"0-0:1.0.0({_stamp(now, self.zone)})", f"0-0:96.1.1({_fake_id(self.equipment_id)})",
            *self._registers(6), f"0-0:96.14.0({snap.meter_tariff:04d})",
            f"1-0:1.7.0({_kw(snap.import_w)}*kW)", f"1-0:2.7.0({_kw(snap.export_w)}*kW)",
            *self._failure_lines(), "0-0:96.13.1()", "0-0:96.13.0()",
            *(f"1-0:{obis}.7.0({round(a):03d}*A)" for obis, a in zip((31, 51, 71), self._currents(net, volts))),
            *self._phase_power_lines(net, "interleaved"), *self._gas_lines_dutch(),
        ]

    def _dsmr22_lines(self, now: datetime, net: list[float], volts: list[float]) -> list[str]:
        snap = self.last
        n = self.gas_channel
        when, value = self._gas_captured
        # DSMR 2.2: no clock, no CRC; gas as a 24.3.0 profile line with the value on the next line.
        return [
            f"0-0:96.1.1({_fake_id(self.equipment_id)})", *self._registers(5),
            f"0-0:96.14.0({snap.meter_tariff:04d})",
            f"1-0:1.7.0({_kw(snap.import_w, 4, 2)}*kW)", f"1-0:2.7.0({_kw(snap.export_w, 4, 2)}*kW)",
            "0-0:17.0.0(0999.00*kW)", "0-0:96.3.10(1)", "0-0:96.13.1()", "0-0:96.13.0()",
            f"0-{n}:24.1.0(3)", f"0-{n}:96.1.0({_fake_id(self.gas_equipment_id)})",
            f"0-{n}:24.3.0({_stamp(when, self.zone, dst_flag=False)})(00)(60)(1)(0-{n}:24.2.1)(m3)",
            f"({value:09.3f})", f"0-{n}:24.4.0(1)",
        ]

    def _fluvius_lines(self, now: datetime, net: list[float], volts: list[float]) -> list[str]:
        snap = self.last
        zone = self.zone
        peak_at, peak_kw = self._month_peak
        history = "".join(f"({_stamp(month, zone)})({_stamp(at, zone)})({kw:06.3f}*kW)"
                          for month, at, kw in self._peak_history)
        g, w = self.gas_channel, self.water_channel
        gas_at, gas = self._gas_captured
        water_at, water = self._water_captured
        return [
            "0-0:96.1.4(50217)", f"0-0:96.1.1({_fake_id(self.equipment_id)})", f"0-0:1.0.0({_stamp(now, zone)})",
            *self._registers(6), f"0-0:96.14.0({snap.meter_tariff:04d})",
            f"1-0:1.4.0({_kw(self._average_demand_w())}*kW)",
            f"1-0:1.6.0({_stamp(peak_at, zone)})({peak_kw:06.3f}*kW)",
            f"0-0:98.1.0({len(self._peak_history)})(1-0:1.6.0)(1-0:1.6.0){history}",
            f"1-0:1.7.0({_kw(snap.import_w)}*kW)", f"1-0:2.7.0({_kw(snap.export_w)}*kW)",
            *self._phase_power_lines(net, "grouped"),
            *(f"1-0:{obis}.7.0({v:05.1f}*V)" for obis, v in zip((32, 52, 72), volts)),
            *(f"1-0:{obis}.7.0({a:06.2f}*A)" for obis, a in zip((31, 51, 71), self._currents(net, volts))),
            "0-0:96.3.10(1)", "0-0:17.0.0(999.9*kW)", "1-0:31.4.0(999*A)", "0-0:96.13.0()",
            f"0-{g}:24.1.0(003)", f"0-{g}:96.1.1({_fake_id(self.gas_equipment_id)})", f"0-{g}:24.4.0(1)",
            f"0-{g}:24.2.3({_stamp(gas_at, zone)})({gas:09.3f}*m3)",
            f"0-{w}:24.1.0(007)", f"0-{w}:96.1.1({_fake_id(self.water_equipment_id)})",
            f"0-{w}:24.2.1({_stamp(water_at, zone)})({water:09.3f}*m3)",
        ]

    def _frame(self, lines: list[str]) -> bytes:
        body = "\r\n".join([self._header(), "", *lines, "!"])
        if self.profile.has_crc:
            body += f"{crc16(body.encode('ascii')):04X}"
        return (body + "\r\n").encode("ascii")


# --- faults ----------------------------------------------------------------------------------
FAULT_KINDS = ("bad_crc", "truncated", "garbage", "disconnect")
# Garbage never holds a start or end marker, so it cannot frame or complete a telegram: the decoder
# discards it silently, and a truncated frame before it still counts as exactly one truncation.
_GARBAGE_BYTES = bytes(b for b in range(256) if b not in b"/!")


@dataclass(slots=True)
class FaultCounts:
    telegrams: int = 0  # telegrams from the generator
    intact: int = 0  # sent unchanged (garbage before a telegram leaves it intact)
    bad_crc: int = 0
    truncated: int = 0
    garbage: int = 0
    garbage_bytes: int = 0
    disconnects: int = 0
    dropped: int = 0  # not sent: lost in a disconnect's outage


@dataclass(frozen=True, slots=True)
class Emission:
    """What to put on the wire for one telegram; `disconnect` first drops the connection."""

    data: bytes
    disconnect: bool = False
    fault: str | None = None  # bad_crc, truncated, garbage, disconnect, outage, or None


class FaultInjector:
    """Damages telegrams with probability `probability` each, one fault at a time, and counts them.

    - bad_crc: one CRC digit changed (telegrams without a CRC get one of the other faults);
    - truncated: the telegram cut after its '/' and before its '!', the next one follows;
    - garbage: a burst of random bytes before an intact telegram;
    - disconnect: the output drops its connection and `outage_telegrams` telegrams (this one
      included) are not sent; on a pty this is only a stall, since a new pty would have a new path.
    """

    def __init__(self, probability: float, seed: int | None = None, kinds=FAULT_KINDS, outage_telegrams: int = 3):
        if not 0.0 <= probability <= 1.0:
            raise ValueError("fault probability must be between 0 and 1")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds are {', '.join(FAULT_KINDS)}")
        self.probability = probability
        self.kinds = tuple(kinds)
        self.outage_telegrams = max(1, outage_telegrams)
        self.counts = FaultCounts()
        self._rng = random.Random(seed)
        self._outage_left = 0

    def apply(self, telegram: bytes) -> Emission:
        counts = self.counts
        counts.telegrams += 1
        if self._outage_left:
            self._outage_left -= 1
            counts.dropped += 1
            return Emission(b"", fault="outage")
        bang = telegram.rfind(b"!")
        has_crc = len(telegram.rstrip(b"\r\n")) > bang + 1
        kinds = [k for k in self.kinds if k != "bad_crc" or has_crc]
        if not kinds or self._rng.random() >= self.probability:
            counts.intact += 1
            return Emission(telegram)
        kind = self._rng.choice(kinds)
        if kind == "bad_crc":
            counts.bad_crc += 1
            position = bang + 1 + self._rng.randrange(len(telegram.rstrip(b"\r\n")) - bang - 1)
            digit = telegram[position : position + 1]
            other = self._rng.choice([c for c in b"0123456789ABCDEF" if bytes([c]) != digit])
            return Emission(telegram[:position] + bytes([other]) + telegram[position + 1 :], fault=kind)
        if kind == "truncated":
            counts.truncated += 1
            return Emission(telegram[: self._rng.randrange(2, bang)], fault=kind)
        if kind == "garbage":
            size = self._rng.randint(8, 64)
            counts.garbage += 1
            counts.garbage_bytes += size
            counts.intact += 1
            return Emission(bytes(self._rng.choices(_GARBAGE_BYTES, k=size)) + telegram, fault=kind)
        counts.disconnects += 1
        counts.dropped += 1
        self._outage_left = self.outage_telegrams - 1
        return Emission(b"", disconnect=True, fault=kind)


# --- outputs ---------------------------------------------------------------------------------
class PtyOutput:
    """A pseudo-terminal the emulator owns; readers open its slave path (or `link`) as a serial port.

    We do not keep the slave open ourselves, so the master reports POLLHUP while nobody has the port
    open: telegrams sent then are dropped, as a meter talking to nobody, instead of piling up as stale
    data for the next reader. A disconnect fault is a stall here (see FaultInjector).
    """

    settle_s = 0.5  # pyserial flushes its input just after opening: give it time before the first telegram

    def __init__(self, link: str | None = None):
        self.link = link
        self.path: str | None = None
        self.bytes_dropped = 0
        self._master: int | None = None
        self._poll = select.poll()

    def open(self) -> str:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing, no CR/LF translation: bytes as a meter sends them
        self.path = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self._poll.register(master, select.POLLIN)
        if self.link:
            if os.path.lexists(self.link) and not os.path.islink(self.link):
                self.close(linger_s=0)
                raise OSError(errno.EEXIST, f"{self.link} exists and is not a symlink; not replacing it")
            temporary = f"{self.link}.{os.getpid()}.tmp"
            os.symlink(self.path, temporary)
            os.replace(temporary, self.link)  # atomic: a reader never sees the link missing
        return self.path

    @property
    def address(self) -> str:
        return self.path

    def has_reader(self) -> bool:
        return not any(events & select.POLLHUP for _, events in self._poll.poll(0))

    def service(self, timeout_s: float) -> None:
        if not self.has_reader():
            time.sleep(min(timeout_s, 0.05))  # the master would report POLLHUP at once: do not spin
            return
        if self._poll.poll(max(0, int(timeout_s * 1000))):
            try:
                os.read(self._master, 4096)  # whatever the reader writes (nothing, normally) is discarded
            except OSError:
                pass

    def write(self, data: bytes) -> None:
        if not self.has_reader():
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view) :]
            except BlockingIOError:
                self.bytes_dropped += len(view)  # a reader that stopped reading: do not block for it
                return
            except OSError:
                return

    def disconnect(self) -> None:
        pass  # a stall: the injector drops the telegrams of the outage

    def close(self, linger_s: float = 3.0) -> None:
        if self._master is None:
            return
        if linger_s > 0 and self.has_reader():
            self._linger(linger_s)
        os.close(self._master)
        self._master = None
        if self.link and os.path.islink(self.link) and os.readlink(self.link) == self.path:
            os.unlink(self.link)

    def _linger(self, linger_s: float) -> None:
        """Wait until the reader has read what was sent: closing the master hangs up the slave and
        loses what is still queued."""
        try:
            probe = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            deadline = time.monotonic() + linger_s
            empty_checks = 0
            while time.monotonic() < deadline and empty_checks < 2:
                queued = int.from_bytes(fcntl.ioctl(probe, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)
                empty_checks = empty_checks + 1 if queued == 0 else 0
                time.sleep(0.05)
        finally:
            os.close(probe)


class TcpOutput:
    """A TCP server sending every telegram to every connected client (`socket://HOST:PORT`).

    Clients come and go without stopping the emulator; one that falls more than `max_backlog` bytes
    behind is dropped rather than slowing the others. A disconnect fault closes all client connections.
    """

    settle_s = 0.2  # pyserial's socket:// discards what is already readable when it opens
    max_backlog = 256 * 1024

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self._server: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._outbox: dict[socket.socket, bytearray] = {}
        self.clients_served = 0

    def open(self) -> str:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = socket.create_server((self.host, self.port), family=family, backlog=8)
        self._server.setblocking(False)
        self.port = self._server.getsockname()[1]
        self._selector.register(self._server, selectors.EVENT_READ)
        return self.address

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"socket://{host}:{self.port}"

    def has_reader(self) -> bool:
        return bool(self._outbox)

    def service(self, timeout_s: float) -> None:
        for key, events in self._selector.select(timeout_s):
            sock = key.fileobj
            if sock is self._server:
                self._accept()
                continue
            if events & selectors.EVENT_READ:
                try:
                    if not sock.recv(4096):  # the client closed its end
                        self._drop(sock)
                        continue
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._drop(sock)
                    continue
            if events & selectors.EVENT_WRITE:
                self._flush(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._server.accept()
        except (BlockingIOError, InterruptedError):
            return
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._outbox[client] = bytearray()
        self._selector.register(client, selectors.EVENT_READ)
        self.clients_served += 1

    def write(self, data: bytes) -> None:
        for client, outbox in list(self._outbox.items()):
            outbox += data
            if len(outbox) > self.max_backlog:
                self._drop(client)
            else:
                self._flush(client)

    def _flush(self, client: socket.socket) -> None:
        outbox = self._outbox.get(client)
        if outbox is None:
            return
        try:
            sent = client.send(outbox)
            del outbox[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(client)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if outbox else 0)
        if self._selector.get_key(client).events != wanted:
            self._selector.modify(client, wanted)

    def _drop(self, client: socket.socket) -> None:
        self._outbox.pop(client, None)
        try:
            self._selector.unregister(client)
        except (KeyError, ValueError):
            pass
        client.close()

    def disconnect(self) -> None:
        for client in list(self._outbox):
            self._drop(client)

    def close(self, linger_s: float = 3.0) -> None:
        """Send what is still queued (bounded by `linger_s`), then close everything."""
        deadline = time.monotonic() + linger_s
        while any(self._outbox.values()) and time.monotonic() < deadline:
            self.service(0.05)
        for client in list(self._outbox):
            try:
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._drop(client)
        if self._server is not None:
            self._selector.unregister(self._server)
            self._server.close()
            self._server = None
        self._selector.close()


class StdoutOutput:
    """Telegrams to a binary stream (stdout): for pipes, `socat` and eyeballing."""

    settle_s = 0.0
    address = None  # the telegrams are the output: no address line first

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.broken = False

    def open(self) -> None:
        return None

    def has_reader(self) -> bool:
        return True

    def service(self, timeout_s: float) -> None:
        time.sleep(timeout_s)

    def write(self, data: bytes) -> None:
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError:
            self.broken = True  # the reader went away: stop cleanly

    def disconnect(self) -> None:
        pass

    def close(self, linger_s: float = 0.0) -> None:
        pass


# --- pacing ----------------------------------------------------------------------------------
@dataclass
class Emulator:
    """Runs a generator against an output: one telegram per `interval_s` of simulated time,
    `speed` times faster than real time. The clock starts when the first reader attaches."""

    generator: TelegramGenerator
    output: object
    start: datetime
    interval_s: float
    speed: float = 1.0
    count: int | None = None
    injector: FaultInjector | None = None
    telegrams: int = 0  # generated so far, faulty and dropped ones included
    stop_requested: threading.Event = field(default_factory=threading.Event)
    # A drivers.dlms.FrameEncryptor: telegrams go out as DLMS frames. Faults damage the telegram
    # inside the frame; garbage stays outside it, on the wire.
    encrypt: object | None = None

    def stop(self) -> None:
        """Ask `run` to return; safe from a signal handler or another thread."""
        self.stop_requested.set()

    def _stopped(self) -> bool:
        return self.stop_requested.is_set() or getattr(self.output, "broken", False)

    def _idle_until(self, deadline: float) -> None:
        while not self._stopped():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.output.service(min(left, 0.1))  # short waits: notice stop() promptly

    def run(self) -> None:
        while not self.output.has_reader() and not self._stopped():
            self.output.service(0.1)
        self._idle_until(time.monotonic() + self.output.settle_s)
        started = time.monotonic()
        step_real_s = self.interval_s / self.speed
        while not self._stopped() and (self.count is None or self.telegrams < self.count):
            self._idle_until(started + self.telegrams * step_real_s)
            if self._stopped():
                break
            moment = self.start + timedelta(seconds=self.telegrams * self.interval_s)
            telegram = self.generator.next_telegram(moment)
            emission = self.injector.apply(telegram) if self.injector else Emission(telegram)
            if emission.disconnect:
                self.output.disconnect()
            if emission.data:
                data = emission.data
                if self.encrypt is not None:
                    start = max(data.find(b"/"), 0)
                    data = data[:start] + self.encrypt(data[start:])
                self.output.write(data)
            self.telegrams += 1


# --- command line ----------------------------------------------------------------------------
def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a probability is between 0 and 1")
    return value


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be greater than 0")
        return value
    return parse


def _fault_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kinds or set(kinds) - set(FAULT_KINDS):
        raise argparse.ArgumentTypeError(f"comma-separated from: {', '.join(FAULT_KINDS)}")
    return kinds


def _start_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    # A time without an offset is the meter's local time, the way people think of "start at 06:00".
    return moment.replace(tzinfo=DUTCH_TIME) if moment.tzinfo is None else moment


def add_emulator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="dsmr5", choices=EMULATED_PROFILES,
                        help="meter family to emulate (default dsmr5)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--pty", action="store_true",
                       help="serve on a new pseudo-terminal and print its path (the default)")
    where.add_argument("--tcp", type=int, metavar="PORT",
                       help="serve on TCP (0 picks a free port) and print socket://HOST:PORT")
    where.add_argument("--stdout", action="store_true", help="write telegrams to stdout")
    parser.add_argument("--host", default="127.0.0.1", help="address for --tcp (default 127.0.0.1)")
    parser.add_argument("--link", metavar="PATH", help="with --pty: a symlink to the pty, a stable name for configs")
    parser.add_argument("--faults", type=_probability, default=0.0, metavar="PROB",
                        help="probability per telegram of a fault (bad CRC, truncation, garbage, disconnect)")
    parser.add_argument("--fault-kinds", type=_fault_kinds, default=FAULT_KINDS, metavar="KINDS",
                        help=f"comma-separated subset of {','.join(FAULT_KINDS)}")
    parser.add_argument("--seed", type=int, help="random seed; the same seed and start give the same telegrams")
    parser.add_argument("--speed", type=_positive(float), default=1.0, help="run N times faster than real time")
    parser.add_argument("--count", type=_positive(int), metavar="N",
                        help="stop after N telegrams (faulty and dropped ones included)")
    parser.add_argument("--start", type=_start_time, metavar="ISO",
                        help="simulated clock start (default now; without an offset: Dutch local time)")
    parser.add_argument("--gas-channel", type=int, default=1, choices=(1, 2, 3, 4), help="gas meter's M-Bus channel")
    parser.add_argument("--pv-peak", type=float, default=3500.0, metavar="W", help="PV peak power (0: no PV)")
    parser.add_argument("--encrypt-key", metavar="HEX",
                        help="send DLMS general-global-cipher (AES-128-GCM) frames with this 32-hex-digit key, "
                             "as Smarty meters do (read a dsmr5 one with profile smarty and decryption_key)")
    parser.add_argument("--auth-key", metavar="HEX", default="00112233445566778899AABBCCDDEEFF",
                        help="with --encrypt-key: the GCM authentication key (default: Smarty's published one)")


def run_emulator(args: argparse.Namespace) -> int:
    """Run until --count telegrams, SIGINT/SIGTERM or a closed stdout. 0 on a clean stop, 2 on bad usage."""
    tcp_port = getattr(args, "tcp", None)
    use_stdout = getattr(args, "stdout", False)
    link = getattr(args, "link", None)
    if link and (tcp_port is not None or use_stdout):
        print("emulate-meter: --link goes with --pty", file=sys.stderr)
        return 2
    seed = getattr(args, "seed", None)
    try:
        generator = TelegramGenerator(getattr(args, "profile", "dsmr5"), seed=seed,
                                      gas_channel=getattr(args, "gas_channel", 1),
                                      pv_peak_w=getattr(args, "pv_peak", 3500.0))
    except ValueError as err:
        print(f"emulate-meter: {err}", file=sys.stderr)
        return 2
    probability = getattr(args, "faults", 0.0) or 0.0
    injector = None
    if probability > 0:
        # Its own stream, so turning faults on does not change the telegrams themselves.
        injector = FaultInjector(probability, seed=generator.seed + 1,
                                 kinds=getattr(args, "fault_kinds", FAULT_KINDS))
    start = getattr(args, "start", None) or datetime.now(timezone.utc).replace(microsecond=0)
    encrypt = None
    if getattr(args, "encrypt_key", None):
        from drivers.dlms import FrameEncryptor, parse_key

        try:
            keys = [parse_key(getattr(args, name)) for name in ("encrypt_key", "auth_key")]
        except ValueError as err:
            print(f"emulate-meter: --encrypt-key and --auth-key {err}", file=sys.stderr)
            return 2
        encrypt = FrameEncryptor(*keys, system_title=b"EDG" + (generator.seed % 2**40).to_bytes(5, "big"))

    if tcp_port is not None:
        output = TcpOutput(tcp_port, getattr(args, "host", "127.0.0.1"))
    elif use_stdout:
        output = StdoutOutput()
    else:
        output = PtyOutput(link)
    try:
        output.open()
    except OSError as err:
        print(f"emulate-meter: cannot open the output: {err}", file=sys.stderr)
        return 1
    if output.address:
        print(output.address, flush=True)  # first line: where a parent process can read the meter
    print(f"emulate-meter: {generator.name} meter (seed {generator.seed}, gas on channel {generator.gas_channel})"
          f"{f' at {output.address}' if output.address else ''}{f' -> {link}' if link else ''},"
          f" every {generator.profile.interval_s:g} s / {args.speed:g}, from {start.isoformat()}",
          file=sys.stderr, flush=True)

    emulator = Emulator(generator, output, start=start, interval_s=generator.profile.interval_s,
                        speed=getattr(args, "speed", 1.0), count=getattr(args, "count", None), injector=injector,
                        encrypt=encrypt)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: emulator.stop())
    try:
        emulator.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        output.close(linger_s=0 if emulator.stop_requested.is_set() else 3.0)
    summary = f"emulate-meter: sent {emulator.telegrams} telegrams"
    if injector:
        summary += f"; faults {injector.counts}"
    print(summary, file=sys.stderr, flush=True)
    if getattr(output, "broken", False):
        # stdout's reader is gone: keep the interpreter's final flush from complaining about it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drivers.emulator", description=__doc__.split("\n")[0])
    add_emulator_arguments(parser)
    return run_emulator(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
