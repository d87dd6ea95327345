"""P1 telegrams: framing, CRC, parsing and normalization into `Reading`s. No I/O here.

The serial reader, the TCP reader and the HTTP ingest all feed bytes or text into this module,
so a telegram is judged the same way whichever way it came in. Encrypted meters (a `decryption_key`
on a profile that takes one) are framed as DLMS general-global-cipher APDUs, decrypted (drivers/dlms.py),
and the plaintext inside then goes through exactly the same CRC check, parse and normalization.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from dsmr_parser.clients.telegram_buffer import EncryptedTelegramBuffer, TelegramBuffer
from dsmr_parser.exceptions import ParseError as DsmrParseError
from dsmr_parser.objects import MBusObject, Telegram
from dsmr_parser.parsers import TelegramParser

from drivers import dlms
from drivers.profiles import Profile
from drivers.reading import Reading

# dsmr_parser logs every unparsable line at ERROR with a traceback; we count and rate-limit instead.
logging.getLogger("dsmr_parser").setLevel(logging.CRITICAL)

DEFAULT_MAX_BUFFER = 16 * 1024  # Belgian telegrams with a 13-month history reach ~3 KB
# An encrypted frame still incomplete this long after it began is given up. Measured on the monotonic
# clock: a Pi without an RTC steps its wall clock by years at the first NTP sync.
STALE_FRAME_S = 3.0


class TelegramError(ValueError):
    """A telegram that cannot become a Reading. `kind` is the counter it goes to."""

    kind = "parse"


class CrcError(TelegramError):
    kind = "crc"


class DecryptError(TelegramError):
    """An encrypted frame that did not decrypt: wrong key, corrupted frame, failed tag. Never names a key."""

    kind = "decrypt"


# --- CRC-16/ARC (poly 0xA001 reflected, init 0) over '/' .. '!' inclusive ---------------------
def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    crc = 0
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


_CRC_TRAILER = re.compile(r"!([0-9A-Fa-f]{1,4})\s*$")


def check_crc(telegram: str) -> None:
    """Raise CrcError unless the telegram's trailer matches its CRC (1 to 4 hex digits)."""
    start = telegram.find("/")
    bang = telegram.rfind("!")
    match = _CRC_TRAILER.search(telegram, bang) if bang >= 0 else None
    if start < 0 or not match:
        raise TelegramError("no CRC trailer")
    expected = int(match.group(1), 16)
    actual = crc16(telegram[start : bang + 1].encode("latin-1"))
    if actual != expected:
        raise CrcError(f"CRC mismatch: telegram says {expected:04X}, content is {actual:04X}")


