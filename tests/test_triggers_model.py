"""Triggers without I/O (agent/triggers/model.py) on data: an upload's parameters and action checked with their fixed
reasons, the trial's sample rows, the debounce (per interval, across a delete, per action type, per UTC day), the
per-organization pseudonym, and what a trigger record says. tests/test_triggers.py runs them in an agent."""

from __future__ import annotations

import random

import pytest

from agent.parameters import HOUSEHOLD_PARAMETERS, lookup
from agent.triggers.model import (
    EVERYONE,
    MAX_PARAMETERS,
    PARAMETER_NOT_PERMITTED,
    UNKNOWN_PARAMETER,
    Debouncer,
    Refused,
    Trigger,
    TriggerCode,
    TriggerStats,
    check_action,
    check_parameters,
    pseudonym,
    sample_rows,
)

DAY = 1_790_035_200  # a UTC midnight


def everything(param):
    return True, ""


def trigger(trigger_id="trg_1", org="org_a", parameters=("household_net_power",), interval_s=600.0,
            kind="webhook") -> Trigger:
    return Trigger(trigger_id, org, list(parameters), "def condition(x):\n    return x > 0\n", interval_s, "1m",
                   {"type": kind, "endpoint": "https://org.example/hook"}, "whsec_x", DAY)


def refusal(names, permitted=everything) -> Refused:
    with pytest.raises(Refused) as refused:
        check_parameters(names, permitted)
    return refused.value


# --- an upload's parameters and action -------------------------------------------------------------
def test_the_parameters_named_in_order():
    names = ["neighborhood_net_power", "household_channel_heat_pump", "household_tariff"]
    assert [p.name for p in check_parameters(names, everything)] == names
    assert len(check_parameters(MANY[:MAX_PARAMETERS], everything)) == MAX_PARAMETERS


MANY = [p.name for p in HOUSEHOLD_PARAMETERS[:MAX_PARAMETERS + 1]]


@pytest.mark.parametrize("names", ["household_net_power", [], MANY,
                                   ["household_net_power", 5], ["household_tariff", "household_tariff"], None])
def test_a_parameter_list_of_the_wrong_shape_is_invalid(names):
    assert refusal(names).code is TriggerCode.INVALID


@pytest.mark.parametrize("name", ["household_nothing", "Household_net_power", "household net power", "x" * 81,
                                  "household_channel_Heat Pump", "household_channel_", "neighborhood_channel_a.b",
                                  "household_channel_heat_pump\n", "neighborhood_channel_fridge\n"])
def test_an_unknown_parameter_is_named_with_its_fixed_reason(name):
    refused = refusal(["household_tariff", name])
    assert (refused.code, refused.reason, refused.extra["parameter"]) == (
        TriggerCode.UNKNOWN_PARAMETER, UNKNOWN_PARAMETER, name[:80])
    assert refused.extra["reason"] == UNKNOWN_PARAMETER and "GET /parameters" in refused.detail


def test_a_parameter_the_level_does_not_permit_says_why():
    def no_household(param):
        return param.level != "household", " (the level's parameters: neighborhood_*)"

    refused = refusal(["neighborhood_net_power", "household_tariff"], no_household)
    assert (refused.code, refused.reason, refused.extra["parameter"]) == (
        TriggerCode.PARAMETER_NOT_PERMITTED, PARAMETER_NOT_PERMITTED, "household_tariff")
    assert refused.detail == "parameter not permitted: 'household_tariff' (the level's parameters: neighborhood_*)"
    # every name is looked up before any is judged: an unknown one is said first
    assert refusal(["household_tariff", "household_nothing"], no_household).code is TriggerCode.UNKNOWN_PARAMETER


def test_an_action_is_normalized_and_a_webhooks_endpoint_checked():
    checked = []

    def endpoint(url):
        checked.append(url)
        return url.rstrip("/")

    assert check_action({"type": "webhook", "endpoint": "https://org.example/hook/", "extra": 1}, endpoint) == {
        "type": "webhook", "endpoint": "https://org.example/hook"}
    assert checked == ["https://org.example/hook/"]
    note = {"type": "notification", "title": "Surplus", "content": "Run the dishwasher"}
    assert check_action(note, endpoint) == note and check_action(note, endpoint) is not note
    assert check_action({"type": "appliance", "appliance": "boiler", "command": "on"}, endpoint)["appliance"] == "boiler"


