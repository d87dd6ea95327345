"""Who is who (agent/registry.py) on a real registry.seg in a temporary directory, no agent: organizations and
households with their names and secrets (stored only as hashes), consent as a history that answers for any past
moment and for a window's cohort, deletion as a tombstone, and all of it as it was after a reopen.
tests/test_related_households.py and tests/test_consent_durability.py go through the API and the disk's faults."""

from __future__ import annotations

import pytest

from agent.api.errors import ApiError
from agent.registry import (
    MAX_RELATED,
    ConsentLine,
    Household,
    Registry,
    RegistryCode,
    RegistryError,
    is_service,
    token_hash,
)
from tests.helpers.clock import StepClock

TRIGGER = "trigger_events:trg_0123456789ab"


@pytest.fixture
def registry(tmp_path):
    opened = [Registry(tmp_path / "registry.seg", clock=StepClock(1000.0))]

    def reopen() -> Registry:
        opened[-1].close()
        opened.append(Registry(tmp_path / "registry.seg", clock=opened[-1].clock))
        opened[-1].reopen = reopen  # the test's own handle on the file, not the registry's
        return opened[-1]
    opened[0].reopen = reopen
    yield opened[0]
    opened[-1].close()


def refused(call, *args, **kw) -> RegistryCode:
    with pytest.raises(RegistryError) as err:
        call(*args, **kw)
    return err.value.code


def test_a_registry_written_before_related_households_existed_loads(tmp_path):
    """Households stored without the field (every device before this change) are related to nobody."""
    registry = Registry(tmp_path / "registry.seg")
    household, _, _ = registry.create_household(None, "http")
    registry.db.table("households").update(lambda doc: doc.pop("related_organizations"))
    registry.close()
    again = Registry(tmp_path / "registry.seg")
    assert again.household(household.id).related_organizations == []
    assert "related_organizations" not in again.db.table("households").all()[0]
    again.close()


@pytest.mark.parametrize("service, ok", [
    ("aggregates", True), ("triggers", True), ("anonymized_data", True), (TRIGGER, True),
    ("trigger_events:trg_0123456789a", False), ("trigger_events:trg_0123456789abc", False),
    ("trigger_events:trg_0123456789AB", False), ("trigger_events:", False), ("trigger_events:aggregates", False),
    ("trigger_events:trg_0123456789ab\n", False), ("trigger_events", False), ("other", False),
])
def test_which_services_exist(service, ok):
    assert is_service(service) is ok


def test_registry_rejects_malformed_services_directly(tmp_path):
    registry = Registry(tmp_path / "registry.seg")
    org, _ = registry.create_organization("Org", "dso")
    household, _, _ = registry.create_household(None, "http")
    with pytest.raises(RegistryError) as err:
        registry.set_consent(household.id, org.id, "trigger_events:trg_zzzzzzzzzzzz", True)
    assert ApiError.of(err.value).status == 404
    registry.set_consent(household.id, org.id, TRIGGER, True)
    registry.close()
    again = Registry(tmp_path / "registry.seg")
    assert again.consent_state(household.id, org.id, TRIGGER) is True  # durable
    again.close()


# --- organizations and households, their names and secrets -----------------------------------------
def test_an_organizations_key_is_shown_once_and_kept_as_its_hash(registry):
    org, key = registry.create_organization("Grid Co", "dso")
    assert org.id.startswith("org_") and key.startswith("edge_org_") and org.key_hash == token_hash(key)
    assert registry.organization_by_key(key) is org and registry.organization_by_key(key + "x") is None
    new_key = registry.rotate_organization_key(org.id)
    assert registry.organization_by_key(key) is None and registry.organization_by_key(new_key) is org
    again = registry.reopen()
    assert again.organization_by_key(new_key).id == org.id and again.organization_by_key(key) is None
    assert key not in (again.path.read_bytes().decode("utf-8", "replace"))  # only the hash is on disk


