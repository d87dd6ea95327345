"""The fleet outbox (agent/fleet/outbox.py) on a real segment file, no agent and no NATS: releases on disk before
they are pending, leaving only once acknowledged, each with its sequence and message id for good (a re-send after a
restart carries the same id), the stream sequence and the cursor kept, compaction and a reopen losing nothing.
tests/test_fleet_hub.py and tests/test_fleet_cluster.py send them to a real hub."""

from __future__ import annotations

import pytest

from agent.fleet import outbox as outbox_module
from agent.fleet.outbox import FleetOutbox


@pytest.fixture
def path(tmp_path):
    return tmp_path / "fleet-outbox.seg"


def body(seq: int) -> dict:
    return {"seq": seq, "households": 12}


def test_messages_are_numbered_pending_in_order_and_leave_when_acknowledged(path):
    box = FleetOutbox(path, max_messages=10)
    first = box.enqueue("15m", 900, body)
    second = box.enqueue("1h", 3600, body)
    assert (first.seq, second.seq) == (1, 2) and first.payload == {"seq": 1, "households": 12}
    assert first.id.endswith("-1") and first.id != second.id and box.head() is first and box.depth == 2
    box.ack(first, stream_seq=41)
    assert box.head() is second and box.stream_seq == 41 and box.acked_total == 1
    box.close()


def test_a_reopened_outbox_resends_the_same_messages_with_the_same_ids(path):
    box = FleetOutbox(path, max_messages=10)
    sent = [box.enqueue("15m", 900 * i, body) for i in range(1, 4)]
    box.ack(sent[0], stream_seq=7)
    epoch = box.epoch
    box.close()
    again = FleetOutbox(path, max_messages=10)
    assert [(m.seq, m.id, m.start, m.payload) for m in again.pending] == [
        (m.seq, m.id, m.start, m.payload) for m in sent[1:]]
    assert again.stream_seq == 7 and again.next_seq == 4 and again.cursor == {"15m": 2700}
    assert again.epoch == epoch and again.acked_total == 1
    assert again.enqueue("15m", 3600, body).seq == 4
    again.close()
    assert FleetOutbox(path, 10).epoch == epoch


def test_a_new_file_is_a_new_epoch(tmp_path):
    one, two = FleetOutbox(tmp_path / "a.seg", 10), FleetOutbox(tmp_path / "b.seg", 10)
    assert one.epoch and two.epoch and one.epoch != two.epoch
    one.close()
    two.close()


def test_the_cursor_is_the_newest_window_per_width(path):
    box = FleetOutbox(path, max_messages=10)
    box.enqueue("15m", 1800, body)
    box.enqueue("15m", 900, body)  # an older one caught up later does not set the cursor back
    box.enqueue("1h", 3600, body)
    assert box.cursor == {"15m": 1800, "1h": 3600}
    box.close()
    assert FleetOutbox(path, 10).cursor == {"15m": 1800, "1h": 3600}


def test_full_means_as_many_pending_as_allowed(path):
    box = FleetOutbox(path, max_messages=2)
    first = box.enqueue("15m", 900, body)
    assert not box.full
    box.enqueue("15m", 1800, body)
    assert box.full
    box.ack(first, 1)
    assert not box.full
    box.close()


def test_compaction_keeps_what_is_pending_and_the_numbers(path, monkeypatch):
    monkeypatch.setattr(outbox_module, "COMPACT_AFTER", 3)
    box = FleetOutbox(path, max_messages=100)
    sent = [box.enqueue("15m", 900 * i, body) for i in range(1, 6)]
    size_before = path.stat().st_size
    for i, message in enumerate(sent[:3]):
        box.ack(message, stream_seq=100 + i)
    assert path.stat().st_size < size_before + 200  # rewritten with only the two pending and the meta record
    epoch = box.epoch
    box.close()
    again = FleetOutbox(path, max_messages=100)
    assert [(m.seq, m.id) for m in again.pending] == [(m.seq, m.id) for m in sent[3:]]
    assert (again.next_seq, again.stream_seq, again.acked_total, again.epoch) == (6, 102, 3, epoch)
    assert again.cursor == {"15m": 4500}
    again.ack(again.head(), 103)
    again.close()
    last = FleetOutbox(path, max_messages=100)
    assert [m.seq for m in last.pending] == [5] and last.acked_total == 4 and last.stream_seq == 103
    last.close()


def test_after_a_compaction_of_everything_the_numbers_go_on(path, monkeypatch):
    """With nothing pending the meta record alone says where the numbers are: a restart that numbered from 1 again
    in the same epoch would look to the hub like messages it already has."""
    monkeypatch.setattr(outbox_module, "COMPACT_AFTER", 2)
    box = FleetOutbox(path, max_messages=100)
    for i in (1, 2):
        box.ack(box.enqueue("15m", 900 * i, body), stream_seq=50 + i)
    box.close()
    again = FleetOutbox(path, max_messages=100)
    assert again.pending == [] and (again.next_seq, again.stream_seq, again.cursor) == (3, 52, {"15m": 1800})
    assert again.enqueue("15m", 2700, body).seq == 3
    again.close()
