"""No released answer may ever disagree with the durable consent history.

A consent change is stamped with its time t and written (fsync'd) in a worker thread. While it is being written,
a window that ends after t must not be closed or released: its cohort depends on whether the write lands (a window
released without a household whose revocation is then lost, asked for again later with the household in it, gives
that household's consumption by differencing; the same for a grant). Once the write settles the change is applied,
or dropped if the disk refused it, and the window goes out with the cohort the history on disk gives.

Same method as tests/test_event_loop_io.py: the registry's append waits at a gate in its worker thread until the
test opens it (and then writes, or raises like a full disk). No durations are measured.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

from aiohttp.test_utils import make_mocked_request

from agent.aggregates import new_books
from agent.api.routes import ROUTES, guarded
from agent.audit import AuditLog
from agent.config import PrivacyConfig
from agent.registry import Registry
from agent.release import Releases
from agent.service import Agent
from tests.helpers.agent import delivery_config, make_config
from tests.helpers.clock import StepClock, T0
from tests.helpers.loop import Gate

FULL = OSError(28, "No space left on device")


def gate_consent_append(monkeypatch, registry: Registry, fail: bool) -> Gate:
    """The registry's appends wait at the gate; then land, or (fail) raise as a full disk and leave the file."""
    gate = Gate()
    storage = registry.db.storage
    original = storage.append

    def append(table, docs):
        if fail:
            raise FULL
        return original(table, docs)
    monkeypatch.setattr(storage, "append", gate.wrap(append))
    return gate


# --- the registry and the release module's hold on their own (/tmp/rev/consent_undo.py) -------------------------------------
async def test_a_window_ending_after_a_consent_change_being_written_is_not_closed_and_a_refused_write_changes_nothing(
        tmp_path, monkeypatch):
    now = [1000.0]
    registry = Registry(tmp_path / "registry.seg", clock=lambda: now[0])
    releases = Releases(make_config(tmp_path), registry, new_books(), lambda: now[0], tmp_path / "releases")

    def last_closed() -> int:  # start of the newest 1-second window the release module may decide
        return math.floor(releases.settle_limit()) - 1
    org, _ = registry.create_organization("Energy Co", "dso")
    household, _, _ = registry.create_household(None, "http")
    registry.set_consent(household.id, org.id, "aggregates", True)
    now[0] = 2000.0
    gate = gate_consent_append(monkeypatch, registry, fail=True)
    revoke = asyncio.create_task(registry.set_consent_async(household.id, org.id, "aggregates", False))
    while not gate.entered.is_set():
        await asyncio.sleep(0.01)
    assert registry.pending_since() == 2000.0
    now[0] = 2001.5  # the clock says [2000, 2001) has ended; the revocation at 2000 is still being written
    assert last_closed() == 1999  # [1999, 2000) ends at the change: not affected, closed
    assert not registry.consent_state(household.id, org.id, "aggregates")  # a revocation is obeyed at once
    gate.open()
    try:
        await revoke
    except OSError as err:
        assert err.errno == 28
    else:
        raise AssertionError("the refused write was reported as done")
    gate.check()
    assert registry.pending_since() is None
    assert last_closed() == 2000  # released only now, with the cohort the disk gives
    cohort = registry.cohort(org.id, "aggregates", 2000, 2001)
    assert cohort == {household.id}
    registry.close()
    releases.close()
    reread = Registry(tmp_path / "registry.seg")
    try:
        assert reread.cohort(org.id, "aggregates", 2000, 2001) == cohort
        assert [c["action"] for c in reread.history_of(household.id)] == ["grant"]
    finally:
        reread.close()


# --- through the API: GET /data, its history, and a subscription ---------------------------------------------------
async def four_households(tmp_path, start_agent):
    clock = StepClock(T0)
    config = replace(make_config(tmp_path), privacy=PrivacyConfig(k_min=3), delivery=delivery_config())
    running = await start_agent(config, clock=clock)
    org_id, org_key = await running.create_org("Energy Co", "dso")
    tokens = []
    for _ in range(4):
        _, token = await running.create_household()
        assert (await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token))[0] == 200
        tokens.append(token)
    clock.step(1)
    return running, clock, org_id, org_key, tokens


async def post_window(running, clock, tokens, power: float) -> int:
    """One second of readings from every household; returns the window's start (not yet closed)."""
    start = int(clock.now)
    for token in tokens:
        status, body = await running.call("POST", "/readings", token=token,
                                          json={"timestamp": clock.now, "power_import_w": power})
        assert status == 201, body
    return start


async def exact(running, org_key, start: int) -> dict:
    status, body = await running.call("GET", f"/data?window=1s&since={start}&until={start + 1}", token=org_key)
    assert status == 200, body
    return body


