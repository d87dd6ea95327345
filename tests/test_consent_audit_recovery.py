"""A consent change is written to the registry first, then its audit entry: a crash between the two (issue 16,
finding 5) left a durable change with no entry. At start the agent writes the missing entries, marked recovered,
and never writes one twice."""

from __future__ import annotations

from agent.audit import AuditLog, unaudited
from agent.registry import ConsentChange, Registry
from tests.helpers.agent import make_config


def consent_entries(store):
    log = AuditLog(store / "audit")
    try:
        return [e for e in log.entries(since=0, limit=10**9) if e["action"].startswith("consent.")]
    finally:
        log.close()


async def test_a_change_without_its_entry_gets_it_at_start(tmp_path, start_agent):
    config = make_config(tmp_path)
    running = await start_agent(config)
    org_id, _ = await running.create_org()
    household_id, token = await running.create_household()
    status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token)
    assert status == 200
    await running.http.close()
    await running.agent.stop()
    [audited] = consent_entries(config.storage.path)
    assert audited["who"] == household_id and "changed_at" in audited and not audited.get("recovered")

    # The crash between the two writes: the registry has the change, the audit log never got it.
    registry = Registry(config.storage.path / "registry.seg")
    change = registry.set_consent(household_id, org_id, "aggregates", False)
    registry.close()

    again = await start_agent(config)
    await again.wait_for(lambda: len(consent_entries(config.storage.path)) == 2)  # a task after the start
    entries = consent_entries(config.storage.path)
    assert [(e["action"], e.get("recovered", False)) for e in entries] == [("consent.grant", False),
                                                                           ("consent.revoke", True)]
    assert entries[1]["changed_at"] == change.at and entries[1]["who"] == household_id
    await again.http.close()
    await again.agent.stop()
    third = await start_agent(config)  # and a third start writes nothing more
    await third.wait_for(lambda: all(t.done() for t in third.agent._tasks if t.get_name() == "consent audit check"))
    assert len(consent_entries(config.storage.path)) == 2


def test_entries_from_before_changed_at_match_by_time():
    change = ConsentChange("hh", "org", "aggregates", True, 1000.0)
    legacy = {"who": "hh", "action": "consent.grant", "organization_id": "org", "service": "aggregates", "at": 1000.4}
    assert unaudited([legacy], [change]) == []
    assert unaudited([{**legacy, "at": 1010.0}], [change]) == [change]
    assert unaudited([{**legacy, "action": "consent.revoke"}], [change]) == [change]
