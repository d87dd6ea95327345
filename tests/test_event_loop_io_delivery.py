"""The delivery engine's subscription changes (POST /data/subscribe, DELETE /data/subscriptions/{id}, a secret's
rotation) are written to subscriptions.seg off the event loop, in the order asked, and answered only once durable.

Same method as tests/test_event_loop_io.py: the segment file's functions wait at a gate in whatever thread runs
them until the test opens it; /health must be answered meanwhile and the requests must not be. No durations are
measured.
"""

from __future__ import annotations

import asyncio

from agent.api.errors import ApiError
from agent.registry import RegistryError
from agent.store.segment import SegmentDB
from tests.helpers.delivery import town  # noqa: F401  (town: the fixture)
from tests.helpers.loop import Counting, answered_meanwhile, gate_segment_writes

HOOK = "http://127.0.0.1:9/hook"  # never answered: nothing here needs a delivery


def on_disk(t) -> list[dict]:
    db = SegmentDB(str(t.running.agent.delivery.directory / "subscriptions.seg"))
    try:
        return [dict(doc) for doc in db.table("subscriptions").all()]  # in the order written
    finally:
        db.close()


async def test_subscribe_and_delete_write_off_the_loop_in_order(town, monkeypatch):
    t = await town()
    kept = await t.subscribe(HOOK)
    delivery = t.running.agent.delivery
    gate = gate_segment_writes(monkeypatch, delivery.db)
    deletes = Counting(monkeypatch, delivery, "delete_async")

    first = asyncio.create_task(t.running.call("POST", "/data/subscribe", token=t.org_key,
                                               json={"endpoint": HOOK, "interval": 2, "window": "1s"}))
    await t.running.wait_for(gate.entered.is_set)  # its append waits at the gate
    removal = asyncio.create_task(t.running.call("DELETE", f"/data/subscriptions/{kept['id']}", token=t.org_key))
    await t.running.wait_for(lambda: deletes.count == 1)
    await answered_meanwhile(t.running, first, removal)
    assert [s.interval_s for s in delivery.subscriptions.values()] == [1]  # not in memory before it is on disk
    gate.open()
    (s1, made), (s2, _) = await asyncio.gather(first, removal)
    gate.check()
    assert (s1, s2) == (201, 204), made
    assert [doc["id"] for doc in on_disk(t)] == [made["id"]]
    status, listed = await t.running.call("GET", "/data/subscriptions", token=t.org_key)
    assert [s["id"] for s in listed["subscriptions"]] == [made["id"]]
    assert not (delivery.directory / "outbox" / f"{kept['id']}.seg").exists()
    # the new subscription is produced for. Two windows: the producer's own tick may have decided the window before
    # the first (its interval is 2 s, so the first is then not due), as it did under load
    await t.window()
    await t.window()
    assert delivery.outboxes[made["id"]].depth >= 1


async def test_two_quick_rotations_build_on_each_other_and_two_deletes_delete_once(town, monkeypatch):
    t = await town()
    sub = await t.subscribe(HOOK)
    original = sub["secret"]
    delivery = t.running.agent.delivery
    gate = gate_segment_writes(monkeypatch, delivery.db)
    rotations = Counting(monkeypatch, delivery, "rotate_secret_async")
    path = f"/data/subscriptions/{sub['id']}/secret"

    first = asyncio.create_task(t.running.call("POST", path, token=t.org_key))
    await t.running.wait_for(gate.entered.is_set)
    second = asyncio.create_task(t.running.call("POST", path, token=t.org_key))
    await t.running.wait_for(lambda: rotations.count == 2)
    await answered_meanwhile(t.running, first, second)
    gate.open()
    (s1, a), (s2, b) = await asyncio.gather(first, second)
    gate.check()
    assert (s1, s2) == (200, 200)
    # the second rotation kept the first's secret valid beside its own: a receiver given either can verify
    (doc,) = on_disk(t)
    assert [s["secret"] for s in doc["secrets"]] == [b["secret"], a["secret"], original]
    assert doc["secrets"] == delivery.subscriptions[sub["id"]].secrets

    gate = gate_segment_writes(monkeypatch, delivery.db)
    deletes = Counting(monkeypatch, delivery, "delete_async")
    path = f"/data/subscriptions/{sub['id']}"
    first = asyncio.create_task(t.running.call("DELETE", path, token=t.org_key))
    await t.running.wait_for(gate.entered.is_set)
    second = asyncio.create_task(t.running.call("DELETE", path, token=t.org_key))
    await t.running.wait_for(lambda: deletes.count == 2)
    await answered_meanwhile(t.running, first)
    gate.open()
    (s1, _), (s2, _) = await asyncio.gather(first, second)
    gate.check()
    assert sorted((s1, s2)) == [204, 404]
    assert on_disk(t) == [] and delivery.subscriptions == {}


async def test_deleting_an_organization_drops_the_subscription_it_is_writing_and_refuses_a_later_one(
        town, monkeypatch):
    t = await town()
    agent = t.running.agent
    delivery, registry = agent.delivery, agent.registry
    org_id = registry.organization_by_key(t.org_key).id
    gate = gate_segment_writes(monkeypatch, delivery.db)
    drops = Counting(monkeypatch, delivery, "drop_organization_async")

    subscribe = asyncio.create_task(t.running.call("POST", "/data/subscribe", token=t.org_key,
                                                   json={"endpoint": HOOK, "interval": 2, "window": "1s"}))
    await t.running.wait_for(gate.entered.is_set)  # its append waits at the gate
    delete = asyncio.create_task(t.running.call("DELETE", f"/organizations/{org_id}"))
    await t.running.wait_for(lambda: drops.count == 1)  # the registry has forgotten it; its subscriptions next
    await answered_meanwhile(t.running, subscribe, delete)
    gate.open()
    (s1, made), (s2, _) = await asyncio.gather(subscribe, delete)
    gate.check()
    assert (s1, s2) == (201, 204), made  # it was on disk before the organization's subscriptions were dropped
    assert delivery.subscriptions == {} and on_disk(t) == []
    assert not (delivery.directory / "outbox" / f"{made['id']}.seg").exists()

    # one asked for once the organization is gone (its request authenticated just before) is refused, unwritten
    try:
        await delivery.subscribe_async(org_id, HOOK, 2.0, "1s", None, None)
    except RegistryError as err:
        assert ApiError.of(err).status == 404
    else:
        raise AssertionError("a subscription was written for a deleted organization")
    assert delivery.subscriptions == {} and on_disk(t) == []
