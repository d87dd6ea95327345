"""Reads one meter's P1 port, whatever pyserial URL it has, and never gives up.

One thread per meter, blocking reads in large chunks (a read returns every `read_timeout` seconds
with whatever arrived, so a DSMR 5 meter costs a few wake-ups a second, not one per byte).
A port that fails is reopened with backoff; a port that goes quiet for `stall_seconds` is
closed and reopened (half-open TCP links to Wi-Fi gateways look exactly like that).
Nothing here stops the agent or another meter.

Every timer here (stalls, backoff, the auto-detection deadline, a partial encrypted frame going stale,
rate-limited logs) runs on the monotonic clock; the wall clock (`wall_clock`, NTP-synced, and stepped by
years at the first sync on a Pi without an RTC) is only read to stamp a reading's `received_at`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Callable

import serial

from drivers.profiles import AUTO_CANDIDATES, Profile, SerialSettings, get_profile
from drivers.ratelog import RateLimitedLog
from drivers.reading import Reading, utcnow
from drivers.telegram import DecoderStats, TelegramDecoder

log = logging.getLogger("edge.p1")

READ_CHUNK = 4096


class MeterState:
    CONNECTING = "connecting"  # port open, no valid telegram yet
    READING = "reading"
    STALLED = "stalled"  # open, but no valid telegram for stall_seconds
    DISCONNECTED = "disconnected"  # the port could not be opened or failed
    STOPPED = "stopped"


@dataclass(frozen=True)
class MeterSpec:
    meter_id: str
    port: str  # a pyserial URL: /dev/ttyUSB0, socket://host:port, rfc2217://host:port
    profile: str = "dsmr5"  # a profile name or "auto"
    serial_overrides: dict | None = None  # baudrate, bytesize, parity, stopbits, xonxoff, rtscts
    gas_channel: int | None = None  # None: found automatically
    stall_seconds: float = 30.0
    # Encrypted P1 (smarty, msn, sagemcom_t210_d_r): 16-byte keys. Secrets: kept out of repr and snapshots.
    decryption_key: bytes | None = field(default=None, repr=False)
    authentication_key: bytes | None = field(default=None, repr=False)  # None: tag not verified, CRC is


class P1Reader:
    def __init__(
        self,
        spec: MeterSpec,
        on_reading: Callable[[Reading], None],
        read_timeout: float = 0.2,
        max_backoff: float = 30.0,
        auto_probe_seconds: float = 25.0,
        wall_clock: Callable[[], datetime] = utcnow,
    ):
        self.spec = spec
        self.on_reading = on_reading
        self.read_timeout = read_timeout
        self.max_backoff = max_backoff
        self.auto_probe_seconds = auto_probe_seconds
        self.wall_clock = wall_clock  # only for the readings' received_at; never for timing
        self.state = MeterState.CONNECTING
        self.opens = 0  # successful opens of the port (pyserial flushes its input on open)
        self.reconnects = 0
        self.stalls = 0
        self.bytes_read = 0
        self.last_telegram_monotonic: float | None = None
        self.last_port_error: str | None = None
        self._overrides = {k: v for k, v in (spec.serial_overrides or {}).items() if v is not None}
        self._profile: Profile | None = None if spec.profile == "auto" else get_profile(spec.profile)
        if (spec.decryption_key or spec.authentication_key) and not (self._profile and self._profile.takes_key):
            # here, not in the reader thread: auto-detection never tries encrypted profiles
            raise ValueError(f"meter {spec.meter_id}: profile {spec.profile} takes no decryption key")
        self._decoder: TelegramDecoder | None = self._make_decoder(self._profile) if self._profile else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: serial.SerialBase | None = None
        self._ratelog = RateLimitedLog(log)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_forever, name=f"p1-{self.spec.meter_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
        self.state = MeterState.STOPPED

    # --- what the agent shows ----------------------------------------------------------------
    @property
    def stats(self) -> DecoderStats:
        return self._decoder.stats if self._decoder else DecoderStats()

    @property
    def profile_name(self) -> str:
        return self._profile.name if self._profile else "auto (detecting)"

    def seconds_since_last_telegram(self) -> float | None:
        if self.last_telegram_monotonic is None:
            return None
        return time.monotonic() - self.last_telegram_monotonic

    def snapshot(self) -> dict:
        stats = self.stats
        since = self.seconds_since_last_telegram()
        return {
            "state": self.state,
            "port": self.spec.port,
            "profile": self.profile_name,
            "serial": self._settings(self._profile).label() if self._profile else None,
            "telegrams_ok": stats.telegrams_ok,
            "crc_errors": stats.crc_errors,
            "parse_errors": stats.parse_errors,
            "decrypt_errors": stats.decrypt_errors,
            "bytes_discarded": stats.bytes_discarded,
            "bytes_read": self.bytes_read,
            "opens": self.opens,
            "reconnects": self.reconnects,
            "stalls": self.stalls,
            "seconds_since_last_telegram": None if since is None else round(since, 3),
            "last_error": self.last_port_error or stats.last_error,
        }

    # --- the loop ----------------------------------------------------------------------------
    def _make_decoder(self, profile: Profile) -> TelegramDecoder:
        return TelegramDecoder(self.spec.meter_id, profile, gas_channel=self.spec.gas_channel,
                               decryption_key=self.spec.decryption_key,
                               authentication_key=self.spec.authentication_key)

    def _settings(self, profile: Profile | None, base: SerialSettings | None = None) -> SerialSettings:
        base = base or (profile.serial if profile else SerialSettings())
        return base.with_overrides(**self._overrides)

    def _open(self, settings: SerialSettings) -> serial.SerialBase:
        port = serial.serial_for_url(self.spec.port, do_not_open=True, timeout=self.read_timeout,
                                     **settings.pyserial_kwargs())
        port.open()
        self.opens += 1
        return port

    def _run_forever(self) -> None:
        """Whatever goes wrong in here, the meter shows it and the reader starts over: a reader thread that
        died while /health still said "reading" is the silent stop users of other tools complain about."""
        while not self._stop.is_set():
            try:
                self._run()
            except Exception as err:
                self.state = MeterState.DISCONNECTED
                self.last_port_error = f"reader failed: {err.__class__.__name__}"
                log.exception("meter %s: reader failed, starting over", self.spec.meter_id)
                self._stop.wait(self.max_backoff)

    def _run(self) -> None:
        backoff = 1.0
        opened_before = False
        while not self._stop.is_set():
            if self._profile is None:
                self._auto_detect()
                continue
            try:
                port = self._open(self._settings(self._profile))
            except (serial.SerialException, OSError, ValueError) as err:
                self._port_failed("open", err)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if opened_before:
                self.reconnects += 1
            opened_before = True
            self.state = MeterState.CONNECTING
            try:
                if self._read_until_stall(port):
                    backoff = 1.0
            except (serial.SerialException, OSError) as err:
                self._port_failed("read", err)
            finally:
                _close_quietly(port)
            # A stalled or failed port is reopened at once the first time, then with backoff.
            if not self._stop.is_set() and self.state != MeterState.READING:
                self._stop.wait(min(backoff, self.max_backoff))
                backoff = min(backoff * 2, self.max_backoff)

    def _read_until_stall(self, port: serial.SerialBase) -> bool:
        """Read until the port fails, stalls or we stop. True if any telegram was read."""
        opened_at = time.monotonic()
        got_any = False
        while not self._stop.is_set():
            data = port.read(READ_CHUNK)
            now = time.monotonic()
            if data:
                self.bytes_read += len(data)
                got_any |= self._feed(data, now)
            quiet_since = max(opened_at, self.last_telegram_monotonic or opened_at)
            if now - quiet_since > self.spec.stall_seconds:
                self.stalls += 1
                self.state = MeterState.STALLED
                self._ratelog.warning(f"stall:{self.spec.meter_id}",
                                      "meter %s: no valid telegram for %.0f s on %s, reopening",
                                      self.spec.meter_id, now - quiet_since, self.spec.port)
                return got_any
        return got_any

    def _feed(self, data: bytes, now: float) -> bool:
        readings, errors = self._decoder.feed(data, self.wall_clock(), now)
        for err in errors:
            self._ratelog.warning(f"{err.kind}:{self.spec.meter_id}", "meter %s: dropped a telegram: %s",
                                  self.spec.meter_id, err)
        for reading in readings:
            self.last_telegram_monotonic = now
            self.state = MeterState.READING
            self.last_port_error = None
        self._hand_over(readings)
        return bool(readings)

    def _hand_over(self, readings) -> None:
        for reading in readings:
            try:
                self.on_reading(reading)
            except Exception:  # the consumer's bug must not kill the reader
                log.exception("meter %s: reading handler failed", self.spec.meter_id)

    def _port_failed(self, what: str, err: Exception) -> None:
        self.state = MeterState.DISCONNECTED
        self.last_port_error = f"{what}: {err}"
        self._ratelog.warning(f"port:{self.spec.meter_id}", "meter %s: cannot %s %s: %s",
                              self.spec.meter_id, what, self.spec.port, err)

    def _auto_detect(self) -> None:
        """Try the likely serial settings in turn until one carries telegrams that decode (with a
        valid CRC where the profile has one); then keep that profile for good."""
        for base, names in AUTO_CANDIDATES:
            if self._stop.is_set():
                return
            settings = self._settings(None, base)
            candidates = [self._make_decoder(get_profile(n)) for n in names]
            try:
                port = self._open(settings)
            except (serial.SerialException, OSError, ValueError) as err:
                self._port_failed("open", err)
                self._stop.wait(min(5.0, self.max_backoff))
                return
            self.state = MeterState.CONNECTING
            deadline = time.monotonic() + self.auto_probe_seconds
            try:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    data = port.read(READ_CHUNK)
                    if not data:
                        continue
                    self.bytes_read += len(data)
                    received_at, now = self.wall_clock(), time.monotonic()
                    decoded = [(decoder, decoder.feed(data, received_at, now)[0]) for decoder in candidates]
                    decoded = [(decoder, readings) for decoder, readings in decoded if readings]
                    if decoded:
                        # Several specifications may read the same telegram (V5 reads Fluvius's):
                        # the one that understands the most fields wins, ties go to the first.
                        decoder, readings = max(decoded, key=lambda d: d[0].last_field_count)
                        self._adopt(decoder, settings)
                        self.last_telegram_monotonic = now
                        self.state = MeterState.READING
                        self._hand_over(readings)
                        return
            except (serial.SerialException, OSError) as err:
                self._port_failed("read", err)
            finally:
                _close_quietly(port)
        log.warning("meter %s: auto-detection found no telegrams on %s; trying again",
                    self.spec.meter_id, self.spec.port)

    def _adopt(self, decoder: TelegramDecoder, settings: SerialSettings) -> None:
        self._profile = decoder.profile
        self._overrides = {**self._overrides, **asdict(settings)}
        self._decoder = decoder
        log.info("meter %s: detected profile %s at %s", self.spec.meter_id, decoder.profile.name, settings.label())


def _close_quietly(port: serial.SerialBase) -> None:
    try:
        port.close()
    except (serial.SerialException, OSError):
        pass
