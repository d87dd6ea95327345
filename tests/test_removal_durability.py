"""A removal the disk refuses changes nothing: a household's notification endpoint or appliance, or an
organization's trigger, stays in memory exactly as it stays in the file, so a retry finds it (no 404) and deletes
it, and nothing answered as gone comes back after a restart (a deleted trigger would run again; its sandbox
worker would stay registered).

The disk refuses with OSError(ENOSPC) from the store's own rewrite function (removals are an atomic rewrite of the
segment file) while `refuse` is set; the test clears it to let the retry through. No durations are measured.
"""

from __future__ import annotations

import asyncio
import errno

import pytest

from agent.store.segment import SegmentDB
from tests.helpers.triggers import body, town  # noqa: F401  (town: the fixture)

ALWAYS = "def condition(household_power_consumption):\n    return True\n"


class Refusing:
    """The segment file's rewrite fails with ENOSPC while `on`; otherwise it writes as before."""

    def __init__(self, monkeypatch, db: SegmentDB):
        self.on = True
        self.refused = 0
        write = db.storage.write

        def refusing(*args, **kwargs):
            if self.on:
                self.refused += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(*args, **kwargs)
        monkeypatch.setattr(db.storage, "write", refusing)


def table_on_disk(path, table: str) -> list[dict]:
    """What a restart would load."""
    db = SegmentDB(str(path))
    try:
        return [dict(doc) for doc in db.table(table).all()]
    finally:
        db.close()


async def test_endpoint_removal_that_fails_on_disk_keeps_the_endpoint_and_can_be_retried(town, monkeypatch):
    t = await town(1)
    household_id, token = t.households[0]
    status, _ = await t.running.call("PUT", "/households/me/notify", token=token,
                                     json={"url": "https://ntfy.sh/mine", "kind": "ntfy"})
    assert status == 200
    store = t.runner.households
    disk = Refusing(monkeypatch, store.db)

    status, _ = await t.running.call("DELETE", "/households/me/notify", token=token)
    assert status == 507 and disk.refused == 1
    # memory is what the file holds: notifications still go there, and the household still sees it
    assert store.endpoints[household_id]["url"] == "https://ntfy.sh/mine"
    status, out = await t.running.call("GET", "/households/me/notify", token=token)
    assert status == 200 and out["url"] == "https://ntfy.sh/mine"
    assert [d["url"] for d in table_on_disk(t.runner.store.directory / "households.seg", "notify")] == [
        "https://ntfy.sh/mine"]

    disk.on = False
    status, _ = await t.running.call("DELETE", "/households/me/notify", token=token)  # the retry: not a 404
    assert status == 204
    assert household_id not in store.endpoints
    assert table_on_disk(t.runner.store.directory / "households.seg", "notify") == []


async def test_appliance_removal_that_fails_on_disk_keeps_the_appliance_and_can_be_retried(town, monkeypatch):
    t = await town(1)
    household_id, token = t.households[0]
    status, appliance = await t.running.call("POST", "/households/me/appliances", token=token, json={
        "name": "Heater", "driver": "tasmota", "address": "http://192.168.1.9", "allowed_organizations": [t.org_id]})
    assert status == 201, appliance
    store = t.runner.households
    disk = Refusing(monkeypatch, store.db)

    status, _ = await t.running.call("DELETE", f"/households/me/appliances/{appliance['id']}", token=token)
    assert status == 507 and disk.refused == 1
    status, out = await t.running.call("GET", "/households/me/appliances", token=token)
    assert [a["id"] for a in out["appliances"]] == [appliance["id"]]
    assert store.targets(household_id, t.org_id, "Heater") != []  # organizations' triggers still switch it
    assert [d["id"] for d in table_on_disk(t.runner.store.directory / "households.seg", "appliances")] == [
        appliance["id"]]

    disk.on = False
    status, _ = await t.running.call("DELETE", f"/households/me/appliances/{appliance['id']}", token=token)
    assert status == 204
    status, out = await t.running.call("GET", "/households/me/appliances", token=token)
    assert out["appliances"] == []
    assert table_on_disk(t.runner.store.directory / "households.seg", "appliances") == []


async def test_trigger_deletion_that_fails_on_disk_keeps_the_trigger_running_and_can_be_retried(town, monkeypatch):
    t = await town(3)
    runner = t.runner
    status, created = await t.create(body(["household_power_consumption"], ALWAYS, interval=60))
    assert status == 201, created
    tid = created["id"]
    await t.window(power_import_w=5.0)
    assert (await t.trigger(tid))["firings"] == 3  # so that the deletion leaves cooldowns behind
    disk = Refusing(monkeypatch, runner.store.db)

    twice = await asyncio.gather(*(t.running.call("DELETE", f"/triggers/{tid}", token=t.org_key) for _ in range(2)))
    assert [status for status, _ in twice] == [507, 507] and disk.refused in (1, 2)  # neither answered as done
    # still there, as in the file: listed, registered in the sandbox, and it runs
    status, listed = await t.running.call("GET", "/triggers", token=t.org_key)
    assert [x["id"] for x in listed["triggers"]] == [tid]
    runner.supervisor.state(t.org_id, tid)  # KeyError once unregistered
    await t.window(power_import_w=5.0)
    after = await t.trigger(tid)
    assert after["evaluations"] == 6 and after["firings"] == 6  # 3 households evaluated in 2 windows
    assert [d["id"] for d in table_on_disk(runner.store.directory / "triggers.seg", "triggers")] == [tid]

    disk.on = False
    status, _ = await t.running.call("DELETE", f"/triggers/{tid}", token=t.org_key)  # the retry: not a 404
    assert status == 204
    status, _ = await t.running.call("GET", f"/triggers/{tid}", token=t.org_key)
    assert status == 404
    with pytest.raises(KeyError):
        runner.supervisor.state(t.org_id, tid)
    assert table_on_disk(runner.store.directory / "triggers.seg", "triggers") == []
    # the cooldowns it leaves are on disk: a new upload by the same organization waits out the interval
    cooldowns = table_on_disk(runner.store.directory / "firings.seg", "cooldown")
    assert {(d["o"], d["h"]) for d in cooldowns} == {(t.org_id, h) for h, _ in t.households}
    assert {(t.org_id, h) for h, _ in t.households} <= set(runner.debounce.cooldown)
