"""The event loop (which also pings the systemd watchdog and answers the API) never waits on the disk for a
POST /readings after a restart, nor for the registry's or the households' trigger settings' writes.

The disk is made slow by a gate on the store's own file functions: the write (or read) waits in whatever thread
runs it until the test opens the gate. Run on the event loop, the gate would stop the loop, so nothing else
could be answered and the test could not open it: the gate then gives up after a while and says so, and the
test fails. No durations are measured: only what was answered before what.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from agent.registry import Registry
from agent.store.segment import SegmentDB
from tests.helpers.agent import make_config
from tests.helpers.loop import Counting, Gate, answered_meanwhile, gate_segment_writes


def ts(seconds_ago: float = 0) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


# --- 1. POST /readings after a restart ---------------------------------------------------------------
async def test_first_post_after_restart_reads_the_store_off_the_loop_and_one_of_two_same_posts_is_a_duplicate(
        tmp_path, start_agent, monkeypatch):
    config = make_config(tmp_path)
    running = await start_agent(config)
    _, token = await running.create_household()
    assert (await running.call("POST", "/readings", token=token, json={"timestamp": ts(60)}))[0] == 201
    await running.http.close()
    await running.agent.stop()  # flushes: after the restart the last reading is only on disk

    again = await start_agent(config)
    store = again.agent.store
    gate = Gate()
    monkeypatch.setattr(store, "latest", gate.wrap(store.latest, wait_after=True))
    same = {"timestamp": ts(10), "power_import_w": 321.0}
    first = asyncio.create_task(again.call("POST", "/readings", token=token, json=same))
    await again.wait_for(gate.entered.is_set)
    second = asyncio.create_task(again.call("POST", "/readings", token=token, json=same))
    await answered_meanwhile(again, first, second)
    gate.open()
    results = [await first, await second]
    gate.check()
    assert sorted(status for status, _ in results) == [201, 409], results
    assert [body["error"] for status, body in results if status == 409] == ["duplicate"]
    # the reading from before the restart still counts: an older one is refused
    status, body = await again.call("POST", "/readings", token=token, json={"timestamp": ts(30)})
    assert status == 409 and body["error"] == "duplicate"
    meter_id = next(iter(again.agent.registry.households.values())).meter_id
    status, body = await again.get(f"/meters/{meter_id}/readings")
    assert status == 200 and body["count"] == 2


# --- 2. registry writes (operator and household endpoints) -------------------------------------------
async def test_registry_writes_run_off_the_loop_and_land_in_order(tmp_path, start_agent, monkeypatch):
    running = await start_agent(make_config(tmp_path))
    org_id, _ = await running.create_org("Energy Co")
    household_id, token = await running.create_household()
    registry = running.agent.registry
    gate = gate_segment_writes(monkeypatch, registry.db)
    consents = Counting(monkeypatch, registry, "set_consent_async")
    renames = Counting(monkeypatch, registry, "update_organization_async")

    grant = asyncio.create_task(running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token))
    await running.wait_for(gate.entered.is_set)
    revoke = asyncio.create_task(running.call("DELETE", f"/households/me/consents/{org_id}/aggregates",
                                              token=token))
    rename_a = asyncio.create_task(running.call("PATCH", f"/organizations/{org_id}", json={"name": "A"}))
    await running.wait_for(lambda: consents.count == 2 and renames.count == 1)
    rename_b = asyncio.create_task(running.call("PATCH", f"/organizations/{org_id}", json={"name": "B"}))
    await running.wait_for(lambda: renames.count == 2)
    await answered_meanwhile(running, grant, revoke, rename_a, rename_b)
    gate.open()
    (s1, granted), (s2, revoked), (s3, _), (s4, renamed) = await asyncio.gather(grant, revoke, rename_a, rename_b)
    gate.check()
    assert (s1, s2, s3, s4) == (200, 200, 200, 200)
    assert granted["granted"] is True and revoked["granted"] is False and granted["at"] < revoked["at"]
    assert renamed["name"] == "B" and registry.organization(org_id).name == "B"
    assert not registry.consent_state(household_id, org_id, "aggregates")

    # what is on disk is what the API answered, in the order it was asked
    reread = Registry(tmp_path / "store" / "registry.seg")
    try:
        assert [(c["action"], c["at"]) for c in reread.history_of(household_id)] == [
            ("grant", granted["at"]), ("revoke", revoked["at"])]
        assert reread.organization(org_id).name == "B"
    finally:
        reread.close()


async def test_household_settings_writes_run_off_the_loop_in_order_and_checks_stay_whole(
        tmp_path, start_agent, monkeypatch):
    running = await start_agent(make_config(tmp_path))
    _, token = await running.create_household()
    households = running.agent.triggers.households
    gate = gate_segment_writes(monkeypatch, households.db)
    endpoints = Counting(monkeypatch, households, "set_endpoint_async")

    first = asyncio.create_task(running.call("PUT", "/households/me/notify", token=token,
                                             json={"url": "https://ntfy.sh/first", "kind": "ntfy"}))
    await running.wait_for(gate.entered.is_set)
    second = asyncio.create_task(running.call("PUT", "/households/me/notify", token=token,
                                              json={"url": "https://ntfy.sh/second", "kind": "ntfy"}))
    await running.wait_for(lambda: endpoints.count == 2)
    appliance = {"name": "Heater", "driver": "shelly", "address": "http://192.168.1.50"}
    twins = [asyncio.create_task(running.call("POST", "/households/me/appliances", token=token, json=appliance))
             for _ in range(2)]
    await answered_meanwhile(running, first, second, *twins)
    gate.open()
    results = await asyncio.gather(first, second, *twins)
    gate.check()
    assert [status for status, _ in results[:2]] == [200, 200]
    assert sorted(status for status, _ in results[2:]) == [201, 409], results  # one name, once
    status, body = await running.call("GET", "/households/me/notify", token=token)
    assert status == 200 and body["url"] == "https://ntfy.sh/second"
    on_disk = SegmentDB(str(tmp_path / "store" / "triggers" / "households.seg"))
    try:
        assert [doc["url"] for doc in on_disk.table("notify").all()] == ["https://ntfy.sh/second"]
        assert [doc["name"] for doc in on_disk.table("appliances").all()] == ["Heater"]
    finally:
        on_disk.close()
