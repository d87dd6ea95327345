"""Triggers read grid quantities from the released record (issue 15): a neighbourhood condition on the highest
voltage band of L1 runs on what the release module released, and is withheld where the quantity was not."""

from __future__ import annotations
from tests.helpers.triggers import body, town  # noqa: F401  (town: the fixture)



async def test_a_neighbourhood_condition_on_the_highest_voltage_band(town):  # noqa: F811
    t = await town(4)
    status, created = await t.create(body(["neighborhood_voltage_l1_max", "neighborhood_long_power_failures"], """\
        def condition(neighborhood_voltage_l1_max, neighborhood_long_power_failures):
            return neighborhood_voltage_l1_max > 253 or neighborhood_long_power_failures > 0
        """))
    assert status == 201, created
    ordinary = {"power_import_w": 300.0, "voltage_l1_v": 231.0, "long_power_failures": 2}
    await t.window(**ordinary)  # the failure counts' baseline
    await t.window(**ordinary)
    assert [len(await t.inbox(token)) for _, token in t.households] == [0] * 4
    await t.window(values=[{**ordinary, "voltage_l1_v": 256.0}, ordinary, ordinary, ordinary])
    assert [len(await t.inbox(token)) for _, token in t.households] == [1] * 4
    view = await t.trigger(created["id"])
    assert view["windows"]["inputs_withheld"] == 0
    # a window whose L1 is reported by too few households: the quantity is refused, the condition withheld
    await t.window(values=[ordinary, {"power_import_w": 300.0}, {"power_import_w": 300.0},
                           {"power_import_w": 300.0}])
    view = await t.trigger(created["id"])
    assert view["windows"]["inputs_withheld"] == 1
