"""The linkage attacks (agent/privacy/linkage.py) on released rows built by hand, so that each figure can be worked
out on paper: a pseudonym or an unchanged row order links a household's series (success 1), a group of m alike
rows gives 1/m, a row the release does not show is no fact. tests/test_privacy_anonymize.py measures real releases
with them."""

from __future__ import annotations

import pytest

from agent.privacy import linkage
from agent.privacy.anonymize import HouseholdSeries, StaticAttributes
from drivers.reading import iso

PERIODS = [iso(1_767_225_600 + 3600 * i) for i in range(4)]
PROFILE = ("yes", "no", "1", "*")  # has_pv, has_gas, phases, connection as released
OTHER = ("no", "yes", "3", "*")
WIDTH = 100


def row(period: str, profile: tuple[str, ...], low: int, high: int | None = None, **extra) -> dict:
    return {"period_start": period, "period_end": period, "consumption_w_from": low,
            "consumption_w_to": low + WIDTH if high is None else high,
            **dict(zip(("has_pv", "has_gas", "phases", "connection"), profile)), **extra}


def low_of(household: int, period: int) -> int:
    """Each household's bin differs from every other's in every period."""
    return 100 * (household + 1) + 1000 * (period % 2)


def town(households: int = 4, order: str = "same", pseudonyms: bool = False, profile=PROFILE):
    """A release of `households` alike households over PERIODS: rows listed in the same order every period, or
    rotated by one each period (so that no position holds one household twice); and the attacker's targets."""
    records = []
    for p, period in enumerate(PERIODS):
        for i in range(households):
            h = i if order == "same" else (i + p) % households
            extra = {"pseudonym": f"hh{h}"} if pseudonyms else {}
            records.append(row(period, profile, low_of(h, p), **extra))
    energy = [sum((low_of(h, p) + WIDTH / 2) for p in range(len(PERIODS))) for h in range(households)]
    known = [linkage.Target(profile, {period: low_of(h, p) for p, period in enumerate(PERIODS)}, energy[h])
             for h in range(households)]
    return records, known


def test_a_pseudonym_links_each_households_series():
    records, known = town(order="rotated", pseudonyms=True)
    assert linkage.trajectory_rate(records, known) == (1.0, 1.0)
    assert linkage.energy_rate(records, known, {"generalization": {"value_bin_w": WIDTH}}, 3600) == 1.0


def test_rows_in_the_same_order_every_period_are_linked_by_position():
    records, known = town(order="same")
    assert linkage.trajectory_rate(records, known) == (1.0, 1.0)


def test_alike_rows_in_a_new_order_each_period_give_one_in_m():
    records, known = town(households=4, order="rotated")
    assert linkage.trajectory_rate(records, known) == (0.25, 0.0)
    # every position's rows add up to the same energy as the group's mean household: only the group names the target
    assert linkage.energy_rate(records, known, {"generalization": {"value_bin_w": WIDTH}}, 3600) == 0.25


def test_a_household_alone_in_its_profile_is_singled_out():
    records, known = town(households=3, order="rotated")
    alone = [row(period, OTHER, 2000) for period in PERIODS]
    target = linkage.Target(OTHER, {period: 2000 for period in PERIODS}, 0.0)
    rate, singled = linkage.trajectory_rate(records + alone, known + [target])
    assert singled == pytest.approx(1 / 4) and rate == pytest.approx((3 * (1 / 3) + 1) / 4)


def test_an_entity_stands_for_the_fewest_households_it_has_in_a_period():
    entities = linkage.entities([row(PERIODS[0], PROFILE, 100), row(PERIODS[0], PROFILE, 200),
                                 row(PERIODS[0], PROFILE, 300), row(PERIODS[1], PROFILE, 100),
                                 row(PERIODS[1], PROFILE, 200)])
    (group,) = entities["fields"]
    assert group.grouped and group.households == 2
    assert [e.households for e in entities["position"]] == [1, 1, 1]
    assert len(entities["position_in_class"]) == 3
    records, _ = town(order="rotated", pseudonyms=True)
    series = linkage.entities(records)["fields"]
    assert len(series) == 4 and not any(e.grouped for e in series)  # a key with one row per period: a series


def test_a_period_the_release_does_not_show_is_no_fact():
    records, known = town(households=2, order="rotated", pseudonyms=True)
    shown = [r for r in records if not (r["period_start"] == PERIODS[0] and r["pseudonym"] == "hh0")]
    rate, singled = linkage.trajectory_rate(shown, known)
    assert (rate, singled) == (1.0, 1.0)  # the other known periods still link it
    assert linkage.trajectory_rate([], known) == (0.0, 0.0)
    assert linkage.energy_rate([], known, {"generalization": {"value_bin_w": WIDTH}}, 3600) == 0.0


def test_as_released_finds_the_wider_bin_of_the_targets_class_or_none():
    records = [row(PERIODS[0], PROFILE, 0, 400), row(PERIODS[1], PROFILE, 4000, None) | {"consumption_w_to": None}]
    target = linkage.Target(PROFILE, {PERIODS[0]: 200, PERIODS[1]: 5000, PERIODS[2]: 100}, 1.0)
    (shown,) = linkage.as_released([target], records)
    assert shown.bins == {PERIODS[0]: 0, PERIODS[1]: 4000, PERIODS[2]: None}
    (elsewhere,) = linkage.as_released([linkage.Target(OTHER, target.bins, 1.0)], records)
    assert set(elsewhere.bins.values()) == {None}  # another class's bins are not its


def test_targets_are_the_households_as_the_generalization_shows_them():
    series = [HouseholdSeries("a", StaticAttributes(True, False, 3, 30.0), {0: 150.0, 3600: 950.0}),
              HouseholdSeries("b", StaticAttributes(False, True, 1, None), {0: 5000.0})]
    report = {"generalization": {"has_pv": "exact", "has_gas": "suppressed", "phases": "exact",
                                 "connection": "coarse", "value_bin_w": 200}}
    a, b = linkage.targets(series, report, 900)
    assert a.profile == ("yes", "*", "3", "<=35A") and b.profile == ("no", "*", "1", "*")
    assert a.bins == {iso(0): 0, iso(3600): 800} and b.bins == {iso(0): 4000}  # the open top bin
    assert a.energy_wh == pytest.approx((150 + 950) * 900 / 3600)
