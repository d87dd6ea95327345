"""Red team 6: a noisy level's trigger statistics as an exact oracle, through the public API only.

A noisy level's trigger counts are summed per UTC day, noised and charged (agent/release/door.py,
`_release_trigger_days`). But the day's cohort is the households the trigger was *evaluated* for (runner.py:
those with a fresh reading in which every parameter is present), not those that consented to it, and the day is
released only when at least k_min of them are unrelated to the organization. So:

- whether a day's statistics exist at all (`days_released` of GET /triggers/{id}) is a k_min threshold on a
  data-dependent set: with k_min - 1 households of its own, an organization reads one household's presence (did
  it send anything that day?) or whether its meter reports a parameter (a gas meter, an appliance channel tag),
  at epsilon = infinity, one bit per trigger per day;
- the ledger charge goes to the evaluated households only, so a household's exclusion from later noisy releases
  (`households` of GET /data) says whether it was evaluated.

PRIVACY.md claims noisy levels protect presence (P7) and hide a household in noise whatever the number of the
organization's own households (n - 1), and that the ledger is "decided from the ledger and consent, never from
readings". Both failed (the recovered fraction 1.0) until a noisy day's statistics were released over the
households whose `triggers` consent held all day, evaluated or not.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from agent.release.log import day_name
from drivers.reading import iso
from tests.helpers.agent import grant
from tests.helpers.appliances import FakeShelly
from tests.helpers.clock import StepClock, T0
from tests.helpers.receiver import receiver  # noqa: F401  (the fixture)
from tests.helpers.triggers import body, close_window, town_config

DAY = 86400
QUARTER = 900
NEVER = "def condition({p}):\n    return {p} > 1e12\n"  # never fires: only who is evaluated matters


async def neighbourhood(tmp_path, start_agent, level_rho=None, **privacy):
    """A supplier (noisy) organization, 9 households of its own (unmarked) and the target, all consenting to its
    `triggers` (recommendations by notification: no per-household event consent)."""
    config = town_config(tmp_path)
    config = replace(config, privacy=replace(config.privacy, k_min=10, **privacy))
    if level_rho is not None:
        supplier = config.levels["supplier"]
        config = replace(config, levels={**config.levels, "supplier": replace(
            supplier, dp=replace(supplier.dp, rho=level_rho))})
    clock = StepClock(T0)
    running = await start_agent(config, clock=clock)
    org_id, key = await running.create_org("Supplier", "supplier")
    households = [await running.create_household() for _ in range(10)]
    for _, token in households:
        await grant(running, token, org_id, "triggers")
    return running, clock, org_id, key, households[:9], households[9]


async def upload(running, key, parameter):
    status, out = await running.call("POST", "/triggers/create", token=key, json=body(
        [parameter], NEVER.format(p=parameter), interval=QUARTER, window="15m",
        description="tips for your consumption"))
    assert status == 201, out
    return out["id"]


def to_next_quarter(clock) -> None:
    """A trigger is evaluated from the first window that begins after its upload."""
    clock.now = (math.floor(clock.now / QUARTER) + 1) * QUARTER + 1


async def days_released(running, key, trigger_id) -> int:
    status, out = await running.call("GET", f"/triggers/{trigger_id}", token=key)
    assert status == 200, out
    return out["days_released"]


async def post(running, token, clock, **values):
    status, out = await running.call("POST", "/readings", token=token, json={"timestamp": clock.now, **values})
    assert status == 201, out


async def next_day(running, clock) -> None:
    """The clock past the next UTC midnight: the runner evaluates the day's last window and sends its counts, then
    the release module releases the day (held until then)."""
    midnight = await close_window(running, clock, DAY)
    clock.now = running.agent.releases.trigger_day_released_at(midnight - DAY)
    await running.agent.releases.settle()


async def test_noisy_trigger_days_are_released_whatever_the_target_sent(tmp_path, start_agent):
    running, clock, org_id, key, own, target = await neighbourhood(tmp_path, start_agent)
    presence_trigger = await upload(running, key, "household_power_consumption")
    gas_trigger = await upload(running, key, "household_gas_consumption")
    tag_trigger = await upload(running, key, "household_channel_heat_pump")
    await next_day(running, clock)  # the first day whose consents held all day (granted on the day before)
    to_next_quarter(clock)
    # the target's days: (sent anything, has a gas meter reporting, has a heat pump channel)
    truth = [(True, True, False), (False, False, False), (True, False, True), (True, True, True),
             (False, False, False), (True, False, False)]
    seen = []
    for present, gas, heat_pump in truth:
        # one quarter-hour of the day: the organization's own households post everything; the target its life
        for _, token in own:
            await post(running, token, clock, power_import_w=400.0, gas_m3=12.5, channels={"heat_pump": 300.0})
        if present:
            extra = ({"gas_m3": 3.0} if gas else {}) | ({"channels": {"heat_pump": 800.0}} if heat_pump else {})
            await post(running, target[1], clock, power_import_w=650.0, **extra)
        await close_window(running, clock, QUARTER)
        before = [await days_released(running, key, t) for t in (presence_trigger, gas_trigger, tag_trigger)]
        await next_day(running, clock)
        after = [await days_released(running, key, t) for t in (presence_trigger, gas_trigger, tag_trigger)]
        seen.append(tuple(a > b for a, b in zip(after, before)))
    recovered = sum(s == t for s, t in zip(seen, truth)) / len(truth)
    # A data-independent release (the consenting cohort, as for the noisy aggregates) is released every day for
    # every trigger: then nothing is recovered beyond "it consented".
    assert all(s == (True, True, True) for s in seen), f"recovered {recovered:.0%} of the target's days: {seen}"


async def test_a_noisy_trigger_day_is_released_once_with_its_last_window(tmp_path, start_agent):
    """Every household posts in the day's last quarter-hour only (another one is evaluated earlier). The day's statistics are one record (on disk and
    in the answers), charged once, with that quarter's evaluations in it. The day used to be released as it ended,
    before the runner's counts of its last window came (release_delay_s + statistics_delay_s later); they then made
    a second record of the same day, charged again, and the first missed them."""
    rho = 10.0  # the level's loss a day: 2 per field, noise sd 0.5, so 10 evaluations are not lost in it
    running, clock, org_id, key, own, target = await neighbourhood(tmp_path, start_agent, level_rho=rho,
                                                                   cap_rho=100.0)
    trigger = await upload(running, key, "household_power_consumption")
    await next_day(running, clock)  # day d: consents held all day
    day = math.floor(clock.now / DAY) * DAY
    await close_window(running, clock, QUARTER)  # a quarter of day d evaluated (nobody posted)
    clock.now = day + DAY - QUARTER + 1  # the day's last quarter
    for _, token in [*own, target]:
        await post(running, token, clock, power_import_w=400.0)
    await close_window(running, clock, QUARTER)  # evaluated after midnight, counts sent at midnight + 7 s
    releases = running.agent.releases
    await releases.settle()
    await next_day(running, clock)  # day d + 1 ends (nobody evaluated in it)
    clock.now += 3600
    await releases.settle()
    on_disk = [d for d in releases.log.read(day_name(day)) if d["t"] == "n" and d.get("i") == trigger]
    assert [d["s"] for d in on_disk] == [day], on_disk
    answered = [b for b in releases.trigger_days(org_id, trigger) if b["window_start"] == iso(day)]
    assert len(answered) == 1 and answered[0]["evaluations"] > 5, answered
    assert await days_released(running, key, trigger) == len({d["s"] for d in on_disk}) + 1  # and day d + 1
    assert releases.ledger_of(target[0])["spent_rho"] == pytest.approx(2 * rho)  # days d and d + 1, once each


async def test_a_trigger_day_the_disk_refused_is_released_by_a_later_pass_charged_once(tmp_path, start_agent,
                                                                                         monkeypatch):
    """The pass that would release a day's statistics cannot write the release log (a full SD card): nothing is
    released, nothing stays charged, and the day is not lost: the next pass, the disk back, releases it once,
    charged once (red team 9a R9a-6's fix: a refused pass's draws are undone)."""
    running, clock, org_id, key, own, target = await neighbourhood(tmp_path, start_agent)
    trigger = await upload(running, key, "household_power_consumption")
    releases = running.agent.releases
    write = releases.log.write

    def full(batches):
        raise OSError(28, "No space left on device")

    await next_day(running, clock)  # day d: consents held all of it
    day = math.floor(clock.now / DAY) * DAY
    await close_window(running, clock, DAY)
    clock.now = releases.trigger_day_released_at(day)
    monkeypatch.setattr(releases.log, "write", full)
    await releases.settle()
    assert releases.trigger_days(org_id, trigger) == [] and releases.ledger_of(target[0])["spent_rho"] == 0
    monkeypatch.setattr(releases.log, "write", write)
    clock.now += 1
    await releases.settle()
    assert [b["window_start"] for b in releases.trigger_days(org_id, trigger)] == [iso(day)]
    on_disk = [d for d in releases.log.read(day_name(day)) if d["t"] == "n" and d.get("i") == trigger]
    assert [d["s"] for d in on_disk] == [day], on_disk
    loss = running.agent.config.levels["supplier"].dp.loss()
    assert releases.ledger_of(target[0])["spent_rho"] == pytest.approx(loss)


async def test_counts_that_come_after_their_day_was_released_are_dropped(tmp_path, start_agent):
    """The runner's counts of a day's last window come after the day was released (a busy runner): dropped and
    counted, never a second record of the day charged again; after a restart too (the released days are read back
    from the release log)."""
    running, clock, org_id, key, own, target = await neighbourhood(tmp_path, start_agent)
    trigger = await upload(running, key, "household_power_consumption")
    await next_day(running, clock)
    day = math.floor(clock.now / DAY) * DAY
    await close_window(running, clock, QUARTER)  # day d begins to be evaluated
    clock.now = day + DAY - QUARTER + 1
    for _, token in [*own, target]:
        await post(running, token, clock, power_import_w=400.0)
    releases, runner = running.agent.releases, running.agent.triggers
    clock.now = day + DAY + 0.06
    await releases.settle()
    await runner.run_due()  # the last quarter evaluated, its counts held until their moment
    clock.now = releases.trigger_day_released_at(day)
    await releases.settle()  # the day released before the runner sent them
    spent = releases.ledger_of(target[0])["spent_rho"]
    assert spent > 0
    await runner.run_due()
    await runner.drain()
    await runner.run_due()  # they have come (now, or with the runner's own wake during the release's write)
    clock.now += 3600
    await releases.settle()
    def records() -> list:
        return [d for d in running.agent.releases.log.read(day_name(day)) if d["t"] == "n" and d.get("i") == trigger]

    assert len(records()) == 1 and releases.ledger_of(target[0])["spent_rho"] == spent
    status, view = await running.call("GET", f"/triggers/{trigger}", token=key)
    assert status == 200 and view["days_released"] == 1 and view["windows"]["withheld"] == 1, view
    assert releases.trigger_counts_dropped == 1
    status, health = await running.call("GET", "/health")  # the operator is told (a busy agent), as is /metrics
    assert health["triggers"]["day_counts_dropped"] == 1, health
    status, text = await running.call("GET", "/metrics")
    assert status == 200 and "\nedge_trigger_day_counts_dropped_total 1\n" in text, text
    await running.http.close()
    await running.agent.stop()
    running = await start_agent(running.agent.config, clock=clock)
    releases = running.agent.releases
    late = await releases.counts(org_id, trigger, "15m", day + DAY - QUARTER, {target[0]: {"evaluations": 1}})
    assert getattr(late, "error", None) == "day_decided", late
    releases.trigger_window(org_id, trigger, day + DAY - QUARTER)
    clock.now += 3600
    await releases.settle()
    assert releases.trigger_counts_dropped == 2 and len(records()) == 1
    assert releases.ledger_of(target[0])["spent_rho"] == spent


async def test_the_ledger_charge_of_a_trigger_day_does_not_depend_on_presence(tmp_path, start_agent):
    # a small cap so the test reaches it in a few windows (the default reaches it after ~4,000 windows; the
    # arithmetic is the same)
    rho = 0.0005
    running, clock, org_id, key, own, target = await neighbourhood(tmp_path, start_agent, cap_rho=3 * rho)
    fresh = [await running.create_household() for _ in range(10)]  # in the aggregates only: keep k_min met
    await upload(running, key, "household_power_consumption")
    await next_day(running, clock)  # both rounds' day d: consents held all day (granted on the day before)
    to_next_quarter(clock)
    counts, spent, included = {}, {}, {}
    releases = running.agent.releases
    for present in (True, False):
        # day d: the target sends data (or not) in one quarter; the organization's own households always do
        for _, token in own:
            await post(running, token, clock, power_import_w=400.0)
        if present:
            await post(running, target[1], clock, power_import_w=650.0)
        await close_window(running, clock, QUARTER)
        await next_day(running, clock)  # the day's statistics: released (and charged) over who was evaluated
        spent[present] = releases.ledger_of(target[0])["spent_rho"]
        # day d + 1: the target and ten others consent to the supplier's aggregates; three noisy quarter-hours
        for _, token in [*fresh, target]:
            await grant(running, token, org_id, "aggregates")
        start = (math.floor(clock.now / QUARTER) + 1) * QUARTER
        for i in range(1, 4):
            clock.now = start + i * QUARTER + 1
            await running.agent.releases.settle()
        status, out = await running.call("GET", f"/data?window=15m&since={start}&until={start + 3 * QUARTER}",
                                         token=key)
        assert status == 200, out
        counts[present] = [b["households"] for b in sorted(out["released"], key=lambda b: b["window_start"])]
        inclusion = releases.members.inclusion(target[0], org_id, None, start, start + 3 * QUARTER)
        included[present] = None if inclusion is None else (inclusion.included, inclusion.windows)
        for _, token in [*fresh, target]:
            status, out = await running.call("DELETE", f"/households/me/consents/{org_id}/aggregates",
                                             token=token)
            assert status == 200, out
        clock.now += 40 * DAY  # past the horizon: the next round starts from an empty ledger
        await running.agent.releases.settle()
    # the third quarter's cohort: the 10 others, and the target only if it was not evaluated the day before
    assert counts[True] == counts[False], f"the third quarter's count says whether the target posted: {counts}"
    # and what the counts no longer show (they are the consenting cohort, R7-1): the charge, and the target's reads
    assert spent[True] == spent[False] == pytest.approx(rho), spent
    assert included[True] == included[False] and 0 < included[True][0] < included[True][1], included


async def test_a_noisy_trigger_day_is_released_whatever_a_household_spent_with_others(tmp_path, start_agent):
    """The trigger's cohort is exactly k_min households; the target also consents to another noisy organization's
    aggregates, whose three quarter-hours spend its whole cap on the day. The day's statistics are released all
    the same (the target counts 0 and is not charged): the old rule decided k_min over those whose ledger bore
    the day, so whether a day appeared (`days_released`) said whether a household had spent its cap elsewhere
    (red team 7, R7-1, on trigger statistics)."""
    rho = 0.0005  # the level's default
    running, clock, org_id, key, own, target = await neighbourhood(tmp_path, start_agent, cap_rho=3 * rho)
    other_id, _ = await running.create_org("Another supplier", "supplier")
    for _, token in [*[await running.create_household() for _ in range(10)], target]:
        await grant(running, token, other_id, "aggregates")
    trigger = await upload(running, key, "household_power_consumption")
    await next_day(running, clock)  # consents held all day from here
    to_next_quarter(clock)
    for _ in range(3):  # the other organization's windows: the target's cap spent (3 x rho)
        for _, token in [*own, target]:
            await post(running, token, clock, power_import_w=400.0)
        await close_window(running, clock, QUARTER)
    releases = running.agent.releases
    assert releases.ledger_of(target[0])["spent_rho"] == pytest.approx(3 * rho)
    before = await days_released(running, key, trigger)
    await next_day(running, clock)
    assert await days_released(running, key, trigger) == before + 1  # released over all 10 consenting
    assert releases.ledger_of(target[0])["spent_rho"] == pytest.approx(3 * rho)  # counted 0, not charged
    assert releases.ledger_of(own[0][0])["spent_rho"] == pytest.approx(rho)  # the others charged the day


async def isolation(running, key, trigger_id):
    status, out = await running.call("GET", f"/triggers/{trigger_id}", token=key)
    assert status == 200, out
    return out["isolation"]


async def test_a_noisy_triggers_view_says_nothing_of_who_was_evaluated(tmp_path, start_agent):
    config = town_config(tmp_path)
    clock = StepClock(T0)
    running = await start_agent(config, clock=clock)
    org_id, key = await running.create_org("Heat pump service", "supplier")
    target_id, target = await running.create_household()
    await grant(running, target, org_id, "triggers")  # recommendations by notification, nothing more
    others = [await running.create_household() for _ in range(3)]
    for _, token in others:  # the neighbours post too, but gave this organization nothing
        await grant(running, token, org_id, "aggregates")
    # the target's quarter-hours: did it send anything (its datalogger, its hub, the household at home)
    truth = [False, False, True, False, True, True, False, False, False, True, False, True]
    trigger_id = await upload(running, key, "household_power_consumption")
    to_next_quarter(clock)
    seen = []
    for present in truth:
        for _, token in others:
            await post(running, token, clock, power_import_w=500.0)
        if present:
            await post(running, target, clock, power_import_w=650.0)
        await close_window(running, clock, QUARTER)
        shown = await isolation(running, key, trigger_id)
        seen.append(shown is not None)
        if shown is not None:  # re-arm: a fresh upload is None again (30 uploads a day: every hour of a day)
            status, out = await running.call("DELETE", f"/triggers/{trigger_id}", token=key)
            assert status in (200, 204), out
            trigger_id = await upload(running, key, "household_power_consumption")
        to_next_quarter(clock)
    recovered = sum(s == t for s, t in zip(seen, truth)) / len(truth)
    # nothing in the view may depend on whether a household was evaluated: the same every window
    assert len(set(seen)) == 1, f"recovered {recovered:.0%} of the target's quarter-hours: {seen}"


@pytest.mark.parametrize("probe_action", ["notification", "appliance"])
async def test_a_consented_triggers_events_say_nothing_of_another_triggers_condition(tmp_path, start_agent, receiver,
                                                                                      probe_action):
    """A deleted trigger's debounce was a cooldown for every trigger of its organization, so a probe (a
    notification, or a consented appliance switch) deleted after each window switched a consented beacon's next
    event off whenever the probe had fired: the beacon's missing events were the probe's condition, 100%
    recovered. Failed until the cooldown held only triggers of the deleted one's action type (red team 6, R6-4)."""
    config = town_config(tmp_path)
    clock = StepClock(T0)
    running = await start_agent(config, clock=clock)
    org_id, key = await running.create_org("Supplier", "supplier")
    target_id, target = await running.create_household()
    await grant(running, target, org_id, "triggers")  # recommendations (notifications) on its data
    # B: what the household agreed to disclose: "you are using power", one event a quarter-hour
    status, out = await running.call("POST", "/triggers/create", token=key, json=body(
        ["household_power_consumption"], "def condition(household_power_consumption):\n"
        "    return household_power_consumption >= 0\n", interval=QUARTER, window="15m",
        action={"type": "webhook", "endpoint": receiver.url}, description="tells us each quarter-hour that you "
        "are using power"))
    assert status == 201, out
    beacon = out["id"]
    await grant(running, target, org_id, f"trigger_events:{beacon}")
    heater = FakeShelly()
    await heater.start()
    status, out = await running.call("POST", "/households/me/appliances", token=target, json={
        "name": "heater", "driver": "shelly", "address": heater.address, "allowed_organizations": [org_id]})
    assert status == 201, out
    # A, each round: a notification ("a tip for you") whose condition is what the organization wants to know, here
    # whether the target used over 1 kW; its interval a little over a quarter-hour
    secret = [650.0, 1800.0, 2400.0, 300.0, 1200.0, 90.0]
    truth, seen = [], []
    for watts in secret:
        action = {"action": {"type": "appliance", "appliance": "heater", "command": "on"}} \
            if probe_action == "appliance" else {}
        status, out = await running.call("POST", "/triggers/create", token=key, json=body(
            ["household_power_consumption"], "def condition(household_power_consumption):\n"
            "    return household_power_consumption > 1000\n", interval=QUARTER + 100, window="15m", **action))
        assert status == 201, out
        probe = out["id"]
        if probe_action == "appliance":  # its switches are events too (red team 7, R7-3): consented, or it never acts
            await grant(running, target, org_id, f"trigger_events:{probe}")
        to_next_quarter(clock)
        await post(running, target, clock, power_import_w=watts)
        await close_window(running, clock, QUARTER)  # the probe and the beacon evaluated; the clock in the next
        status, out = await running.call("DELETE", f"/triggers/{probe}", token=key)
        assert status in (200, 204), out
        observed = math.floor(clock.now / QUARTER) * QUARTER
        await post(running, target, clock, power_import_w=500.0)
        await close_window(running, clock, QUARTER)
        starts = {m["window_start"] for m in receiver.messages() if m.get("trigger_id") == beacon}
        seen.append(iso(observed) in starts)
        truth.append(watts > 1000)
    await heater.runner.cleanup()
    recovered = sum((not s) == t for s, t in zip(seen, truth)) / len(truth)
    assert all(seen), f"the beacon's missing events give the probe's condition: {recovered:.0%} recovered ({seen})"
