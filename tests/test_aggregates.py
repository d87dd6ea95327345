"""agent/aggregates.py on data: a household's mean powers in a window, which readings it takes, the windows kept.
No agent, no process: the functions and their results."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from agent.aggregates import KEEP, Accumulator, Contribution, WindowBook, new_books
from agent.config import WINDOW_SECONDS
from agent.store.rollup import window_start
from drivers.reading import Reading
from tests.helpers.clock import HOUR


def reading(meter: str, at: float, imp: float | None = 100.0, exp: float | None = 0.0, channels=None) -> Reading:
    moment = datetime.fromtimestamp(at, timezone.utc)
    return Reading(meter_id=meter, timestamp=moment, received_at=moment, power_import_w=imp, power_export_w=exp,
                   channels=channels)


def test_a_contribution_is_the_mean_of_the_readings():
    acc = Accumulator()
    for imp, exp in ((100.0, 0.0), (300.0, 50.0)):
        acc.add_values(imp, exp, None)
    assert acc.result() == Contribution(200.0, 25.0, 2, {})


def test_a_missing_power_counts_as_zero_and_a_reading_with_nothing_is_not_counted():
    acc = Accumulator()
    acc.add_values(100.0, None, None)  # import only: its export is 0 W, the reading counts
    acc.add_values(None, None, None)  # nothing this window can use
    acc.add_values(None, None, {})
    assert acc.result() == Contribution(100.0, 0.0, 1, {})
    assert Accumulator().result() is None


def test_channel_means_are_over_the_readings_that_carry_the_tag():
    acc = Accumulator()
    acc.add_values(100.0, 0.0, {"ev": 3000.0})
    acc.add_values(200.0, 0.0, {"ev": 1000.0, "fridge": 80.0})
    acc.add_values(None, None, {"fridge": 120.0})  # a channel alone still counts as a reading
    result = acc.result()
    assert result.samples == 3 and result.consumption_w == pytest.approx(100.0)
    assert result.channels == {"ev": 2000.0, "fridge": 100.0}


def test_a_weight_counts_as_that_many_readings_of_those_means():
    """A stored rollup of 60 readings weighs as those 60 beside one live reading."""
    acc = Accumulator()
    acc.add_values(100.0, 10.0, {"ev": 500.0}, weight=60)
    acc.add_values(710.0, 71.0, {"ev": 1110.0})
    assert acc.result() == Contribution(110.0, 11.0, 61, {"ev": 510.0})


@pytest.mark.parametrize("width", sorted(set(WINDOW_SECONDS.values())))
@pytest.mark.parametrize("offset", [0, 0.001, 0.5, 59.999, 899.5, 3599.999])
def test_windows_are_utc_aligned_and_agree_with_the_stores_rollups(width, offset):
    """Two implementations of one fact (the live books here, the store's rollups there) must give the same window."""
    moment = HOUR + offset
    start = WindowBook(width, keep=4).window_start(moment)
    assert start == window_start(moment, width)
    assert start % width == 0 and start <= moment < start + width


def test_the_book_sums_each_meter_in_its_window():
    book = WindowBook(60, keep=10)
    for at, meter, imp in ((HOUR + 1, "a", 100.0), (HOUR + 30, "a", 300.0), (HOUR + 59, "b", 50.0),
                           (HOUR + 60, "a", 1000.0)):
        book.add(reading(meter, at, imp))
    first = book.contributions(int(HOUR))
    assert {m: (c.consumption_w, c.samples) for m, c in first.items()} == {"a": (200.0, 2), "b": (50.0, 1)}
    assert book.contributions(int(HOUR) + 60)["a"].consumption_w == 1000.0
    assert book.contributions(int(HOUR) + 120) == {}


def test_a_meter_that_sent_nothing_usable_has_no_contribution():
    book = WindowBook(1, keep=10)
    book.add(reading("a", HOUR, imp=None, exp=None))
    book.add(reading("b", HOUR, imp=5.0))
    assert set(book.contributions(int(HOUR))) == {"b"}


def test_the_book_keeps_only_the_newest_windows_and_ignores_older_readings():
    book = WindowBook(1, keep=3)
    for s in range(5):
        book.add(reading("a", HOUR + s, imp=float(s)))
    kept = [s for s in range(5) if book.contributions(int(HOUR) + s)]
    assert kept == [2, 3, 4]
    book.add(reading("a", HOUR + 0))  # older than anything kept: dropped, nothing evicted
    assert [s for s in range(5) if book.contributions(int(HOUR) + s)] == [2, 3, 4]


def test_a_late_reading_inside_the_kept_span_opens_its_window_in_order():
    book = WindowBook(1, keep=3)
    book.add(reading("a", HOUR + 0))
    book.add(reading("a", HOUR + 2))
    book.add(reading("a", HOUR + 1))  # late, but newer than the oldest kept
    book.add(reading("a", HOUR + 3))  # evicts the oldest: second 0, not the late one
    assert [s for s in range(4) if book.contributions(int(HOUR) + s)] == [1, 2, 3]


def test_new_books_has_one_book_per_window_width():
    books = new_books()
    assert set(books) == set(WINDOW_SECONDS) == set(KEEP)
    assert {name: (b.width_s, b.keep) for name, b in books.items()} == \
        {name: (WINDOW_SECONDS[name], KEEP[name]) for name in WINDOW_SECONDS}
