"""The event loop never waits on the disk for the triggers' own writes: a trigger created (POST /triggers/create),
deleted (DELETE /triggers/{id}, a rewrite), quarantined (a rewrite), and the purge of removed households' settings.

Same method as tests/test_event_loop_io.py: the store's file functions wait at a gate, in whatever thread runs
them, until the test opens it; /health must be answered meanwhile, the requests must not be answered before their
write, and what lands on disk is what was asked, in the order asked. No durations are measured.
"""

from __future__ import annotations

import asyncio

from agent.store.segment import SegmentDB
from tests.helpers.loop import Counting, answered_meanwhile, gate_segment_writes
from tests.helpers.triggers import body, town  # noqa: F401  (town: the fixture)

ALWAYS = "def condition(household_power_consumption):\n    return True\n"


def on_disk(path) -> list[dict]:
    db = SegmentDB(str(path))
    try:
        return [dict(doc) for doc in db.table("triggers").all()]  # in the order written
    finally:
        db.close()


async def test_trigger_create_and_delete_write_off_the_loop_in_order(town, monkeypatch):
    t = await town(1)
    runner = t.runner
    status, kept = await t.create(body(["household_power_consumption"], ALWAYS))
    assert status == 201, kept
    other_org, other_key = await t.running.create_org("Other Co", "dso")
    gate = gate_segment_writes(monkeypatch, runner.store.db)
    creates = Counting(monkeypatch, runner, "create")
    deletes = Counting(monkeypatch, runner, "delete")

    first = asyncio.create_task(t.create(body(["household_power_consumption"], ALWAYS, interval=61)))
    await t.running.wait_for(gate.entered.is_set)  # its append waits at the gate
    removal = asyncio.create_task(t.running.call("DELETE", f"/triggers/{kept['id']}", token=t.org_key))
    await t.running.wait_for(lambda: deletes.count == 1)
    second = asyncio.create_task(t.create(body(["household_power_consumption"], ALWAYS, interval=62),
                                          key=other_key))
    await t.running.wait_for(lambda: creates.count == 2)
    await answered_meanwhile(t.running, first, removal, second)
    gate.open()
    (s1, a), (s2, _), (s3, b) = await asyncio.gather(first, removal, second)
    gate.check()
    assert (s1, s2, s3) == (201, 204, 201), (a, b)
    assert a["interval"] == 61 and b["interval"] == 62

    # the API's answers are what is on disk, in the order asked: the first upload before the second, the
    # deleted trigger gone
    docs = on_disk(runner.store.directory / "triggers.seg")
    assert [doc["id"] for doc in docs] == [a["id"], b["id"]]
    assert [doc["organization_id"] for doc in docs] == [t.org_id, other_org]
    status, listed = await t.running.call("GET", "/triggers", token=t.org_key)
    assert [x["id"] for x in listed["triggers"]] == [a["id"]]
    # and the new triggers run
    await t.window(power_import_w=5.0)
    assert (await t.inbox(t.households[0][1]))[0]["trigger_id"] == a["id"]
    assert (await t.trigger(a["id"]))["windows"]["withheld"] == 1  # its counts: one household, so not released


async def test_two_uploads_waiting_for_the_disk_do_not_both_pass_the_limit(town, monkeypatch):
    t = await town(1, max_per_organization=1)
    gate = gate_segment_writes(monkeypatch, t.runner.store.db)
    first = asyncio.create_task(t.create(body(["household_power_consumption"], ALWAYS)))
    await t.running.wait_for(gate.entered.is_set)
    second = asyncio.create_task(t.create(body(["household_power_consumption"], ALWAYS)))
    await answered_meanwhile(t.running, first, second)
    gate.open()
    results = await asyncio.gather(first, second)
    gate.check()
    assert sorted(status for status, _ in results) == [201, 409], results
    assert len(on_disk(t.runner.store.directory / "triggers.seg")) == 1


