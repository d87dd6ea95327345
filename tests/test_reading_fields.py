"""The table of Reading fields (drivers/reading.py) is the one place a field's facts are stated: what is derived from
it (the OBIS dispatch, normalization, ingest's bounds, rollups, the OpenAPI Reading schemas, the household
parameters) agrees with it. Each check exercises the derived thing itself (a line parsed, a reading posted, the
served document, a parameter extracted), so a hand-edited copy anywhere fails here."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import msgspec
import pytest

from agent.api.openapi import build_spec
from agent.config import DEFAULT_LEVELS
from agent.ingest import IngestError, reading_from_json
from agent.parameters import HOUSEHOLD, catalogue, lookup, permitted
from agent.store.rollup import LAST_FIELDS, MEAN_FIELDS
from drivers import reading as table
from drivers.obis import _UNITS as METER_UNITS
from drivers.obis import LineParser, Parsed
from drivers.profiles import get_profile
from drivers.reading import FIELD_NAMES, FIELDS, INPUT_FIELDS, NON_NEGATIVE, Reading
from drivers.telegram import TelegramDecoder, TelegramError, normalize
from tests.helpers.telegrams import telegram_bytes

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
SCHEMAS = build_spec()["components"]["schemas"]
SIGNED_IMPORTS = {f.export_of: n for n, f in FIELDS.items() if f.export_of}
POSTED_NUMBERS = [n for n in INPUT_FIELDS if FIELDS[n].kind in (table.NUMBER, table.COUNT)]


def test_every_field_has_a_row_and_the_rows_are_consistent():
    assert FIELD_NAMES == tuple(FIELDS) and len(FIELD_NAMES) > 80
    for name, facts in FIELDS.items():
        assert facts.kind in (table.ID, table.TIME, table.NUMBER, table.COUNT, table.TEXT, table.LIST, table.MAP)
        assert (facts.rollup is not None) == (facts.kind in (table.NUMBER, table.COUNT)), name
        assert facts.description, name
        if facts.posted and facts.kind in (table.NUMBER, table.COUNT):
            assert facts.low is not None and facts.high is not None, name  # JSON is always bounded
        for part in facts.sum_of:
            assert FIELDS[part].unit == facts.unit, (name, part)
        if facts.export_of:
            assert FIELDS[facts.export_of].unit == facts.unit
        if facts.kind == table.NUMBER:  # the unit is in the name too (power_import_w, gas_m3, power_factor)
            suffixes = tuple(f"_{f.unit.lower()}" for f in FIELDS.values() if f.unit)
            assert name.endswith(f"_{facts.unit.lower()}") if facts.unit else not name.endswith(suffixes), name
    ranks = [f.parameter.rank for f in FIELDS.values() if f.parameter]
    assert len(ranks) == len(set(ranks))


@pytest.mark.parametrize("name", [n for n, f in FIELDS.items() if f.obis and not f.line])
def test_each_obis_code_lands_in_its_field_scaled_by_its_unit(name):
    facts = FIELDS[name]
    for code in facts.obis:
        scaled = f"k{facts.unit}" in METER_UNITS  # kW, kWh, kvar...: the meter's unit scaled to the table's
        body = "0007" if facts.kind == table.COUNT else (
            f"0001.500*{'k' if scaled else ''}{facts.unit}" if facts.unit else "0.950")
        parsed = LineParser({"objects": []}).parse(f"1-0:{code}({body})\r\n")
        expected = 7 if facts.kind == table.COUNT else (1500.0 if scaled else 1.5 if facts.unit else 0.95)
        assert parsed.values == {name: expected}, code


def test_lines_with_shapes_of_their_own_fill_the_fields_that_name_them():
    lines = {"1.0.0": "0-0:1.0.0(201010120000S)", "17.0.0": "0-0:17.0.0(016*A)",
             "1.6.0": "1-0:1.6.0(200509134558S)(02.589*kW)", "98.1.0": "0-0:98.1.0(1)(1-0:1.6.0)(1-0:1.6.0)"
             "(200501000000S)(200423192538S)(03.695*kW)", "99.97.0": "1-0:99.97.0(1)(0-0:96.7.19)(000104180320W)"
             "(0000237126*s)", "96.13.0": "0-0:96.13.0(414243)", "96.13.1": "0-0:96.13.1(303132)"}
    filled: dict[str, set[str]] = {}
    for code, line in lines.items():
        filled[code] = set(LineParser({"objects": []}).parse(line + "\r\n").values)
    for name, facts in FIELDS.items():
        if facts.line:
            (code,) = facts.obis
            assert name in filled[code] or code == "17.0.0", name  # one of 17.0.0's units per line
    assert filled["17.0.0"] == {"current_threshold_a"}


def _parsed(values: dict, extras: list[str]) -> Parsed:
    parsed = Parsed()
    parsed.values, parsed.extras = dict(values), list(extras)
    return parsed


@pytest.mark.parametrize("name", sorted(n for n in NON_NEGATIVE if FIELDS[n].kind == table.NUMBER
                                        and n != "gas_m3"))
def test_normalization_never_keeps_a_negative_where_the_table_forbids_one(name):
    dsmr5 = get_profile("dsmr5")
    reading = normalize(_parsed({name: -1.0, "tariff": 1}, [name]), "m", dsmr5, NOW)
    if name in SIGNED_IMPORTS:  # one signed register: its negative is the export
        assert getattr(reading, name) == 0.0 and getattr(reading, SIGNED_IMPORTS[name]) == 1.0
        return
    assert getattr(reading, name) is None  # outside the family's specification: left out
    if not FIELDS[name].line:
        parsed = _parsed({name: -1.0, "tariff": 1}, [])
        parsed.suspect = [name]
        with pytest.raises(TelegramError, match=f"{name} is negative"):
            normalize(parsed, "m", dsmr5, NOW)


def test_normalization_keeps_signed_values_where_the_table_allows_them():
    signed = [n for n, f in FIELDS.items() if f.kind == table.NUMBER and (f.low is None or f.low < 0)]
    assert "current_l1_a" in signed and "power_factor" in signed
    reading = normalize(_parsed({n: -1.0 for n in signed}, signed), "m", get_profile("dsmr5"), NOW)
    assert all(getattr(reading, n) == -1.0 for n in signed)


def test_totals_and_signed_registers_follow_the_table():
    parsed = _parsed({"energy_import_t1_wh": 1.0, "energy_import_t3_wh": 2.0, "power_import_l2_w": -5.0}, [])
    reading = normalize(parsed, "m", get_profile("dsmr5"), NOW)
    assert reading.energy_import_wh == 3.0 and FIELDS["energy_import_wh"].sum_of[2] == "energy_import_t3_wh"
    assert (reading.power_import_l2_w, reading.power_export_l2_w) == (0.0, 5.0)


@pytest.mark.parametrize("name", POSTED_NUMBERS)
def test_ingest_enforces_exactly_the_tables_bounds(name):
    facts = FIELDS[name]
    whole = facts.kind == table.COUNT
    for value in (facts.low, facts.high):
        got = reading_from_json({"timestamp": 1.7e9, name: int(value) if whole else value}, "m", NOW)
        assert getattr(got, name) == value
    for value in (facts.low - 1, facts.high + 1):
        with pytest.raises(IngestError, match=name):
            reading_from_json({"timestamp": 1.7e9, name: int(value) if whole else value}, "m", NOW)


def test_ingest_takes_only_the_posted_fields():
    for name, facts in FIELDS.items():
        if not facts.posted:
            with pytest.raises(IngestError):
                reading_from_json({"timestamp": 1.7e9, name: 1.0}, "m", NOW)
    assert set(INPUT_FIELDS) == {n for n, f in FIELDS.items() if f.posted}
    assert reading_from_json({"timestamp": 1.7e9, "channels": {"ev": FIELDS["channels"].high}}, "m", NOW).channels
    with pytest.raises(IngestError, match="channels.ev"):
        reading_from_json({"timestamp": 1.7e9, "channels": {"ev": FIELDS["channels"].high + 1}}, "m", NOW)


@pytest.mark.parametrize("name, profile", [("fluvius_v171.txt", "fluvius"), ("v5_two_mbus.txt", "dsmr5"),
                                           ("v5.txt", "dsmr5")])
def test_the_lists_real_telegrams_give_are_their_entries_structs(name, profile):
    """A list field's entries are its row's Struct (the OpenAPI schema of them is generated from it), strictly: an
    entry with a key the Struct does not name, without one, or of another type fails."""
    reading = TelegramDecoder("m", get_profile(profile)).decode(telegram_bytes(name).decode(), NOW).to_json()
    lists = [n for n, facts in FIELDS.items() if facts.kind == table.LIST]
    assert all(FIELDS[n].items for n in lists) and any(reading[n] for n in lists), name
    for field in lists:
        if reading[field] is not None:
            msgspec.convert(reading[field], list[FIELDS[field].items])
            assert SCHEMAS["Reading"]["properties"][field]["items"]["$ref"].endswith("/" + FIELDS[field].items.__name__)
    with pytest.raises(msgspec.ValidationError, match="unknown field `extra`"):
        msgspec.convert([{"end": None, "duration_s": 5, "extra": 1}], list[table.PowerFailure])


def test_the_served_reading_schemas_say_what_the_table_says():
    output, posted = SCHEMAS["Reading"], SCHEMAS["ReadingInput"]
    assert list(output["properties"]) == list(FIELD_NAMES) and output["required"] == list(FIELD_NAMES)
    assert list(posted["properties"]) == list(INPUT_FIELDS)
    assert posted["required"] == [n for n in INPUT_FIELDS if FIELDS[n].required] == ["timestamp"]
    types = {table.NUMBER: "number", table.COUNT: "integer", table.TIME: "string", table.TEXT: "string",
             table.ID: "string", table.LIST: "array", table.MAP: "object"}
    for name, facts in FIELDS.items():
        schema = output["properties"][name]
        kind = schema["type"] if isinstance(schema["type"], str) else schema["type"][0]
        assert kind == types[facts.kind] and schema["description"] == facts.description, name
        assert ("null" in schema["type"]) == (not facts.required), name
    for name in POSTED_NUMBERS:
        schema, facts = posted["properties"][name], FIELDS[name]
        assert (schema["minimum"], schema["maximum"]) == (facts.low, facts.high), name
    assert posted["properties"]["channels"]["additionalProperties"]["maximum"] == FIELDS["channels"].high


def test_rollups_average_what_the_table_says_and_keep_the_last_of_the_rest():
    assert MEAN_FIELDS == tuple(n for n, f in FIELDS.items() if f.rollup == table.MEAN)
    assert set(LAST_FIELDS) == {n for n, f in FIELDS.items() if f.rollup == table.LAST}


def test_the_household_parameter_catalogue_is_the_tables():
    household = [p for p in catalogue(()) if p.level == HOUSEHOLD]
    from_table = {f.parameter.name: (name, f) for name, f in FIELDS.items() if f.parameter}
    ranked = sorted(from_table, key=lambda n: from_table[n][1].parameter.rank)
    assert [p.name for p in household if p.name in from_table] == ranked
    reading = Reading("m", NOW, NOW)
    for parameter_name, (name, facts) in from_table.items():
        param = lookup(parameter_name)
        assert (param.unit, param.description, param.level) == (facts.unit, facts.parameter.description, HOUSEHOLD)
        value = 3 if facts.kind == table.COUNT else 1234.5
        assert param.extract(replace(reading, **{name: value})) == value and param.extract(reading) is None


def test_new_household_parameters_reach_only_the_levels_whose_patterns_name_them():
    """The supplier's `household_energy_*` takes the tariff registers (billing); nothing new matches its
    `household_power_*` or `household_gas_*` (power factor, failures and limits are named outside them)."""
    new = [p.name for p in catalogue(()) if p.level == HOUSEHOLD][13:]
    supplier = {n for n in new if permitted(n, DEFAULT_LEVELS["supplier"])}
    assert supplier == {f"household_energy_{d}_t{n}" for d in ("import", "export") for n in (1, 2, 3, 4)}
    assert not any(permitted(n, DEFAULT_LEVELS["service"]) for n in new)
    assert all(permitted(n, DEFAULT_LEVELS["dso"]) for n in new)


def test_derived_household_parameters():
    reading = Reading("m", NOW, NOW, power_failure_log=[{"end": None, "duration_s": 240}, {"end": None,
                                                                                         "duration_s": 9}],
                      mbus=[{"channel": 1, "type": "heat", "device_type": 4, "value": 2.0, "unit": "MWh",
                             "timestamp": None, "valve": None},
                            {"channel": 2, "type": "water", "device_type": 7, "value": 872.234, "unit": "m3",
                             "timestamp": None, "valve": None}])
    assert lookup("household_last_long_outage").extract(reading) == 240
    assert lookup("household_water_consumption").extract(reading) == 872.234
    assert lookup("household_heat_consumption").extract(reading) == pytest.approx(7.2)  # GJ
    assert lookup("household_water_consumption").extract(Reading("m", NOW, NOW)) is None


def test_a_real_telegrams_new_values_reach_their_parameters():
    reading = TelegramDecoder("m", get_profile("fluvius")).decode(telegram_bytes("fluvius_v171.txt").decode(), NOW)
    assert lookup("household_demand_peak_month").extract(reading) == 2589.0
    assert lookup("household_water_consumption").extract(reading) == 872.234
    assert lookup("household_breaker_state").extract(reading) == 1
