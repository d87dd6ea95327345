"""agent/triggers/lanes.py on its own: a lane admits at most slots + queue actions and counts the rest dropped;
an attempt holds a slot only while it runs; lanes share nothing. No agent, no HTTP."""

from __future__ import annotations

import asyncio

from agent.triggers.lanes import Lane, Lanes


def test_a_lane_admits_up_to_its_capacity_and_counts_the_rest():
    lane = Lane(slots=2, queue=1)
    assert [lane.admit() for _ in range(5)] == [True, True, True, False, False]
    assert (lane.admitted, lane.dropped) == (3, 2)
    lane.done()
    assert lane.admit() and not lane.admit()  # a place given back is a place again
    assert (lane.admitted, lane.dropped) == (3, 3)


async def test_an_attempt_holds_one_of_the_slots_while_it_runs():
    lane = Lane(slots=2, queue=10)
    release = asyncio.Event()
    peak = 0

    async def attempt():
        nonlocal peak
        async with lane.slot():
            peak = max(peak, lane.in_flight)
            await release.wait()

    tasks = [asyncio.create_task(attempt()) for _ in range(5)]
    while lane.in_flight < 2:
        await asyncio.sleep(0)
    for _ in range(10):  # the other three stay waiting for a slot, however long we let them run
        await asyncio.sleep(0)
    assert lane.in_flight == 2
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2 and lane.in_flight == 0


async def test_a_slot_is_given_back_when_the_attempt_fails():
    lane = Lane(slots=1, queue=0)
    try:
        async with lane.slot():
            raise ConnectionError("tarpit")
    except ConnectionError:
        pass
    assert lane.in_flight == 0
    async with lane.slot():  # not held by the failed attempt
        assert lane.in_flight == 1


def test_lanes_are_per_owner_and_share_nothing():
    lanes = Lanes(slots=1, queue=0)
    assert lanes["org_a"] is lanes["org_a"] and lanes["org_a"] is not lanes["org_b"]
    assert lanes["org_a"].admit() and not lanes["org_a"].admit()
    assert lanes["household_1"].admit()  # another owner's lane is untouched by org_a's full one
    assert lanes.snapshot() == {"org_a": {"admitted": 1, "in_flight": 0, "dropped": 1},
                                "org_b": {"admitted": 0, "in_flight": 0, "dropped": 0},
                                "household_1": {"admitted": 1, "in_flight": 0, "dropped": 0}}


def test_forget_idle_drops_only_lanes_with_nothing_admitted_or_dropped():
    lanes = Lanes(slots=1, queue=0)
    lanes["busy"].admit()
    lanes["dropping"].admit()
    lanes["dropping"].admit()  # dropped: kept so the count stays visible
    lanes["dropping"].done()
    lanes["idle"]
    lanes.forget_idle()
    assert set(lanes.snapshot()) == {"busy", "dropping"}
