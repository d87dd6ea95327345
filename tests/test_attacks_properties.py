"""Properties of the one door (hypothesis), against a running agent on a stepped clock where they are about what
organizations observe, and against the pure parts with an independent method where they are arithmetic:

- a window answered twice (live, history, another query string) gives the same answer;
- coarse windows are derived from fine ones (a minute's energy is the sum of its sixty seconds');
- the audit never lets the exact sums it released isolate a household (checked by rank over the reals);
- the ledger never lets a household's loss over any horizon exceed the cap.

Small example counts: the file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.release.audit import admissible, isolated
from agent.release.ledger import DAY, Ledger
from tests.helpers.agent import RunningAgent, make_config
from tests.helpers.clock import StepClock, T0

AGENT_EXAMPLES = settings(max_examples=4, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])


class World:
    """One agent for the module, on its own event loop in a thread (hypothesis drives it synchronously):
    a dso and a supplier organization with 12 consenting households, and a pool for random cohorts."""

    def __init__(self, tmp_path):
        self.clock = StepClock(T0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningAgent = self.run(self._start(make_config(tmp_path)))

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, config) -> RunningAgent:
        from agent.service import Agent

        agent = Agent(config, clock=self.clock)
        await agent.start()
        running = RunningAgent(agent)
        self.dso = await running.create_org("Grid", "dso")
        self.supplier = await running.create_org("Supplier", "supplier")
        self.homes = [await running.create_household() for _ in range(12)]
        for org_id, _ in (self.dso, self.supplier):
            for _, token in self.homes:
                status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token)
                assert status == 200
        return running

    def close(self) -> None:
        async def stop():
            await self.running.http.close()
            await self.running.agent.stop()
        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # --- moves ---
    def fresh(self, seconds: int) -> float:
        """Jump past the audit period and the hold-over, to the start of a whole window of this width."""
        self.clock.step(1000)
        self.clock.step(seconds - self.clock.now % seconds)
        return self.clock.now

    def post(self, token: str, watts: float) -> None:
        status, body = self.run(self.running.call("POST", "/readings", token=token, json={
            "timestamp": self.clock.now, "power_import_w": watts, "power_export_w": 0.0}))
        assert status == 201, body

    def get(self, key: str, query: str, path: str = "/data"):
        return self.run(self.running.call("GET", f"{path}?{query}", token=key))

    def history(self, key: str, window: str, start: float, seconds: int) -> dict:
        status, body = self.get(key, f"window={window}&since={start}&until={start + seconds}")
        assert status == 200, body
        return body


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("world"))
    yield w
    w.close()


watts = st.floats(min_value=0, max_value=20_000, allow_nan=False).map(lambda w: round(w, 3))


# --- a window answered twice ------------------------------------------------------------------------------------
@AGENT_EXAMPLES
@given(values=st.lists(st.one_of(st.none(), watts), min_size=12, max_size=12))
def test_a_window_answered_twice_gives_the_same_answer(world, values):
    start = world.fresh(900)
    for (_, token), w in zip(world.homes, values):
        if w is not None:
            world.post(token, w)
    world.clock.step(1)
    _, dso_key = world.dso
    live = world.get(dso_key, "window=1s")
    again = world.history(dso_key, "1s", start, 1)
    twice = world.history(dso_key, "1s", start, 1)
    assert again == twice
    if live[0] == 200:
        assert again["released"] == [live[1]]
    else:
        assert [{k: v for k, v in r.items() if k != "window_start"} for r in again["refused"]] == [live[1]]
    world.clock.step(899)
    _, key = world.supplier
    answers = [world.get(key, "window=15m"), world.get(key, "window=15m&clamp_w=7", "/data/dp"),
               world.get(key, "window=15m")]
    assert all(a == answers[0] for a in answers) and answers[0][0] == 200
    assert world.history(key, "15m", start, 900)["released"] == [answers[0][1]]


# --- coarse from fine --------------------------------------------------------------------------------------------
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seconds=st.lists(st.lists(watts, min_size=12, max_size=12), min_size=60, max_size=60),
       gap=st.tuples(st.integers(0, 59), st.integers(0, 20)))


def test_a_minute_is_the_sum_of_its_seconds(world, seconds, gap):
    start = world.fresh(60)
    silent = range(gap[0], gap[0] + gap[1])
    for s, row in enumerate(seconds):
        for i, ((_, token), w) in enumerate(zip(world.homes, row)):
            if not (i == 0 and s in silent):  # household 0's datalogger may pause
                world.post(token, w)
        world.clock.step(1)
    _, key = world.dso
    fine = world.history(key, "1s", start, 60)
    minute = world.history(key, "1m", start, 60)
    if len(fine["released"]) == 60:
        (body,) = minute["released"]
        assert body["energy_import_wh"] == pytest.approx(sum(b["energy_import_wh"] for b in fine["released"]),
                                                         abs=0.06 * 0.001 * 60)
        assert body["consumption_w"] == pytest.approx(sum(b["consumption_w"] for b in fine["released"]) / 60,
                                                      abs=1e-3)
    else:
        assert minute["refused"][0]["error"] == "incomplete"


@AGENT_EXAMPLES
@given(values=st.lists(st.lists(watts, min_size=12, max_size=12), min_size=4, max_size=4))
def test_an_hour_is_the_sum_of_its_quarters(world, values):
    start = world.fresh(3600)
    for row in values:
        for (_, token), w in zip(world.homes, row):
            world.post(token, w)
        world.clock.step(900)
    _, key = world.supplier
    quarters = world.history(key, "15m", start, 3600)["released"]
    (hour,) = world.history(key, "1h", start, 3600)["released"]
    assert len(quarters) == 4
    assert hour["energy_import_wh"] == pytest.approx(sum(q["energy_import_wh"] for q in quarters), abs=1e-3)
    assert hour["energy_export_wh"] == pytest.approx(sum(q["energy_export_wh"] for q in quarters), abs=1e-3)


# --- the audit -----------------------------------------------------------------------------------------------------
def rank_isolated(cohorts: list[frozenset[str]], people: list[str]) -> set[str]:
    """Independent of audit.py: household i is isolated iff adding e_i to the cohorts' 0/1 matrix does not raise
    its rank over the reals (numpy's SVD rank)."""
    rows = [c for c in cohorts if c]
    if not rows:
        return set()
    matrix = np.array([[1.0 if p in c else 0.0 for p in people] for c in rows])
    base = np.linalg.matrix_rank(matrix)
    out = set()
    for i, p in enumerate(people):
        unit = np.zeros(len(people))
        unit[i] = 1.0
        if np.linalg.matrix_rank(np.vstack([matrix, unit])) == base:
            out.add(p)
    return out


PEOPLE = [f"h{i}" for i in range(8)]
cohort = st.frozensets(st.sampled_from(PEOPLE), min_size=1)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(cohorts=st.lists(cohort, min_size=1, max_size=6), known=st.frozensets(st.sampled_from(PEOPLE), max_size=2))
def test_the_audit_never_lets_released_sums_isolate_a_household(cohorts, known):
    """The door's loop: each candidate cohort (related households' values known, so out of the vectors) is
    released only if admissible (against an attacker who also knows any one household) beside those already
    released. Whatever the order and the cohorts, the released ones, and any subset of them, isolate nobody who
    is not known, even with any one more household's value known (checked by brute force over the reals)."""
    from agent.release.audit import admissible_if_one_known

    released: list[frozenset[str]] = []
    for c in sorted(cohorts, key=lambda c: (-len(c), sorted(c))):
        if admissible_if_one_known(released, c - known):
            released.append(c - known)
    assert isolated(released) == rank_isolated(released, PEOPLE) == set()
    for mask in range(1, 2 ** len(released)):
        subset = [c for i, c in enumerate(released) if mask >> i & 1]
        assert rank_isolated(subset, PEOPLE) == set()
        for y in PEOPLE:
            assert rank_isolated([c - {y} for c in subset], PEOPLE) <= {y}
    assert all(admissible(released[:i], c) for i, c in enumerate(released))  # stricter than the plain audit


@settings(max_examples=300, deadline=None, derandomize=True)
@given(cohorts=st.lists(cohort, min_size=1, max_size=7))
def test_the_audit_agrees_with_rank_over_the_reals(cohorts):
    assert isolated(cohorts) == rank_isolated(cohorts, PEOPLE)


@AGENT_EXAMPLES
@given(consents=st.lists(st.frozensets(st.integers(0, 11), min_size=10), min_size=2, max_size=3))
def test_released_exact_sums_of_random_organizations_isolate_nobody(world, consents):
    """Through the agent: new dso organizations with random cohorts (every member posts), beside the ones of
    earlier examples; the cohorts of the sums released for one second isolate nobody."""
    ids = [h for h, _ in world.homes]
    cohorts = world.__dict__.setdefault("cohorts", {world.dso[1]: frozenset(ids)})  # key -> consenting
    for members in consents:
        org_id, key = world.run(world.running.create_org("Random", "dso"))
        for i in members:
            status, _ = world.run(world.running.call("PUT", f"/households/me/consents/{org_id}/aggregates",
                                                     token=world.homes[i][1]))
            assert status == 200
        cohorts[key] = frozenset(ids[i] for i in members)
    start = world.fresh(1)
    for i, (_, token) in enumerate(world.homes):
        world.post(token, 100.0 + i)
    world.clock.step(1)
    released = [c for key, c in cohorts.items() if world.history(key, "1s", start, 1)["released"]]
    assert released  # the largest cohort at least
    assert rank_isolated(released, ids) == set()


# --- the ledger ------------------------------------------------------------------------------------------------------
HORIZON, CAP = 5, 1.0
charge_step = st.tuples(st.integers(0, 3 * 3600 * 24 // 3600), st.frozensets(st.sampled_from("abcd"), min_size=1),
                        st.sampled_from([0.05, 0.1, 0.25, 0.5]), st.booleans())


@settings(max_examples=200, deadline=None, derandomize=True)
@given(steps=st.lists(charge_step, min_size=1, max_size=60))
def test_the_ledger_never_exceeds_the_cap_over_any_horizon(steps):
    """The door's rule (only households that afford the release are in it, then all are charged), with releases
    in time order, some for the day before (trigger statistics) and forgetting as the door does. Checked against
    an independent record of every charge: no household's sum over any `HORIZON` consecutive days exceeds the
    cap. (Forgetting up to `now` itself, as the door first did, lost the oldest day of yesterday's horizon: a
    charge to yesterday after it could pass the cap.)"""
    ledger = Ledger(HORIZON, CAP)
    charges: list[tuple[str, int, float]] = []
    now = 0.0
    for hours, households, rho, yesterday in steps:
        now += hours * 3600
        moment = now - DAY if yesterday else now
        members = [h for h in households if ledger.affords(h, rho, moment)]
        ledger.charge(members, rho, moment)
        charges += [(h, int(moment // DAY), rho) for h in members]
        ledger.forget_before(now - DAY)  # as the door does (agent/release/door.py: _prune, _load)
    for household in "abcd":
        days = [d for h, d, _ in charges if h == household]
        # HORIZON days of real time touch HORIZON + 1 UTC days: no such run of days may hold more than the cap
        for first in range(min(days, default=0) - HORIZON - 1, max(days, default=0) + 1):
            total = sum(r for h, d, r in charges if h == household and first <= d <= first + HORIZON)
            assert total <= CAP * (1 + 1e-9), (household, first, total)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(cohorts=st.lists(cohort, min_size=1, max_size=6))
def test_the_one_known_audit_agrees_with_rank_after_removing_each_household(cohorts):
    """audit.isolated_if_one_known (the audit the ONE_OWN attacks need) against brute force: for each household
    y, the households isolated once y's column is removed (its value known)."""
    from agent.release.audit import isolated_if_one_known

    expected = rank_isolated(cohorts, PEOPLE)
    for y in PEOPLE:
        expected |= rank_isolated([c - {y} for c in cohorts], PEOPLE) - {y}
    assert isolated_if_one_known(cohorts) == expected


def test_the_one_known_audit_refuses_the_swap():
    from agent.release.audit import admissible_if_one_known

    common = frozenset(f"c{i}" for i in range(10))
    assert admissible([common | {"x"}], common | {"y"})  # what the door does today
    assert not admissible_if_one_known([common | {"x"}], common | {"y"})
    assert admissible_if_one_known([common | {"x"}], common | {"y", "z"})  # two unknown households apart
