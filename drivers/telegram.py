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

from dsmr_parser.clients.telegram_buffer import EncryptedTelegramBuffer, TelegramBuffer

from drivers import dlms, obis
from drivers.profiles import Profile
from drivers.reading import FIELDS, NON_NEGATIVE, NUMBER, Reading

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


def _crc16_bytewise(data: bytes) -> int:
    crc = 0
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


# The CRC is linear over GF(2): each of its 16 bits is the parity of the message's bits under a mask that depends
# only on the message's length. A meter's telegrams keep their length (its values are zero-padded), so from the
# second telegram of a length on, the CRC is 16 ANDs and bit counts on the message as one integer, in C, instead
# of a Python step per byte. Building a length's masks costs about 30 telegrams' byte loops, once.
_MASKED_LENGTHS = 32  # 16 masks of one length take 2 x length bytes
_crc_masks: dict[int, tuple[int, ...]] = {}
_lengths_seen: set[int] = set()


def _masks_for(length: int) -> tuple[int, ...]:
    """Bit t of the message (as a little-endian integer) enters the register with 8 * length - t steps to go, so
    its share of the CRC is the register's one-step map applied that often to 1."""
    states, state = [], 1
    for _ in range(8 * length):
        state = (state >> 1) ^ 0xA001 if state & 1 else state >> 1
        states.append(state)
    # states[n - 1] is the share of bit t = 8 * length - n, so read from the top bit down, mask `bit` is the string
    # of every share's `bit`: every 16th character of the shares written out in binary (slices, in C).
    shares = "".join(format(share, "016b") for share in states)
    return tuple(int(shares[15 - bit::16], 2) for bit in range(16))


def crc16(data: bytes) -> int:
    """CRC-16/ARC (poly 0xA001 reflected, init 0)."""
    masks = _crc_masks.get(len(data))
    if masks is None:
        if not data or len(data) not in _lengths_seen or len(_crc_masks) >= _MASKED_LENGTHS:
            if len(_lengths_seen) < _MASKED_LENGTHS * 4:
                _lengths_seen.add(len(data))
            return _crc16_bytewise(data)
        masks = _crc_masks[len(data)] = _masks_for(len(data))
    message = int.from_bytes(data, "little")
    crc = 0
    for bit, mask in enumerate(masks):
        crc |= ((message & mask).bit_count() & 1) << bit
    return crc


# A real meter sends a NUL after its CRC (dsmr_parser's framing has accepted it since 2017).
_CRC_TRAILER = re.compile(r"!([0-9A-Fa-f]{1,4})\x00?\s*$")


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
# dsmr_parser's framing regex, also taking a bare LF or the next telegram's '/' after the CRC (gateways that
# rewrite or strip line ends), and a CRC in lowercase hex.
_FRAME = re.compile(r"\/[^\/]+?\![A-Fa-f0-9]{0,4}\0?(?:\r?\n|(?=\/))", re.DOTALL)


class FrameBuffer(TelegramBuffer):
    """dsmr_parser's regex framing, with a cap on what it keeps and a count of what it drops."""

    def get_all(self):
        if "!" not in self._buffer:  # nothing can be complete before the CRC line
            return
        for telegram in _FRAME.findall(self._buffer):
            self._remove(telegram)
            yield telegram

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
_BELGIAN_SWAP = {
    "energy_import_t1_wh": "energy_import_t2_wh",
    "energy_import_t2_wh": "energy_import_t1_wh",
    "energy_export_t1_wh": "energy_export_t2_wh",
    "energy_export_t2_wh": "energy_export_t1_wh",
}
_BELGIAN_PAIRS = (("energy_import_t1_wh", "energy_import_t2_wh"), ("energy_export_t1_wh", "energy_export_t2_wh"))
# From the table of Reading fields (drivers/reading.py): exports a signed import register stands for, totals and
# their tariff registers, and the numbers of lines with shapes of their own (checked like the suspect ones).
_SIGNED_POWER = tuple((facts.export_of, name) for name, facts in FIELDS.items() if facts.export_of)
_TARIFF_PARTS = {name: facts.sum_of for name, facts in FIELDS.items() if facts.sum_of}
_SPECIAL_NUMBERS = tuple(name for name, facts in FIELDS.items() if facts.line and facts.kind == NUMBER)


def _physical(name: str, value: float) -> bool:
    """Finite; never negative where the table says so (power, energy, gas, voltage, limits). A telegram over HTTP
    is whatever its sender wrote under a CRC it computed itself: '-5000' parses as a number, and a negative import
    would be summed into an exact total unclamped."""
    return math.isfinite(value) and not (value < 0 and name in NON_NEGATIVE)


def normalize(parsed: obis.Parsed, meter_id: str, profile: Profile, received_at: datetime,
              gas_channel: int | None = None) -> Reading:
    """A parsed telegram with its family's rules applied: Belgian tariff numbering, signed power, totals, gas."""
    values = parsed.values
    suspect, extras = parsed.suspect, parsed.extras
    if profile.belgian_tariffs:
        for low, high in _BELGIAN_PAIRS:
            a, b = values.pop(low, None), values.pop(high, None)
            if a is not None:
                values[high] = a
            if b is not None:
                values[low] = b
        if suspect or extras:
            suspect, extras = [_BELGIAN_SWAP.get(k, k) for k in suspect], [_BELGIAN_SWAP.get(k, k) for k in extras]
        if values.get("tariff") in (1, 2):
            values["tariff"] = 3 - values["tariff"]

    # Meters with one signed power register (Q3D) report export as negative import.
    for imp, exp in _SIGNED_POWER:
        if values.get(imp) is not None and values[imp] < 0 and not values.get(exp):
            values[imp], values[exp] = 0.0, -values[imp]

    for name in extras:  # outside the family's specification, an impossible value is left out, not fatal
        if name in values and not _physical(name, values[name]):
            del values[name]
    for name in (*suspect, *_SPECIAL_NUMBERS):
        value = values.get(name)
        if value is not None and not 0 <= value < math.inf and not _physical(name, value):
            raise TelegramError(f"{name} is {'negative' if values[name] < 0 else 'not a finite number'}")

    for total, names in _TARIFF_PARTS.items():
        if total not in values:
            parts = [values[n] for n in names if n in values]
            if parts:
                values[total] = float(sum(parts))

    if parsed.mbus:
        values["mbus"] = obis.mbus_entries(parsed.mbus)
        gas_m3, values["gas_timestamp"] = obis.find_gas(parsed.mbus, gas_channel)
        if gas_m3 is not None and not _physical("gas_m3", gas_m3):
            raise TelegramError("gas_m3 is negative or not a finite number")
        values["gas_m3"] = gas_m3
    values.setdefault("timestamp", received_at)
    values["meter_id"], values["received_at"] = meter_id, received_at
    return Reading.from_values(values)


# --- the decoder -----------------------------------------------------------------------------
_LINE_PARSERS: dict[str, obis.LineParser] = {}


def line_parser(profile: Profile) -> obis.LineParser:
    """One dispatch table per family, shared by its decoders (it learns each OBIS key once)."""
    parser = _LINE_PARSERS.get(profile.name)
    if parser is None:
        parser = _LINE_PARSERS[profile.name] = obis.LineParser(profile.plaintext_specification())
    return parser


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
        self._parser = line_parser(self.profile)

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
            parsed = self._parser.parse(text)
            self.last_field_count = len(parsed.names)
            if not self.last_field_count:
                raise TelegramError("no known fields: wrong profile?")
            try:
                reading = normalize(parsed, self.meter_id, self.profile, received_at, self.gas_channel)
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
