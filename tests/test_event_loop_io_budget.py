"""A noisy release and its charge to the households' ledger are on disk before anyone can see the release, written
off the event loop, and survive a restart; a disk that refuses them releases nothing, then or later.

The first design's per-organization daily budget is gone (agent/release/ledger.py: one ledger per household,
shared by every organization, rebuilt from the release log). A noisy window's records (the body, its cohort and
its rho) are fsync'd to the release log in a worker thread before the pass puts them where `answer` finds them.

Same method as tests/test_event_loop_io.py: the release log's write waits at a gate in whatever thread runs it
until the test opens it; /health must be answered meanwhile and GET /data must not be. No durations are measured.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.privacy import dp
from agent.release import Refusal
from agent.release.log import ReleaseLog
from tests.helpers.agent import make_config
from tests.helpers.clock import StepClock
from tests.helpers.loop import Gate, answered_meanwhile
from tests.helpers.privacy import MORNING as T0, feed, households

pytestmark = pytest.mark.skipif(not dp.available(), reason="OpenDP is not installed")
FULL = OSError(28, "No space left on device")


@pytest.fixture
async def noisy_town(tmp_path, start_agent):
    """12 households consenting to two supplier organizations (a noisy level); one 15-minute window has ended
    and nobody has asked for it yet."""
    clock = StepClock(T0 - 60)
    config = make_config(tmp_path)
    running = await start_agent(config, clock=clock)
    orgs = [await running.create_org(f"Supplier {n}", "supplier") for n in "AB"]
    homes = await households(running, "", 12)
    for _, token in homes:
        for org_id, _ in orgs:
            status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token)
            assert status == 200
    await feed(running, clock, [h for h, _ in homes], [T0])
    clock.now = T0 + 900 + 20
    return running, clock, config, orgs, homes


def charged_on_disk(directory, start: int) -> tuple[list[dict], set[str]]:
    """The noisy records of one window on disk that carry its charge (rho), and the cohort they charge."""
    log = ReleaseLog(directory, keep_days=31)
    try:
        docs = list(log.load(T0 + 1000, fine_since=T0))
    finally:
        log.close()
    cohorts = {d["h"]: set(d["m"]) for d in docs if d["t"] == "c"}
    charged = [d for d in docs if d["t"] == "r" and d["s"] == start and d["w"] == 900 and "p" in d]
    return charged, set().union(*(cohorts[d["c"]] for d in charged)) if charged else set()


async def test_a_noisy_answer_is_visible_only_once_its_record_and_charge_are_on_disk(noisy_town, start_agent,
                                                                                     monkeypatch):
    running, clock, config, ((a_id, a_key), (b_id, b_key)), homes = noisy_town
    releases = running.agent.releases
    directory = releases.log.directory
    gate = Gate()
    monkeypatch.setattr(releases.log, "write", gate.wrap(releases.log.write))
    first = asyncio.create_task(running.call("GET", "/data?window=15m", token=a_key))
    await running.wait_for(gate.entered.is_set)  # the pass that decides the window is writing it
    second = asyncio.create_task(running.call("GET", "/data/dp?window=15m", token=b_key))
    await answered_meanwhile(running, first, second)
    # neither the record nor its charge is anywhere an organization could see it, and it is not on disk yet
    assert isinstance(releases.answer(a_id, "15m", T0), Refusal)
    assert releases.answer(a_id, "15m", T0).error == "not_settled"
    assert charged_on_disk(directory, T0)[0] == []
    gate.open()
    (s1, body), (s2, other) = await asyncio.gather(first, second)
    gate.check()
    assert (s1, s2) == (200, 200), (body, other)
    assert body["privacy"]["kind"] == other["privacy"]["kind"] == "noisy"  # each organization its own draw
    charged, cohort = charged_on_disk(directory, T0)
    # the answers sent are the records on disk, each charged once
    assert sorted((d["o"], d["b"] == body, d["b"] == other) for d in charged) == sorted([(a_id, True, False),
                                                                                     (b_id, False, True)])
    assert [d["p"] for d in charged] == [config.levels["supplier"].dp.rho] * 2
    assert cohort == {h for h, _ in homes}

    # a restart rebuilds the ledger from the log and answers with the same record
    spent = releases.ledger_of(homes[0][0])["spent_rho"]
    assert spent == pytest.approx(2 * config.levels["supplier"].dp.rho)
    await running.http.close()
    await running.agent.stop()
    restarted = await start_agent(config, clock=clock)
    assert restarted.agent.releases.ledger_of(homes[0][0])["spent_rho"] == pytest.approx(spent)
    answers = await restarted.agent.releases.history(a_id, "15m", [T0], None)
    assert answers[T0] == body


async def test_a_refused_disk_releases_nothing_and_the_window_is_never_drawn_again(noisy_town, start_agent,
                                                                                    monkeypatch):
    running, clock, config, ((a_id, a_key), _), homes = noisy_town
    releases = running.agent.releases
    write = releases.log.write
    refused: list[dict] = []

    def full(batches):
        refused.append(batches)
        raise FULL
    monkeypatch.setattr(releases.log, "write", full)
    status, body = await running.call("GET", "/data?window=15m", token=a_key)
    assert status == 409 and body["error"] == "storage_error" and "consumption_w" not in body, body
    assert refused and any("p" in d for docs in refused[0].values() for d in docs)  # the charge was in that write
    monkeypatch.setattr(releases.log, "write", write)  # the disk is back
    status, again = await running.call("GET", "/data?window=15m", token=a_key)
    assert status == 409 and again["error"] == "storage_error"  # decided once: no second draw of the window
    await releases.flush()  # the refusal itself is recorded
    assert charged_on_disk(releases.log.directory, T0)[0] == []
    await running.http.close()
    await running.agent.stop()
    restarted = await start_agent(config, clock=clock)
    assert restarted.agent.releases.ledger_of(homes[0][0])["spent_rho"] == 0  # nothing charged on disk
    answers = await restarted.agent.releases.history(a_id, "15m", [T0], None)
    assert isinstance(answers[T0], Refusal) and answers[T0].error == "storage_error"
