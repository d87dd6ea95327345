"""Nothing observable about evaluation time (SANDBOX-FINDINGS S3): actions leave at the window's release moment
(its end plus [triggers] release_delay_s, on the agent's clock), whatever the time the condition took; results
are held until then; a window not evaluated by then is dropped, never sent late.

Real locked workers, a real receiver; the agent's clock is stepped, so every assertion is on moments the runner
computes and on what was sent by which moment, never on a duration."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

from drivers.reading import iso
import pytest

from tests.helpers.agent import grant
from tests.helpers.clock import T0
from tests.helpers.receiver import Receiver
from tests.helpers.triggers import body, close_window, town, town_config  # noqa: F401  (town: the fixture)


# Spins for a time that depends on the value (1 W: 50 steps; 900 W: 45,000), well within its deadline.
SPINNER = """\
    def condition(household_power_consumption):
        n = 0
        for _ in range(min(int(household_power_consumption), 1000) * 50):
            n += 1
        return n >= 0
    """


class StampingReceiver(Receiver):
    """Notes the agent's clock as each request arrives."""

    clock = None

    async def handle(self, request):
        self.arrivals_on_clock.append(self.clock.now)
        return await super().handle(request)


@pytest.fixture
async def receiver():
    r = StampingReceiver()
    r.arrivals_on_clock = []
    await r.start()
    yield r
    await r.stop()


def iso_of(moment: float) -> str:
    return iso(datetime.fromtimestamp(moment, timezone.utc))


async def _post(t, watts: float) -> None:
    for _, token in t.households:
        status, out = await t.running.call("POST", "/readings", token=token,
                                           json={"timestamp": t.clock.now, "power_import_w": watts})
        assert status == 201, out


