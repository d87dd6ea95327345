"""GET /data/anonymized against a running agent on a stepped clock, through the public API only: a synthetic
neighbourhood posts a whole day, and an organization at each level attacks what it gets back.

- P8 (trajectories): 3 known periods, two overlapping requests, the day's energy (what a supplier bills on):
  a non-custodian level's rows single out nobody and name a household's row no better than a pick among k;
  the custodian's linked series is what the same attacks break (so the attacks are shown to work).
- P9 (range-dependent suppression): a narrower range asked first, a later range, late readings, another
  organization with the same cohort and a restart all get exactly the recorded rows of the day.
- The level's k, l and t hold per period, recomputed independently (pycanon, scipy against the reference).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import datetime, timezone

import pytest

from agent.api.anonymized import SERVICE, SETTLE_S, _gather, _report, day_release
from agent.api.data import level_of
from agent.config import DEFAULT_LEVELS
from agent.privacy import linkage
from agent.privacy.anonymize import STATIC, HouseholdSeries, StaticAttributes, release_day
from agent.privacy.synthetic import consumption_at, household_static, neighbourhood
from drivers.reading import Reading
from tests.helpers.agent import make_config
from tests.helpers.clock import StepClock
from tests.helpers.openapi import conforms as _conforms
from tests.helpers.privacy import pycanon_figures, reference_t

DAY = 1_790_000_000 // 86400 * 86400
HOURS = [DAY + h * 3600 for h in range(24)]
SUPPLIER = DEFAULT_LEVELS["supplier"].anonymized
EV = StaticAttributes(has_pv=True, has_gas=False, phases=3, max_current_a=60.0)


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat().replace("+00:00", "Z")


def synthetic_day(n: int, seed: int) -> list[tuple[StaticAttributes, dict[int, float]]]:
    """n households of agent/privacy/synthetic.py, and one with an EV charging 18:00-21:00 (P9's target)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        static = household_static(rng)
        base = rng.uniform(120, 450)
        out.append((static, {p: consumption_at(rng, static, base, p) for p in HOURS}))
    out.append((EV, {p: 7200.0 if 18 <= (p - DAY) // 3600 < 21 else 300.0 for p in HOURS}))
    return out


def reading(meter: str, moment: float, static: StaticAttributes, power_w: float) -> Reading:
    when = datetime.fromtimestamp(moment, timezone.utc)
    return Reading(meter_id=meter, timestamp=when, received_at=when, power_import_w=power_w,
                   power_export_w=150.0 if static.has_pv else 0.0, voltage_l1_v=230.0,
                   voltage_l2_v=231.0 if static.phases == 3 else None, current_l1_a=static.max_current_a,
                   gas_m3=1000.0 if static.has_gas else None)


class Town:
    """A running agent on a stepped clock with a neighbourhood that consented to two organizations' use of
    anonymized data, and the truth about every household (what an attacker may partly know)."""

    def __init__(self, start, config, clock, households):
        self.start, self.config, self.clock = start, config, clock
        self.truth = households
        self.running = None
        self.homes: list[tuple[str, str, str]] = []  # household id, token, meter id
        self.orgs: dict[str, tuple[str, str]] = {}

    async def up(self) -> "Town":
        self.running = await self.start(self.config, clock=self.clock)
        for name, level in (("dso", "dso"), ("supplier", "supplier"), ("supplier2", "supplier")):
            self.orgs[name] = await self.running.create_org(f"{name} org", level)
        for _ in self.truth:
            household_id, token = await self.running.create_household()
            meter = self.running.agent.registry.household(household_id).meter_id
            for org_id, _ in self.orgs.values():
                status, _ = await self.running.call("PUT", f"/households/me/consents/{org_id}/{SERVICE}",
                                                    token=token)
                assert status == 200
            self.homes.append((household_id, token, meter))
        return self

    async def post_day(self, hours: range = range(25), settle: bool = True) -> None:
        """One reading per household per hour, one more after midnight so every rollup closes, then the clock
        moves past the day's settling time."""
        for hour in (DAY + h * 3600 for h in hours):
            self.clock.now = hour + 10
            for (_, _, meter), (static, values) in zip(self.homes, self.truth):
                self.running.agent.ingest_http(reading(meter, self.clock.now, static, values.get(hour, 300.0)))
        if settle:
            self.clock.now = DAY + 86400 + SETTLE_S + 60
            await self.written()

    async def written(self) -> None:
        """Wait for the store to have written what was posted (a flush of a day for 46 meters takes seconds on a
        busy machine, longer than the test client's timeout; the release itself reads pending readings too)."""
        await asyncio.to_thread(self.running.agent.store.flush)

    async def ask(self, level: str, since: float = DAY, until: float = DAY + 86400, **params):
        query = "&".join([f"from={since}", f"to={until}", *(f"{k}={v}" for k, v in params.items())])
        return await self.running.call("GET", f"/data/anonymized?{query}", token=self.orgs[level][1])

    def series(self) -> list[HouseholdSeries]:
        return [HouseholdSeries(h, static, values) for (h, _, _), (static, values) in zip(self.homes, self.truth)]

    async def restart(self) -> None:
        await self.running.http.close()
        await self.running.agent.stop()
        self.running = await self.start(self.config, clock=self.clock)


@pytest.fixture
async def quiet_town(tmp_path, start_agent):
    return await Town(start_agent, make_config(tmp_path), StepClock(DAY - 600), synthetic_day(45, seed=7)).up()


@pytest.fixture
async def town(quiet_town):
    await quiet_town.post_day()
    return quiet_town


def multiset(records: list[dict]) -> Counter:
    return Counter(tuple(sorted(r.items())) for r in records)


def attack(records: list[dict], report: dict, series: list[HouseholdSeries], res: int) -> tuple[float, float, float]:
    day = report["days"][0]
    known = linkage.targets(series, day, res)
    return (*linkage.trajectory_rate(records, known, seed=1), linkage.energy_rate(records, known, day, res))


# --- the level, checked independently --------------------------------------------------------------------------
async def test_a_day_release_meets_the_level_in_every_period(town):
    status, body = await town.ask("supplier")
    assert status == 200, body
    report, records = body["report"], body["records"]
    assert report["linkable"] is False and report["k"] >= 10 and report["l"] >= 3 and report["t"] <= 0.3
    assert "reference" in report["t_against"] and report["rows"] == len(records) > 0
    [day] = report["days"]
    gen = day["generalization"]
    assert (report["k"], report["l"]) == pycanon_figures(records)
    assert report["t"] == pytest.approx(reference_t(records, SUPPLIER.reference_cdf, gen["value_bin_w"],
                                                    gen["top_bin_from_w"]), abs=1e-6)
    for period in {r["period_start"] for r in records}:
        rows = [r for r in records if r["period_start"] == period]
        k, l_div = pycanon_figures(rows)
        assert k >= 10 and l_div >= 3
    # at most one row per household per hour; how many were suppressed is not said (it depends on values: R7-2)
    assert day["rows"] <= len(town.truth) * 24 and not {"rows_suppressed", "suppressed_for"} & {*day, *report}
    # nothing that links rows, nothing internal
    assert all(set(r) == {"period_start", "period_end", *STATIC, "consumption_w_from", "consumption_w_to"}
               for r in records)
    assert "households" not in day and not any(h in str(body) or m in str(body) for h, _, m in town.homes)
    _conforms("AnonymizedRelease", body)
    status, linked = await town.ask("dso")
    _conforms("AnonymizedRelease", linked)
    status, audit = await town.running.call("GET", f"/audit?since={DAY}&until={town.clock.now + 10}"
                                                   f"&who={town.orgs['supplier'][0]}")
    assert any(e["action"] == "data.anonymized" and e["released"] for e in audit["entries"])


# --- P8: linking a household's periods ---------------------------------------------------------------------------
async def test_three_known_periods_single_out_nobody_below_the_custodian(town):
    series = town.series()
    status, body = await town.ask("supplier")
    assert status == 200
    rate, singled, energy = attack(body["records"], body["report"], series, 3600)
    assert singled == 0, "a household singled out by 3 known hours"
    assert rate <= 1 / SUPPLIER.k + 1e-9 and energy <= 1 / SUPPLIER.k + 1e-9
    # the custodian gets a linked series: the same attacker singles most households out of it
    status, linked = await town.ask("dso")
    assert status == 200 and linked["report"]["linkable"] is True
    assert all(r["pseudonym"].startswith("p_") for r in linked["records"])
    rate, singled, energy = attack(linked["records"], linked["report"], series, 900)
    assert singled > 0.5 and rate > 0.5 and energy > 0.3


async def test_two_overlapping_requests_relink_nothing(town):
    series = town.series()
    status, morning = await town.ask("supplier", DAY, DAY + 14 * 3600)
    assert status == 200
    status, evening = await town.ask("supplier", DAY + 10 * 3600, DAY + 86400)
    assert status == 200
    overlap = {iso(p) for p in HOURS[10:14]}
    assert multiset([r for r in morning["records"] if r["period_start"] in overlap]) == \
        multiset([r for r in evening["records"] if r["period_start"] in overlap])
    assert morning["report"]["days"] == evening["report"]["days"]  # one release of the day, recorded
    both = morning["records"] + evening["records"]
    rate, singled, _ = attack(both, morning["report"], series, 3600)
    assert singled == 0 and rate <= 1 / SUPPLIER.k + 1e-9
    # the custodian's pseudonyms are the day's, not the request's: two requests link nothing the day did not
    status, one = await town.ask("dso", DAY, DAY + 14 * 3600)
    status, two = await town.ask("dso", DAY + 10 * 3600, DAY + 86400)
    inside = {iso(p) for p in range(DAY + 10 * 3600, DAY + 14 * 3600, 900)}
    assert multiset([r for r in one["records"] if r["period_start"] in inside]) == \
        multiset([r for r in two["records"] if r["period_start"] in inside])


async def test_two_organizations_one_household_apart_difference_out_nothing(quiet_town):
    """P5 applied to anonymized rows: two suppliers (or one registered twice) whose cohorts differ by one
    household would read that household's rows as the difference of their releases. Those periods are
    withheld from both; where the cohorts are the same, both get the one record."""
    town = quiet_town
    await town.post_day(range(12), settle=False)
    town.clock.now = DAY + 12 * 3600 + 5  # one household leaves the second supplier at noon
    status, _ = await town.running.call("DELETE", f"/households/me/consents/{town.orgs['supplier2'][0]}/{SERVICE}",
                                        token=town.homes[0][1])
    assert status == 200
    await town.post_day(range(12, 25))
    status, one = await town.ask("supplier")
    assert status == 200, one
    status, two = await town.ask("supplier2")
    assert status == 200, two
    afternoon = {iso(p) for p in HOURS[12:]}
    assert one["report"]["days"][0]["withheld_periods"] == sorted(afternoon)
    assert not any(r["period_start"] in afternoon for r in one["records"] + two["records"])
    assert multiset(one["records"]) == multiset(two["records"]) and one["records"]  # the morning: one record
    # the custodian is not held back by other organizations' cohorts
    status, dso = await town.ask("dso")
    assert status == 200 and {r["period_start"] for r in dso["records"]} & afternoon
    # withholding is decided once: with the second supplier gone, the day is not released again otherwise
    status, _ = await town.running.call("DELETE", f"/organizations/{town.orgs['supplier2'][0]}")
    assert status in (200, 204)
    status, again = await town.ask("supplier")
    assert status == 200 and again["records"] == one["records"] and again["report"] == one["report"]


# --- P9: a narrower range never returns what the day's release suppressed -----------------------------------------
async def test_a_narrower_range_asked_first_returns_only_the_days_recorded_rows(town):
    evening = (DAY + 18 * 3600, DAY + 21 * 3600)
    status, narrow = await town.ask("supplier", *evening)  # before anyone asked for the day
    assert status == 200, narrow
    # late readings for that evening, after the release was made, change nothing
    town.clock.now += 60
    for (_, _, meter), (static, _) in zip(town.homes, town.truth):
        town.running.agent.ingest_http(reading(meter, DAY + 19 * 3600 + 600, static, 5000.0))
    status, day = await town.ask("supplier")
    assert status == 200
    hours = {iso(p) for p in range(*evening, 3600)}
    assert multiset(narrow["records"]) == multiset([r for r in day["records"] if r["period_start"] in hours])
    assert narrow["report"]["days"] == day["report"]["days"]
    # the day's release suppressed rows in these hours (the EV household's at least): the range got none back
    assert len(narrow["records"]) < len(town.truth) * 3
    # a range cutting into periods gets those whole periods, as recorded; nothing of its own
    status, cut = await town.ask("supplier", DAY + 18 * 3600 + 1200, DAY + 19 * 3600 + 5)
    cut_hours = {iso(DAY + 18 * 3600), iso(DAY + 19 * 3600)}
    assert multiset(cut["records"]) == multiset([r for r in day["records"] if r["period_start"] in cut_hours])
    # another organization of the level with the same cohort gets the record (made before the late readings)
    status, other = await town.ask("supplier2")
    assert status == 200 and other["records"] == day["records"] and other["report"]["days"] == day["report"]["days"]
    # and after a restart, the same again
    await town.restart()
    status, again = await town.ask("supplier")
    assert status == 200 and again["records"] == day["records"]


# --- what each level may ask ----------------------------------------------------------------------------------
async def test_levels_grid_and_refusals(town):
    status, body = await town.ask("supplier", resolution="15m")
    assert status == 403 and body["error"] == "resolution_not_permitted"
    status, body = await town.ask("dso", resolution="1h")  # the custodian may coarsen its grid
    assert status == 200 and body["report"]["resolution"] == "1h"
    _, service_key = await town.running.create_org("App", "service")
    status, body = await town.running.call("GET", "/data/anonymized", token=service_key)
    assert status == 403 and body["error"] == "not_permitted"
    status, body = await town.ask("supplier", DAY + 86400, DAY + 2 * 86400)  # today: not settled
    assert status == 409 and body["error"] == "not_settled"
    status, body = await town.ask("supplier", DAY - 30 * 86400, DAY)
    assert status == 400 and "7 days" in body["detail"]
    status, body = await town.ask("supplier", DAY + 100, DAY + 100)
    assert status == 400
    status, body = await town.ask("dso", resolution="5m")
    assert status == 400
    # an organization few households consented to: refused, saying which requirement failed, and no count
    few_id, few_key = await town.running.create_org("Small Grid", "dso")
    town.clock.now = DAY - 300  # its consents held the whole day (the clock is the test's)
    for _, token, _ in town.homes[:3]:
        await town.running.call("PUT", f"/households/me/consents/{few_id}/{SERVICE}", token=token)
    town.clock.now = DAY + 86400 + SETTLE_S + 120
    status, body = await town.running.call("GET", f"/data/anonymized?from={DAY}&to={DAY + 86400}", token=few_key)
    assert status == 409 and body["error"] == "k_not_met" and body["requirement"] == "k"
    assert "k >= 5" in body["detail"] and "3" not in body["detail"] and "households" not in body


async def test_related_households_are_left_out_of_releases_made_after_they_are_marked(town):
    supplier_id = town.orgs["supplier"][0]
    status, before = await town.ask("supplier", DAY, DAY + 2 * 86400 - 1)  # only the first day has settled
    assert status == 200 and len(before["report"]["days"]) == 1
    # the operator marks 10 households as the supplier's employees: the next day's release leaves them out
    for household_id, _, _ in town.homes[:10]:
        status, _ = await town.running.call("PATCH", f"/households/{household_id}",
                                            json={"related_organizations": [supplier_id]})
        assert status == 200
    day2 = DAY + 86400
    for hour in range(24):
        town.clock.now = day2 + hour * 3600 + 10
        for (_, _, meter), (static, values) in zip(town.homes, town.truth):
            town.running.agent.ingest_http(reading(meter, town.clock.now, static, values[DAY + hour * 3600]))
    town.clock.now = day2 + 86400 + 10
    for (_, _, meter), (static, _) in zip(town.homes, town.truth):
        town.running.agent.ingest_http(reading(meter, town.clock.now, static, 300.0))
    town.clock.now += SETTLE_S + 60
    await town.written()
    status, body = await town.ask("supplier", day2, day2 + 86400)
    assert status == 200, body
    [second] = body["report"]["days"]
    # the related households are in no row: every other one is, or counted suppressed in the record (the
    # operator's audit; the organization is not told how many, R7-2)
    agent = town.running.agent
    recorded = await day_release(agent, supplier_id, level_of(agent, agent.registry.organizations[supplier_id]),
                                 3600, day2)
    assert recorded["report"]["rows"] == second["rows"]
    assert second["rows"] + recorded["audit"]["rows_suppressed"] == (len(town.truth) - 10) * 24
    # a day recorded before is not made again with a different cohort (that would be a difference to take)
    status, again = await town.ask("supplier", DAY, DAY + 86400)
    assert again["records"] == before["records"] and again["report"]["days"] == before["report"]["days"]


async def test_static_attributes_use_only_data_from_under_consent(tmp_path, start_agent):
    """Readings from before a household consented must not describe it, not even as 'has PV'."""
    t0 = DAY + 8 * 3600
    clock = StepClock(t0 - 3 * 3600)
    running = await start_agent(make_config(tmp_path), clock=clock)
    org_id, _ = await running.create_org("Grid Co", "dso")
    household_id, token = await running.create_household()
    meter = running.agent.registry.household(household_id).meter_id
    before = list(range(t0 - 3 * 3600, t0 - 3600, 900))
    exporting = StaticAttributes(has_pv=True, has_gas=False, phases=3, max_current_a=20.0)
    for start in before + [before[-1] + 900]:  # exporting, three-phase: before any consent
        clock.now = start + 10
        running.agent.ingest_http(reading(meter, clock.now, exporting, 500.0))
    clock.now = t0 - 1800
    assert (await running.call("PUT", f"/households/me/consents/{org_id}/{SERVICE}", token=token))[0] == 200
    periods = list(range(t0, t0 + 3600, 900))
    quiet = StaticAttributes(has_pv=False, has_gas=True, phases=1, max_current_a=5.0)
    for start in periods + [periods[-1] + 900]:  # no export, one phase, gas: under consent
        clock.now = start + 10
        running.agent.ingest_http(reading(meter, clock.now, quiet, 300.0))
    agent, registry = running.agent, running.agent.registry
    cohorts = {p: registry.cohort(org_id, SERVICE, p, p + 900) for p in periods}
    assert all(household_id in c for c in cohorts.values())
    timelines = {household_id: registry.consent_timeline(household_id, org_id, SERVICE)}
    [series] = _gather(agent, [registry.household(household_id)], cohorts, periods, 900, timelines)
    assert series.static.has_pv is False and series.static.has_gas is True
    assert series.static.phases == 1


def test_days_recorded_with_suppression_counts_are_answered_without_them():
    """Days recorded before red team 7's R7-2 fix carry rows_suppressed and suppressed_for in their report: they
    depend on the households' values (they said in which hours one household stood out). The record stays as it
    was (made again, it would be a second release of the day); no answer carries them."""
    level = DEFAULT_LEVELS["supplier"]
    doc = release_day(neighbourhood(150, list(range(DAY, DAY + 86400, 3600)), seed=4), level.anonymized,
                      resolution_s=3600, level="supplier", day=DAY)
    assert "records" in doc and not {"rows_suppressed", "suppressed_for"} & set(doc["report"])
    legacy = {**doc, "report": {**doc["report"], "rows_suppressed": 4, "suppressed_for": {"cell": 4}}}
    del legacy["audit"]  # such records had none
    report = _report(level, 3600, [legacy], [legacy], len(legacy["records"]), {"from": "a", "to": "b"})
    assert report["rows"] == len(doc["records"]) and report["k"] == doc["report"]["k"]
    assert not {"rows_suppressed", "suppressed_for"} & {*report, *report["days"][0]}, report
