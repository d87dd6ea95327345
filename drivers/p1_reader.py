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

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Callable

import serial

from drivers import homewizard, homewizard_https, linecheck
from drivers.profiles import AUTO_CANDIDATES, PROFILES, Profile, SerialSettings, get_profile
from drivers.ratelog import RateLimitedLog
from drivers.reading import Reading, utcnow
from drivers.telegram import DecoderStats, TelegramDecoder, TelegramError

try:
    import termios

    # A USB adapter that is pulled mid-call can fail tcsetattr/tcflush with termios.error, not OSError.
    PORT_ERRORS: tuple[type[Exception], ...] = (serial.SerialException, OSError, termios.error)
except ImportError:  # not a POSIX system
    PORT_ERRORS = (serial.SerialException, OSError)

log = logging.getLogger("edge.p1")

READ_CHUNK = 4096
# `auto` offers every plaintext family at every serial setting: on a link where every setting reads (a pty, a TCP
# gateway) the first setting tried must still find a DSMR 2.2 or Q3D meter's own family.
AUTO_PROFILES = tuple(name for _, names in AUTO_CANDIDATES for name in names)
AUTO_PROFILES = tuple(dict.fromkeys(AUTO_PROFILES + tuple(n for n, p in PROFILES.items() if not p.encrypted)))


def is_http(port: str) -> bool:
    return port.startswith(("http://", "https://"))


class MeterState:
    CONNECTING = "connecting"  # port open, no valid telegram yet
    READING = "reading"
    STALLED = "stalled"  # open, but no valid telegram for stall_seconds
    DISCONNECTED = "disconnected"  # the port could not be opened or failed
    STOPPED = "stopped"


