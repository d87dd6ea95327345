"""Triggers and webhooks get grid quantities from the released record (issue 15): a neighbourhood condition on
the highest voltage band of L1 runs on what the release module released, and is withheld where the quantity was
not; a push carries the record GET /data answers."""

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


async def test_a_webhook_carries_the_recorded_grid_part(tmp_path, start_agent):
    """Pushes are the release's record: the grid part a subscription receives is the one GET /data answers."""
    import math

    from tests.helpers.agent import delivery_config, make_config
    from tests.helpers.clock import StepClock
    from tests.helpers.receiver import Receiver

    receiver = Receiver()
    await receiver.start()
    clock = StepClock(math.floor(1_790_000_000 / 60) * 60.0 + 5)
    running = await start_agent(make_config(tmp_path, delivery=delivery_config()), clock=clock)
    try:
        org_id, key = await running.create_org("Grid", "dso")
        households = [await running.create_household() for _ in range(10)]
        for _, token in households:
            status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token)
            assert status == 200
        status, sub = await running.call("POST", "/data/subscribe", token=key,
                                         json={"endpoint": receiver.url, "interval": 1, "window": "1s"})
        assert status == 201, sub
        clock.step(60 - clock.now % 60)
        for s in range(3):
            for i, (_, token) in enumerate(households):
                status, out = await running.call("POST", "/readings", token=token, json={
                    "timestamp": clock.now, "power_import_w": 300.0 + i, "voltage_l1_v": 228.0 + i})
                assert status == 201, out
            clock.step(1)
            await running.agent.releases.settle()
        await running.wait_for(lambda: any("grid" in m.get("aggregate", {}) for m in receiver.messages()))
        pushed = next(m["aggregate"] for m in receiver.messages() if "grid" in m.get("aggregate", {}))
        assert pushed["grid"]["voltage_l1"]["households"] == 10
        start = pushed["window_start"]
        status, history = await running.call("GET", f"/data?window=1s&since={start}&until={clock.now}", token=key)
        assert status == 200, history
        recorded = next(b for b in history["released"] if b["window_start"] == start)
        assert recorded == pushed
    finally:
        await receiver.stop()
