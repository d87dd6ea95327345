"""Anonymized releases, checked from outside: every report's k and l recomputed by pycanon (an independent
implementation) and t by scipy's Wasserstein distance against the level's fixed reference, on the released rows,
period by period; property tests over random neighbourhoods show that no period of a release ever falls below
its level and that a day asked whole or in parts gives the same rows; the linkage attacks show that rows of a
non-custodian level link no household's periods; refusals name the requirement that failed."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import DEFAULT_LEVELS, REFERENCE_CDF, Anonymization, ConfigError, parse_config
from agent.privacy import linkage
from agent.privacy.anonymize import (QUASI_IDENTIFIERS, SENSITIVE_ATTRIBUTE, STATIC, HouseholdSeries, Refusal,
                                     Release, StaticAttributes, anonymize, release_day, select, static_from_rollups)
from agent.privacy.synthetic import neighbourhood
from tests.helpers.privacy import pycanon_figures, reference_t

DAY = 1_790_000_000 // 86400 * 86400


def periods(hours: int, res: int) -> list[int]:
    return list(range(DAY, DAY + hours * 3600, res))


def check_release(release: Release, rules: Anonymization, series: list[HouseholdSeries], res: int) -> None:
    report = release.report
    assert report["quasi_identifiers"] == list(QUASI_IDENTIFIERS)
    assert report["sensitive_attribute"] == SENSITIVE_ATTRIBUTE
    width = report["generalization"]["value_bin_w"]
    k, l_div = pycanon_figures(release.records)
    t = reference_t(release.records, rules.reference_cdf, width, report["generalization"]["top_bin_from_w"])
    assert (report["k"], report["l"]) == (k, l_div)
    assert report["t"] == pytest.approx(t, abs=1e-6)
    # never below the level, in any period on its own
    assert k >= rules.k and l_div >= rules.l and t <= rules.t + 1e-9
    cells = Counter(tuple(r[q] for q in (*QUASI_IDENTIFIERS, SENSITIVE_ATTRIBUTE)) for r in release.records)
    assert min(cells.values(), default=rules.min_cell) >= rules.min_cell  # no bin rarer than min_cell in a class
    # the bookkeeping adds up
    assert report["rows"] == len(release.records)
    total = sum(1 for hh in series for _ in hh.consumption_w)
    assert report["rows"] + release.audit["rows_suppressed"] == total
    assert release.audit["rows_suppressed"] <= rules.max_suppression * total
    assert not {"rows_suppressed", "suppressed_for"} & set(report)  # they depend on values (R7-2): the operator's
    assert report["linkable"] is rules.linkable
    if rules.linkable:
        released_households = len({r["pseudonym"] for r in release.records})
        assert report["households"] == released_households
        assert report["households_suppressed"] == len(series) - released_households
    else:  # nothing that links rows: no pseudonym, no count of households, rows in the order of their content
        assert all(set(r) == {"period_start", "period_end", *STATIC, "consumption_w_from", "consumption_w_to"}
                   for r in release.records)
        assert "households" not in report
        assert release.records == sorted(release.records, key=content)
    # never finer than the level: bins at least the level's width, periods of the asked resolution
    assert width >= rules.value_bin_w
    for r in release.records:
        assert r["consumption_w_from"] % width == 0
        if rules.min_cell == 1:
            assert r["consumption_w_to"] is None or r["consumption_w_to"] - r["consumption_w_from"] == width
        else:  # the class's bins: grid edges, wider where rarer rows were merged in
            assert r["consumption_w_to"] is None or r["consumption_w_to"] % width == 0 \
                and r["consumption_w_to"] > r["consumption_w_from"]
    if rules.min_cell > 1:  # every class's bins tile the whole range: from 0, each to the next, the last open
        by_class: dict[tuple, set] = {}
        for r in release.records:
            by_class.setdefault(tuple(r[q] for q in QUASI_IDENTIFIERS), set()).add(
                (r["consumption_w_from"], r["consumption_w_to"]))
        for bins in by_class.values():
            edges = sorted(bins, key=lambda b: b[0])
            assert edges[0][0] == 0 and edges[-1][1] is None
            assert all(a[1] == b[0] for a, b in zip(edges, edges[1:])), edges
        start, end = pd.Timestamp(r["period_start"]), pd.Timestamp(r["period_end"])
        assert (end - start).total_seconds() == res
    # nothing internal leaks
    text = str(release.records)
    assert not any(hh.household_id in text for hh in series)


def content(record: dict) -> tuple:
    return (record["period_start"], *(record[name] for name in STATIC), record["consumption_w_from"])


def multiset(records: list[dict]) -> Counter:
    return Counter(tuple(sorted(r.items())) for r in records)


@pytest.mark.parametrize("level, households", [("dso", 12), ("dso", 60), ("dso", 200), ("supplier", 40),
                                               ("supplier", 150)])


def test_reports_agree_with_pycanon_and_scipy(level, households):
    rules = DEFAULT_LEVELS[level].anonymized
    res = 900 if rules.resolution == "15m" else 3600
    hours = 6 if res == 900 else 24
    ps = periods(hours, res)
    series = neighbourhood(households, ps, seed=households)
    release = anonymize(series, rules, resolution_s=res, level=level, periods=ps)
    assert isinstance(release, Release), release
    check_release(release, rules, series, res)


def test_only_the_custodian_is_linkable_by_default():
    assert DEFAULT_LEVELS["dso"].anonymized.linkable
    assert not any(level.anonymized.linkable for name, level in DEFAULT_LEVELS.items() if name != "dso")
    assert Anonymization().linkable is False  # a level the operator adds is not linkable unless it says so


def test_custodian_pseudonyms_are_fresh_per_computation_one_per_household():
    rules = DEFAULT_LEVELS["dso"].anonymized
    ps = periods(4, 900)
    series = neighbourhood(40, ps, seed=3)
    first = anonymize(series, rules, resolution_s=900, level="dso", periods=ps)
    second = anonymize(series, rules, resolution_s=900, level="dso", periods=ps)
    one = {r["pseudonym"] for r in first.records}
    two = {r["pseudonym"] for r in second.records}
    assert one and not one & two

    def without_ids(records):
        return sorted(tuple(sorted((k, v) for k, v in r.items() if k != "pseudonym")) for r in records)

    assert without_ids(first.records) == without_ids(second.records)
    per_pseudonym = {}
    for r in first.records:
        per_pseudonym.setdefault(r["pseudonym"], []).append(r["period_start"])
    assert all(len(v) == len(set(v)) for v in per_pseudonym.values())


def test_unlinked_rows_are_a_function_of_each_period_and_class_alone():
    """Swapping two households' values inside one class of one period changes nothing in the release: the
    rows say what each class held in each period, never which household held what across periods."""
    rules = DEFAULT_LEVELS["supplier"].anonymized
    ps = periods(24, 3600)
    series = [HouseholdSeries(hh.household_id, StaticAttributes(i % 2 == 0, True, 1, 10.0), hh.consumption_w)
              for i, hh in enumerate(neighbourhood(60, ps, seed=11))]
    release = anonymize(series, rules, resolution_s=3600, level="supplier", periods=ps)
    assert isinstance(release, Release) and release.records
    a, b = 0, next(i for i in range(2, 60, 2)  # same profile, values in different bins at 05:00
                   if abs(series[i].consumption_w[ps[5]] - series[0].consumption_w[ps[5]]) > 2 * rules.value_bin_w)
    swapped = [HouseholdSeries(hh.household_id, hh.static, dict(hh.consumption_w)) for hh in series]
    swapped[a].consumption_w[ps[5]], swapped[b].consumption_w[ps[5]] = (series[b].consumption_w[ps[5]],
                                                                        series[a].consumption_w[ps[5]])
    again = anonymize(swapped, rules, resolution_s=3600, level="supplier", periods=ps)
    assert again.records == release.records and again.report == release.report
    # and the custodian's linked rows do change: the pseudonyms carry the household across periods
    linked = dataclasses.replace(rules, linkable=True)
    one = anonymize(series, linked, resolution_s=3600, level="x", periods=ps)
    two = anonymize(swapped, linked, resolution_s=3600, level="x", periods=ps)

    def trajectories(records):
        by = {}
        for r in records:
            by.setdefault(r["pseudonym"], []).append((r["period_start"], r["consumption_w_from"]))
        return sorted(tuple(sorted(v)) for v in by.values())

    assert trajectories(one.records) != trajectories(two.records)


def test_a_unique_household_is_suppressed_not_released():
    rules = Anonymization(k=5, resolution="15m", value_bin_w=100, max_suppression=0.2, linkable=True)
    ps = periods(2, 900)
    series = [HouseholdSeries(f"h{i}", StaticAttributes(False, True, 1, 10.0), {p: 200.0 + 10 * i for p in ps})
              for i in range(10)]
    # one household with PV, three phases and a big connection: unique on every attribute
    series.append(HouseholdSeries("odd", StaticAttributes(True, False, 3, 60.0), {p: 3000.0 for p in ps}))
    release = anonymize(series, rules, resolution_s=900, level="dso", periods=ps)
    assert isinstance(release, Release)
    check_release(release, rules, series, 900)
    assert release.report["households_suppressed"] == 1
    assert release.report["generalization"]["has_pv"] == "exact"  # suppressed, not generalized away
    assert all(r["consumption_w_from"] < 3000 for r in release.records)


def test_refusals_name_the_requirement():
    ps = periods(2, 3600)
    few = neighbourhood(6, ps, seed=1)
    refused = anonymize(few, DEFAULT_LEVELS["supplier"].anonymized, resolution_s=3600, level="supplier", periods=ps)
    assert isinstance(refused, Refusal) and refused.requirement == "k" and "k >= 10" in refused.detail
    assert "6" not in refused.detail  # how many households there are is not the organization's to learn
    same = [HouseholdSeries(f"h{i}", StaticAttributes(False, False, 1, 10.0), {p: 150.0 for p in ps})
            for i in range(20)]
    refused = anonymize(same, Anonymization(k=5, l=2, value_bin_w=100), resolution_s=3600, level="x", periods=ps)
    assert isinstance(refused, Refusal) and refused.requirement == "l"
    # everyone far above the reference (3-4 kW in every hour): k and l hold, t against the reference cannot
    high = [HouseholdSeries(f"h{i}", StaticAttributes(False, False, 1, 10.0), {p: 3000.0 + (i % 4) * 300 for p in ps})
            for i in range(40)]
    refused = anonymize(high, Anonymization(k=5, l=2, t=0.3, value_bin_w=250), resolution_s=3600, level="x",
                        periods=ps)
    assert isinstance(refused, Refusal) and refused.requirement == "t" and "reference" in refused.detail


def test_a_value_alone_in_its_class_is_not_released_below_the_custodian():
    """P8's supplier finding: the EV household alone in the top bin every night hour. Its class is large enough,
    but its bin is its own: the threshold rule (min_cell) releases its row in its class's highest bin, held by
    others too, and open every hour; the class keeps its 16 rows every hour (suppressing the row instead left
    the class one short in exactly the EV's hours: red team 7, R7-2)."""
    ps = periods(24, 3600)
    series = [HouseholdSeries(f"h{i}", StaticAttributes(False, True, 1, 10.0),
                              {p: 150.0 + 260 * (i % 5) for p in ps}) for i in range(15)]
    series.append(HouseholdSeries("ev", StaticAttributes(False, True, 1, 10.0),
                                  {p: 7200.0 if (p - DAY) // 3600 < 5 else 410.0 for p in ps}))
    supplier = DEFAULT_LEVELS["supplier"].anonymized
    release = anonymize(series, supplier, resolution_s=3600, level="supplier", periods=ps)
    assert isinstance(release, Release)
    check_release(release, supplier, series, 3600)
    assert not any(r["consumption_w_from"] >= 4000 for r in release.records)  # the EV's own bin: nowhere
    hours = {p: [r for r in release.records if r["period_start"] == p] for p in {r["period_start"] for r in
                                                                                 release.records}}
    assert len(hours) == 24 and {len(rows) for rows in hours.values()} == {16}  # nobody missing at night
    edges = {frozenset((r["consumption_w_from"], r["consumption_w_to"]) for r in rows) for rows in hours.values()}
    assert len(edges) == 1  # the bins' edges are the same at night: they do not say that someone was recoded
    assert release.audit["rows_recoded"] == 5 and release.audit["rows_suppressed"] == 0
    without = anonymize(series, dataclasses.replace(supplier, min_cell=1), resolution_s=3600, level="x", periods=ps)
    assert sum(r["consumption_w_to"] is None for r in without.records) == 5  # what the rule takes out
    assert DEFAULT_LEVELS["dso"].anonymized.min_cell == 1 and supplier.min_cell == 2


def test_t_is_measured_against_the_fixed_reference_not_the_release():
    """A class is kept or suppressed on its own rows and the reference: adding a far-away class to the same
    period changes neither its t nor whether it is released (against the release's own distribution it would)."""
    rules = Anonymization(k=5, l=2, t=0.25, value_bin_w=250, max_suppression=0.9)
    ps = periods(1, 3600)
    normal = [HouseholdSeries(f"n{i}", StaticAttributes(False, True, 1, 10.0), {ps[0]: 150.0 + 90 * i})
              for i in range(10)]
    heavy = [HouseholdSeries(f"x{i}", StaticAttributes(True, False, 3, 50.0), {ps[0]: 3800.0 + 100 * i})
             for i in range(6)]
    alone = anonymize(normal, rules, resolution_s=3600, level="x", periods=ps)
    both = anonymize(normal + heavy, rules, resolution_s=3600, level="x", periods=ps)
    assert isinstance(alone, Release) and isinstance(both, Release)
    assert both.audit["suppressed_for"]["t"] == 6  # the heavy class is far from the reference
    assert both.records == alone.records and both.report["t"] == alone.report["t"]


def test_static_attributes_from_rollups():
    rows = [{"power_import_w": 300, "power_export_w_max": 0, "current_l1_a": 4.0},
            {"power_import_w": 100, "power_export_w_max": 1200.0, "gas_m3": 1234.5, "voltage_l2_v": 231.0,
             "current_l1_a": 30.0, "current_l2_a": 2.0}]
    assert static_from_rollups(rows) == StaticAttributes(True, True, 3, 30.0)
    assert static_from_rollups(rows[:1]) == StaticAttributes(False, False, 1, 4.0)
    assert static_from_rollups([{"power_import_w": 1}]).max_current_a is None


# --- linkage: what an attacker who knows a few facts does with the rows ---------------------------
@pytest.mark.parametrize("households", [40, 120])
def test_three_known_periods_single_out_nobody_at_a_non_custodian_level(households):
    rules = DEFAULT_LEVELS["supplier"].anonymized
    ps = periods(24, 3600)
    series = neighbourhood(households, ps, seed=households)
    rates = {}
    for linkable in (True, False):
        doc = release_day(series, dataclasses.replace(rules, linkable=linkable), resolution_s=3600,
                          level="supplier", day=DAY)
        known = linkage.targets(series, doc["report"], 3600)
        rates[linkable] = (*linkage.trajectory_rate(doc["records"], known),
                           linkage.energy_rate(doc["records"], known, doc["report"], 3600))
    # the attack works: a linked release (today's, with one pseudonym per household) gives most households away
    assert rates[True][0] > 0.3 and rates[True][1] > 0.15
    # unlinked: no household singled out, and naming its row is no better than a pick among k
    rate, singled, energy = rates[False]
    assert singled == 0 and rate <= 1 / rules.k + 1e-9 and energy <= 1 / rules.k + 1e-9


# --- properties over random neighbourhoods --------------------------------------------------------
statics = st.builds(StaticAttributes, st.booleans(), st.booleans(), st.sampled_from([1, 3]),
                    st.one_of(st.none(), st.floats(1, 80)))
values = st.one_of(st.floats(0, 6000), st.sampled_from([0.0, 99.9, 100.0, 3999.0, 4000.0, 25_000.0]))


@st.composite
def neighbourhoods(draw, max_periods: int = 4):
    n_periods = draw(st.integers(1, max_periods))
    res = draw(st.sampled_from([900, 3600]))
    ps = [DAY + i * res for i in range(n_periods)]
    households = draw(st.integers(0, 40))
    series = []
    for i in range(households):
        present = draw(st.lists(st.sampled_from(ps), min_size=1, max_size=n_periods, unique=True))
        series.append(HouseholdSeries(f"hh_{i}", draw(statics), {p: draw(values) for p in present}))
    rules = Anonymization(k=draw(st.integers(2, 8)), l=draw(st.integers(1, 3)),
                          t=draw(st.sampled_from([0.15, 0.3, 0.6, 1.0])), value_bin_w=draw(st.sampled_from([100, 250])),
                          max_suppression=draw(st.sampled_from([0.0, 0.2, 0.5])), linkable=draw(st.booleans()),
                          min_cell=draw(st.sampled_from([1, 2, 3])))
    return series, rules, res, ps


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(neighbourhoods())
def test_no_period_of_a_release_ever_falls_below_its_level(case):
    series, rules, res, ps = case
    result = anonymize(series, rules, resolution_s=res, level="test", periods=ps)
    if isinstance(result, Refusal):
        assert result.requirement in ("k", "l", "t") and result.detail
        return
    check_release(result, rules, series, res)
    for period in {r["period_start"] for r in result.records}:  # each period a release of its own
        rows = [r for r in result.records if r["period_start"] == period]
        k, l_div = pycanon_figures(rows)
        gen = result.report["generalization"]
        t = reference_t(rows, rules.reference_cdf, gen["value_bin_w"], gen["top_bin_from_w"])
        assert k >= rules.k and l_div >= rules.l and t <= rules.t + 1e-9


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(neighbourhoods(max_periods=6), st.lists(st.integers(0, 86400), min_size=1, max_size=5))
def test_a_day_asked_twice_or_in_parts_gives_the_same_rows(case, cuts):
    series, rules, res, _ = case
    rules = dataclasses.replace(rules, linkable=False)
    doc = release_day(series, rules, resolution_s=res, level="test", day=DAY)
    again = release_day(series, rules, resolution_s=res, level="test", day=DAY)
    assert again == doc  # unlinked: nothing random in it
    whole = select(doc, DAY, DAY + 86400)
    assert whole == doc.get("records", [])
    # cut the day anywhere (also inside periods): the parts' periods together are the day's rows, each once
    edges = sorted({DAY, DAY + 86400, *(DAY + c for c in cuts)})
    parts = Counter()
    for since, until in zip(edges, edges[1:]):
        part = select(doc, since, until)
        assert not multiset(part) - multiset(whole)  # never a row the day did not release
        parts += multiset(part)
    inside = {(r["period_start"]) for r in whole}
    # a period cut in two is returned whole to both sides, so count each period's rows once per distinct period
    assert set(parts) == set(multiset(whole)) and {dict(k)["period_start"] for k in parts} == inside


def test_level_defaults_are_the_documented_ones():
    levels = {name: dataclasses.asdict(level.anonymized) for name, level in DEFAULT_LEVELS.items()}
    assert levels["dso"]["k"] == 5 and levels["dso"]["resolution"] == "15m"
    assert (levels["supplier"]["k"], levels["supplier"]["l"], levels["supplier"]["t"]) == (10, 3, 0.3)
    assert levels["supplier"]["resolution"] == "1h"
    assert levels["service"]["k"] == 0
    assert all(level.anonymized.reference_cdf == REFERENCE_CDF for level in DEFAULT_LEVELS.values())


def test_anonymization_settings_in_the_config_file():
    base = {"auth": {"operator_token": "x" * 20}}
    config = parse_config({**base, "levels": {"supplier": {"anonymized": {
        "linkable": True, "reference_cdf": [[0, 0], [300, 0.5], [2000, 1]]}}}})
    rules = config.levels["supplier"].anonymized
    assert rules.linkable and rules.reference_cdf == ((0.0, 0.0), (300.0, 0.5), (2000.0, 1.0)) and rules.k == 10
    assert parse_config(base).levels["dso"].anonymized.linkable
    assert parse_config({**base, "levels": {"x": {"anonymized": {"k": 5, "min_cell": 3}}}}).levels["x"] \
        .anonymized.min_cell == 3
    with pytest.raises(ConfigError, match="min_cell"):
        parse_config({**base, "levels": {"supplier": {"anonymized": {"min_cell": 0}}}})
    for bad in ({"linkable": 1}, {"reference_cdf": [[0, 0]]}, {"reference_cdf": [[10, 0], [20, 1]]},
                {"reference_cdf": [[0, 0], [100, 0.6], [50, 1]]}, {"reference_cdf": [[0, 0], [100, 0.9]]},
                {"reference_cdf": [[0, 0], [100, 0.6], [200, 0.4], [300, 1]]}, {"reference_cdf": [[0, 0, 1]]}):
        key = "linkable" if "linkable" in bad else "reference_cdf"
        with pytest.raises(ConfigError, match=key):
            parse_config({**base, "levels": {"supplier": {"anonymized": bad}}})
