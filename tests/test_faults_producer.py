"""The webhook producer between a window's decision and its outbox, on a stepped clock: a window it fails to make
(any exception, not only a disk's OSError) goes out inside a `gap` event, never vanishes; a window the release
module refused is never sent and never counted in a gap, though a gap's span may include it, and `lost_windows` is
exactly the released windows that could not be queued. (Issue 16's intermittent "window neither sent nor in a gap"
after a full disk was such a refused window: a consent revoked and granted again within it.)"""

from __future__ import annotations

import errno

from tests.helpers.delivery import town  # noqa: F401  (town: the fixture)
from tests.helpers.faults import (assert_every_window_accounted, assert_gap_counts_what_was_lost, refused_in,
                                  window_seconds)
from tests.helpers.receiver import receiver  # noqa: F401  (receiver: the fixture)
from tests.helpers.wait import eventually


async def refused_since_first_sent(t, receiver) -> set[int]:  # noqa: F811
    start = min(window_seconds(m["window_start"]) for m in receiver.messages() if m["type"] == "aggregate")
    status, body = await t.running.call("GET", f"/data?window=1s&since={start}&until={t.clock.now}", token=t.org_key)
    assert status == 200, body
    return refused_in(body)


async def gaps_then_aggregate(receiver) -> bool:
    kinds = [m["type"] for m in receiver.messages()]
    return "gap" in kinds and "aggregate" in kinds[kinds.index("gap"):]


async def test_a_window_whose_production_fails_is_inside_a_gap(town, receiver, monkeypatch):  # noqa: F811
    t = await town()
    await t.subscribe(receiver.url)
    releases = t.running.agent.releases
    for _ in range(3):
        await t.window()
    real_answer = releases.answer
    failing = {releases.last_settled("1s") + 1}  # the next window to be decided

    def answer(org_id, window, start, tag=None):
        if start in failing:
            raise RuntimeError("a bug between the decision and the outbox")
        return real_answer(org_id, window, start, tag)
    monkeypatch.setattr(releases, "answer", answer)
    for _ in range(3):
        await t.window()
    await eventually(lambda: gaps_then_aggregate(receiver), 10, "a gap, then aggregates")
    gap = next(m for m in receiver.messages() if m["type"] == "gap")
    refused = await refused_since_first_sent(t, receiver)
    assert not refused
    assert_gap_counts_what_was_lost(gap, refused)
    assert_every_window_accounted(receiver.messages(), refused)


async def test_a_refused_window_is_never_sent_nor_counted_in_a_gap(town, receiver, monkeypatch):  # noqa: F811
    t = await town()
    await t.subscribe(receiver.url)
    agent = t.running.agent
    org_id = next(iter(agent.registry.organizations))
    for _ in range(3):
        await t.window()
    outbox = next(iter(agent.delivery.outboxes.values()))
    real_enqueue = outbox.enqueue
    full = [True]

    def enqueue(*args, **kwargs):
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_enqueue(*args, **kwargs)
    monkeypatch.setattr(outbox, "enqueue", enqueue)

    async def revoked_for_a_moment():  # within one window: fewer than k_min consent throughout it
        path = f"/households/me/consents/{org_id}/aggregates"
        assert (await t.running.call("DELETE", path, token=t.tokens[0]))[0] == 200
        assert (await t.running.call("PUT", path, token=t.tokens[0]))[0] == 200
    # refused, then not queued, refused, not queued, not queued, refused: the refused ones at both ends of the span
    await revoked_for_a_moment()
    await t.window()
    await t.window()
    await revoked_for_a_moment()
    await t.window()
    await t.window()
    await t.window()
    await revoked_for_a_moment()
    await t.window()
    full[0] = False
    await t.window()
    await eventually(lambda: gaps_then_aggregate(receiver), 10, "a gap, then aggregates")
    gap = next(m for m in receiver.messages() if m["type"] == "gap")
    refused = await refused_since_first_sent(t, receiver)
    assert len(refused) == 3
    assert gap["lost_windows"] == 3
    assert_gap_counts_what_was_lost(gap, refused)
    assert_every_window_accounted(receiver.messages(), refused)