@pytest.mark.parametrize("name", ["", " ", "\t", "x" * 101, "line\nbreak", "Grid Co\n", "\x00", 5, None])
def test_a_name_is_1_to_100_printable_characters(registry, name):
    assert refused(registry.create_organization, name, "dso") is RegistryCode.INVALID
    org, _ = registry.create_organization("Fine", "dso")
    assert refused(registry.update_organization, org.id, name=name) is RegistryCode.INVALID
    assert registry.organization(org.id).name == "Fine"


def test_an_organizations_changes_and_deletion_last(registry):
    org, key = registry.create_organization("Grid Co", "dso")
    registry.update_organization(org.id, name="Grid Co 2", level="supplier", parameters=["household_tariff"])
    again = registry.reopen()
    assert again.organization(org.id).public() == {"id": org.id, "name": "Grid Co 2", "level": "supplier",
                                                   "created_at": 1000.0, "parameters": ["household_tariff"]}
    again.delete_organization(org.id)
    assert refused(again.organization, org.id) is RegistryCode.NOT_FOUND and again.organization_by_key(key) is None
    assert org.id not in again.reopen().organizations
    assert ApiError.of(RegistryError(RegistryCode.NOT_FOUND, "x")).status == 404


def test_a_households_tokens_and_meter(registry):
    wired, token, datalogger = registry.create_household("m1", "p1")
    assert datalogger is None and wired.datalogger_hash is None and wired.meter_id == "m1"
    posting, token2, datalogger2 = registry.create_household(None, "http")
    assert posting.meter_id == posting.id and datalogger2.startswith("edge_dl_")
    assert registry.household_by_token(token) is wired and registry.household_by_token(datalogger2) is None
    assert registry.household_by_datalogger_token(datalogger2) is posting
    assert registry.household_by_datalogger_token(token2) is None  # a household's token posts no readings
    assert registry.household_by_meter("m1") is wired
    assert refused(registry.create_household, "m1", "p1") is RegistryCode.CONFLICT
    new_token = registry.rotate_household_token(wired.id)
    assert registry.household_by_token(token) is None and registry.household_by_token(new_token) is wired
    made = registry.rotate_datalogger_token(wired.id)  # made by the operator for one created without
    again = registry.reopen()
    assert again.household_by_datalogger_token(made).id == wired.id
    assert again.household_by_token(new_token).id == wired.id and again.household_by_meter("m1").id == wired.id


def test_related_organizations_are_existing_ones_each_once_sorted(registry):
    a, _ = registry.create_organization("A", "dso")
    b, _ = registry.create_organization("B", "dso")
    backwards = sorted([a.id, b.id], reverse=True)
    household, _, _ = registry.create_household(None, "http", backwards)
    assert household.related_organizations == backwards[::-1]
    for bad in ([a.id, a.id], ["org_nobody"], a.id, [5], [a.id] * (MAX_RELATED + 1)):
        assert refused(registry.set_related, household.id, bad) is RegistryCode.INVALID
    registry.set_related(household.id, [a.id])
    again = registry.reopen()
    assert again.related(a.id) == {household.id} and again.related(b.id) == set()


def test_a_household_owns_its_meters_data_from_its_creation_on():
    household = Household("hh_1", "m1", "p1", "h", created_at=1000.5)
    assert household.owns(1000.5) and not household.owns(1000.4)
    assert household.data_since(0) == 1000.5 and household.data_since(2000) == 2000
    assert household.data_since(0, 60) == 1020  # the first 1-minute window wholly after it
    assert household.data_since(0, 1) == 1001


# --- consent as a history --------------------------------------------------------------------------
def test_consent_answers_for_now_and_for_any_past_moment(registry):
    org, _ = registry.create_organization("Grid Co", "dso")
    household, _, _ = registry.create_household(None, "http")
    clock = registry.clock
    assert not registry.consent_state(household.id, org.id, "aggregates")
    registry.set_consent(household.id, org.id, "aggregates", True)  # at 1000
    clock.step(100)
    registry.set_consent(household.id, org.id, "aggregates", False)  # at 1100
    clock.step(100)
    registry.set_consent(household.id, org.id, "aggregates", True)  # at 1200
    states = [registry.consent_state(household.id, org.id, "aggregates", at=t) for t in (999, 1000, 1099, 1100, 1200)]
    assert states == [False, True, True, False, True]
    assert [c["action"] for c in registry.history_of(household.id)] == ["grant", "revoke", "grant"]
    assert [c.at for c in registry.changes_since(1100)] == [1100, 1200]
    again = registry.reopen()
    assert [again.consent_state(household.id, org.id, "aggregates", at=t) for t in (999, 1000, 1099, 1100, 1200)] \
        == states