@dataclass(frozen=True)
class MeterSpec:
    meter_id: str
    port: str  # a pyserial URL (/dev/ttyUSB0, socket://host:port, rfc2217://host:port) or http(s)://<HomeWizard P1>
    profile: str = "dsmr5"  # a profile name or "auto"
    serial_overrides: dict[str, Any] | None = None  # baudrate, bytesize, parity, stopbits, xonxoff, rtscts
    gas_channel: int | None = None  # None: found automatically
    stall_seconds: float = 30.0
    # Encrypted P1 (smarty, msn, sagemcom_t210_d_r): 16-byte keys. Secrets: kept out of repr and snapshots.
    decryption_key: bytes | None = field(default=None, repr=False)
    authentication_key: bytes | None = field(default=None, repr=False)  # None: tag not verified, CRC is
    # HomeWizard API v2 (https://): the token from pairing (a secret, kept out of repr) and the pinned certificate.
    token: str | None = field(default=None, repr=False)
    certificate_sha256: bytes | None = None


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
        self.http_source: str | None = None  # HomeWizard: "telegram" or "data", the endpoint that answers
        self._sample = bytearray()  # the bytes since the last good telegram (for the hint)
        self._http_stats = DecoderStats()  # HomeWizard's JSON, or telegrams no family read yet (auto)
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
        if self.http_source == "data" or (self._decoder is None and is_http(self.spec.port)):
            return self._http_stats
        return self._decoder.stats if self._decoder else DecoderStats()

    @property
    def profile_name(self) -> str:
        return self._profile.name if self._profile else "auto (detecting)"

    def seconds_since_last_telegram(self) -> float | None:
        if self.last_telegram_monotonic is None:
            return None
        return time.monotonic() - self.last_telegram_monotonic

    def snapshot(self) -> dict[str, Any]:
        stats = self.stats
        since = self.seconds_since_last_telegram()
        hint = self.hint()
        return {
            "state": self.state,
            "port": self.spec.port,
            "profile": self.profile_name,
            "serial": self._settings(self._profile).label() if self._profile and not is_http(self.spec.port) else None,
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
            "last_error": self.last_port_error or stats.last_error or hint,
            "hint": hint,
        }

    def hint(self) -> str | None:
        """What looks wrong while no telegram arrives (wrong parity or bytesize, no data at all), else None."""
        if self.state not in (MeterState.CONNECTING, MeterState.STALLED) or is_http(self.spec.port):
            return None
        if self.state == MeterState.CONNECTING and self.opens < 2 and len(self._sample) < linecheck.SAMPLE_BYTES // 4:
            return None  # too early to say
        settings = self._settings(self._profile).label() if self._profile else None
        return linecheck.hint(bytes(self._sample), self.bytes_read, settings)

    def _keep_sample(self, data: bytes) -> None:
        self._sample += data
        if len(self._sample) > linecheck.SAMPLE_BYTES:
            del self._sample[: len(self._sample) - linecheck.SAMPLE_BYTES]

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
        if is_http(self.spec.port):
            self._run_http()
            return
        while not self._stop.is_set():
            if self._profile is None:
                self._auto_detect()
                continue
            try:
                port = self._open(self._settings(self._profile))
            except PORT_ERRORS + (ValueError,) as err:
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
            except PORT_ERRORS as err:
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
                got = self._feed(data, now)
                if not got:
                    self._keep_sample(data)
                got_any |= got
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
        if self._decoder is None:  # set with the profile (here or by _adopt): a port is read for one only then
            return False
        readings, errors = self._decoder.feed(data, self.wall_clock(), now)
        for err in errors:
            self._ratelog.warning(f"{err.kind}:{self.spec.meter_id}", "meter %s: dropped a telegram: %s",
                                  self.spec.meter_id, err)
        for reading in readings:
            self.last_telegram_monotonic = now
            self.state = MeterState.READING
            self.last_port_error = None
            self._sample.clear()
        self._hand_over(readings)
        return bool(readings)

    def _hand_over(self, readings: list[Reading]) -> None:
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
            candidates = [self._make_decoder(get_profile(n)) for n in (*names, *(n for n in AUTO_PROFILES
                                                                                 if n not in names))]
            try:
                port = self._open(settings)
            except PORT_ERRORS + (ValueError,) as err:
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
                    self._keep_sample(data)
                    received_at, now = self.wall_clock(), time.monotonic()
                    decoded = [(decoder, decoder.feed(data, received_at, now)[0]) for decoder in candidates]
                    decoded = [(decoder, readings) for decoder, readings in decoded if readings]
                    if decoded:
                        self._sample.clear()
                        decoder, readings = best_family(decoded)
                        self._adopt(decoder, settings)
                        self.last_telegram_monotonic = now
                        self.state = MeterState.READING
                        self._hand_over(readings)
                        return
            except PORT_ERRORS as err:
                self._port_failed("read", err)
            finally:
                _close_quietly(port)
        log.warning("meter %s: auto-detection found no telegrams on %s; trying again",
                    self.spec.meter_id, self.spec.port)

    # --- HomeWizard P1 (http:// API v1, https:// API v2) ---------------------------------------
    def _http_fetcher(self, base: str) -> tuple[Callable[[str], bytes], Callable[[], None]]:
        """(fetch(source) -> body, close): v1 over plain HTTP, v2 over HTTPS pinned to the paired certificate.
        fetch raises FileNotFoundError when the device has no such endpoint (older firmware)."""
        if homewizard.is_v2(base):
            client = homewizard_https.Client(base, self.spec.certificate_sha256, self.spec.token,
                                             timeout=max(2.0, homewizard.POLL_S * 3))
            paths = {"telegram": homewizard.V2_TELEGRAM_PATH, "data": homewizard.V2_MEASUREMENT_PATH}

            def fetch_v2(source: str) -> bytes:
                try:
                    return client.get(paths[source], homewizard.MAX_BODY)
                except homewizard_https.HttpStatus as err:
                    if err.status == 404:
                        raise FileNotFoundError(paths[source]) from None
                    raise

            return fetch_v2, client.close
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a LAN device: never via a proxy
        v1_paths = {"telegram": homewizard.TELEGRAM_PATH, "data": homewizard.DATA_PATH}

        def fetch_v1(source: str) -> bytes:
            try:
                with opener.open(base + v1_paths[source], timeout=max(2.0, homewizard.POLL_S * 3)) as response:
                    body: bytes = response.read(homewizard.MAX_BODY + 1)
                    return body
            except urllib.error.HTTPError as err:
                if err.code == 404:
                    raise FileNotFoundError(v1_paths[source]) from None
                raise

        return fetch_v1, lambda: None

    def _run_http(self) -> None:
        """Poll a HomeWizard P1 meter: its raw telegram (the same decoder as a serial port) every POLL_S, or its
        JSON (/api/v1/data, /api/measurement) where the firmware has no telegram endpoint (404). A quiet meter is
        a stall."""
        try:
            base = homewizard.base_url(self.spec.port)
        except ValueError as err:
            self._port_failed("open", err)
            return
        fetch, close = self._http_fetcher(base)
        try:
            self._poll_http(fetch)
        finally:
            close()

    def _poll_http(self, fetch: Callable[[str], bytes]) -> None:
        backoff, opened_at = 1.0, time.monotonic()
        self.state = MeterState.CONNECTING
        while not self._stop.is_set():
            started = time.monotonic()
            source = self.http_source or "telegram"
            try:
                body = fetch(source)
            except FileNotFoundError as err:
                if source == "telegram":
                    self.http_source = "data"  # older firmware: only the JSON summary
                    continue
                self._http_failed(OSError(f"the device has no {err}"), backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            except (urllib.error.URLError, ValueError) + PORT_ERRORS as err:
                self._http_failed(err, backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if self.state == MeterState.DISCONNECTED:
                self.reconnects += 1
            if self.opens == 0 or self.state == MeterState.DISCONNECTED:
                self.opens += 1
                self.state = MeterState.CONNECTING
            backoff = 1.0
            self.http_source = source
            self.bytes_read += len(body)
            now = time.monotonic()
            if len(body) > homewizard.MAX_BODY:
                self._http_stats.parse_errors += 1
                self._http_stats.last_error = "response too large"
            elif self._http_reading(body, source, now):
                self.last_telegram_monotonic = now
                self.state = MeterState.READING
                self.last_port_error = None
            quiet_since = max(opened_at, self.last_telegram_monotonic or opened_at)
            if now - quiet_since > self.spec.stall_seconds and self.state != MeterState.STALLED:
                self.stalls += 1
                self.state = MeterState.STALLED
            self._stop.wait(max(0.0, homewizard.POLL_S - (time.monotonic() - started)))

    def _http_failed(self, err: Exception, backoff: float) -> None:
        self._port_failed("read", err)
        self._stop.wait(backoff)

    def _http_reading(self, body: bytes, source: str, now: float) -> bool:
        received_at = self.wall_clock()
        if source == "data":
            v2 = homewizard.is_v2(self.spec.port)
            read = homewizard.reading_from_measurement if v2 else homewizard.reading_from_data
            try:
                reading = read(json.loads(body), self.spec.meter_id, received_at)
            except (ValueError, TypeError) as err:  # JSONDecodeError and HomeWizardError are ValueErrors
                self._http_stats.parse_errors += 1
                path = homewizard.V2_MEASUREMENT_PATH if v2 else homewizard.DATA_PATH
                self._http_stats.last_error = f"{path}: {err}"
                return False
            self._http_stats.telegrams_ok += 1
            self._hand_over([reading])
            return True
        text = body.decode("latin-1")
        text = text[text.find("/"):] if "/" in text else text
        decoders = [self._decoder] if self._decoder else [self._make_decoder(get_profile(n)) for n in AUTO_PROFILES]
        decoded = []
        for decoder in decoders:
            try:
                decoded.append((decoder, [decoder.decode(text, received_at)]))
            except TelegramError:
                continue
        if not decoded:
            if self._decoder is None:  # auto: count it somewhere the operator sees
                self._http_stats.parse_errors += 1
                self._http_stats.last_error = "no meter profile reads the telegram"
            return False
        decoder, readings = best_family(decoded)
        if self._decoder is None:
            self._profile, self._decoder = decoder.profile, decoder
            log.info("meter %s: detected profile %s over HTTP", self.spec.meter_id, decoder.profile.name)
        self._hand_over(readings)
        return True

    def _adopt(self, decoder: TelegramDecoder, settings: SerialSettings) -> None:
        self._profile = decoder.profile
        self._overrides = {**self._overrides, **asdict(settings)}
        self._decoder = decoder
        log.info("meter %s: detected profile %s at %s", self.spec.meter_id, decoder.profile.name, settings.label())


def best_family(decoded: list[tuple[TelegramDecoder, list[Reading]]]) -> tuple[TelegramDecoder, list[Reading]]:
    """Several specifications may read the same telegram (V5 reads Fluvius's, Iskra IE's; Fluvius reads Iskra
    IE's): the one that understands the most fields wins, then one with a CRC, then the first. Fields before
    CRC: the CRC a telegram carries is checked whatever the family, and a CRC family that understands less
    (Fluvius for an Irish meter) would apply its rules (Belgian tariff numbering) to a meter that has other ones."""
    return max(decoded, key=lambda d: (d[0].last_field_count, d[0].profile.has_crc))


def _close_quietly(port: serial.SerialBase) -> None:
    try:
        port.close()
    except PORT_ERRORS:
        pass