# --- framing ---------------------------------------------------------------------------------
class FrameBuffer(TelegramBuffer):
    """dsmr_parser's regex framing, with a cap on what it keeps and a count of what it drops."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BUFFER):
        super().__init__()
        self.max_bytes = max_bytes
        self.bytes_discarded = 0
        self.frames_truncated = 0  # a start '/' that never reached its '!' before the next one

    def append(self, data: str) -> None:
        super().append(data)
        start = self._buffer.find("/")
        if start != 0:  # whatever precedes the first start marker can never be part of a telegram
            self._discard(len(self._buffer) if start < 0 else start, "")
            self._buffer = "" if start < 0 else self._buffer[start:]
        if len(self._buffer) > self.max_bytes:
            # Keep only from the last start marker, if that fits; otherwise it is all garbage.
            start = self._buffer.rfind("/")
            keep = self._buffer[start:] if start >= 0 and len(self._buffer) - start <= self.max_bytes else ""
            self._discard(len(self._buffer) - len(keep), self._buffer[: len(self._buffer) - len(keep)])
            self._buffer = keep

    def _remove(self, telegram: str) -> None:
        index = self._buffer.index(telegram)
        self._discard(index, self._buffer[:index])
        self._buffer = self._buffer[index + len(telegram) :]

    def _discard(self, count: int, dropped: str) -> None:
        if not count:
            return
        self.bytes_discarded += count
        self.frames_truncated += dropped.count("/")

    @property
    def pending(self) -> int:
        return len(self._buffer)


class EncryptedFrameBuffer(EncryptedTelegramBuffer):
    """dsmr_parser's length-based framing of general-global-cipher frames, bytes in, with a stricter
    header check, a cap and a count of what it drops.

    A header is only believed when it looks like one a P1 meter sends (8-byte system title, two length
    bytes, a length that fits `max_bytes`, a suite-0 encrypted security control byte); otherwise its
    tag byte is dropped and the search goes on. So garbage is never kept beyond a partial header, and a
    pending frame never exceeds `max_bytes`. `requeue` puts a frame that failed to decrypt back, less
    its first byte: when a lost byte made a header swallow the next frame's start, that frame is found.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BUFFER):
        super().__init__()
        self.max_bytes = max(max_bytes, dlms.HEADER_LENGTH + 64)
        self.bytes_discarded = 0

    def append(self, data: bytes) -> None:
        super().append(data)
        self._resync()

    def requeue(self, frame: bytes) -> None:
        """Back to the front of the buffer: a frame whose decryption failed, less its first byte."""
        self.bytes_discarded += 1
        self._buffer[:0] = frame[1:]
        self._resync()

    def abandon(self) -> None:
        """Give up on the incomplete frame at the front: drop its tag byte and search on."""
        if self._buffer:
            self.bytes_discarded += 1
            del self._buffer[:1]
            self._resync()

    def next_frame(self) -> bytes | None:
        """The first complete frame, removed from the buffer, or None until one is complete."""
        self._resync()
        before = len(self._buffer)
        frame = next(super().get_all(), None)  # dsmr_parser's framing: one frame, as hex
        if frame is None:
            self.bytes_discarded += before - len(self._buffer)
            if len(self._buffer) > self.max_bytes:  # cannot happen after _resync; the cap holds anyway
                self.bytes_discarded += len(self._buffer)
                self._buffer.clear()
            return None
        frame = bytes.fromhex(frame)
        self.bytes_discarded += before - len(self._buffer) - len(frame)
        return frame

    def _resync(self) -> None:
        buf = self._buffer
        while buf:
            start = buf.find(dlms.GENERAL_GLOBAL_CIPHER_TAG)
            if start < 0:
                self.bytes_discarded += len(buf)
                buf.clear()
                return
            if start:
                self.bytes_discarded += start
                del buf[:start]
            if self._plausible_header(buf):
                return
            self.bytes_discarded += 1
            del buf[:1]

    def _plausible_header(self, buf: bytearray) -> bool:
        """False as soon as what has arrived of the header cannot be a meter's."""
        n = len(buf)
        if n > 1 and buf[1] != dlms.SYSTEM_TITLE_LENGTH:
            return False
        if n > 10 and buf[10] != dlms.LONG_FORM_LENGTH:
            return False
        if n > 12:
            length = int.from_bytes(buf[11:13], "big")
            if not 5 + dlms.GCM_TAG_LENGTH < length <= self.max_bytes - dlms.HEADER_LENGTH:
                return False
        if n > 13 and not dlms.security_control_supported(buf[13]):
            return False
        return True

    @property
    def pending(self) -> int:
        return len(self._buffer)


# --- normalization ---------------------------------------------------------------------------
_SCALE = {"kW": 1000, "kWh": 1000, "W": 1, "Wh": 1, "V": 1, "A": 1, "m3": 1, None: 1, "": 1}