@pytest.mark.parametrize("action", [
    {"type": "notification", "title": "t", "content": " \n\t"},
    {"type": "appliance", "appliance": "   ", "command": "on"},
    {"type": "appliance", "appliance": "boiler\n", "command": "on"},
    {"type": "appliance", "appliance": "b" * 65, "command": "on"},
])
def test_an_empty_or_unprintable_action_is_invalid(action):
    with pytest.raises(Refused) as refused:
        check_action(action, lambda url: url)
    assert refused.value.code is TriggerCode.INVALID


def test_a_refused_endpoint_is_the_checks_own_refusal():
    def refuse(url):
        raise Refused(TriggerCode.ENDPOINT_REFUSED, "not https")

    with pytest.raises(Refused) as refused:
        check_action({"type": "webhook", "endpoint": "http://x"}, refuse)
    assert refused.value.code is TriggerCode.ENDPOINT_REFUSED


# --- the trial's sample rows -------------------------------------------------------------------------
def test_sample_rows_are_plausible_mostly_and_never_zero():
    params = [lookup(n) for n in ("household_net_power", "household_tariff", "neighborhood_household_count",
                                  "household_voltage_l1", "neighborhood_power_consumption")]
    rng = random.Random(1)
    trials = [sample_rows(params, rng) for _ in range(200)]
    assert {len(rows) for rows in trials} == set(range(6, 11))
    rows = [row for rows in trials for row in rows]
    assert all(len(row) == 5 and all(v != 0 for v in row) for row in rows)
    net, tariff, count, volts, _ = zip(*rows)
    assert set(tariff) == {1, 2}
    assert all(isinstance(c, int) and c >= 1 for c in count)
    assert min(net) < -3000 and max(net) > 9000  # outside the plausible range, both ways: the quantity can be < 0
    assert min(volts) > 0  # a voltage is never negative: tiny instead
    outside = sum(not 215.0 <= v <= 245.0 for v in volts) / len(volts)
    assert 0.15 < outside < 0.35  # about one in four


def test_sample_rows_are_drawn_afresh_each_time():
    params = [lookup("household_net_power")]
    assert sample_rows(params) != sample_rows(params)  # the OS's CSPRNG: a condition cannot recognise the trial
    assert sample_rows(params, random.Random(5)) == sample_rows(params, random.Random(5))


# --- the debounce ------------------------------------------------------------------------------------
def test_one_action_per_household_per_interval():
    d, t = Debouncer(), trigger(interval_s=600)
    assert d.allowed(t, "hh_1", DAY)
    d.record(t.id, "hh_1", DAY)
    assert not d.allowed(t, "hh_1", DAY + 599) and d.allowed(t, "hh_1", DAY + 600)
    assert d.allowed(t, "hh_2", DAY + 1)  # another household
    assert not d.allowed(t, "hh_1", DAY - 3600)  # a clock that went back waits too
    d.record(t.id, EVERYONE, DAY + 700)  # acted for households it could not name
    assert not d.allowed(t, "hh_2", DAY + 701) and not d.allowed(t, "hh_9", DAY + 1299)
    assert d.allowed(t, "hh_9", DAY + 1300)