def test_two_changes_are_never_at_the_same_instant(registry):
    org, _ = registry.create_organization("Grid Co", "dso")
    household, _, _ = registry.create_household(None, "http")
    first = registry.set_consent(household.id, org.id, "triggers", True)
    second = registry.set_consent(household.id, org.id, "triggers", False)  # the clock did not move
    assert second.at > first.at and not registry.consent_state(household.id, org.id, "triggers")


def test_a_windows_cohort_is_who_consented_throughout(registry):
    org, _ = registry.create_organization("Grid Co", "dso")
    stays, leaves, joins = (registry.create_household(None, "http")[0] for _ in range(3))
    clock = registry.clock
    registry.set_consent(stays.id, org.id, "aggregates", True)
    registry.set_consent(leaves.id, org.id, "aggregates", True)
    clock.step(30)
    registry.set_consent(leaves.id, org.id, "aggregates", False)  # at 1030: within [1000, 1060)
    registry.set_consent(joins.id, org.id, "aggregates", True)
    assert registry.cohort(org.id, "aggregates", 1000, 1060) == {stays.id}
    assert registry.cohort(org.id, "aggregates", 1060, 1120) == {stays.id, joins.id}
    assert registry.cohort(org.id, "anonymized_data", 1000, 1060) == set()
    clock.step(100)
    registry.delete_household(stays.id)  # a tombstone: the closed window's cohort does not change
    assert registry.cohort(org.id, "aggregates", 1000, 1060) == {stays.id}
    assert registry.cohort(org.id, "aggregates", 1200, 1260) == {joins.id}
    assert refused(registry.household, stays.id) is RegistryCode.NOT_FOUND and registry.meter_of(stays.id)


def test_a_consent_line_held_throughout_a_window():
    line = ConsentLine([100.0, 200.0, 300.0], [True, False, True])
    assert line.held_throughout(100, 200) and not line.held_throughout(100, 200.5)
    assert not line.held_throughout(250, 260) and line.held_throughout(300, 1e9)
    assert not ConsentLine().held_throughout(0, 1) and not ConsentLine().state_at(5)


def test_deleting_revokes_every_consent_in_the_history(registry):
    org, _ = registry.create_organization("Grid Co", "dso")
    household, token, _ = registry.create_household(None, "http")
    ended = []
    registry.token_ended.append(ended.append)
    for service in ("aggregates", TRIGGER):
        registry.set_consent(household.id, org.id, service, True)
    registry.clock.step(10)
    registry.delete_household(household.id)
    assert ended == [household.id] and registry.household_by_token(token) is None
    assert sorted((c["service"], c["granted"]) for c in registry.all_consents(household.id)) == [
        ("aggregates", False), (TRIGGER, False)]
    assert registry.consent_state(household.id, org.id, "aggregates", at=1005)  # the past stays as it was


def test_a_consent_is_refused_for_nobody_or_nothing(registry):
    org, _ = registry.create_organization("Grid Co", "dso")
    household, _, _ = registry.create_household(None, "http")
    assert refused(registry.set_consent, "hh_nobody", org.id, "aggregates", True) is RegistryCode.NOT_FOUND
    assert refused(registry.set_consent, household.id, "org_nobody", "aggregates", True) is RegistryCode.NOT_FOUND
    assert refused(registry.set_consent, household.id, org.id, "aggregates", False) is RegistryCode.NOT_FOUND
    assert refused(registry.set_consent, household.id, org.id, "everything", True) is RegistryCode.NOT_FOUND
    assert registry.history_of(household.id) == []