async def test_send_times_do_not_depend_on_how_long_the_condition_took(town, receiver):
    t = await town(3, timeout_ms=1000)  # room for a loaded machine: the spin must finish, not be killed
    receiver.clock = t.clock
    arrivals = receiver.arrivals_on_clock  # the agent's clock when each request reached the receiver
    hook = {"type": "webhook", "endpoint": receiver.url}
    status, webhook = await t.create(body(["household_power_consumption"], SPINNER, interval=1, action=hook,
                                          description="spins"))
    assert status == 201, webhook
    status, notify = await t.create(body(["household_power_consumption"], SPINNER, interval=1))
    assert status == 201, notify
    for _, token in t.households:
        await grant(t.running, token, t.org_id, f"trigger_events:{webhook['id']}")
    _, household_token = t.households[0]
    status, _ = await t.running.call("PUT", "/households/me/notify", token=household_token,
                                     json={"url": receiver.url, "kind": "ntfy"})
    assert status == 200
    runner = t.runner
    delay = runner.config.release_delay_s
    offsets = {}
    for watts in (1.0, 900.0, 1.0, 900.0):
        arrivals.clear()
        await _post(t, watts)
        close = (t.clock.now // 60 + 1) * 60
        t.clock.now = close + 0.06
        await t.running.agent.releases.settle()
        await runner.run_due()  # both evaluated, held
        held = {o.trigger_id: o for o in runner.held}
        assert set(held) == {webhook["id"], notify["id"]}
        assert {o.release_at for o in held.values()} == {close + delay}  # the moment, whatever the value
        assert arrivals == []
        # just before the moment: still nothing sent
        t.clock.now = close + delay - 0.001
        await runner.run_due()
        assert len(runner.held) == 2 and arrivals == []
        # at the moment: everything leaves
        t.clock.now = close + delay
        await runner.run_due()
        await runner.drain()
        assert runner.held == []
        assert {o.dispatched_at for o in runner.released} == {close + delay}
        assert len(arrivals) == 4  # 3 webhook events, 1 household endpoint
        offsets[watts] = sorted({a - close for a in arrivals})
        messages = [json.loads(raw) for _, raw in receiver.received if raw.startswith(b"{")]
        assert {m["at"] for m in messages} == {iso_of(close + delay)}
        [note] = (await t.inbox(household_token))[:1]
        assert note["at"] == close + delay
        receiver.received.clear()
        t.clock.now = close + delay + runner.config.statistics_delay_s
        await runner.run_due()
    assert offsets[1.0] == offsets[900.0] == [delay]


async def test_a_window_not_evaluated_by_its_release_moment_is_dropped_not_sent_late(town, receiver):
    t = await town(3, timeout_ms=1000)
    status, created = await t.create(body(["household_power_consumption"], SPINNER, interval=1))
    assert status == 201
    runner = t.runner
    await _post(t, 5.0)
    close = (t.clock.now // 60 + 1) * 60
    # the agent was too busy: the first look at this window is after its release moment
    t.clock.now = close + runner.config.release_delay_s + 0.5
    await t.running.agent.releases.settle()
    await runner.run_due()
    await runner.drain()
    assert runner.held == [] and runner.released == []
    assert [await t.inbox(token) for _, token in t.households] == [[]] * 3
    assert runner.stats[created["id"]].late == 1 and runner.health()["late_windows"] == 1
    # the next window is on time again
    t.clock.now = close + 1
    await _post(t, 5.0)
    close += 60
    t.clock.now = close + 0.06
    await t.running.agent.releases.settle()
    await runner.run_due()
    t.clock.now = close + runner.config.release_delay_s
    await runner.run_due()
    await runner.drain()
    assert [len(await t.inbox(token)) for _, token in t.households] == [1] * 3


class FlowingClock:
    """The agent's clock, set by the test; from the first read by another thread than the event loop's (an
    evaluation's) it runs on with real time until set again: an evaluation's duration shows on it (a stepped clock
    stands still while the sandbox works), the event loop's own slowness on a loaded machine before it does not.
    With `flows` false it is a stepped clock."""

    def __init__(self, start: float):
        self.loop_thread = threading.current_thread()
        self.flows = True
        self.now = start

    @property
    def now(self) -> float:
        if self._set_at is None:
            if not self.flows or threading.current_thread() is self.loop_thread:
                return self._base
            self._set_at = time.monotonic()
        return self._base + (time.monotonic() - self._set_at)

    @now.setter
    def now(self, value: float) -> None:
        self._base, self._set_at = value, None

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now = self.now + seconds


async def test_a_condition_cannot_make_its_window_late_its_deadline_ends_before_the_release_moment(
        tmp_path, start_agent):
    """A condition that spins past its window's release moment is killed before it (that row's error, a
    violation towards quarantine), so its window is never dropped as late: lateness would be a channel of its own."""
    clock = FlowingClock(T0)
    # the sandbox's own deadline (2 s) is past the release moment (1.5 s after the window's end)
    running = await start_agent(town_config(tmp_path, timeout_ms=2000, release_delay_s=1.5), clock=clock)
    org_id, org_key = await running.create_org("Energy Co", "dso")
    households = [await running.create_household() for _ in range(3)]
    for _, token in households:
        await grant(running, token, org_id, "aggregates", "triggers")
    status, created = await running.call("POST", "/triggers/create", token=org_key, json=body(
        ["household_power_consumption"], """\
        def condition(household_power_consumption):
            while household_power_consumption == 4242.0:
                pass
            return True
        """, interval=1))
    assert status == 201, created
    stats = running.agent.triggers.stats[created["id"]]
    clock.step(60)
    for watts in ((1.0, 1.0, 1.0), (4242.0, 1.0, 1.0)):  # the first window starts the trigger's zygote
        # the clock flows for the spinning window only: a zygote slow to start on a loaded machine is no condition
        clock.flows = watts[0] == 4242.0
        for (_, token), value in zip(households, watts):
            assert (await running.call("POST", "/readings", token=token,
                                       json={"timestamp": clock.now, "power_import_w": value}))[0] == 201
        await close_window(running, clock)
    assert stats.late == 0 and stats.windows_released == 2  # not dropped: killed in time
    # the spinning row was killed in time (its own deadline): that household's error; the others were evaluated
    assert stats.errors == 1 and stats.evaluations == 6
