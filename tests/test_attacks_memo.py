"""A one-off release (a day of anonymized rows, `releases.once`) whose record is lost beyond repair must never be
computed again: computed again after the operator marked a household related to an organization (left out of
releases from then on), the day's rows would come over different households, and the difference between the two
releases would be that household's rows (the same holds for a second noisy draw). The attack: the custodian gets
a day, the household is marked related, the memo's record is damaged on the SD card (both copies), the agent
restarts, and the custodian asks again, in several ways, across restarts. It is refused for good (409
`release_lost`), /health says so, and a day whose record is intact is still served."""

from __future__ import annotations

from agent.api.anonymized import SETTLE_S
from agent.store.records import scan_records
from tests.helpers.agent import make_config
from tests.helpers.clock import StepClock
from tests.helpers.privacy import DAY, feed, households
from tests.helpers.store import flip, record_spans

HOURS = [DAY + h * 3600 for h in range(24)]


def damage_memos(directory) -> int:
    """Flip a byte in both copies of every record holding a memo; returns how many copies."""
    damaged = 0
    for path in directory.glob("*.seg"):
        for offset, length in record_spans(path):
            records = scan_records(path.read_bytes()[offset:offset + length]).records
            if any(doc.get("t") == "o" for _, _, docs in records for doc in docs):
                flip(path, offset + length // 2)
                damaged += 1
    return damaged


async def test_a_lost_day_release_is_refused_for_good_never_made_again(tmp_path, start_agent):
    config = make_config(tmp_path)
    clock = StepClock(DAY - 600)
    running = await start_agent(config, clock=clock)
    org_id, org_key = await running.create_org("Custodian", "dso")
    homes = await households(running, org_id, 8)
    meters = [running.agent.registry.household(h).meter_id for h, _ in homes]
    await feed(running, clock, meters, HOURS + [DAY + 86400 + h * 3600 for h in range(24)])  # two days
    clock.now = DAY + 86400 + SETTLE_S + 60
    running.agent.store.flush()

    async def ask(day: int, since: int = 0, until: int = 86400):
        return await running.call("GET", f"/data/anonymized?from={day + since}&to={day + until}", token=org_key)
    status, first = await ask(DAY)
    assert status == 200, first
    assert (await ask(DAY)) == (200, first)  # recorded: the same answer
    # Left out of every release from now on (the operator marked it related to an organization).
    status, _ = await running.call("PATCH", f"/households/{homes[0][0]}", json={"related_organizations": [org_id]})
    assert status == 200

    directory = config.storage.path / "releases"
    await running.http.close()
    await running.agent.stop()
    assert damage_memos(directory) == 2
    running = await start_agent(config, clock=clock)
    for since, until in ((0, 86400), (3600, 7200), (0, 86400)):  # the day, a part of it, the day again
        status, body = await ask(DAY, since, until)
        assert status == 409 and body["error"] == "release_lost", body
    status, health = await running.call("GET", "/health")
    assert status == 503 and health["faults"]["releases_lost"]["keys"], health["faults"]
    # A day whose release was never made (or whose record is intact) is served: the refusal is of the lost one.
    clock.now = DAY + 2 * 86400 + SETTLE_S + 60
    running.agent.store.flush()
    status, second = await ask(DAY + 86400)
    assert status == 200, second
    assert (await ask(DAY + 86400)) == (200, second)

    # Later appends to the damaged day file (a damaged tail is cut by them) and a restart change nothing.
    await running.http.close()
    await running.agent.stop()
    running = await start_agent(config, clock=clock)
    status, body = await ask(DAY)
    assert status == 409 and body["error"] == "release_lost", body
    assert (await ask(DAY + 86400)) == (200, second)
