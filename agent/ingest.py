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
import operator
import re
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from agent.errors import DomainError
from drivers.profiles import PROFILES
from drivers.reading import COUNT, FIELD_NAMES, FIELDS, INPUT_FIELDS, MAP, NUMBER, TIME, TIME_FIELDS, Reading
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


def parse_moment(value: object, name: str) -> datetime:
    if type(value) is float and 0.0 <= value < 1e11:  # the usual (Unix seconds): what the checks below let through
        return datetime.fromtimestamp(value, timezone.utc)
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


def _number(name: str, value: object, kind: type[float] | type[int], low: float, high: float) -> float:
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
def _bounds(name: str) -> tuple[float, float]:
    low, high = FIELDS[name].low, FIELDS[name].high
    if low is None or high is None:
        raise TypeError(f"{name}: a posted number needs both bounds in the table")
    return low, high


_RULES: dict[str, tuple[type[float] | type[int], float, float]] = {
    name: (int if FIELDS[name].kind == COUNT else float, *_bounds(name))
    for name in _SETTABLE if FIELDS[name].kind in (NUMBER, COUNT)}
_COUNTS = tuple(name for name in INPUT_FIELDS if FIELDS[name].kind == COUNT)
# what _checked does that the schema does not: other times read, channels' tags, counts given as whole floats
_CHECKED = tuple(name for name in INPUT_FIELDS if name != "timestamp" and (name in TIME_FIELDS or name in _COUNTS
                                                                        or name == "channels"))
_CHANNEL_BOUNDS = _bounds("channels")  # watts of one tag


def _schema_type(name: str) -> Any:
    """A posted field's type and bounds for msgspec, from its row of the table. Times stay ISO 8601 text or Unix
    seconds (parse_moment reads them); channels' tags and watts are _channels' (the vocabulary is the operator's)."""
    facts = FIELDS[name]
    if facts.kind == TIME:
        return str | float | None
    if facts.kind == MAP:
        return dict[str, Any] | None
    low, high = _bounds(name)
    bounded = Meta(ge=low, le=high)
    if facts.kind == COUNT:  # a whole float (5.0) is a count too: _checked makes it an int
        whole = Meta(ge=int(low), le=int(high))
        return Annotated[int, whole] | Annotated[float, bounded] | None
    return Annotated[float, bounded] | None


# The posted Reading as msgspec decodes it: each field's type and bounds (what msgspec checks while it parses);
# an unknown field is refused (_in_words says which, in the words of the ones the device sets).
_FIELDS = [(name, _schema_type(name), None) for name in INPUT_FIELDS if name != "timestamp"]
_TIMESTAMP = ("timestamp", str | float | UnsetType, UNSET)  # required: _checked says so (null is a wrong type)
ReadingInput = msgspec.defstruct("ReadingInput", [_TIMESTAMP, *_FIELDS], kw_only=True, forbid_unknown_fields=True,
                                 omit_defaults=True)
# One reading, a bare list of them or {"readings": [...]} (a JSON object or array: msgspec tells them apart).
ReadingsBody = msgspec.defstruct("ReadingsBody", [_TIMESTAMP, *_FIELDS, (
    "readings", list[ReadingInput] | UnsetType, UNSET)],  # type: ignore[valid-type]
                                 kw_only=True, forbid_unknown_fields=True, omit_defaults=True)
_BODY: Any = list[ReadingInput] | ReadingsBody  # type: ignore[valid-type]
_DECODER = msgspec.json.Decoder(_BODY)
_FIELD_TYPES = dict.fromkeys(INPUT_FIELDS)

# A checked reading is made positionally from the decoded one's values (msgspec's astuple, in INPUT_FIELDS' order):
# the posted fields are a Reading's second and its fourth on, meter_id and received_at (the device's) around the
# timestamp, the telegram-only fields after them.
if FIELD_NAMES[:3] != ("meter_id", "timestamp", "received_at") or [FIELD_NAMES.index(n) for n in INPUT_FIELDS] != [
        1, *range(3, len(INPUT_FIELDS) + 2)]:
    raise TypeError("drivers/reading.py: the posted fields are no longer where _checked puts them")
_ASTUPLE = msgspec.structs.astuple
_POSTED = len(INPUT_FIELDS)  # astuple's values past these are not a reading's (a body's `readings`)
_UNPOSTED = (None,) * (len(FIELD_NAMES) - len(INPUT_FIELDS) - 2)
_FIX = tuple((name, INPUT_FIELDS.index(name) - 1) for name in _CHECKED)  # each one's place after the timestamp
_GIVEN_FIX = operator.itemgetter(*(i + 1 for _, i in _FIX))  # their values in astuple's
_NO_FIX = (None,) * len(_FIX)


def readings_from_json_bytes(raw: bytes, meter_id: str, received_at: datetime,
                             tags: tuple[str, ...] | None = None) -> list[Reading]:
    """The readings of a JSON body, decoded and checked against the schema in one pass (the hot path).
    Raises msgspec's errors for a body msgspec does not take (not JSON, NaN, a wrong type, out of bounds): the
    caller then hands json.loads's reading of it to readings_from_payload, which says what is wrong."""
    return _readings(_DECODER.decode(raw), meter_id, received_at, tags)


def readings_from_payload(payload: Any, meter_id: str, received_at: datetime,
                          tags: tuple[str, ...] | None = None) -> list[Reading]:
    """One reading, `{"readings": [...]}` or a bare list (decoded JSON), checked whole against the same schema,
    an error in this API's words. `tags`: the operator's vocabulary."""
    _items(payload)  # the batch's shape and size before its readings
    try:
        checked = msgspec.convert(payload, _BODY)
    except msgspec.ValidationError as err:
        raise _in_words(str(err), payload, tags) from None
    return _readings(checked, meter_id, received_at, tags)


