"""Each filter on recorded series of released aggregates."""

from __future__ import annotations

import pytest

from agent.delivery.filters import Deadband, FilterError, FilterSet, Threshold

# consumption in W over 12 windows of a neighbourhood evening
SERIES = [1000, 1010, 1020, 1100, 1110, 1500, 1490, 1495, 900, 905, 2000, 2001]


def run(filters: FilterSet, series, field="consumption_w", step=1.0):
    sent, last, last_at = [], None, None
    for i, value in enumerate(series):
        aggregate = {field: value, "net_w": value - 1200, "window_start": i}
        if filters.decide(aggregate, last, i * step, last_at):
            sent.append(value)
            last, last_at = aggregate, i * step
    return sent


def test_no_filter_sends_everything():
    assert run(FilterSet.parse(None), SERIES) == SERIES


def test_deadband_absolute():
    assert run(FilterSet.parse({"deadband": {"absolute": 100}}), SERIES) == [1000, 1100, 1500, 900, 2000]


def test_deadband_percent():
    assert run(FilterSet.parse({"deadband": {"percent": 20}}), SERIES) == [1000, 1500, 900, 2000]


def test_threshold_crossings_both_ways():
    sent = run(FilterSet.parse({"threshold": {"field": "net_w", "levels": [0]}}), SERIES)
    assert sent == [1000, 1500, 900, 2000]  # first window, up through 0, down, up


def test_any_change_filter_firing_is_enough():
    spec = {"deadband": {"absolute": 500}, "threshold": {"field": "net_w", "levels": [0]}}
    assert run(FilterSet.parse(spec), SERIES) == [1000, 1500, 900, 2000]


def test_min_interval_holds_back():
    assert run(FilterSet.parse({"min_interval": 3}), SERIES) == [1000, 1100, 1490, 905]  # t = 0, 3, 6, 9


def test_max_silence_forces_a_send():
    sent = run(FilterSet.parse({"deadband": {"absolute": 10_000}, "max_silence": 4}), SERIES)
    assert sent == [1000, 1110, 900]  # t = 0, 4, 8


def test_fields_projection_keeps_window_times():
    filters = FilterSet.parse({"fields": ["net_w"]})
    assert filters.project({"net_w": 1, "consumption_w": 2, "window_start": "a", "window_end": "b"}) == {
        "net_w": 1, "window_start": "a", "window_end": "b"}


@pytest.mark.parametrize("spec, words", [
    ({"deadband": {}}, "absolute or percent"),
    ({"deadband": {"absolute": 0}}, "positive"),
    ({"deadband": {"fields": ["secret_field"], "absolute": 1}}, "unknown field"),
    ({"threshold": {"levels": []}}, "non-empty"),
    ({"threshold": {"levels": [True]}}, "numbers"),
    ({"fields": []}, "non-empty"),
    ({"nonsense": 1}, "unknown filter"),
    ("deadband", "object"),
])
def test_bad_specs(spec, words):
    with pytest.raises(FilterError, match=words):
        FilterSet.parse(spec)


def test_deadband_and_threshold_with_missing_values():
    assert Deadband(("production_w",), absolute=1).fires({"production_w": None}, {"production_w": 5})
    assert not Threshold("net_w", (0.0,)).fires({}, {"net_w": 1})
