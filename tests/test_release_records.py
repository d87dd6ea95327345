"""agent/release/records.py on data: a fine release's body (energy from mean power over the width), a wider window
derived from the fine ones it covers and from nothing else, and refusals as they are stored and served."""

from __future__ import annotations

import pytest

from agent.release.records import NOT_RELEASED, Refusal, derive, fine_body
from drivers.reading import iso as stamp

START = 1_790_000_100  # 2026-09-21T14:15:00Z
EXACT = {"kind": "exact"}


def test_a_fine_body():
    body = fine_body("15m", START, 900, None, 7, 4000.0, 1000.0, EXACT)
    assert body == {"window": "15m", "window_start": "2026-09-21T14:15:00Z", "window_end": "2026-09-21T14:30:00Z",
                    "households": 7, "tag": None, "consumption_w": 4000.0, "production_w": 1000.0, "net_w": 3000.0,
                    "energy_import_wh": 1000.0, "energy_export_wh": 250.0, "privacy": EXACT}


def test_a_fine_body_without_production_and_a_tags_mean():
    body = fine_body("1s", START, 1, "ev", 4, 7000.1234, None, EXACT)
    assert body["production_w"] is body["net_w"] is body["energy_export_wh"] is None
    assert body["consumption_w"] == 7000.123 and body["mean_w"] == 1750.031
    assert fine_body("1s", START, 1, "ev", 0, 0.0, None, EXACT)["mean_w"] is None


def test_a_wider_window_is_the_mean_power_and_the_summed_energy_of_its_fine_windows():
    fine = [fine_body("15m", START + 900 * i, 900, None, n, w, 100.0, EXACT)
            for i, (n, w) in enumerate(((5, 1000.0), (6, 2000.0), (5, 3000.0), (7, 4000.0)))]
    hour = derive("1h", START, 3600, fine, {"kind": "exact", "derived_from": "4 x 15m"})
    assert (hour["consumption_w"], hour["production_w"], hour["net_w"]) == (2500.0, 100.0, 2400.0)
    assert hour["energy_import_wh"] == sum(f["energy_import_wh"] for f in fine) == 2500.0
    assert hour["energy_export_wh"] == 100.0
    assert (hour["households"], hour["households_max"]) == (5, 7)
    assert (hour["window_start"], hour["window_end"]) == (stamp(START), stamp(START + 3600))


def test_one_fine_window_without_production_leaves_the_wider_one_without():
    fine = [fine_body("1s", START, 1, None, 5, 100.0, 10.0, EXACT), fine_body("1s", START + 1, 1, None, 5, 300.0,
                                                                               None, EXACT)]
    minute = derive("2s", START, 2, fine, EXACT)
    assert minute["consumption_w"] == 200.0
    assert minute["production_w"] is minute["net_w"] is minute["energy_export_wh"] is None


def test_a_tags_wider_mean_needs_every_fine_mean():
    fine = [fine_body("1s", START + i, 1, "ev", n, w, None, EXACT) for i, (n, w) in enumerate(((2, 100.0), (4, 400.0)))]
    assert derive("2s", START, 2, fine, EXACT)["mean_w"] == 75.0  # (50 + 100) / 2
    fine[1]["mean_w"] = None
    assert derive("2s", START, 2, fine, EXACT)["mean_w"] is None


@pytest.mark.parametrize("refusal", [Refusal("k_min", "too few households", households=3),
                                     Refusal("not_settled", "later", missing=2), NOT_RELEASED])
def test_a_refusal_round_trips_and_shows_only_its_facts(refusal):
    doc = refusal.to_json()
    assert Refusal.from_json(doc) == refusal
    assert set(doc["refused"]) == {"error", "detail"} | {k for k in ("households", "missing")
                                                         if getattr(refusal, k) is not None}