def reading_from_json(item: Any, meter_id: str, received_at: datetime,
                      tags: tuple[str, ...] | None = None) -> Reading:
    """One reading (a decoded JSON object)."""
    if not isinstance(item, dict):
        raise _invalid("a reading must be a JSON object")
    return readings_from_payload(item, meter_id, received_at, tags)[0]


def _items(payload: Any) -> list[Any]:
    if isinstance(payload, dict) and set(payload) == {"readings"}:
        payload = payload["readings"]
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise _invalid("no readings")
    if len(items) > MAX_BATCH:
        raise IngestError(IngestCode.BATCH_TOO_LARGE, f"at most {MAX_BATCH} readings per request")
    return items


def _readings(payload: Any, meter_id: str, received_at: datetime, tags: tuple[str, ...] | None) -> list[Reading]:
    if isinstance(payload, list):
        items, many = payload, True
    elif payload.readings is UNSET:
        items, many = [payload], False
    elif any(v is not None for v in msgspec.structs.astuple(payload)[1:-1]) or payload.timestamp is not UNSET:
        raise _invalid("unknown field 'readings'")  # a reading, not a batch
    else:
        items, many = payload.readings, True
    _items(items)
    return [_checked(item, meter_id, received_at, f"readings[{i}]: " if many else "", tags)
            for i, item in enumerate(items)]


def _checked(item: Any, meter_id: str, received_at: datetime, where: str, tags: tuple[str, ...] | None) -> Reading:
    """A reading msgspec decoded (its fields' types and bounds checked): what the schema does not say."""
    values = _ASTUPLE(item)  # the fields in INPUT_FIELDS' order, None where null or absent
    try:
        if values[0] is UNSET:
            raise _invalid("timestamp is required")
        timestamp = parse_moment(values[0], "timestamp")
        posted: tuple[Any, ...] | list[Any] = values[1:_POSTED]
        if _GIVEN_FIX(values) != _NO_FIX:  # most readings have none of the fields that need more than the schema
            posted = _fixed(list(posted), tags)
    except IngestError as err:
        raise IngestError(err.code, where + err.detail) from None
    return Reading(meter_id, timestamp, received_at, *posted, *_UNPOSTED)


def _fixed(posted: list[Any], tags: tuple[str, ...] | None) -> list[Any]:
    """Other times read, channels' tags checked, counts given as whole floats made ints."""
    for name, i in _FIX:  # in the table's order: the first wrong one is said, whatever the body's order
        value = posted[i]
        if value is None:
            continue
        if name in TIME_FIELDS:
            posted[i] = parse_moment(value, name)
        elif name == "channels":
            posted[i] = _channels(value, tags)
        elif type(value) is float:  # a count
            posted[i] = _whole(name, value)
    return posted


def _whole(name: str, value: float) -> int:
    if not value.is_integer():
        raise _invalid(f"{name} must be a whole number")
    return int(value)


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")


def _in_words(message: str, payload: Any, tags: tuple[str, ...] | None) -> IngestError:
    """msgspec's refusal said as this API says it: the refused value is looked up in the payload and checked by
    the field's own rule (parse_moment, _channels, _number), whose words are the answer."""
    match = _AT.match(message)
    what, path = (match["what"], match["path"] or "") if match else (message, "")
    steps = [int(index) if index else name for name, index in _STEP.findall(path)]
    if steps[:1] == ["readings"]:
        steps = steps[1:]
    where, item = "", payload
    if steps and isinstance(steps[0], int):
        where, item = f"readings[{steps[0]}]: ", _items(payload)[steps[0]]
        steps = steps[1:]
    if not isinstance(item, dict):
        return _invalid(where + "a reading must be a JSON object")
    if m := _UNKNOWN.match(what):
        name = m["field"]
        if name in ("meter_id", "received_at"):
            return _invalid(f"{where}{name} is set by the device, leave it out")
        return _invalid(f"{where}unknown field {name!r}")
    if steps and isinstance(steps[0], str) and steps[0] in _FIELD_TYPES:
        name = steps[0]
        try:
            _explain(name, item[name], tags)
        except IngestError as err:
            return IngestError(err.code, where + err.detail)
    return _invalid(where + (f"{path.lstrip('.')}: {what}" if path else what))


def _explain(name: str, value: Any, tags: tuple[str, ...] | None) -> None:
    """Raises what is wrong with one field's value (the schema refused it)."""
    if name in TIME_FIELDS:
        parse_moment(value, name)
    elif name == "channels":
        if not isinstance(value, dict):
            raise _invalid("channels must be an object of tag: watts")
    else:
        kind, low, high = _RULES[name]
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise _invalid(f"{name} must be a whole number")
        _number(name, value, kind, low, high)


def _channels(value: dict[str, Any], tags: tuple[str, ...] | None) -> dict[str, float]:
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

    def __init__(self) -> None:
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
        best, best_fields, crc_failed, kept = None, -1, False, None
        last_error: TelegramError | None = None
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
        if best is None or kept is None:
            if crc_failed:
                raise IngestError(IngestCode.BAD_CRC, "the telegram's CRC does not match its content")
            raise IngestError(IngestCode.BAD_TELEGRAM, f"not a telegram any meter profile can read ({last_error})")
        self._decoders[meter_id] = kept
        return best
