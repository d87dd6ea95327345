"""Readings over HTTP: JSON in the Reading schema, or raw P1 telegrams. No I/O here.

Everything is checked before anything is stored; a batch is all or nothing. Rules:
- only `timestamp` is required; absent fields are null; unknown fields are refused (typos);
- `meter_id` and `received_at` are set by the device, never by the sender;
- numbers are finite and physically possible; counts are whole and not negative; power import and export are
  separate fields and never negative (a negative import would be summed into an exact total unclamped);
- channel tags come from the operator's vocabulary (`[privacy] tags`): no household can make a tag exist;
- a timestamp more than `MAX_FUTURE_S` ahead of the device's clock is refused;
- a household's timestamps only go forward: one at or before the last accepted is a duplicate.
Readings whose timestamp is more than `LIVE_WINDOW_S` old are stored but kept out of real-time
aggregates (a datalogger catching up must not pile an hour into the current window).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from enum import Enum

from agent.errors import DomainError
from drivers.profiles import PROFILES
from drivers.reading import COUNT, FIELDS, INPUT_FIELDS, NUMBER, TIME_FIELDS, Reading
from drivers.telegram import CrcError, TelegramDecoder, TelegramError

MAX_BATCH = 1000
MAX_FUTURE_S = 300
LIVE_WINDOW_S = 300
MAX_CHANNELS = 32
TAG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

_SETTABLE = frozenset(INPUT_FIELDS)  # telegram-only fields are not posted as JSON


class IngestCode(Enum):
    INVALID_READING = "invalid_reading"
    UNKNOWN_TAG = "unknown_tag"
    BATCH_TOO_LARGE = "batch_too_large"
    DUPLICATE = "duplicate"
    BAD_CRC = "bad_crc"
    BAD_TELEGRAM = "bad_telegram"


class IngestError(DomainError[IngestCode], ValueError):
    """Readings refused before anything of them was stored."""


def _invalid(detail: str) -> IngestError:
    return IngestError(IngestCode.INVALID_READING, detail)


def parse_moment(value, name: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _invalid(f"{name} must be an ISO 8601 time or Unix seconds")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(f"{name} is not an ISO 8601 time: {value[:40]!r}") from None
        if moment.tzinfo is None:
            raise _invalid(f"{name} needs a UTC offset (e.g. 'Z')")
        return moment.astimezone(timezone.utc)
    if not math.isfinite(value) or not 0 <= value < 1e11:
        raise _invalid(f"{name} is not a plausible Unix time")
    return datetime.fromtimestamp(value, timezone.utc)


def _number(name: str, value, kind, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):  # Python's JSON reader takes NaN and Infinity
        raise _invalid(f"{name} must be a finite number")
    if value < 0 <= low:
        raise _invalid(f"{name} must not be negative (between {low:g} and {high:g})")
    if not low <= value <= high:
        raise _invalid(f"{name} must be between {low:g} and {high:g}")
    return kind(value)


# field -> (kind, minimum, maximum), from the table of Reading fields (drivers/reading.py)
_RULES = {name: (int if FIELDS[name].kind == COUNT else float, FIELDS[name].low, FIELDS[name].high)
          for name in _SETTABLE if FIELDS[name].kind in (NUMBER, COUNT)}
_CHANNEL_BOUNDS = FIELDS["channels"].low, FIELDS["channels"].high  # watts of one tag
# The float fields with finite bounds: a float between them is what _number returns for it (finite, since the bounds
# are; not negative where the low bound is not), checked without the call: most of what is posted.
_FLOAT_BOUNDS = {name: (low, high) for name, (kind, low, high) in _RULES.items()
                 if kind is float and math.isfinite(low) and math.isfinite(high)}


def reading_from_json(item, meter_id: str, received_at: datetime, index: int | None = None,
                      tags: tuple[str, ...] | None = None) -> Reading:
    """One reading; `tags`: the vocabulary its channels must come from (None: any well-formed tag)."""
    where = "" if index is None else f"readings[{index}]: "
    try:
        if not isinstance(item, dict):
            raise _invalid("a reading must be a JSON object")
        if not _SETTABLE.issuperset(item):
            name = sorted(set(item) - _SETTABLE)[0]
            if name in ("meter_id", "received_at"):
                raise _invalid(f"{name} is set by the device, leave it out")
            raise _invalid(f"unknown field {name!r}")
        if "timestamp" not in item:
            raise _invalid("timestamp is required")
        values = {"meter_id": meter_id, "received_at": received_at,
                  "timestamp": parse_moment(item["timestamp"], "timestamp")}
        for name, value in item.items():
            if value is None or name == "timestamp":
                continue
            bounds = _FLOAT_BOUNDS.get(name)
            if bounds is not None and type(value) is float and bounds[0] <= value <= bounds[1]:
                values[name] = value
                continue
            if name in TIME_FIELDS:
                values[name] = parse_moment(value, name)
            elif name == "channels":
                values[name] = _channels(value, tags)
            else:
                kind, low, high = _RULES[name]
                if kind is int and isinstance(value, float) and not value.is_integer():
                    raise _invalid(f"{name} must be a whole number")
                values[name] = _number(name, value, kind, low, high)
    except IngestError as err:
        raise IngestError(err.code, where + err.detail) from None
    return Reading.from_values(values)


def _channels(value, tags: tuple[str, ...] | None) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _invalid("channels must be an object of tag: watts")
    if len(value) > MAX_CHANNELS:
        raise _invalid(f"at most {MAX_CHANNELS} channels")
    out = {}
    for tag, watts in value.items():
        if not TAG.fullmatch(tag):  # match() would let "fridge\n" through: $ matches before a newline
            raise _invalid(f"channel tag {tag[:40]!r}: use 1-32 lowercase letters, digits, '_' or '-'")
        if tags is not None and tag not in tags:
            raise IngestError(IngestCode.UNKNOWN_TAG, f"channel tag {tag!r} is not in this device's "
                              f"vocabulary; tags: {', '.join(tags) or '(none)'}")
        out[tag] = _number(f"channels.{tag}", watts, float, *_CHANNEL_BOUNDS)
    return out


def readings_from_payload(payload, meter_id: str, received_at: datetime,
                          tags: tuple[str, ...] | None = None) -> list[Reading]:
    """One reading, `{"readings": [...]}` or a bare list; checked whole. `tags`: the operator's vocabulary."""
    if isinstance(payload, dict) and set(payload) == {"readings"}:
        payload = payload["readings"]
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise _invalid("no readings")
    if len(items) > MAX_BATCH:
        raise IngestError(IngestCode.BATCH_TOO_LARGE, f"at most {MAX_BATCH} readings per request")
    many = isinstance(payload, list)
    return [reading_from_json(item, meter_id, received_at, i if many else None, tags) for i, item in enumerate(items)]