# dsmr_parser attribute -> Reading field, for plain numbers with a unit.
_NUMERIC = {
    "CURRENT_ELECTRICITY_USAGE": "power_import_w",
    "CURRENT_ELECTRICITY_DELIVERY": "power_export_w",
    "INSTANTANEOUS_ACTIVE_POWER_L1_POSITIVE": "power_import_l1_w",
    "INSTANTANEOUS_ACTIVE_POWER_L2_POSITIVE": "power_import_l2_w",
    "INSTANTANEOUS_ACTIVE_POWER_L3_POSITIVE": "power_import_l3_w",
    "INSTANTANEOUS_ACTIVE_POWER_L1_NEGATIVE": "power_export_l1_w",
    "INSTANTANEOUS_ACTIVE_POWER_L2_NEGATIVE": "power_export_l2_w",
    "INSTANTANEOUS_ACTIVE_POWER_L3_NEGATIVE": "power_export_l3_w",
    "INSTANTANEOUS_VOLTAGE_L1": "voltage_l1_v",
    "INSTANTANEOUS_VOLTAGE_L2": "voltage_l2_v",
    "INSTANTANEOUS_VOLTAGE_L3": "voltage_l3_v",
    "INSTANTANEOUS_CURRENT_L1": "current_l1_a",
    "INSTANTANEOUS_CURRENT_L2": "current_l2_a",
    "INSTANTANEOUS_CURRENT_L3": "current_l3_a",
    "ELECTRICITY_USED_TARIFF_1": "energy_import_t1_wh",
    "ELECTRICITY_USED_TARIFF_2": "energy_import_t2_wh",
    "ELECTRICITY_DELIVERED_TARIFF_1": "energy_export_t1_wh",
    "ELECTRICITY_DELIVERED_TARIFF_2": "energy_export_t2_wh",
    "ELECTRICITY_IMPORTED_TOTAL": "energy_import_wh",
    "ELECTRICITY_EXPORTED_TOTAL": "energy_export_wh",
}
_COUNTS = {
    "SHORT_POWER_FAILURE_COUNT": "power_failures",
    "LONG_POWER_FAILURE_COUNT": "long_power_failures",
    "VOLTAGE_SAG_L1_COUNT": "voltage_sags_l1",
    "VOLTAGE_SAG_L2_COUNT": "voltage_sags_l2",
    "VOLTAGE_SAG_L3_COUNT": "voltage_sags_l3",
    "VOLTAGE_SWELL_L1_COUNT": "voltage_swells_l1",
    "VOLTAGE_SWELL_L2_COUNT": "voltage_swells_l2",
    "VOLTAGE_SWELL_L3_COUNT": "voltage_swells_l3",
}
# Extra tariff registers (E.ON Hungary has four); they count towards the totals.
_EXTRA_TARIFFS = {
    "ELECTRICITY_USED_TARIFF_3": "import",
    "ELECTRICITY_USED_TARIFF_4": "import",
    "ELECTRICITY_DELIVERED_TARIFF_3": "export",
    "ELECTRICITY_DELIVERED_TARIFF_4": "export",
}
_BELGIAN_SWAP = {
    "energy_import_t1_wh": "energy_import_t2_wh",
    "energy_import_t2_wh": "energy_import_t1_wh",
    "energy_export_t1_wh": "energy_export_t2_wh",
    "energy_export_t2_wh": "energy_export_t1_wh",
}
_EPOCH = datetime(1971, 1, 1, tzinfo=timezone.utc)
_GAS_DEVICE_TYPE = 3  # M-Bus device type of a gas meter (7 is water, 4 heat)


def _number(obj) -> float:
    value = obj.value
    scale = _SCALE.get(obj.unit)
    if scale is None:
        raise TelegramError(f"unexpected unit {obj.unit!r}")
    return float(value * scale) if isinstance(value, Decimal) else float(value) * scale


def _find_gas(telegram: Telegram, channel: int | None) -> tuple[float, datetime] | tuple[None, None]:
    """The gas reading on `channel`, or on the first M-Bus channel that carries a live gas meter."""
    for device in getattr(telegram, "MBUS_DEVICES", ()):
        if channel is not None and device.channel_id != channel:
            continue
        device_type = None
        reading = None
        for name, obj in device:
            if name.endswith("DEVICE_TYPE"):
                try:
                    device_type = int(obj.value)
                except (TypeError, ValueError):
                    device_type = None
            elif isinstance(obj, MBusObject):
                reading = obj
        if reading is None or reading.value is None:
            continue
        if channel is None:
            if device_type not in (None, _GAS_DEVICE_TYPE) or reading.unit not in ("m3", None):
                continue
            if reading.datetime is None or reading.datetime < _EPOCH:
                continue  # an empty channel: DSMR 5 reports 0 m3 at 1970-01-01
        return float(reading.value), reading.datetime
    return None, None


def _check_physical(values: dict) -> None:
    """Every number finite; power, energy and gas never negative. A telegram over HTTP is whatever its sender
    wrote under a CRC it computed itself: 'NaN' or '-5000' parse as numbers, and a negative import would be
    summed into an exact total unclamped."""
    for name, value in values.items():
        if not isinstance(value, float):
            continue
        if not math.isfinite(value):
            raise TelegramError(f"{name} is not a finite number")
        if value < 0 and (name.endswith(("_w", "_wh")) or name == "gas_m3"):
            raise TelegramError(f"{name} is negative")


