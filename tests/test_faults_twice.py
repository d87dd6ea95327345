"""Records written twice (``copies=2``) beyond the registry, the subscriptions and the outboxes: the release log,
the audit log and the triggers' files. A 1-byte flip in one copy is recovered (counted as `recovered`); a record
lost beyond repair is counted as `lost` and fails closed: the release ledger never under-counts a household's
loss, a trigger whose debounce lines may be lost waits one interval, an organization's events may be over-counted
for the day, never under-counted. Also the streamed reader (`scan_lazily`) against the careful scan."""

from __future__ import annotations

import random
import time
from dataclasses import replace

import pytest

from agent.audit import AuditLog
from agent.store.records import encode_record, scan_lazily, scan_records
from agent.store.segment import integrity
from agent.triggers.model import Trigger
from agent.triggers.store import TriggerStore
from drivers.reading import iso
from tests.helpers.clock import HOUR as T0
from tests.helpers.release import Town
from tests.helpers.store import flip, record_spans


def test_the_streamed_reader_gives_what_the_careful_scan_gives():
    rng = random.Random(3)
    for _ in range(3000):
        copies = rng.choice([1, 2])
        buf = b"".join(encode_record("r", i * 10 + 1, [{"v": rng.random()}] * rng.randint(1, 4)) * copies
                       for i in range(rng.randint(1, 6)))
        data = bytearray(buf)
        mode = rng.choice(["intact", "flip", "flips", "cut"])
        for _ in range({"flip": 1, "flips": rng.randint(2, 3)}.get(mode, 0)):
            data[rng.randrange(len(data))] ^= 0x40
        if mode == "cut":
            data = data[:rng.randrange(len(data))]
        scan = scan_records(bytes(data))
        once = [r for i, r in enumerate(scan.records) if i == 0 or r[:2] != scan.records[i - 1][:2]]
        damage = []
        assert list(scan_lazily(bytes(data), damage)) == once
        facts = sorted((d.offset, d.length, d.problem, d.torn, d.twin_intact) for d in damage)
        assert facts == sorted((d.offset, d.length, d.problem, d.torn, d.twin_intact) for d in scan.damage)


async def noisy_town(tmp_path, windows: int = 1):
    town = Town(tmp_path)
    org = town.org("supplier")
    town.consent(org)
    for _ in range(windows):
        town.post([300.0] * 12)
        await town.step(900)
    await town.releases.flush()
    return town, org


def release_file(town):
    (path,) = (town.tmp_path / "releases").glob("2*.seg")
    return path


