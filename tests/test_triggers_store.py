"""The debounce log stays bounded while the agent runs, and a compacted log loads the same."""

from __future__ import annotations

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
