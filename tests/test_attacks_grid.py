"""Grid quantities through the one door (issue 15): voltage bands per phase, min/max/mean voltage, meters with a
long power failure, the month's peak demand. The happy path, the ledger's charge, and the attacks an
organization can run through the public API on 0/1 counts: differencing band counts across organizations and
across windows, pinning a target's band with households of its own, re-asking a noisy level.

Each attack first computes what the arithmetic recovered on a naive design (every count released), then shows
what it recovers now (a refusal, or a count off by the stated noise).
"""

from __future__ import annotations

import math

import pytest

from agent.release import grid
from agent.config import DEFAULT_LEVELS, Anonymization, Level
from tests.helpers.attacks import QUARTER, Town, config_for, make_town, noisy_level, town  # noqa: F401  (fixtures)
from tests.helpers.clock import StepClock, T0 as _T0

T0 = _T0


def band(volts: float) -> int:
    return grid.band_of(volts)


async def second(town: Town, households, volts, failures=None, watts=None) -> float:
    """Every household posts one reading in the current second (volts(i) on L1, failures(i) the meter's count
    of long power failures); steps one second. Returns the second's start."""
    start = town.clock.now
    for i, h in enumerate(households):
        extra = {"voltage_l1_v": volts(i)}
        if failures is not None:
            extra["long_power_failures"] = failures(i)
        await town.post(h, 300.0 + 11 * i if watts is None else watts(i), **extra)
    town.clock.step(1)
    return start


# --- the happy path ---------------------------------------------------------------------------------------
async def test_exact_level_releases_voltage_bands_min_max_mean_and_failures(town):
    org_id, key = await town.org("dso")
    households = await town.households_(12)
    await town.grant(org_id, households)
    await town.to_next(60)
    volts = [229.0 + i for i in range(12)]  # 229..240 V
    await second(town, households, lambda i: volts[i], lambda i: 3)  # the failure counts' baseline
    start = await second(town, households, lambda i: volts[i], lambda i: 4 if i in (2, 7) else 3)
    body, refused = await town.window(key, "1s", start)
    assert refused is None
    part = body["grid"]["voltage_l1"]
    expected = [0] * grid.BANDS
    for v in volts:
        expected[band(v)] += 1
    assert part["counts"] == expected and part["households"] == 12
    assert part["mean_v"] == pytest.approx(sum(volts) / 12, abs=0.01)
    assert part["min_v"] == 224.25 and part["max_v"] == 241.5  # to one band: 229 V is in [224.25, 230)
    assert body["grid"]["long_power_failures"] == {"households": 12, "meters": 2}
    # a phase nobody reports is refused, never zero
    assert body["grid"]["voltage_l2"]["refused"]["error"] == "cohort_too_small"
    first, _ = await town.window(key, "1s", start - 1)
    assert first["grid"]["long_power_failures"]["meters"] == 0  # a meter's first count is its baseline
    # the parameters triggers read
    status, params = await town.running.call("GET", "/parameters", token=key)
    names = {p["name"]: p["permitted"] for p in params["parameters"]}
    assert names["neighborhood_voltage_l1_max"] and names["neighborhood_long_power_failures"]
    assert names["neighborhood_peak_demand_month"]
    assert params["privacy"]["grid_band_edges_v"] == list(grid.BAND_EDGES_V)


async def test_noisy_level_grid_off_by_default_and_peak_demand_is_post_processing(make_town):
    """A supplier by default: no grid part, and each window charges only the level's rho (nothing new
    silently). Its 15-minute and hourly bodies carry the month's peak: the highest consumption_w released to
    it so far, so the same numbers it already had."""
    town = await make_town()
    org_id, key = await town.org("supplier")
    households = await town.households_(12)
    await town.grant(org_id, households)
    first = await town.to_next(3600)
    for q in range(4):
        for i, h in enumerate(households):
            await town.post(h, 200.0 + 300 * (q == 2) + i, voltage_l1_v=231.0)
        town.clock.step(QUARTER)
    every = await town.windows(key, "15m", math.floor(T0 / QUARTER) * QUARTER, first + 3600)
    charged = [b for b in every if "refused" not in b]
    assert len(charged) >= 4 and all("grid" not in b for b in charged)
    running_max = -math.inf
    for b in charged:  # every released quarter since the agent started, all in this UTC month
        running_max = max(running_max, b["consumption_w"])
        assert b["peak_month_w"] == running_max
    hour = (await town.windows(key, "1h", first, first + 3600))[0]
    assert hour["peak_month_w"] == hour["consumption_w"]  # the first hour released whole
    assert charged[0]["privacy"]["rho"] == DEFAULT_LEVELS["supplier"].dp.rho
    ledger = town.running.agent.releases.ledger_of(households[0][0])
    assert ledger["spent_rho"] == pytest.approx(len(charged) * DEFAULT_LEVELS["supplier"].dp.rho)
    status, params = await town.running.call("GET", "/parameters", token=key)
    assert params["privacy"]["level"]["grid"] == [] and params["privacy"]["level"]["grid_rho_per_window"] == 0


