"""hub/aggregate.py on data: what the hub keeps of a device's release, and an area's window summed from its
devices' (with too few devices refused, missing sums left missing, noise adding in quadrature). No hub, no NATS."""

from __future__ import annotations

import math

import pytest

from hub.aggregate import SUMMED, area_window, contribution

START = 1_790_000_100  # a 1 s window's start


def released(households: int, consumption: float, production: float | None = 0.0, sd: float | None = None) -> dict:
    privacy = {"kind": "noisy", "noise_sd_w": sd} if sd is not None else {"kind": "exact"}
    return {"body": {"households": households, "consumption_w": consumption, "production_w": production,
                     "energy_import_wh": consumption / 3600, "energy_export_wh": 0.0, "privacy": privacy,
                     "readings": [1, 2, 3], "meters": ["never kept"]}}


def test_a_contribution_keeps_the_sums_and_counts_only():
    kept = contribution(released(6, 1200.0, 300.0))
    assert kept == {"households": 6, "kind": "exact", "consumption_w": 1200.0, "production_w": 300.0,
                    "energy_import_wh": pytest.approx(1200.0 / 3600), "energy_export_wh": 0.0}
    assert contribution(released(6, 1200.0, sd=4.5))["noise_sd_w"] == 4.5
    assert contribution({"refused": "k_min" + "x" * 100}) == {"refused": "k_min" + "x" * 59}  # its code, bounded


def test_a_contribution_of_a_missing_sum_is_none():
    kept = contribution({"body": {"households": None, "consumption_w": None}})
    assert kept["households"] == 0 and all(kept[k] is None for k in SUMMED)


def window(devices: dict, expected=("a", "b", "c"), min_devices: int = 2, tag: str | None = None) -> dict:
    return area_window("north", "1s", 1, START, tag, {d: contribution(r) for d, r in devices.items()}, expected,
                       min_devices)


def test_an_areas_window_is_the_sum_of_its_devices():
    out = window({"a": released(5, 1000.0, 200.0), "b": released(7, 500.5, 0.0)})["released"]
    assert (out["households"], out["consumption_w"], out["production_w"], out["net_w"]) == (12, 1500.5, 200.0, 1300.5)
    assert (out["devices"], out["devices_refused"], out["devices_expected"], out["complete"]) == (2, 0, 3, False)
    assert (out["window_start"], out["window_end"]) == ("2026-09-21T14:15:00Z", "2026-09-21T14:15:01Z")
    assert out["privacy"]["kind"] == "exact" and "noise_sd_w" not in out["privacy"]
    assert "mean_w" not in out


def test_too_few_devices_released_is_a_refusal_that_says_so():
    out = window({"a": released(5, 1000.0), "b": {"refused": "k_min"}, "c": {"refused": "audit"}})
    refused = out["refused"]
    assert refused["error"] == "too_few_devices" and "at least 2" in refused["detail"]
    assert (refused["devices"], refused["devices_refused"], refused["complete"]) == (1, 2, True)


def test_only_the_areas_devices_count():
    out = window({"a": released(5, 1000.0), "elsewhere": released(50, 9999.0)}, expected=("a",), min_devices=1)
    assert out["released"]["households"] == 5 and out["released"]["complete"]


def test_a_sum_one_device_lacks_is_missing_for_the_area():
    out = window({"a": released(5, 1000.0, None), "b": released(7, 500.0, 10.0)})["released"]
    assert out["production_w"] is None and out["net_w"] is None and out["consumption_w"] == 1500.0


def test_noise_adds_in_quadrature_and_kinds_mix():
    out = window({"a": released(5, 1000.0, sd=3.0), "b": released(7, 500.0, sd=4.0)})["released"]
    assert out["privacy"]["noise_sd_w"] == 5.0 and out["privacy"]["kind"] == "noisy"
    mixed = window({"a": released(5, 1000.0, sd=2.0), "b": released(7, 500.0)})["released"]
    assert mixed["privacy"]["kind"] == "mixed" and mixed["privacy"]["noise_sd_w"] == 2.0


def test_a_tags_window_carries_the_mean_per_household():
    out = window({"a": released(3, 900.0), "b": released(1, 100.0)}, tag="ev")["released"]
    assert out["tag"] == "ev" and out["mean_w"] == 250.0
    none = window({"a": released(0, 0.0), "b": released(0, 0.0)}, tag="ev")["released"]
    assert none["mean_w"] is None
    assert math.isclose(out["energy_import_wh"], 1000.0 / 3600, abs_tol=1e-3)
