"""Red team 6: an exact level's tag refusal says how many households carry the tag.

`_decide_exact` leaves `households`/`missing` out of a tag's `cohort_too_small` refusal (the first red team's P11:
the number of real heat-pump carriers below k_min was revealed), but its `detail` string still reads "6 households
with a 'heat_pump' channel ... (4 missing)": the exact number of carriers, window by window (when each one's
appliance channel is reported), to anyone at the level. Failed until a tag's refusal said "fewer than k_min".
"""

from __future__ import annotations

import math
from dataclasses import replace

from tests.helpers.agent import grant, make_config
from tests.helpers.clock import StepClock, T0

MINUTE = 60


async def test_a_tag_refusal_is_the_same_whatever_the_number_of_carriers(tmp_path, start_agent):
    config = make_config(tmp_path)
    levels = {**config.levels, "dso": replace(config.levels["dso"], windows=("1m", "15m", "1h"))}
    clock = StepClock(T0)
    running = await start_agent(replace(config, levels=levels), clock=clock)
    org_id, key = await running.create_org("Grid operator", "dso")
    households = [await running.create_household() for _ in range(12)]
    for _, token in households:
        await grant(running, token, org_id, "aggregates")
    clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1
    details = []
    for carriers in (6, 7, 3):
        for i, (_, token) in enumerate(households):
            channels = {"heat_pump": 900.0} if i < carriers else {}
            status, out = await running.call("POST", "/readings", token=token, json={
                "timestamp": clock.now, "power_import_w": 1200.0, "channels": channels})
            assert status == 201, out
        clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1
        status, out = await running.call("GET", "/data?window=1m&tag=heat_pump", token=key)
        assert status == 409 and out["error"] == "cohort_too_small", out
        assert "households" not in out  # what the P11 fix left out
        details.append(out["detail"])
    assert len(set(details)) == 1, f"the refusal counts the carriers: {details}"
