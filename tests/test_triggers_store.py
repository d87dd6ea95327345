"""The debounce log stays bounded while the agent runs, and a compacted log loads the same."""

from __future__ import annotations

from agent.triggers.model import KINDS, Trigger
from agent.triggers.store import FIRINGS_COMPACT_AFTER, TriggerStore


def test_firings_log_is_compacted_while_running(tmp_path):
    store = TriggerStore(tmp_path)
    last = {}
    for round_no in range(3):
        households = [f"hh_{i:04x}" for i in range(FIRINGS_COMPACT_AFTER // 2 + 1)]
        store.record_firings("trg_1", households, 1000.0 + round_no)
        last.update({("trg_1", h): 1000.0 + round_no for h in households})
    assert store.compaction_due()
    before = (tmp_path / "firings.seg").stat().st_size
    store.compact_firings(dict(last), {})
    assert not store.compaction_due()
    assert (tmp_path / "firings.seg").stat().st_size < before / 2
    lines = store.firings_db.table("last").all()
    assert {(d["t"], d["h"]): d["at"] for d in lines} == last
    store.close()


def test_events_disclosed_per_day_survive_a_restart_and_a_compaction(tmp_path):
    """The per-household daily bound on events to an organization must not reset when the agent restarts."""
    day = 20_000 * 86400.0
    store = TriggerStore(tmp_path)
    store.record_firings("trg_1", ["hh_a", "hh_b"], day + 10, ("org_1", ["hh_a", "hh_b"]))
    store.record_firings("trg_2", ["hh_a"], day + 70, ("org_1", ["hh_a"]))
    store.record_firings("trg_2", ["hh_a"], day - 50, ("org_1", ["hh_a"]))  # the day before: not today's
    store.close()

    again = TriggerStore(tmp_path)
    _, _, debounce = again.load()
    assert debounce.events[("org_1", "hh_a")] == (20_000, 2) and debounce.events[("org_1", "hh_b")] == (20_000, 1)
    assert not debounce.event_allowed("org_1", "hh_a", day + 100, per_day=2)
    assert debounce.event_allowed("org_1", "hh_b", day + 100, per_day=2)
    assert debounce.event_allowed("org_1", "hh_a", day + 86400, per_day=2)  # a new UTC day
    again.compact_firings(dict(debounce.last), dict(debounce.cooldown), dict(debounce.events))
    again.close()
    third = TriggerStore(tmp_path)
    assert third.load()[2].events == debounce.events
    third.close()


def test_a_deleted_triggers_cooldown_holds_its_action_type_and_an_old_record_holds_every_type(tmp_path):
    """A deleted trigger's wait is written with its action type and holds only triggers of that type, also
    after a restart and a compaction; a record written before types were (no `a`) holds every type."""
    store = TriggerStore(tmp_path)
    store.remove("trg_gone", [("org_1", "hh_a", 1000.0, "notification")])
    store.firings_db.table("cooldown").insert({"o": "org_1", "h": "hh_b", "until": 1000.0})  # an old record
    store.close()

    def trigger(kind: str) -> Trigger:
        return Trigger(id=f"trg_{kind}", organization_id="org_1", parameters=[], source="", interval_s=60,
                       window="1m", action={"type": kind}, secret=None, created_at=0.0)

    for reopen in ("restart", "compaction"):
        again = TriggerStore(tmp_path)
        debounce = again.load()[2]
        assert not debounce.allowed(trigger("notification"), "hh_a", 999.0)
        assert debounce.allowed(trigger("webhook"), "hh_a", 999.0)
        assert debounce.allowed(trigger("notification"), "hh_a", 1000.0)
        assert not any(debounce.allowed(trigger(kind), "hh_b", 999.0) for kind in KINDS), reopen
        if reopen == "restart":
            again.compact_firings(dict(debounce.last), dict(debounce.cooldown), dict(debounce.events))
        again.close()