# --- differencing 0/1 counts ------------------------------------------------------------------------------
async def test_band_counts_two_organizations_three_households_apart(town):
    """A's cohort is B's plus x, y, z. Sums of power three households apart are harmless (the rank audit
    releases both), but counts are 0/1 sums: A - B = 3 in one band gives each one's band. The count audit
    refuses the second organization's voltage part (`isolating`)."""
    a_id, a_key = await town.org("dso", "A")
    b_id, b_key = await town.org("dso", "B")
    common = await town.households_(10)
    trio = await town.households_(3)
    await town.grant(a_id, [*common, *trio])
    await town.grant(b_id, common)
    await town.to_next(1)
    start = await second(town, [*common, *trio], lambda i: 250.0 if i >= 10 else 231.0)
    a, _ = await town.window(a_key, "1s", start)
    b, _ = await town.window(b_key, "1s", start)
    assert a is not None and b is not None  # the power sums are released to both
    naive = [x - y for x, y in zip(a["grid"]["voltage_l1"]["counts"],
                                   [10 if i == band(231.0) else 0 for i in range(grid.BANDS)])]
    assert naive[band(250.0)] == 3  # what a naive design gave: all three at 247-253 V
    assert "counts" in a["grid"]["voltage_l1"]
    assert b["grid"]["voltage_l1"]["refused"]["error"] == "isolating"
    assert b["grid"]["long_power_failures"]["refused"]["error"] in ("isolating", "cohort_too_small")


async def test_band_counts_across_windows_when_three_households_revoke(town):
    """One organization: second 0 over C + x, y, z, then the three revoke. The later seconds' power sums are
    released (three apart), but their band counts minus second 0's would give the three's bands: refused
    for the audit period."""
    org_id, key = await town.org("dso")
    common = await town.households_(10)
    trio = await town.households_(3)
    everyone = [*common, *trio]
    await town.grant(org_id, everyone)
    await town.to_next(1)
    before = await second(town, everyone, lambda i: 250.0 if i >= 10 else 231.0)
    await town.window(key, "1s", before)  # decided while the three were in
    for h in trio:
        await town.revoke(org_id, h)
    town.clock.step(2)
    after = []
    for _ in range(3):
        after.append(await second(town, everyone, lambda i: 250.0 if i >= 10 else 231.0))
    first, _ = await town.window(key, "1s", before)
    assert first["grid"]["voltage_l1"]["counts"][band(250.0)] == 3
    released = [b for b in [(await town.window(key, "1s", s))[0] for s in after] if b is not None]
    assert released and all(b["households"] == 10 for b in released)
    assert all(b["grid"]["voltage_l1"]["refused"]["error"] == "isolating" for b in released)


# --- pinning a target's band with households of one's own ------------------------------------------------
async def test_own_households_at_extreme_voltages_exact_level_marked_related(town):
    """Nine households of the organization's own post 300 V (the top band) so the target would be alone in its
    band. Marked by the operator, they do not count toward k_min: nothing is released."""
    org_id, key = await town.org("dso", "Attacker")
    own = await town.households_(9)
    (target,) = await town.households_(1)
    await town.grant(org_id, [*own, target])
    for h in own:
        await town.mark_related(h, [org_id])
    await town.to_next(1)
    start = await second(town, [*own, target], lambda i: 300.0 if i < 9 else 236.0)
    body, refused = await town.window(key, "1s", start)
    assert body is None and refused["error"] == "cohort_too_small"


