"""After a kill -9, the `gap` for the time the agent was down starts where the outbox last noted a decided window.
Windows filtered (or withheld) write nothing, so the outbox notes the last one decided now and then
(NOTE_DECIDED_S): the gap a restart makes covers at most that much of such windows before the crash, not
everything since the last window queued. What a restart after a kill -9 reads is the outbox file as it is now."""

from __future__ import annotations

from datetime import datetime

from agent.delivery.engine import NOTE_DECIDED_S
from agent.delivery.outbox import Outbox
from tests.helpers.delivery import town  # noqa: F401  (town: the fixture)
from tests.helpers.receiver import receiver  # noqa: F401  (receiver: the fixture)

WINDOWS = 2 * NOTE_DECIDED_S + 10


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_filtered_windows_are_noted_so_a_crash_gap_starts_near_the_crash(town, receiver):  # noqa: F811
    t = await town()
    sub = await t.subscribe(receiver.url, filter={"deadband": {"fields": ["consumption_w"], "absolute": 10**6}})
    for _ in range(WINDOWS):
        await t.window(100.0)  # the first is sent, every later one filtered by the deadband
    state = await t.state(sub["id"])
    assert state["delivery"]["filtered"] >= WINDOWS - 2
    last_decided_end = t.running.agent.releases.last_settled("1s") + 1
    path = t.running.agent.config.storage.path / "delivery" / "outbox" / f"{sub['id']}.seg"
    on_disk = Outbox(path, max_messages=100)  # what a start after a kill -9 finds
    resume = max(seconds(s) for s in (on_disk.last_window_end, on_disk.decided_until) if s)
    on_disk.close()
    assert last_decided_end - resume <= NOTE_DECIDED_S + 1  # without the note: WINDOWS seconds behind
    assert resume <= last_decided_end  # never past what was decided (that would hide windows: say too little)
