"""A telegram's lines to Reading values in one pass, each line dispatched by its OBIS code. No I/O here.

dsmr_parser's `TelegramParser.parse` runs every pattern of a specification over the whole telegram; here each
line's OBIS code is looked up once in a table. The specification (dsmr_parser's own) still decides which lines
a family *understands* (the count `auto` ranks families by); what a line means comes from its OBIS code, so a
value a family's specification leaves out (a threshold, a text message, a water meter) is still read. Values
are exactly what dsmr_parser's value parsers give (tests/test_p1_fields.py compares them field by field), and
where it gives nothing (a lowercase DST flag in a time) the telegram's text decides.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from decimal import Decimal

from dsmr_parser.value_types import _SYSTEM_TZ as METER_TZ  # the meters' local time, as dsmr_parser reads it

from drivers.reading import COUNT, FIELDS, LAST, NUMBER, iso

_KEY = re.compile(r"(\d)-(\d):(\d+\.\d+\.\d+)(?:\*\d+)?")
_CACHE_LIMIT = 512  # distinct OBIS keys or times remembered; a garbage line must not grow a table forever

# Units meters send, the Reading unit (the table's) each one measures, and its scale to it.
_UNITS = {"kW": ("W", 1000), "W": ("W", 1), "kWh": ("Wh", 1000), "Wh": ("Wh", 1), "V": ("V", 1), "A": ("A", 1),
          "kvar": ("var", 1000), "var": ("var", 1), "kvarh": ("varh", 1000), "varh": ("varh", 1),
          "kVA": ("VA", 1000), "VA": ("VA", 1), "Hz": ("Hz", 1),
          # Kamstrup (Sweden) capitalises the A
          "kVAr": ("var", 1000), "VAr": ("var", 1), "kVArh": ("varh", 1000), "VArh": ("varh", 1)}

# EN 13757-3 device types of M-Bus devices a P1 port reports, by name.
MBUS_TYPES = {2: "electricity", 3: "gas", 4: "heat", 6: "warm_water", 7: "water", 10: "cold", 11: "cold",
              12: "heat", 13: "heat_cold", 21: "hot_water", 22: "cold_water"}
GAS = 3
_EPOCH = datetime(1971, 1, 1, tzinfo=timezone.utc)  # before it, a channel's reading is empty (DSMR 5: 1970-01-01)


# OBIS code C.D.E of the main meter (channel 0) -> the Reading field (drivers/reading.py's table says which):
# registers whose unit says how to scale them, whole counters, and lines with a shape of their own (code -> the
# method of LineParser that reads them).
NUMERIC: dict[str, str] = {code: name for name, facts in FIELDS.items() if facts.kind == NUMBER and not facts.line
                           for code in facts.obis}
COUNTS: dict[str, str] = {code: name for name, facts in FIELDS.items() if facts.kind == COUNT and not facts.line
                          for code in facts.obis}
SPECIAL: dict[str, str] = {code: facts.line for facts in FIELDS.values() if facts.line for code in facts.obis}
# Sent, understood, and deliberately not kept: versions, names, and serial numbers (personal data).
IGNORED = frozenset({"0.2.8", "96.1.0", "96.1.1", "96.1.4", "42.0.0", "0.0.0", "96.5.5", "96.1.255",
                     "96.13.2", "96.13.3", "96.13.4", "96.13.5"})
MBUS = {"24.1.0": "device_type", "24.2.1": "reading", "24.2.3": "reading", "24.3.0": "reading_v2",
        "24.4.0": "valve", "96.1.0": "identifier", "96.1.1": "identifier"}  # the identifier itself is not kept


_DIMENSIONS = {field: FIELDS[field].unit or None for field in NUMERIC.values()}  # power factors: plain


def decimal_float(text: str, scale: int = 1) -> float:
    """Exactly `float(Decimal(text) * scale)` for scale 1 or 1000 (what dsmr_parser's values become), without
    Decimal for the plain digits every meter sends. Raises ArithmeticError where Decimal does."""
    digits = text[1:] if text[:1] == "-" else text
    point = digits.find(".")
    if point < 0:
        if not digits.isdecimal():
            return float(Decimal(text) * scale)  # whatever else Decimal reads (1E3, NaN): as dsmr_parser does
    elif not ((digits[:point].isdecimal() or point == 0) and (digits[point + 1:].isdecimal() or not digits[point + 1:])
              and len(digits) > 1):
        return float(Decimal(text) * scale)
    if scale == 1:
        return float(text)
    if point < 0:
        return float(int(text) * scale)
    decimals = len(digits) - point - 1
    whole = int(text[: len(text) - decimals - 1] + text[len(text) - decimals:])
    return float(whole * 10 ** (3 - decimals)) if decimals <= 3 else whole / 10 ** (decimals - 3)


_TIMES: dict[str, datetime | None] = {}


def meter_time(text: str | None) -> datetime | None:
    """A meter's YYMMDDhhmmss[S|W] in UTC, as dsmr_parser reads it; also the lowercase flag some meters send
    (Landis+Gyr 350: `190000s`), which dsmr_parser gives no time for. None when it is no time."""
    if not text:
        return None
    moment = _TIMES.get(text, _EPOCH)
    if moment is not _EPOCH:
        return moment
    moment = None
    if (len(text) == 12 or (len(text) == 13 and text[12] in "SWsw")) and text[:12].isdecimal():
        year = int(text[0:2])
        try:
            moment = datetime(year + (1900 if year >= 69 else 2000), int(text[2:4]), int(text[4:6]),
                              int(text[6:8]), int(text[8:10]), int(text[10:12]), tzinfo=METER_TZ,
                              fold=1 if text[12:] in ("W", "w") else 0).astimezone(timezone.utc)
        except ValueError:
            moment = None
    if len(_TIMES) >= _CACHE_LIMIT:  # mostly the meters' clocks, which never repeat: start again
        _TIMES.clear()
    _TIMES[text] = moment
    return moment


def _iso_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else iso(moment)


_ISO_TIMES: dict[str, str | None] = {}


def meter_time_iso(text: str) -> str | None:
    """meter_time as an ISO string, remembered: M-Bus and log times repeat in every telegram."""
    stamp = _ISO_TIMES.get(text, "")
    if stamp == "":
        stamp = _iso_or_none(meter_time(text))
        if len(_ISO_TIMES) >= _CACHE_LIMIT:
            _ISO_TIMES.clear()
        _ISO_TIMES[text] = stamp
    return stamp


def _value_unit(group: str) -> tuple[str, str | None]:
    star = group.find("*")
    return (group, None) if star < 0 else (group[:star], group[star + 1:])


def _hex_text(text: str) -> str | None:
    """A DSMR text message: hex-encoded octets; shown decoded when that gives printable text."""
    if not text:
        return None
    text = text[:2048]
    try:
        decoded = bytes.fromhex(text).decode("latin-1")
    except ValueError:
        return text
    return decoded if decoded.isprintable() else text


# Registers and limits (kept LAST by rollups) change every few telegrams, not every one: their lines are cached.
_REGISTERS = frozenset(name for name in NUMERIC.values() if FIELDS[name].rollup == LAST)
_NUMBER_CACHES: dict[str | None, dict[str, float]] = {}  # per dimension: "000004.426*kWh" -> 4426.0


class _Suspect(float):
    """A number read from anything but plain unsigned digits: normalize checks it (negative, not finite)."""


def _fresh_number(body: str, scales: dict, cache: dict) -> float | None:
    """One register's value string in SI units; None when it is not one value in a unit the register has."""
    if ")(" in body:
        return None
    value, scale = body, 1
    star = body.find("*")
    if star >= 0:
        scale = scales.get(body[star + 1:])
        if scale is None:
            return None  # a unit this register never has: no value rather than a wrongly scaled one
        value = body[:star]
    if scale == 1000 and value[-4:-3] == "." and value[:-4].isdecimal() and value[-3:].isdecimal():
        number = float(value[:-4] + value[-3:])  # kW and kWh with 3 decimals, the most common: exact
    elif scale == 1 and value.replace(".", "", 1).isdecimal():
        number = float(value)
    else:
        number = decimal_float(value, scale)
        if not 0 <= number < math.inf:
            return _Suspect(number)
    if len(cache) >= _CACHE_LIMIT * 8:
        cache.clear()
    cache[body] = number
    return number


class Parsed:
    """What one telegram said, before profile rules (Belgian tariffs, totals, the gas channel) apply."""

    __slots__ = ("values", "mbus", "names", "extras", "suspect")

    def __init__(self):
        self.values: dict = {}
        self.mbus: dict[int, dict] = {}
        self.names: set[str] = set()  # dsmr_parser value names the family's specification understood
        self.extras: list[str] = []  # numeric fields from lines the specification does not have
        self.suspect: list[str] = []  # numeric fields that may be negative or not finite (anything but plain digits)


class LineParser:
    """One family's dispatch table: built from its dsmr_parser specification, filled lazily per OBIS key."""

    def __init__(self, specification: dict):
        self._patterns = [(obj["value_name"], re.compile(obj["obis_reference"], re.DOTALL | re.MULTILINE))
                          for obj in specification["objects"]]
        self._keys: dict[str, tuple] = {}
        self._registers: dict[str, tuple] = {}  # whole lines of registers and counters: they repeat
        self._shapes: dict[str, dict] = {}  # whole lines of the other kinds (peaks, limits, M-Bus): they repeat too

    def _remember_shape(self, line: str, found: dict) -> None:
        if len(self._shapes) >= _CACHE_LIMIT:
            self._shapes.clear()
        self._shapes[line] = found

    def _remember(self, line: str, target: str, number, name: str | None) -> None:
        if len(self._registers) >= _CACHE_LIMIT * 2:
            self._registers.clear()
        self._registers[line] = (target, number, name)

    def understood(self, key: str) -> str | None:
        """The value name the specification gives a line with this OBIS key (its M-Bus lines count as one)."""
        sample = key + "(0)\r\n(0)\r\n"
        for name, pattern in self._patterns:
            if pattern.match(sample):
                match = _KEY.fullmatch(key)
                return "MBUS_DEVICES" if match and match[1] == "0" and match[2] != "0" else name
        return None

    def _entry(self, key: str) -> tuple:
        """(kind, target, the value name the specification gives it, {unit: scale}, the value cache) of a key."""
        match = _KEY.fullmatch(key)
        kind, target, scales, cache = None, None, None, None
        if match:
            medium, channel, code = match[1], int(match[2]), match[3]
            if medium == "0" and channel:
                kind, target = ("mbus", (channel, MBUS[code])) if code in MBUS else (None, None)
            else:  # the electricity meter itself (Swiss meters number it 1-1:)
                if code in NUMERIC:
                    kind, target = "number", NUMERIC[code]
                    dimension = _DIMENSIONS[target]
                    scales = {unit: scale for unit, (dim, scale) in _UNITS.items() if dim == dimension}
                    cache = _NUMBER_CACHES.setdefault(dimension, {})
                elif code in COUNTS:
                    kind, target = "count", COUNTS[code]
                elif code in SPECIAL:
                    kind, target = "special", SPECIAL[code]
        entry = (kind, target, self.understood(key), scales, cache)
        if len(self._keys) < _CACHE_LIMIT:
            self._keys[key] = entry
        return entry

    def parse(self, text: str) -> Parsed:
        out = Parsed()
        values, names, keys, registers, shapes = out.values, out.names, self._keys, self._registers, self._shapes
        lines = iter(text.split("\r\n") if "\r\n" in text else text.split("\n"))
        for line in lines:
            known = registers.get(line)
            if known is not None:  # a register or counter line exactly as in an earlier telegram
                target, number, name = known
                values[target] = number
                if name is None:
                    out.extras.append(target)
                else:
                    names.add(name)
                continue
            paren = line.find("(")
            if paren <= 0 or line[-1:] != ")":
                continue
            key = line[:paren]
            kind, target, name, scales, cache = keys.get(key) or self._entry(key)
            body = line[paren + 1:-1]
            try:
                if kind == "number":
                    # Most registers repeat from one telegram to the next: a value string is converted once.
                    number = cache.get(body)
                    if number is None:
                        number = _fresh_number(body, scales, cache)
                        if number is None:
                            continue
                        if number.__class__ is not float:  # (a Suspect) signed, or NaN: checked by normalize
                            number = float(number)
                            out.suspect.append(target)
                        elif target in _REGISTERS:
                            self._remember(line, target, number, name)
                    values[target] = number
                    if name is None:
                        out.extras.append(target)
                elif kind == "count":
                    if not body.isdecimal():
                        continue
                    values[target] = int(body)
                    self._remember(line, target, values[target], name)
                elif kind == "special":
                    found = shapes.get(line)  # a line read before: its values (lists shared: read-only)
                    if found is None:
                        found = {}
                        if not getattr(self, target)(body.split(")("), found):
                            continue
                        if target != "_timestamp":  # the clock changes every telegram
                            self._remember_shape(line, found)
                    values.update(found)
                elif kind == "mbus":
                    if target[1] == "reading_v2":  # DSMR 2.2/3: the value is on the next line
                        following = next(lines, "").rstrip("\r")
                        groups = body.split(")(") + (following[1:-1].split(")(") if following[:1] == "(" else [])
                        if not self._mbus(target, groups, out.mbus):
                            continue
                    else:
                        found = shapes.get(line)
                        if found is None:
                            scratch: dict[int, dict] = {}
                            if not self._mbus(target, body.split(")("), scratch):
                                continue
                            found = scratch[target[0]]
                            self._remember_shape(line, found)
                        out.mbus.setdefault(target[0], {}).update(found)
            except (ValueError, IndexError, ArithmeticError):
                continue  # a value dsmr_parser would not read either
            if name is not None:
                names.add(name)
        return out

    # --- the lines with shapes of their own (each returns whether it read anything) ----------------
    @staticmethod
    def _timestamp(groups: list[str], values: dict) -> bool:
        moment = meter_time(groups[0]) if len(groups) == 1 else None
        if moment is not None:
            values["timestamp"] = moment
        return len(groups) == 1

    @staticmethod
    def _threshold(groups: list[str], values: dict) -> bool:
        if len(groups) != 1:
            return False
        value, unit = _value_unit(groups[0])
        if unit == "A":
            values["current_threshold_a"] = decimal_float(value)
        elif unit in ("kW", "W", None):
            values["power_threshold_w"] = decimal_float(value, 1 if unit is None else _UNITS[unit][1])
        elif unit in ("kVA", "VA"):  # Luxembourg's meters limit apparent power
            values["apparent_power_threshold_va"] = decimal_float(value, _UNITS[unit][1])
        else:
            return False
        return True

    @staticmethod
    def _demand_peak(groups: list[str], values: dict) -> bool:
        if len(groups) != 2:
            return False
        value, unit = _value_unit(groups[1])
        if unit not in ("kW", "W"):
            return False
        values["demand_peak_month_w"] = decimal_float(value, _UNITS[unit][1])
        moment = meter_time(groups[0])
        if moment is not None:
            values["demand_peak_month_at"] = moment
        return True

    @staticmethod
    def _demand_peaks(groups: list[str], values: dict) -> bool:
        """Belgian 98.1.0: (count)(1-0:1.6.0)(1-0:1.6.0) then per month (month)(when)(peak*kW)."""
        if not groups[0].isdecimal() or len(groups) != 3 + 3 * int(groups[0]):
            return False  # another meter's 98.1.0 (E.ON Hungary's last month's registers)
        peaks = []
        for i in range(3, len(groups), 3):
            value, unit = _value_unit(groups[i + 2])
            if unit not in ("kW", "W"):
                return False
            peaks.append({"month": meter_time_iso(groups[i]), "at": meter_time_iso(groups[i + 1]),
                          "w": decimal_float(value, _UNITS[unit][1])})
        values["demand_peaks"] = peaks
        return True

    @staticmethod
    def _failure_log(groups: list[str], values: dict) -> bool:
        """99.97.0: (count)(0-0:96.7.19) then per failure (when it ended)(how long*s)."""
        if groups == [""]:
            values["power_failure_log"] = []
            return True
        count = int(groups[0])
        if count > 10 or len(groups) != 2 + 2 * count:
            return False
        events = []
        for i in range(2, len(groups), 2):
            duration, unit = _value_unit(groups[i + 1])
            if unit not in ("s", None) or not duration.isdecimal():
                return False
            events.append({"end": meter_time_iso(groups[i]), "duration_s": int(duration)})
        values["power_failure_log"] = events
        return True

    @staticmethod
    def _text(groups: list[str], values: dict) -> bool:
        if len(groups) != 1:
            return False
        text = _hex_text(groups[0])
        if text is not None:
            values["text_message"] = text
        return True

    @staticmethod
    def _text_code(groups: list[str], values: dict) -> bool:
        if len(groups) != 1:
            return False
        if groups[0]:
            values["text_message_code"] = groups[0][:64]
        return True

    @staticmethod
    def _mbus(target: tuple[int, str], groups: list[str], devices: dict[int, dict]) -> bool:
        channel, what = target
        if what == "device_type":
            if len(groups) != 1 or not groups[0].isdecimal():
                return False
            devices.setdefault(channel, {})["device_type"] = int(groups[0])
        elif what == "identifier":
            devices.setdefault(channel, {})
        elif what == "valve":
            if len(groups) != 1 or not groups[0].isdecimal():
                return False
            devices.setdefault(channel, {})["valve"] = int(groups[0])
        else:
            if what == "reading_v2":  # (time)(00)(60)(1)(0-1:24.2.1)(unit) then (value)
                if len(groups) != 7:
                    return False
                value, unit = groups[6], groups[5] or None
            elif len(groups) == 2:
                value, unit = _value_unit(groups[1])
            else:
                return False
            device = devices.setdefault(channel, {})
            device["value"] = decimal_float(value)
            device["unit"] = unit
            device["timestamp"] = meter_time(groups[0])
            device["stamp"] = groups[0]
        return True


def mbus_entries(devices: dict[int, dict]) -> list[dict]:
    """The Reading's `mbus` list: one entry per channel; an empty channel's reading (stamped before 1971) is null."""
    entries = []
    for channel in sorted(devices):
        device = devices[channel]
        device_type = device.get("device_type")
        moment = device.get("timestamp")
        live = "value" in device and moment is not None and moment >= _EPOCH
        entries.append({"channel": channel, "type": MBUS_TYPES.get(device_type, "unknown" if device_type is None
                                                                     else f"type_{device_type}"),
                        "device_type": device_type, "value": device["value"] if live else None,
                        "unit": device.get("unit") if live else None,
                        "timestamp": meter_time_iso(device["stamp"]) if live else None,
                        "valve": device.get("valve")})
    return entries


def is_gas(device: dict) -> bool:
    """A gas meter: device type 3, or no type at all (DSMR 2.2/3 may omit it) with a reading in m3 or no unit."""
    device_type = device.get("device_type")
    return (device_type == GAS or device_type is None) and device.get("unit") in ("m3", None)


def find_gas(devices: dict[int, dict], channel: int | None) -> tuple[float, datetime] | tuple[None, None]:
    """The gas reading on `channel` (only if that device is a gas meter), or on the first live gas meter."""
    for number in sorted(devices):
        device = devices[number]
        if "value" not in device or (channel is not None and number != channel) or not is_gas(device):
            continue
        if channel is None and (device["timestamp"] is None or device["timestamp"] < _EPOCH):
            continue  # an empty channel
        return device["value"], device["timestamp"]
    return None, None