def check_order(readings: list[Reading], last_timestamp: datetime | None, now: datetime) -> None:
    """Timestamps go forward, never far into the future. Raises before anything is stored."""
    previous = last_timestamp
    for reading in sorted(readings, key=lambda r: r.timestamp):
        if (reading.timestamp - now).total_seconds() > MAX_FUTURE_S:
            raise _invalid(f"timestamp {reading.timestamp.isoformat()} is more than {MAX_FUTURE_S} s ahead of "
                           "the device's clock")
        # A reading ahead of the device's clock (allowed, up to MAX_FUTURE_S) must not refuse the household's real
        # ones until the clock catches up: only its own time again (a retry) is a duplicate then.
        if previous is not None and (reading.timestamp == previous
                                     or (previous <= now and reading.timestamp < previous)):
            raise IngestError(IngestCode.DUPLICATE, f"a reading at or after {reading.timestamp.isoformat()} "
                              "was already accepted for this household; timestamps must go forward")
        previous = reading.timestamp


def is_live(reading: Reading) -> bool:
    return (reading.received_at - reading.timestamp).total_seconds() <= LIVE_WINDOW_S


class TelegramIngest:
    """Raw telegrams from households' dataloggers: the profile is learnt from the first telegram
    (the one whose specification understands the most fields) and kept per household."""

    def __init__(self):
        # per household: the decoder of its learnt profile, kept (its parser learns the telegram's lines once)
        self._decoders: dict[str, TelegramDecoder] = {}

    def decode(self, text: str, meter_id: str, received_at: datetime) -> Reading:
        known = self._decoders.get(meter_id)
        if known is not None:
            try:
                return known.decode(text, received_at)
            except CrcError:
                raise IngestError(IngestCode.BAD_CRC, "the telegram's CRC does not match its content") from None
            except TelegramError:
                pass  # the meter was changed: learn again
        best, best_fields, crc_failed, last_error, kept = None, -1, False, None, None
        for candidate in PROFILES.values():
            if candidate.encrypted:
                continue
            decoder = TelegramDecoder(meter_id, candidate)
            try:
                reading = decoder.decode(text, received_at)
            except CrcError as err:
                crc_failed, last_error = True, err
                continue
            except TelegramError as err:
                last_error = err
                continue
            if decoder.last_field_count > best_fields:
                best, best_fields, kept = reading, decoder.last_field_count, decoder
        if best is None:
            if crc_failed:
                raise IngestError(IngestCode.BAD_CRC, "the telegram's CRC does not match its content")
            raise IngestError(IngestCode.BAD_TELEGRAM, f"not a telegram any meter profile can read ({last_error})")
        self._decoders[meter_id] = kept
        return best