async def test_own_households_at_extreme_voltages_noisy_level(make_town):
    """The same pinning at a noisy level with grid quantities on: the counts minus the nine known ones are the
    target's band plus noise whose stated sd is larger than what one household moves a count (1), and the
    residuals scatter at that scale; an absurd voltage moves the mean no further than its clamp."""
    supplier = noisy_level(grid=("voltage", "long_power_failures"))
    town = await make_town({"supplier": supplier})
    org_id, key = await town.org("supplier", "Attacker")
    own = await town.households_(9)
    (target,) = await town.households_(1)
    await town.grant(org_id, [*own, target])
    await town.to_next(QUARTER)
    residuals = []
    for q in range(6):
        start = town.clock.now
        for h in own:
            await town.post(h, 100.0, voltage_l1_v=300.0)
        await town.post(target, 500.0, voltage_l1_v=236.0)
        town.clock.step(QUARTER)
        body, _ = await town.window(key, "15m", start)
        counts = body["grid"]["voltage_l1"]["counts"]
        naive = [0] * grid.BANDS
        naive[band(300.0)], naive[band(236.0)] = 9, 1
        residuals += [c - n for c, n in zip(counts, naive)]
        assert grid.VOLT_FLOOR_V <= (body["grid"]["voltage_l1"]["mean_v"] or grid.VOLT_FLOOR_V) <= 280.0
    sd = body["grid"]["privacy"]["count_sd"]
    assert sd > 1
    rms = math.sqrt(sum(r * r for r in residuals) / len(residuals))
    assert rms >= 0.5 * sd, (rms, sd)


# --- a noisy level: one draw, re-asked; the ledger's charge ----------------------------------------------
async def test_noisy_grid_reasked_is_one_record_and_charges_grid_rho(make_town):
    supplier = noisy_level(grid=("voltage", "long_power_failures"))
    town = await make_town({"supplier": supplier})
    a_id, a_key = await town.org("supplier", "A")
    b_id, b_key = await town.org("supplier", "B")
    households = await town.households_(12)
    await town.grant(a_id, households)
    await town.grant(b_id, households)
    start = await town.to_next(QUARTER)
    for i, h in enumerate(households):
        await town.post(h, 300.0, voltage_l1_v=225.0 + i, long_power_failures=1)
    town.clock.step(QUARTER)
    live = await town.live_or_refusal(a_key, "15m")
    again, _ = await town.window(a_key, "15m", start)
    other, _ = await town.window(b_key, "15m", start)
    assert live["grid"] == again["grid"] != other["grid"]  # one draw per organization, however often asked
    assert set(live["grid"]) >= {"voltage_l1", "voltage_l2", "voltage_l3", "long_power_failures", "privacy"}
    rho = supplier.dp.rho + supplier.dp.grid_rho
    assert live["privacy"]["rho"] == pytest.approx(rho) and live["grid"]["privacy"]["rho"] == supplier.dp.grid_rho
    spent = town.running.agent.releases.ledger_of(households[0][0])["spent_rho"]
    assert spent == pytest.approx(2 * rho)  # A's release and B's, each charged once
    status, params = await town.running.call("GET", "/parameters", token=a_key)
    assert params["privacy"]["level"]["grid"] == ["voltage", "long_power_failures"]
    assert params["privacy"]["level"]["grid_rho_per_window"] == supplier.dp.grid_rho


async def test_grid_part_parameters_narrowed_away_are_not_shared(tmp_path, start_agent):
    """Two organizations of one noisy level, one narrowed to power only: its record carries no grid part (the
    shared noisy answer is per set of quantities), and it is charged only the level's rho."""
    supplier = noisy_level(grid=("voltage",))
    town = await Town(start_agent, config_for(tmp_path, {"supplier": supplier}), StepClock(T0)).up()
    a_id, a_key = await town.org("supplier", "A")
    b_id, b_key = await town.org("supplier", "B")
    status, body = await town.running.call("PATCH", f"/organizations/{b_id}",
                                           json={"parameters": ["neighborhood_power_*"]})
    assert status == 200, body
    households = await town.households_(12)
    await town.grant(b_id, households)
    start = await town.to_next(QUARTER)
    for h in households:
        await town.post(h, 300.0, voltage_l1_v=231.0)
    town.clock.step(QUARTER)
    b, _ = await town.window(b_key, "15m", start)
    assert "grid" not in b and b["privacy"]["rho"] == supplier.dp.rho


async def test_peak_demand_survives_a_restart(make_town):
    """The month's peak is rebuilt from the release log at start: a quarter after a restart still carries the
    highest consumption_w released before it (an exact level at 15 minutes, so the numbers are plain)."""
    town = await make_town({"grid15": Level("grid15", ("neighborhood_*",), ("15m",), Anonymization(k=0))})
    org_id, key = await town.org("grid15")
    households = await town.households_(12)
    await town.grant(org_id, households)
    first = await town.to_next(QUARTER)
    for watts in (2500.0, 200.0):
        for h in households:
            await town.post(h, watts)
        town.clock.step(QUARTER)
    before = await town.windows(key, "15m", first, first + 2 * QUARTER)
    assert [b["consumption_w"] for b in before] == [30000.0, 2400.0]
    assert [b["peak_month_w"] for b in before] == [30000.0, 30000.0]
    await town.restart()
    await town.to_next(QUARTER)
    town.clock.step(QUARTER)  # exact windows resume one audit period after a restart
    start = town.clock.now
    for h in households:
        await town.post(h, 100.0)
    town.clock.step(QUARTER)
    after, refused = await town.window(key, "15m", start)
    assert refused is None, refused
    assert after["consumption_w"] == 1200.0 and after["peak_month_w"] == 30000.0
    assert after["peak_month_at"] == before[0]["window_start"]


