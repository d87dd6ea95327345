"""The audit log is written off the event loop, in the order the entries were recorded, and loses nothing it
promised: an entry is on disk before the request that logged it is answered, everything still queued is written
at a clean stop, and after a kill -9 the log holds every acknowledged entry and, in order, a prefix of the rest.

Same method as tests/test_event_loop_io.py: the log's appends wait at a gate, in whatever thread runs them, until
the test opens it. No durations are measured.
"""

from __future__ import annotations

import asyncio
import textwrap
from dataclasses import replace
from pathlib import Path

import aiohttp

import agent.audit
from agent.service import Agent
from agent.store.segment import SegmentDB
from tests.helpers.agent import make_config
from tests.helpers.loop import Gate, answered_meanwhile
from tests.helpers.process import kill_9_when
from tests.helpers.wait import eventually



def gate_audit_appends(monkeypatch) -> Gate:
    """Every audit day file opened from now on appends (an fsync'd write) only when the gate opens."""
    gate = Gate()
    real = agent.audit.SegmentDB

    def opened(path, *args, **kwargs):
        db = real(path, *args, **kwargs)
        db.storage.append = gate.wrap(db.storage.append)
        return db
    monkeypatch.setattr(agent.audit, "SegmentDB", opened)
    return gate


def on_disk(directory: Path) -> list[dict]:
    """Every entry in the day files, in the order written."""
    out: list[dict] = []
    for path in sorted(directory.glob("*.seg")):
        db = SegmentDB(str(path))
        try:
            out.extend(dict(doc) for doc in db.table("audit").all())
        finally:
            db.close()
    return out


async def test_audit_entries_are_written_off_the_loop_in_order_before_the_answer(tmp_path, start_agent,
                                                                                monkeypatch):
    running = await start_agent(make_config(tmp_path))
    gate = gate_audit_appends(monkeypatch)  # before the first entry: its day file is opened gated
    audit = running.agent.audit

    first = asyncio.create_task(running.call("POST", "/organizations", json={"name": "A", "level": "dso"}))
    await running.wait_for(gate.entered.is_set)
    later = []
    for name in ("B", "C"):
        later.append(asyncio.create_task(running.call("POST", "/organizations", json={"name": name, "level": "dso"})))
        await running.wait_for(lambda: audit.queued == len(later))  # its entry is queued
    later.append(asyncio.create_task(running.call("POST", "/households", json={})))
    await running.wait_for(lambda: audit.queued == 3)
    await answered_meanwhile(running, first, *later)
    gate.open()
    results = await asyncio.gather(first, *later)
    gate.check()
    assert [status for status, _ in results] == [201, 201, 201, 201], results
    # one append for the first entry, one for the three queued while it was written: one fsync for them all
    assert len(gate.calls) == 2

    entries = on_disk(tmp_path / "store" / "audit")
    assert [(e["action"], e.get("organization_id") or e.get("household_id")) for e in entries] == [
        ("organization.create", results[0][1]["id"]), ("organization.create", results[1][1]["id"]),
        ("organization.create", results[2][1]["id"]), ("household.create", results[3][1]["id"])]
    status, body = await running.call("GET", "/audit?since=0")
    assert status == 200 and [e["action"] for e in body["entries"]][-4:] == [e["action"] for e in entries]


async def test_queued_audit_entries_survive_a_clean_stop_in_order(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    config = replace(config, storage=replace(config.storage, flush_seconds=3600))  # no periodic flush meanwhile
    running = Agent(config)
    await running.start()
    gate = gate_audit_appends(monkeypatch)
    # what the trigger runner and the webhook pushes log: recorded on the loop, nobody waits for the disk; the
    # pushes (durable=False) are written by the stop at the latest
    recorded = [running.audit.record("org_x", "organization", "trigger.action", seq=0)]
    recorded += [running.audit.record("org_x", "organization", "data.push", seq=i, durable=False)
                 for i in range(1, 60)]
    await eventually(gate.entered.is_set, what="the log's first write held in its thread")  # not yet, under load
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{running.port}/health") as resp:
            assert resp.status in (200, 503)  # answered while the log's first write waits
    stopping = asyncio.create_task(running.stop())
    gate.open()
    await stopping
    gate.check()
    assert [e["seq"] for e in on_disk(tmp_path / "store" / "audit")] == [e["seq"] for e in recorded]


async def test_audit_durable_entries_are_settled_and_disk_errors_keep_the_entries(tmp_path, monkeypatch):
    log = agent.audit.AuditLog(tmp_path)
    await log.record_durable("org_x", "organization", "data.read", seq=0)
    assert [e["seq"] for e in on_disk(tmp_path)] == [0]

    real_insert = log._insert
    failing = {"on": True}

    def insert(day, entries):
        if failing["on"]:
            raise OSError(28, "No space left on device")
        real_insert(day, entries)
    monkeypatch.setattr(log, "_insert", insert)
    try:
        await log.record_durable("org_x", "organization", "data.read", seq=1)
    except OSError as err:
        assert err.errno == 28
    else:
        raise AssertionError("a refused entry must fail its request")
    log.record("org_x", "organization", "trigger.action", seq=2)
    failing["on"] = False
    await log.record_durable("org_x", "organization", "data.read", seq=3)
    await log.aclose()
    assert [e["seq"] for e in on_disk(tmp_path)] == [0, 1, 2, 3]  # kept, and still in order


WRITER = textwrap.dedent("""\
    import asyncio, sys
    from agent.audit import AuditLog

    async def main():
        log = AuditLog(sys.argv[1])
        seq = 0
        while True:
            log.record("org_x", "organization", "trigger.action", seq=seq)
            log.record("org_x", "organization", "data.push", seq=seq + 1, durable=False)
            await log.record_durable("org_x", "organization", "data.read", seq=seq + 2)
            print(seq + 2, flush=True)  # acknowledged: on disk
            seq += 3

    asyncio.run(main())
""")


def test_audit_after_kill_9_holds_every_acknowledged_entry_and_a_prefix_in_order(tmp_path):
    directory = tmp_path / "audit"
    acknowledged = kill_9_when(WRITER, [str(directory)], 600)  # while it keeps recording and writing
    seqs = [e["seq"] for e in on_disk(directory)]
    assert seqs == list(range(len(seqs))), "entries out of order or missing in between"
    assert len(seqs) > acknowledged, "an acknowledged entry was lost"