def normalize(
    telegram: Telegram, meter_id: str, profile: Profile, received_at: datetime, gas_channel: int | None = None
) -> Reading:
    values: dict = {}
    extra = {"import": 0.0, "export": 0.0}
    for name, obj in telegram:
        target = _NUMERIC.get(name)
        if target is not None:
            values[target] = _number(obj)
        elif name in _COUNTS:
            values[_COUNTS[name]] = int(obj.value)
        elif name == "ELECTRICITY_ACTIVE_TARIFF" and obj.value is not None:
            values["tariff"] = int(obj.value)
        elif name in _EXTRA_TARIFFS:
            extra[_EXTRA_TARIFFS[name]] += _number(obj)

    if profile.belgian_tariffs:
        values = {_BELGIAN_SWAP.get(k, k): v for k, v in values.items()}
        if values.get("tariff") in (1, 2):
            values["tariff"] = 3 - values["tariff"]

    # Meters with one signed power register (Q3D's 16.7.0) report export as negative import.
    for imp, exp in (("power_import_w", "power_export_w"),
                     *((f"power_import_{p}_w", f"power_export_{p}_w") for p in ("l1", "l2", "l3"))):
        if values.get(imp) is not None and values[imp] < 0 and not values.get(exp):
            values[imp], values[exp] = 0.0, -values[imp]

    for direction in ("import", "export"):
        total = f"energy_{direction}_wh"
        parts = [values.get(f"energy_{direction}_t1_wh"), values.get(f"energy_{direction}_t2_wh")]
        if total not in values and any(p is not None for p in parts):
            values[total] = sum(p for p in parts if p is not None) + extra[direction]

    stamp = getattr(telegram, "P1_MESSAGE_TIMESTAMP", None)
    timestamp = stamp.value if stamp is not None and stamp.value is not None else received_at
    gas_m3, gas_timestamp = _find_gas(telegram, gas_channel)
    _check_physical({**values, "gas_m3": gas_m3})
    return Reading(meter_id=meter_id, timestamp=timestamp, received_at=received_at,
                   gas_m3=gas_m3, gas_timestamp=gas_timestamp, **values)


# --- the decoder -----------------------------------------------------------------------------
@dataclass(slots=True)
class DecoderStats:
    telegrams_ok: int = 0
    crc_errors: int = 0
    parse_errors: int = 0
    frames_truncated: int = 0
    bytes_discarded: int = 0
    decrypt_errors: int = 0  # encrypted frames that did not decrypt (wrong key, corrupted, failed tag)
    last_error: str | None = None


