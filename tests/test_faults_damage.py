"""A damaged record (a flipped byte on the SD card) in each kind of file, in the middle and at the end: it is
detected (CRC), counted per file kind in /health, and never changes meaning. A record written twice survives one
damaged copy; one lost beyond repair fails closed (a consent is never brought back as granted), becomes a `gap`
event (an outbox), or keeps the orphaned outbox and says so (the subscriptions)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from agent.audit import AuditLog
from agent.config import DeliveryConfig
from agent.delivery.engine import Delivery
from agent.delivery.outbox import Outbox
from agent.registry import Registry
from agent.release.log import ReleaseLog
from agent.store import ReadingStore
from agent.store.segment import integrity
from drivers.reading import Reading
from tests.helpers.agent import OPERATOR_TOKEN
from tests.helpers.process import OP, agent_on
from tests.helpers.store import flip, make_reading, record_spans
from tests.helpers.wait import eventually


def granted_then_revoked(tmp_path):
    registry = Registry(tmp_path / "registry.seg", clock=iter(range(1000, 2000)).__next__)
    org, _ = registry.create_organization("Org", "dso")
    household, _, _ = registry.create_household(None, "http")
    registry.set_consent(household.id, org.id, "aggregates", True)
    registry.set_consent(household.id, org.id, "aggregates", False)
    registry.close()
    return org, household


def test_one_damaged_copy_changes_nothing_and_is_counted(tmp_path):
    for which in (-2, -1):  # the first copy (middle of the file), the second copy (the file's last record)
        directory = tmp_path / str(which)
        directory.mkdir()
        org, household = granted_then_revoked(directory)
        path = directory / "registry.seg"
        offset, length = record_spans(path)[which]
        flip(path, offset + length // 2)
        registry = Registry(path)
        assert not registry.consent_state(household.id, org.id, "aggregates")
        assert [c["action"] for c in registry.history_of(household.id)] == ["grant", "revoke"]
        assert registry.damage is None
        tally = integrity(directory)["registry"]
        assert tally["recovered"] == 1 and tally["lost"] == 0 and tally["skipped_bytes"] == length
        registry.close()


def test_a_revocation_lost_beyond_repair_fails_closed_durably_and_once(tmp_path):
    org, household = granted_then_revoked(tmp_path)
    path = tmp_path / "registry.seg"
    registry = Registry(path, clock=lambda: 3000.0)
    second, _, _ = registry.create_household(None, "http")
    registry.set_consent(second.id, org.id, "aggregates", True)  # a consent no damage touched
    registry.close()
    spans = record_spans(path)  # org, household, grant, revoke (each twice), then the second household's two
    for offset, length in spans[6:8]:  # both copies of the revocation
        flip(path, offset + length // 2)
    registry = Registry(path, clock=lambda: 4000.0)
    # Unknown which consent the lost record changed: every granted consent is revoked, never one resurrected.
    assert not registry.consent_state(household.id, org.id, "aggregates")
    assert not registry.consent_state(second.id, org.id, "aggregates")
    assert registry.damage == {"found_at": 4000.0, "lost_records": 1, "consents_revoked": 2}
    assert [c["action"] for c in registry.history_of(second.id)] == ["grant", "revoke"]
    registry.set_consent(second.id, org.id, "aggregates", True)  # the household can grant again
    registry.close()
    # The file was rewritten without the damage: the next start does not revoke the new grant.
    registry = Registry(path, clock=lambda: 5000.0)
    assert registry.consent_state(second.id, org.id, "aggregates")
    assert not registry.consent_state(household.id, org.id, "aggregates")
    assert registry.damage["consents_revoked"] == 2  # what the earlier start found is still told
    registry.close()


def test_an_outbox_record_lost_beyond_repair_becomes_a_gap_event(tmp_path):
    for position in ("middle", "end"):
        path = tmp_path / f"{position}.seg"
        outbox = Outbox(path, max_messages=100)
        for second in range(3):
            outbox.enqueue("aggregate", {"type": "aggregate"}, f"2026-01-01T00:00:0{second}Z",
                           f"2026-01-01T00:00:0{second + 1}Z")
        outbox.close()
        spans = record_spans(path)
        lost = spans[2:4] if position == "middle" else spans[4:6]
        for offset, length in lost:
            flip(path, offset + length // 2)
        outbox = Outbox(path, max_messages=100)
        kinds = [m.kind for m in outbox.pending]
        assert kinds == ["aggregate", "aggregate", "gap"], kinds
        gap = outbox.pending[-1].payload
        assert gap["from"] == "2026-01-01T00:00:00Z" and gap["to"] is None  # up to the next message: unknown
        assert "damaged" in gap["detail"]
        outbox.close()
        # Told once: the file was rewritten without the damage.
        outbox = Outbox(path, max_messages=100)
        assert [m.kind for m in outbox.pending] == kinds
        outbox.close()
    assert integrity(tmp_path)["outbox"]["lost"] == 2


def test_a_damaged_subscription_record_is_recovered_or_its_outbox_kept_and_told(tmp_path):
    config = DeliveryConfig(allow_http=True, allow_private_endpoints=True)
    agent = SimpleNamespace(clock=lambda: 1000.0)
    delivery = Delivery(agent, tmp_path / "delivery", config)
    kept, _ = delivery.subscribe("org_1", "http://127.0.0.1:9/hook", 1.0, "1s", None, None)
    lost, _ = delivery.subscribe("org_1", "http://127.0.0.1:9/other", 1.0, "1s", None, None)
    delivery.outboxes[lost.id].enqueue("heartbeat", {"type": "heartbeat"}, None, None)  # its file exists now
    asyncio.run(_stop(delivery))
    path = tmp_path / "delivery" / "subscriptions.seg"
    spans = record_spans(path)
    flip(path, spans[0][0] + spans[0][1] // 2)  # one copy of the first: recovered
    for offset, length in spans[2:4]:  # both copies of the second: lost
        flip(path, offset + length // 2)
    delivery = Delivery(agent, tmp_path / "delivery", config)
    assert kept.id in delivery.subscriptions and lost.id not in delivery.subscriptions
    assert (tmp_path / "delivery" / "outbox" / f"{lost.id}.seg").exists()  # never deleted as an orphan
    ok, health = delivery.health()
    assert not ok and f"{lost.id}.seg" in health["damaged"]


async def _stop(delivery: Delivery) -> None:
    await delivery.stop()


def test_damaged_readings_are_counted_and_the_rest_read(tmp_path):
    store = ReadingStore(tmp_path / "store", flush_seconds=1)
    base = 1_790_000_000.0
    for batch in range(3):
        for i in range(10):
            moment = base + batch * 10 + i
            store.add(Reading.from_record({"meter_id": "m1", "timestamp": moment, "received_at": moment,
                                           "power_import_w": 100.0}))
        store.flush()
    store.close()
    segment = next((tmp_path / "store" / "raw" / "m1").glob("*.seg"))
    spans = [s for s in record_spans(segment)]
    flip(segment, spans[1][0] + spans[1][1] // 2)
    store = ReadingStore(tmp_path / "store", flush_seconds=1)
    rows = store.readings("m1", limit=100)
    assert len(rows) == 20  # the damaged batch only
    tally = integrity(tmp_path / "store")["raw"]
    assert tally["lost"] == 1 and tally["skipped_bytes"] == spans[1][1]
    store.close()


async def test_a_lost_revocation_in_the_running_agent_fails_closed_and_health_says_so(tmp_path):
    storage = tmp_path / "edge"
    async with agent_on(storage, tmp_path) as running:
        _, org, _ = await running.call("POST", "/organizations", OP, {"name": "Org", "level": "dso"})
        _, hh, _ = await running.call("POST", "/households", OP, {})
        auth = {"Authorization": f"Bearer {hh['token']}"}
        consent = f"/households/me/consents/{org['id']}/aggregates"
        assert (await running.call("PUT", consent, auth))[0] == 200
        assert (await running.call("DELETE", consent, auth))[0] == 200
        assert await running.stop() == 0
        path = storage / "registry.seg"
        for offset, length in record_spans(path)[-2:]:
            flip(path, offset + length // 2)
        await running.start()
        _, consents, _ = await running.call("GET", "/households/me/consents", auth)
        assert consents["consents"] == []  # not brought back as granted
        status, health, _ = await running.call("GET", "/health", OP)
        assert status == 503
        assert health["faults"]["damage"]["registry"]["lost"] == 1
        assert health["faults"]["registry_failed_closed"]["lost_records"] == 1
        assert OPERATOR_TOKEN not in str(health)
        async with running.http.get(f"http://127.0.0.1:{running.port}/metrics", headers=OP) as resp:
            metrics = await resp.text()
        assert 'edge_storage_damage{kind="registry",what="lost"} 1' in metrics
        assert "edge_healthy 0" in metrics


def old_damaged_day_files(storage):
    """Files no start opens: an audit day file of three days ago with a record lost (both copies), a 1 s release
    file of two days ago with one copy damaged (recovered), a raw readings segment of two hours ago with a record
    lost (written once). Returns each one's damaged bytes."""
    now = time.time()
    audit = AuditLog(storage / "audit", clock=lambda: now - 3 * 86400)
    for n in range(3):
        audit.record("org_x", "organization", "data.read", durable=False, n=n)
        audit.flush()
    audit.close()
    audit_file = storage / "audit" / time.strftime("%Y%m%d.seg", time.gmtime(now - 3 * 86400))
    releases = ReleaseLog(storage / "releases", keep_days=40)
    name = "1s-" + time.strftime("%Y%m%d", time.gmtime(now - 2 * 86400))
    for start in range(2):
        releases.write({name: [{"t": "r", "o": "org_x", "w": 1, "s": now - 2 * 86400 + start, "g": "", "x": {}}]})
    releases.close()
    store = ReadingStore(storage, flush_seconds=1)
    for batch in range(3):
        store.add(make_reading("m_old", now - 7200 + batch, seq=batch))
        store.flush()
    store.close()
    raw_file = next((storage / "raw" / "m_old").glob("*.seg"))
    damaged = {}
    spans = record_spans(audit_file)
    for offset, length in spans[2:4]:
        flip(audit_file, offset + length // 2)
    damaged["audit"] = spans[2][1] + spans[3][1]
    release_file = storage / "releases" / f"{name}.seg"
    offset, length = record_spans(release_file)[0]
    flip(release_file, offset + length // 2)
    damaged["releases"] = length
    offset, length = record_spans(raw_file)[1]
    flip(raw_file, offset + length // 2)
    damaged["raw"] = length
    return damaged


async def test_damage_in_files_nobody_reads_is_found_at_start_and_shown_at_once(tmp_path):
    storage = tmp_path / "edge"
    async with agent_on(storage, tmp_path) as running:
        assert await running.stop() == 0
        damaged = old_damaged_day_files(storage)
        await running.start()

        async def scanned():
            status, health, _ = await running.call("GET", "/health", OP)
            return health["faults"]["damage_scan"]["state"] == "done" and (status, health)
        status, health = await eventually(scanned, 30, "the start-up damage scan")
        damage = health["faults"]["damage"]
        assert status == 503  # records lost beyond repair: the audit entry, the readings
        assert damage["audit"] == {"files": 1, "skipped_bytes": damaged["audit"], "cut_bytes": 0, "recovered": 0,
                                   "lost": 1}, damage
        assert damage["releases"] == {"files": 1, "skipped_bytes": damaged["releases"], "cut_bytes": 0,
                                      "recovered": 1, "lost": 0}, damage
        assert damage["raw"]["lost"] == 1 and damage["raw"]["skipped_bytes"] == damaged["raw"], damage
        async with running.http.get(f"http://127.0.0.1:{running.port}/metrics", headers=OP) as resp:
            metrics = await resp.text()
        for kind, what in (("audit", "lost"), ("releases", "recovered"), ("raw", "lost")):
            assert f'edge_storage_damage{{kind="{kind}",what="{what}"}} 1' in metrics
        # Reading the files now counts nothing twice.
        status, body, _ = await running.call("GET", f"/audit?since={time.time() - 4 * 86400}&limit=100", OP)
        assert status == 200 and len(body["entries"]) >= 2
        status, after, _ = await running.call("GET", "/health", OP)
        assert after["faults"]["damage"] == damage