async def test_quarantine_is_written_off_the_loop(town, monkeypatch):
    t = await town(3)
    status, bad = await t.create(body(["household_power_consumption"], """\
        def condition(household_power_consumption):
            while household_power_consumption == 4242.0:
                pass  # killed: a violation (a non-bool answer is no longer one)
            return False
        """))
    assert status == 201
    gate = gate_segment_writes(monkeypatch, t.runner.store.db)  # only a quarantine writes triggers.seg here
    values = [{"power_import_w": 4242.0}, {"power_import_w": 1.0}, {"power_import_w": 1.0}]
    for _ in range(10):  # 3 violations quarantine it; a loaded machine may leave a window unevaluated
        window = asyncio.create_task(t.window(values=values))
        await t.running.wait_for(lambda: window.done() or gate.entered.is_set())
        if gate.entered.is_set():
            break
        await window
    assert gate.entered.is_set(), "never quarantined"
    await answered_meanwhile(t.running, window)
    gate.open()
    await window
    gate.check()
    assert (await t.trigger(bad["id"]))["quarantined"] is True
    assert [doc["quarantined"] for doc in on_disk(t.runner.store.directory / "triggers.seg")] == [True]


async def test_purge_of_removed_households_is_written_off_the_loop_and_in_order(town, monkeypatch):
    t = await town(2)
    (gone_id, gone), (kept_id, kept) = t.households
    for token in (gone, kept):
        assert (await t.running.call("PUT", "/households/me/notify", token=token,
                                     json={"url": "https://ntfy.sh/before", "kind": "ntfy"}))[0] == 200
    assert (await t.running.call("POST", "/households/me/appliances", token=gone, json={
        "name": "Heater", "driver": "tasmota", "address": "http://192.168.1.9"}))[0] == 201
    assert (await t.running.call("DELETE", f"/households/{gone_id}"))[0] == 204
    store = t.runner.households
    gate = gate_segment_writes(monkeypatch, store.db)
    endpoints = Counting(monkeypatch, store, "set_endpoint_async")

    t.runner._purged_at = float("-inf")  # the runner's own loop purges on its next round
    await t.running.wait_for(gate.entered.is_set)
    change = asyncio.create_task(t.running.call("PUT", "/households/me/notify", token=kept,
                                                json={"url": "https://ntfy.sh/after", "kind": "ntfy"}))
    await t.running.wait_for(lambda: endpoints.count == 1)
    await answered_meanwhile(t.running, change)
    gate.open()
    status, _ = await change
    gate.check()
    assert status == 200
    await t.running.wait_for(lambda: t.runner._purged_at != float("-inf"))
    assert gone_id not in store.endpoints and store.appliances_of(gone_id) == []
    db = SegmentDB(str(t.runner.store.directory / "households.seg"))
    try:
        assert [(doc["household_id"], doc["url"]) for doc in db.table("notify").all()] == [
            (kept_id, "https://ntfy.sh/after")]
        assert db.table("appliances").all() == []
    finally:
        db.close()


async def test_endpoint_delete_during_a_put_waiting_for_the_disk_removes_what_the_put_wrote(town, monkeypatch):
    """PUT B waits at the gate, DELETE comes in: the DELETE acts after the PUT (the household's lock), its 204
    means no endpoint at all, in memory (where notifications go) as on disk."""
    from agent.api import household_actions

    t = await town(1)
    household_id, token = t.households[0]
    assert (await t.running.call("PUT", "/households/me/notify", token=token,
                                 json={"url": "https://ntfy.sh/a", "kind": "ntfy"}))[0] == 200
    store = t.runner.households
    gate = gate_segment_writes(monkeypatch, store.db)
    arrived = []
    household_of = household_actions._household
    monkeypatch.setattr(household_actions, "_household", lambda request: arrived.append(request.method)
                        or household_of(request))

    put = asyncio.create_task(t.running.call("PUT", "/households/me/notify", token=token,
                                             json={"url": "https://ntfy.sh/b", "kind": "ntfy"}))
    await t.running.wait_for(gate.entered.is_set)  # B's write waits at the gate
    delete = asyncio.create_task(t.running.call("DELETE", "/households/me/notify", token=token))
    await t.running.wait_for(lambda: arrived == ["PUT", "DELETE"])  # the DELETE is being handled
    await answered_meanwhile(t.running, put, delete)
    gate.open()
    (put_status, _), (delete_status, _) = await asyncio.gather(put, delete)
    gate.check()
    assert (put_status, delete_status) == (200, 204)
    assert household_id not in store.endpoints  # no notification goes anywhere
    assert (await t.running.call("GET", "/households/me/notify", token=token))[0] == 404
    db = SegmentDB(str(t.runner.store.directory / "households.seg"))
    try:
        assert db.table("notify").all() == []  # nor after a restart
    finally:
        db.close()
