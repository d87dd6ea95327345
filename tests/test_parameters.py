"""agent/parameters.py on data: the catalogue's order and channel parameters, lookups against the operator's
tag vocabulary, neighbourhood values read off a released aggregate, and who may ask. (The household parameters'
rows against the table of Reading fields: tests/test_reading_fields.py.)"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from agent.config import DEFAULT_LEVELS
from agent.parameters import (HOUSEHOLD, HOUSEHOLD_PARAMETERS, NEIGHBORHOOD, STATIC_PARAMETERS, TIME_OF_DAY,
                              catalogue, channel_parameter, lookup, permitted)
from drivers.reading import Reading

NOW = datetime(2026, 9, 21, 12, 0, tzinfo=timezone.utc)


def test_the_catalogue_is_households_then_neighbourhood_then_each_tags_two_channels():
    names = [p.name for p in catalogue(("ev", "fridge"))]
    static = list(STATIC_PARAMETERS)
    assert names[:len(static)] == static
    assert names[len(static):] == ["household_channel_ev", "neighborhood_channel_ev",
                                   "household_channel_fridge", "neighborhood_channel_fridge"]
    levels = [STATIC_PARAMETERS[n].level for n in static]
    assert levels == sorted(levels, key=[HOUSEHOLD, NEIGHBORHOOD].index)  # households first
    assert [p.name for p in catalogue(())] == static  # no tags: no channel parameters


def test_the_catalogue_depends_on_the_vocabulary_only():
    assert [p.public() for p in catalogue(("ev",))] == [p.public() for p in catalogue(("ev",))]
    assert set(catalogue(("ev",))[-1].public()) == {"name", "unit", "level", "description"}


def test_a_channel_parameter_reads_its_tag():
    household = channel_parameter("household_channel_ev")
    reading = Reading(meter_id="m", timestamp=NOW, received_at=NOW, channels={"ev": 3200.0, "fridge": 90.0})
    assert (household.level, household.unit, household.extract(reading)) == (HOUSEHOLD, "W", 3200.0)
    assert household.extract(replace(reading, channels=None)) is None
    neighbourhood = channel_parameter("neighborhood_channel_ev")
    assert neighbourhood.level == NEIGHBORHOOD and neighbourhood.extract({"consumption_w": 12000.0}) == 12000.0
    assert channel_parameter("household_power_consumption") is None


def test_lookup_of_a_channel_only_within_the_vocabulary():
    assert lookup("household_channel_ev", ("ev",)).name == "household_channel_ev"
    assert lookup("household_channel_ev", ("fridge",)) is None
    assert lookup("neighborhood_channel_sauna", ("ev",)) is None
    assert lookup("household_channel_sauna") is not None  # without a vocabulary: any tag
    assert lookup("neighborhood_power_consumption", ()) is STATIC_PARAMETERS["neighborhood_power_consumption"]
    assert lookup("no_such_parameter") is None


def test_neighbourhood_parameters_read_the_released_aggregate():
    aggregate = {"consumption_w": 5000.0, "production_w": 1200.0, "net_w": 3800.0, "households": 7,
                 "grid": {"voltage_l1": {"min_v": 228.0, "max_v": 234.0, "mean_v": 231.2}}}
    value = {name: STATIC_PARAMETERS[name].extract(aggregate) for name in (
        "neighborhood_power_consumption", "neighborhood_power_production", "neighborhood_net_power",
        "neighborhood_household_count", "neighborhood_voltage_l1_min", "neighborhood_voltage_l1_mean")}
    assert value == {"neighborhood_power_consumption": 5000.0, "neighborhood_power_production": 1200.0,
                     "neighborhood_net_power": 3800.0, "neighborhood_household_count": 7,
                     "neighborhood_voltage_l1_min": 228.0, "neighborhood_voltage_l1_mean": 231.2}
    # a grid quantity not released for this aggregate is None, not an error
    assert STATIC_PARAMETERS["neighborhood_voltage_l2_max"].extract(aggregate) is None
    assert STATIC_PARAMETERS["neighborhood_long_power_failures"].extract({"grid": None}) is None


def test_the_net_power_of_a_household():
    net = STATIC_PARAMETERS["household_net_power"].extract
    at = dict(meter_id="m", timestamp=NOW, received_at=NOW)
    assert net(Reading(**at, power_import_w=500.0, power_export_w=2000.0)) == -1500.0
    assert net(Reading(**at, power_import_w=500.0)) == 500.0
    assert net(Reading(**at)) is None


def test_permitted_by_the_levels_patterns_then_the_organizations_list():
    service, supplier, dso = DEFAULT_LEVELS["service"], DEFAULT_LEVELS["supplier"], DEFAULT_LEVELS["dso"]
    assert permitted("neighborhood_power_consumption", service)
    assert not permitted("household_power_consumption", service)
    assert permitted("household_channel_ev", supplier) and not permitted("household_voltage_l1", supplier)
    assert all(permitted(p.name, dso) for p in HOUSEHOLD_PARAMETERS)  # "*"
    assert permitted(TIME_OF_DAY, replace(service, parameters=()))  # a fact of the window, for every level
    # the operator's per-organization list narrows, never widens
    assert not permitted("neighborhood_power_consumption", service, narrowed_to=["neighborhood_net_*"])
    assert permitted("neighborhood_net_power", service, narrowed_to=["neighborhood_net_*"])
    assert not permitted("household_power_consumption", service, narrowed_to=["household_*"])