async def test_a_minute_is_derived_from_its_released_seconds(town):
    """The dso's minute: band counts are the seconds' counts summed (household-seconds), min of mins, max of
    maxes, the mean weighted by households, failures summed; nothing computed again over readings."""
    org_id, key = await town.org("dso")
    households = await town.households_(12)
    await town.grant(org_id, households)
    start = await town.to_next(60)
    for s in range(60):
        await second(town, households, lambda i: 226.0 + i + (30.0 if s == 7 and i == 0 else 0.0),
                     lambda i: 5 + (s >= 20 and i == 3))
    seconds = await town.windows(key, "1s", start, start + 60)
    minute = (await town.windows(key, "1m", start, start + 60))[0]
    assert all("refused" not in b for b in seconds), [b for b in seconds if "refused" in b][:1]
    parts = [b["grid"]["voltage_l1"] for b in seconds]
    derived = minute["grid"]["voltage_l1"]
    assert derived["counts"] == [sum(col) for col in zip(*(p["counts"] for p in parts))]
    assert sum(derived["counts"]) == 12 * 60
    assert derived["max_v"] == max(p["max_v"] for p in parts) == 264.5  # 256 V in second 7: [253, 264.5)
    assert derived["min_v"] == min(p["min_v"] for p in parts)
    assert derived["mean_v"] == pytest.approx(sum(p["mean_v"] for p in parts) / 60, abs=0.01)
    assert minute["grid"]["long_power_failures"]["meters"] == 1  # meter 3's count rose once, in second 20


def test_the_operator_enables_grid_quantities_per_noisy_level():
    from agent.config import ConfigError, DEFAULT_TAGS, parse_levels

    levels = parse_levels({"supplier": {"dp": {"grid": ["voltage"], "grid_rho": 0.001}}}, DEFAULT_TAGS)
    assert levels["supplier"].dp.grid == ("voltage",) and levels["supplier"].dp.grid_rho == 0.001
    assert parse_levels({"service": {}}, DEFAULT_TAGS)["service"].dp.grid == ()  # off by default
    with pytest.raises(ConfigError, match="grid"):
        parse_levels({"supplier": {"dp": {"grid": ["frequency"]}}}, DEFAULT_TAGS)


# --- the count audit, against an attacker who tries every 0/1 assignment --------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agent.release import audit  # noqa: E402

PEOPLE = [f"h{i}" for i in range(9)]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.sets(st.sampled_from(PEOPLE), min_size=1), min_size=1, max_size=6),
       st.lists(st.integers(0, 1), min_size=len(PEOPLE), max_size=len(PEOPLE)))
def test_counts_the_audit_admits_say_nothing_about_fewer_than_k(cohorts, bits):
    """Cohorts offered in turn, each admitted or refused by the count audit (k = 3). Then the attacker takes
    every assignment of 0/1 values consistent with all the admitted counts: any household whose value that
    pins down sits in a group of at least k households no admitted cohort tells apart, all of the same value
    (homogeneity, as PRIVACY.md says), never alone or with one or two others."""
    k = 3
    admitted: list[frozenset[str]] = []
    for cohort in map(frozenset, cohorts):
        if audit.admissible_counts(admitted, cohort, k):
            admitted.append(cohort)
    value = dict(zip(PEOPLE, bits))
    counts = [sum(value[h] for h in c) for c in admitted]
    consistent = []
    for n in range(2 ** len(PEOPLE)):
        guess = {h: (n >> i) & 1 for i, h in enumerate(PEOPLE)}
        if all(sum(guess[h] for h in c) == counts[j] for j, c in enumerate(admitted)):
            consistent.append(guess)
    for h in set().union(*admitted) if admitted else ():
        if len({g[h] for g in consistent}) == 1:  # pinned down
            group = [o for o in PEOPLE if all((o in c) == (h in c) for c in admitted)]
            assert len(group) >= k and len({value[o] for o in group}) == 1, (h, group, admitted)