@dataclass
class TelegramDecoder:
    """Bytes from a P1 port in, Readings out. Counts every frame it drops and why.

    With a `decryption_key` (16 bytes; only for profiles that take one), the bytes are DLMS
    general-global-cipher frames: the GCM tag is verified with `authentication_key` when there is one;
    without it the frame is decrypted unverified and its telegram must carry a valid CRC.

    Two clocks: `received_at` (the wall clock, given to `feed`) only goes into the Readings; how long a
    partial frame has waited is measured on `clock` (monotonic seconds), or on the `now` given to `feed`."""

    meter_id: str
    profile: Profile
    gas_channel: int | None = None
    max_buffer: int = DEFAULT_MAX_BUFFER
    stats: DecoderStats = field(default_factory=DecoderStats)
    decryption_key: bytes | None = field(default=None, repr=False)
    authentication_key: bytes | None = field(default=None, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.decryption_key is not None:
            if not self.profile.takes_key:
                raise ValueError(f"profile {self.profile.name} is never encrypted: it takes no decryption key")
            for key in (self.decryption_key, self.authentication_key):
                if key is not None and len(key) != dlms.KEY_LENGTH:
                    raise ValueError(f"keys are {dlms.KEY_LENGTH} bytes")
        elif self.authentication_key is not None:
            raise ValueError("an authentication key needs a decryption key")
        self.encrypted = self.decryption_key is not None
        self._buffer = EncryptedFrameBuffer(self.max_buffer) if self.encrypted else FrameBuffer(self.max_buffer)
        self._pending_since: float | None = None  # encrypted: when the incomplete frame began to wait (monotonic)
        self.last_field_count = 0  # objects the specification recognised in the last telegram
        # Our own CRC check is ~10x faster than dsmr_parser's, so the parser skips its own.
        self._parser = TelegramParser(self.profile.plaintext_specification(), apply_checksum_validation=False)

    def feed(self, data: bytes, received_at: datetime,
             now: float | None = None) -> tuple[list[Reading], list[TelegramError]]:
        """Frame, check and parse whatever complete telegrams `data` completes. `received_at` (wall clock)
        is recorded with the readings; `now` (monotonic seconds, default `self.clock()`) times the buffer."""
        if self.encrypted:
            return self._feed_encrypted(data, received_at, self.clock() if now is None else now)
        self._buffer.append(data.decode("latin-1"))
        readings, errors = [], []
        for text in self._buffer.get_all():
            try:
                readings.append(self.decode(text, received_at))
            except TelegramError as err:
                errors.append(err)
        self.stats.bytes_discarded = self._buffer.bytes_discarded
        if self._buffer.frames_truncated != self.stats.frames_truncated:
            self.stats.parse_errors += self._buffer.frames_truncated - self.stats.frames_truncated
            self.stats.frames_truncated = self._buffer.frames_truncated
            self.stats.last_error = "truncated telegram"
        return readings, errors

    def _feed_encrypted(self, data: bytes, received_at: datetime,
                        now: float) -> tuple[list[Reading], list[TelegramError]]:
        readings, errors = [], []
        if (self._pending_since is not None and self._buffer.pending
                and now - self._pending_since > STALE_FRAME_S):
            # A meter sends a frame in one burst: one still incomplete after a pause has a damaged
            # length (or was never a frame). Without this, it would wait for up to max_buffer bytes.
            self._buffer.abandon()
            self._pending_since = None
            self.stats.parse_errors += 1
            self.stats.frames_truncated += 1
            self.stats.last_error = "truncated or damaged encrypted frame"
        self._buffer.append(data)
        took_any = False
        while (frame := self._buffer.next_frame()) is not None:
            took_any = True
            try:
                text = self.decrypt(frame)
            except DecryptError as err:
                errors.append(err)
                self._buffer.requeue(frame)
                continue
            try:
                readings.append(self.decode(text, received_at))
            except TelegramError as err:
                errors.append(err)
                if self.authentication_key is None:  # unverified, so its bounds may be wrong too: rescan
                    self._buffer.requeue(frame)
        if not self._buffer.pending:
            self._pending_since = None
        elif took_any or self._pending_since is None:
            self._pending_since = now
        self.stats.bytes_discarded = self._buffer.bytes_discarded
        return readings, errors

    def decrypt(self, frame: bytes) -> str:
        """The plaintext telegram in one general-global-cipher frame; counts a failure."""
        try:
            try:
                plaintext = dlms.decrypt_frame(frame, self.decryption_key, self.authentication_key)
            except dlms.DlmsError as err:
                raise DecryptError(f"cannot decrypt: {err}") from None
            except (ValueError, TypeError) as err:  # whatever else a malformed frame provokes
                raise DecryptError(f"cannot decrypt: {err.__class__.__name__}") from None
            # Unverified decryption with a wrong key gives noise: tell that apart from a CRC error.
            if not plaintext.lstrip(b"\r\n").startswith(b"/"):
                raise DecryptError("cannot decrypt: no telegram inside (wrong decryption_key or corrupted frame)")
            if not plaintext.isascii():
                raise DecryptError("cannot decrypt: the telegram inside is not ASCII (corrupted frame)")
        except DecryptError as err:
            self.stats.decrypt_errors += 1
            self.stats.last_error = str(err)
            raise
        return plaintext.decode("ascii")

    def decode(self, text: str, received_at: datetime) -> Reading:
        """One complete telegram to a Reading; counts it either way."""
        try:
            # A CRC the meter sent is checked even where its family's specification has none
            # (Irish Iskra meters send one): a corrupted telegram must never pass as another family's.
            # Decrypted without a verified tag, the CRC is all that vouches for the telegram.
            if (self.profile.has_crc or (self.encrypted and self.authentication_key is None)
                    or _CRC_TRAILER.search(text, max(0, len(text) - 12))):
                check_crc(text)
            try:
                telegram = self._parser.parse(text, throw_ex=True)
            except (DsmrParseError, ValueError, TypeError, ArithmeticError, IndexError, AttributeError) as err:
                raise TelegramError(f"unparsable telegram: {err.__class__.__name__}") from err
            self.last_field_count = sum(1 for _ in telegram)
            if not self.last_field_count:
                raise TelegramError("no known fields: wrong profile?")
            try:
                reading = normalize(telegram, self.meter_id, self.profile, received_at, self.gas_channel)
            except TelegramError:
                raise
            except (ValueError, TypeError, ArithmeticError, AttributeError) as err:
                raise TelegramError(f"unusable value: {err.__class__.__name__}") from err
        except TelegramError as err:
            if err.kind == "crc":
                self.stats.crc_errors += 1
            else:
                self.stats.parse_errors += 1
            self.stats.last_error = str(err)
            raise
        self.stats.telegrams_ok += 1
        return reading