async def run_change_across_a_window(tmp_path, start_agent, monkeypatch, granted: bool, fail: bool):
    running, clock, org_id, org_key, tokens = await four_households(tmp_path, start_agent)
    agent = running.agent
    path = f"/households/me/consents/{org_id}/aggregates"
    if granted:  # the fourth household revokes first, to grant again below
        assert (await running.call("DELETE", path, token=tokens[3]))[0] == 200
    status, sub = await running.call("POST", "/data/subscribe", token=org_key,
                                     json={"endpoint": "http://127.0.0.1:9/hook", "interval": 1, "window": "1s"})
    assert status == 201, sub
    outbox = agent.delivery.outboxes[sub["id"]]
    await agent.releases.settle()  # decides what has settled; its listener runs the producer
    queued = outbox.depth
    clock.step(0.5)
    gate = gate_consent_append(monkeypatch, agent.registry, fail=fail)
    change = asyncio.create_task(running.call("PUT" if granted else "DELETE", path, token=tokens[3]))
    await running.wait_for(gate.entered.is_set)  # stamped now, half a second before the window below starts
    clock.step(0.5)
    start = await post_window(running, clock, tokens, 100.0)
    clock.step(1)  # by the clock the window has ended, while the change is still being written

    # Nothing about this window goes out: not the live answer, not the history, not a push.
    status, body = await running.call("GET", "/data?window=1s", token=org_key)
    assert status != 200 or body["window_start"] != exact_start(start), body
    status, body = await running.call("GET", f"/data?window=1s&since={start}&until={start + 1}", token=org_key)
    assert status == 200 and body["released"] == [], body
    await agent.releases.settle()  # decides what has settled; its listener runs the producer
    assert outbox.depth == queued
    assert not change.done()

    gate.open()
    status, answer = await change
    gate.check()
    assert (status == 200) is not fail, answer

    # Now the window goes out, once, with the cohort the durable history gives, and every answer agrees.
    await agent.releases.settle()  # decides what has settled; its listener runs the producer
    assert outbox.depth == queued + 1
    pushed = outbox.head()
    assert pushed.payload["window_start"] == exact_start(start)
    status, live = await running.call("GET", "/data?window=1s", token=org_key)
    assert status == 200 and live["window_start"] == exact_start(start), live
    (history,) = (await exact(running, org_key, start))["released"]
    assert live == history
    assert pushed.payload["aggregate"]["consumption_w"] == live["consumption_w"]
    in_window = 4 if granted is not fail else 3  # a grant that landed, or a revocation that did not
    assert live["households"] == in_window
    reread = Registry(tmp_path / "store" / "registry.seg")
    try:
        on_disk = reread.cohort(org_id, "aggregates", start, start + 1)
    finally:
        reread.close()
    assert on_disk == agent.registry.cohort(org_id, "aggregates", start, start + 1) and len(on_disk) == in_window


def exact_start(start: int) -> str:
    from datetime import datetime, timezone

    from drivers.reading import iso
    return iso(datetime.fromtimestamp(start, timezone.utc))


async def test_a_refused_revocation_holds_its_window_back_then_it_goes_out_with_the_household(
        tmp_path, start_agent, monkeypatch):
    await run_change_across_a_window(tmp_path, start_agent, monkeypatch, granted=False, fail=True)


async def test_a_durable_revocation_holds_its_window_back_then_it_goes_out_without_the_household(
        tmp_path, start_agent, monkeypatch):
    await run_change_across_a_window(tmp_path, start_agent, monkeypatch, granted=False, fail=False)


async def test_a_refused_grant_holds_its_window_back_then_it_goes_out_without_the_household(
        tmp_path, start_agent, monkeypatch):
    await run_change_across_a_window(tmp_path, start_agent, monkeypatch, granted=True, fail=True)


async def test_a_durable_grant_holds_its_window_back_then_it_goes_out_as_the_history_says(
        tmp_path, start_agent, monkeypatch):
    await run_change_across_a_window(tmp_path, start_agent, monkeypatch, granted=True, fail=False)


# --- shutdown --------------------------------------------------------------------------------------------------------
async def test_a_consent_change_cancelled_at_shutdown_is_on_disk_with_its_audit_entry(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    agent = Agent(config, clock=StepClock(T0))
    await agent.start()
    stopped = False
    try:
        org, _ = await agent.registry.create_organization_async("Energy Co", "dso")
        household, token, _ = await agent.registry.create_household_async(None, "http")
        gate = gate_consent_append(monkeypatch, agent.registry, fail=False)
        request = make_mocked_request("PUT", f"/households/me/consents/{org.id}/aggregates",
                                      headers={"Authorization": f"Bearer {token}"}, app=agent._runner.app,
                                      match_info={"org_id": org.id, "service": "aggregates"})
        route = next(r for r in ROUTES if r.method == "PUT" and r.template.startswith("/households/me/consents/"))
        handler = asyncio.create_task(guarded(route)(request))  # the role check, then the handler, as routed
        while not gate.entered.is_set() and not handler.done():  # a handler that fails must fail the test, not hang it
            await asyncio.sleep(0.01)
        assert not handler.done(), handler.exception()
        handler.cancel()  # the request goes (a client gone, the agent stopping) while its line is being written
        await asyncio.gather(handler, return_exceptions=True)
        stopping = asyncio.create_task(agent.stop())
        for _ in range(100):  # let the stop get as far as it goes while the line is still being written
            await asyncio.sleep(0)
        assert not stopping.done()
        gate.open()
        await stopping
        stopped = True
        gate.check()
    finally:
        if not stopped:
            gate.open()
            await agent.stop()
    reread = Registry(config.storage.path / "registry.seg")
    try:
        assert [c["action"] for c in reread.history_of(household.id)] == ["grant"]
    finally:
        reread.close()
    audit = AuditLog(config.storage.path / "audit", clock=lambda: T0 + 10)
    try:
        actions = [(e["who"], e["action"]) for e in audit.entries(since=T0 - 10)]
    finally:
        audit.close()
    assert (household.id, "consent.grant") in actions, actions
