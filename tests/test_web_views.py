"""What the pages show (agent/web/views.py) on data: a household's energy table from its rollups, and its access
log from audit entries and a real registry's consents."""

from __future__ import annotations

import pytest

from agent.registry import Registry
from agent.web import views
from tests.helpers.clock import StepClock


def test_the_energy_table_says_none_for_no_data_and_sums_quarters():
    start = 1_790_000_000 // 86400 * 86400
    rollups = [{"start": start + q * 900, "power_import_w": 400.0, "power_export_w": 0.0, "gas_m3": 10.0 + q * 0.1}
               for q in range(4)]
    rows = views.energy_table(rollups, start, 3600, 3)
    assert rows[0]["import_kwh"] == pytest.approx(0.4)  # 400 W for an hour
    assert rows[0]["export_kwh"] == 0.0
    assert rows[0]["gas_m3"] == pytest.approx(0.3)  # the register rose 0.3 m3 after the first quarter
    assert rows[1] == {"start": start + 3600, "import_kwh": None, "export_kwh": None, "gas_m3": None}


def test_the_access_log_marks_what_included_the_household(tmp_path):
    clock = StepClock(100.0)
    registry = Registry(tmp_path / "registry.seg", clock=clock)
    org, _ = registry.create_organization("Energy Co", "dso")
    other, _ = registry.create_organization("Never Asked", "dso")
    me, _, _ = registry.create_household(None, "http")
    neighbour, _, _ = registry.create_household(None, "http")
    registry.set_consent(me.id, org.id, "aggregates", True)
    clock.step(150)
    registry.set_consent(me.id, org.id, "aggregates", False)  # at 250

    def read(who, start, released=True, at=0.0):
        return {"who": who, "role": "organization", "action": "data.read", "window": "1s", "window_start": start,
                "released": released, "at": at}
    entries = [read(org.id, 200, at=201), read(org.id, 249.5, at=251), read(org.id, 300, at=301),
               read(org.id, 400, released=False, at=401), read(other.id, 200, at=202),
               {"who": org.id, "role": "organization", "action": "trigger.action", "action_type": "webhook",
                "trigger_id": "trg_0123456789ab", "household_id": me.id, "disclosed": True, "delivered": True,
                "window_start": 300, "at": 360},
               {"who": org.id, "role": "organization", "action": "trigger.action", "action_type": "webhook",
                "trigger_id": "trg_0123456789ab", "household_id": neighbour.id, "disclosed": True,
                "delivered": True, "window_start": 300, "at": 361}]
    log = views.access_log(sorted(entries, key=lambda e: e["at"]), registry, me.id)
    # the refused read is listed too (whether a read was answered depends on other households)
    assert [(e["action"], e["start"], e["included"]) for e in log] == [
        ("data.read", 400.0, "no"), ("trigger.webhook", 300, "yes"), ("data.read", 300.0, "no"),
        ("data.read", 249.5, "no"), ("data.read", 200.0, "yes")]
    registry.close()


def test_a_rollup_before_the_table_still_starts_its_gas_and_a_falling_register_is_no_negative_use():
    start = 1_790_000_000 // 86400 * 86400
    rollups = [{"start": start - 900, "gas_m3": 10.0, "power_import_w": 400.0}, {"start": start, "gas_m3": 10.5, "power_import_w": None},
               {"start": start + 900, "gas_m3": 9.0}, {"start": start + 7200, "power_export_w": 3600.0}]
    rows = views.energy_table(rollups, start, 3600, 2)
    assert rows[0] == {"start": start, "import_kwh": None, "export_kwh": None, "gas_m3": pytest.approx(0.5)}
    assert rows[1]["export_kwh"] is None and rows[1]["import_kwh"] is None  # before and past the table: not shown


def test_the_chart_has_a_column_per_rollup_and_gas_as_the_registers_rise():
    rollups = [{"start": "2026-12-01T00:00:00Z", "power_import_w": 100.0, "gas_m3": 5.0},
               {"start": 1_796_083_200 + 900, "power_import_w": 200.0, "power_export_w": 50.0},
               {"start": 1_796_083_200 + 1800, "gas_m3": 5.25}, {"start": 1_796_083_200 + 2700, "gas_m3": 5.0}]
    series = views.chart_series(rollups)
    assert series["t"] == [1_796_083_200 + 900 * i for i in range(4)]
    assert series["import_w"] == [100.0, 200.0, None, None] and series["export_w"] == [None, 50.0, None, None]
    assert series["gas_m3"] == [None, None, 0.25, 0.0]  # no reading before the first; a fall is no use