async def test_a_damaged_copy_of_a_release_record_changes_no_ledger(tmp_path):
    town, org = await noisy_town(tmp_path)
    rho = town.config.levels["supplier"].dp.rho
    path = release_file(town)
    (offset, length), _ = record_spans(path)
    flip(path, offset + length // 2)
    again = town.restart()
    assert again.ledger_of(town.households[0].id)["spent_rho"] == pytest.approx(rho)
    privacy = (await again.history(org, "15m", [T0], None))[T0]["privacy"]
    assert privacy["kind"] == "noisy" and "ledger_lost_until" not in privacy  # nothing lost: nothing said
    tally = integrity(tmp_path)["releases"]
    assert tally["recovered"] == 1 and tally["lost"] == 0


@pytest.mark.parametrize("where", ["middle", "end"])
async def test_a_release_record_lost_beyond_repair_charges_every_household_its_cap(tmp_path, where):
    """The lost record held a cohort and its charge: which households, and how much, is unknown. The ledger must
    never under-count: every household counts as having spent its cap that day (so no noisy release has anyone
    in its sums while the day is in the horizon), durably, told in the household's ledger and in /health."""
    town, org = await noisy_town(tmp_path, windows=2)
    cap = town.config.privacy.cap_rho
    path = release_file(town)
    spans = record_spans(path)
    assert len(spans) == 4  # two windows' records, each twice
    for offset, length in spans[:2] if where == "middle" else spans[2:]:
        flip(path, offset + length // 2)
    again = town.restart()
    late, _, _ = town.registry.create_household(None, "http")  # unknown whether it was charged: it counts as it too
    for household in [*town.households, late]:
        ledger = again.ledger_of(household.id)
        assert ledger["spent_rho"] == pytest.approx(cap) and ledger["remaining_rho"] == 0
        assert [d["lost_records"] for d in ledger["days"] if d.get("lost_records")] == [True]
    assert integrity(tmp_path)["releases"]["lost"] == 1
    town.post([300.0] * 12)
    await town.step(900)
    released = again.answer(org, "15m", T0 + 1800)  # over the consenting cohort (its count: R7-1), none in it
    assert released["households"] == 12
    # said, device-wide: pure noise until the lost day leaves the horizon (the current day and horizon_days before)
    lost_until = (T0 // 86400 + town.config.privacy.horizon_days + 1) * 86400
    assert released["privacy"]["ledger_lost_until"] == iso(lost_until)
    assert not any(again.members.inclusion(h.id, org, None, T0 + 1800, T0 + 2700).included for h in town.households)
    # Durable: after another start (the damaged tail was cut by the append of the charge), still charged.
    again = town.restart()
    assert again.ledger_of(town.households[0].id)["spent_rho"] == pytest.approx(cap)
    # Once: the next start finds the charge covering the damage and writes no other.
    markers = [d for d in again.log.read(path.stem) if str(d.get("c", "")).startswith("lost-") and d["t"] == "n"]
    assert len(markers) == 1
    # The day leaves the horizon: the households can take part again.
    town.now = lost_until + 900 * 4
    again = town.restart()
    assert again.ledger_of(town.households[0].id)["spent_rho"] == 0
    town.post([300.0] * 12)
    await town.step(900)
    released = again.answer(org, "15m", lost_until + 900 * 4)
    assert released["privacy"]["kind"] == "noisy" and "ledger_lost_until" not in released["privacy"], released


def audit_with_three_batches(directory, moment: float) -> AuditLog:
    audit = AuditLog(directory, clock=lambda: moment)
    for batch in range(3):
        for i in range(4):
            audit.record(f"org_{batch}", "organization", "data.read", durable=False, n=i)
        audit.flush()
    return audit


@pytest.mark.parametrize("copies_damaged", [1, 2])
def test_a_damaged_audit_record_is_recovered_or_counted_as_lost(tmp_path, copies_damaged):
    moment = T0 + 100.0
    audit_with_three_batches(tmp_path / "audit", moment).close()
    (path,) = (tmp_path / "audit").glob("*.seg")
    spans = record_spans(path)
    assert len(spans) == 6  # three batches, each twice
    for offset, length in spans[2:2 + copies_damaged]:  # the middle batch
        flip(path, offset + length // 2)
    audit = AuditLog(tmp_path / "audit", clock=lambda: moment)
    who = [e["who"] for e in audit.entries(limit=100)]
    tally = integrity(tmp_path)["audit"]
    if copies_damaged == 1:
        assert who == ["org_0"] * 4 + ["org_1"] * 4 + ["org_2"] * 4 and tally["recovered"] == 1
    else:
        assert who == ["org_0"] * 4 + ["org_2"] * 4 and tally["lost"] == 1  # /health: 503 (agent/faults.py)
    audit.close()


def test_audit_entries_are_the_newest_limit_whatever_the_range(tmp_path):
    days = [T0 - 2 * 86400, T0 - 86400, T0]
    for day in days:
        audit = AuditLog(tmp_path, clock=lambda day=day: day + 10)
        for i in range(5):
            audit.record("org_1", "organization", "data.read", durable=False, n=i)
        audit.close()
    audit = AuditLog(tmp_path, clock=lambda: T0 + 20)
    newest = audit.entries(since=0, limit=7)
    assert [(e["at"], e["n"]) for e in newest] == [(days[1] + 10, n) for n in range(3, 5)] + \
        [(days[2] + 10, n) for n in range(5)]
    assert len(audit.entries(since=0, limit=100)) == 15
    audit.close()


def a_trigger(trigger_id: str, org_id: str) -> Trigger:
    return Trigger(trigger_id, org_id, ["power_import_w"], "power_import_w > 1", 600.0, "1m",
                   {"type": "webhook", "url": "http://127.0.0.1:9/h"}, None, 0.0)


def firings(tmp_path, now: float):
    store = TriggerStore(tmp_path)
    trigger = a_trigger("trg_1", "org_1")
    store.add(trigger)
    store.record_firings("trg_1", ["hh_a"], now - 700, ("org_1", ["hh_a"]))  # an interval ago: may act again
    store.record_firings("trg_1", ["hh_b"], now - 10, ("org_1", ["hh_b"]))  # the newest
    store.close()
    return trigger


def test_a_damaged_copy_of_a_firing_line_changes_no_debounce(tmp_path):
    now = time.time()
    trigger = firings(tmp_path, now)
    path = tmp_path / "firings.seg"
    offset, length = record_spans(path)[-1]
    flip(path, offset + length // 2)
    store = TriggerStore(tmp_path)
    _, _, debounce = store.load()
    assert debounce.allowed(trigger, "hh_a", now) and not debounce.allowed(trigger, "hh_b", now)
    assert debounce.event_allowed("org_1", "hh_c", now, per_day=1)
    assert integrity(tmp_path)["trigger_firings"] == {"files": 1, "skipped_bytes": length, "cut_bytes": 0,
                                                      "recovered": 1, "lost": 0}
    store.close()


def test_a_firing_line_lost_beyond_repair_fails_closed_durably(tmp_path):
    """The lost line may have been an action for any household, or an event disclosed about any: every trigger
    waits one interval for everyone, and the organization's events of the day are spent, never one more."""
    now = time.time()
    trigger = firings(tmp_path, now)
    path = tmp_path / "firings.seg"
    for offset, length in record_spans(path)[-4:]:  # the newest line: its "last" and its "events" record, twice
        flip(path, offset + length // 2)
    for start in range(2):  # the first start fails closed and rewrites the file; the second finds the same
        store = TriggerStore(tmp_path)
        _, _, debounce = store.load()
        assert not debounce.allowed(trigger, "hh_a", now) and not debounce.allowed(trigger, "hh_new", now)
        assert not debounce.event_allowed("org_1", "hh_new", now, per_day=100)
        assert debounce.allowed(trigger, "hh_a", time.time() + 600)  # one interval on
        assert debounce.event_allowed("org_1", "hh_new", now + 86400, per_day=1)  # the next UTC day
        store.close()
    assert integrity(tmp_path)["trigger_firings"]["lost"] == 1  # the damaged tail (both records), once


def test_a_deleted_triggers_cooldown_lost_with_the_firings_log_is_redone(tmp_path):
    """Deleting a trigger leaves its organization a cooldown (creating another is no way around the interval). Its
    lines lost beyond repair: the organization's longest wait, kept beside the triggers, holds every household."""
    now = time.time()
    deleted = firings(tmp_path, now)  # interval 600; hh_b acted 10 s ago
    store = TriggerStore(tmp_path)
    _, _, debounce = store.load()
    store.remove(deleted.id, debounce.retire(deleted, now))
    store.close()
    path = tmp_path / "firings.seg"
    for offset, length in record_spans(path)[-2:]:  # the cooldown line, both copies
        flip(path, offset + length // 2)
    quick = replace(a_trigger("trg_2", "org_1"), interval_s=60.0)  # made after the start that failed closed
    for start in range(2):
        store = TriggerStore(tmp_path)
        triggers, _, debounce = store.load()
        assert triggers == {}
        for who in ("hh_b", "hh_new"):
            assert not debounce.allowed(quick, who, now + 100)  # the deleted trigger's wait, for everyone
        assert debounce.allowed(quick, "hh_b", now + 600)
        assert debounce.allowed(a_trigger("trg_3", "org_other"), "hh_b", now + 100)  # another organization's
        store.close()


def test_a_damaged_copy_of_a_trigger_is_recovered(tmp_path):
    firings(tmp_path, time.time())
    path = tmp_path / "triggers.seg"
    offset, length = record_spans(path)[0]
    flip(path, offset + length // 2)
    store = TriggerStore(tmp_path)
    triggers, _, _ = store.load()
    assert list(triggers) == ["trg_1"] and integrity(tmp_path)["triggers"]["recovered"] == 1
    store.close()