def test_a_deleted_triggers_wait_holds_its_successor_of_the_same_action_type_only():
    d, first = Debouncer(), trigger(interval_s=3600)
    d.record(first.id, "hh_1", DAY)
    d.record(first.id, "hh_2", DAY - 7200)  # its wait is over already
    assert d.retire(first, DAY + 60) == [("org_a", "hh_1", DAY + 3600, "webhook")]
    assert d.last == {}
    again = trigger("trg_2", interval_s=60)
    assert not d.allowed(again, "hh_1", DAY + 3599) and d.allowed(again, "hh_1", DAY + 3600)
    assert d.allowed(again, "hh_2", DAY + 61)
    assert d.allowed(trigger("trg_3", kind="notification"), "hh_1", DAY + 61)  # R6-4: another type is not held
    assert d.allowed(trigger("trg_4", org="org_b"), "hh_1", DAY + 61)  # nor another organization
    d.cool("org_a", "hh_3", DAY + 500)  # a wait written before kinds were: every type
    assert not d.allowed(trigger("trg_3", kind="notification"), "hh_3", DAY + 499)
    d.cool("org_a", "hh_1", DAY + 100, "webhook")  # a shorter wait does not shorten the longer
    assert not d.allowed(again, "hh_1", DAY + 3000)


def test_events_per_household_and_organization_per_utc_day():
    d = Debouncer()
    assert d.event_allowed("org_a", "hh_1", DAY, 2)
    d.spend_event("org_a", "hh_1", DAY + 10)
    d.spend_event("org_a", "hh_1", DAY + 20)
    assert not d.event_allowed("org_a", "hh_1", DAY + 86399, 2) and d.event_allowed("org_a", "hh_1", DAY, 3)
    assert d.event_allowed("org_b", "hh_1", DAY, 2) and d.event_allowed("org_a", "hh_2", DAY, 2)
    assert d.event_allowed("org_a", "hh_1", DAY + 86400, 2)  # a new UTC day
    d.spend_event("org_a", "hh_1", DAY + 86400, 2)
    d.spend_event("org_a", "hh_1", DAY + 5)  # a clock that went back: the later day's count stands
    assert d.events[("org_a", "hh_1")] == (DAY // 86400 + 1, 2)
    d.spend_event("org_a", EVERYONE, DAY + 86400, 1)  # spent for households it could not name
    assert not d.event_allowed("org_a", "hh_7", DAY + 86401, 1) and d.event_allowed("org_a", "hh_7", DAY + 86401, 2)


def test_a_pseudonym_is_stable_per_device_organization_and_household():
    key = b"k" * 32
    one = pseudonym(key, "org_a", "hh_1")
    assert one == pseudonym(key, "org_a", "hh_1") and one.startswith("p_") and len(one) == 34
    assert int(one[2:], 16) >= 0
    assert len({one, pseudonym(key, "org_b", "hh_1"), pseudonym(key, "org_a", "hh_2"),
                pseudonym(b"j" * 32, "org_a", "hh_1"), pseudonym(key, "org_ah", "h_1")}) == 5


# --- a trigger and its statistics --------------------------------------------------------------------
def test_a_trigger_is_a_households_if_any_parameter_is_and_discloses_if_observable():
    assert trigger(parameters=("neighborhood_net_power",)).kind == "neighborhood"
    assert trigger(parameters=("neighborhood_net_power", "household_tariff")).kind == "household"
    assert trigger(kind="webhook").discloses and trigger(kind="appliance").discloses
    assert not trigger(kind="notification").discloses
    assert not trigger(parameters=("neighborhood_net_power",), kind="webhook").discloses
    with pytest.raises(LookupError, match="no longer in the catalogue"):
        trigger(parameters=("household_gone",)).kind


def test_a_trigger_record_has_its_fields_and_its_public_action_no_secret():
    t = trigger()
    assert list(t.record()) == list(Trigger.RECORD) and t.record()["secret"] == "whsec_x"
    assert Trigger(**t.record()) == t
    action = t.public_action()
    action["endpoint"] = "changed"
    assert t.action["endpoint"] == "https://org.example/hook" and "whsec_x" not in str(t.public_action())


def test_statistics_sum_the_released_counts_only():
    stats = TriggerStats()
    stats.add({"evaluations": 12, "fired": 3, "delivered": 2.5, "failed": True, "errors": "1", "other": 9})
    stats.add({"evaluations": 8})
    assert (stats.evaluations, stats.fired, stats.delivered, stats.failed, stats.errors) == (20, 3, 2.5, 0, 0)
    assert stats.windows_released == 2 and stats.record()["windows_withheld"] == 0
