"""Red team 8: the access page says "Yes, your household was in it" of windows nobody was in: the device was down.

The members index (agent/release/members.py) records changes only: a stream's flag and cohort hold from the
window a change was noted at until the next change. At start-up `_load` marks every stream refused over nobody
from the restart's time on, but nothing marks where the device stopped: every window from the last change before
the stop to the restart counts as decided, over the cohort it had, released and charged as the last decided one
was. An organization that asks for the downtime's history (refused: `not_released`, nothing was decided) makes
a row on the household's page that says "Yes" (and, at a noisy level, the rho of every window of the downtime,
which the ledger never charged): a window the household was not in, of data its meter may never have sent.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from tests.helpers.agent import grant, make_config
from tests.helpers.clock import StepClock, T0
from tests.helpers.web import signed_in

MINUTE = 60
ROW = re.compile(r'<td class="included-(\w+)">(.*?)</td>', re.S)


async def test_the_page_does_not_say_included_of_windows_while_the_device_was_down(tmp_path, start_agent):
    config = make_config(tmp_path)
    config = replace(config, levels={**config.levels, "dso": replace(config.levels["dso"], windows=("1m", "15m"))},
                     privacy=replace(config.privacy, k_min=2))
    clock = StepClock(T0)
    running = await start_agent(config, clock=clock)
    org_id, key = await running.create_org("Grid operator", "dso")
    households = [await running.create_household() for _ in range(3)]
    for _, token in households:
        await grant(running, token, org_id, "aggregates")
    clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1
    for _ in range(3):
        for _, token in households:
            status, out = await running.call("POST", "/readings", token=token,
                                             json={"timestamp": clock.now, "power_import_w": 400.0})
            assert status == 201, out
        clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1
        await running.agent.releases.settle()
    stopped = math.floor(clock.now / MINUTE) * MINUTE
    await running.http.close()
    await running.agent.stop()
    clock.now += 3600  # an hour without power: nothing is read, nothing decided
    again = await start_agent(config, clock=clock)
    since, until = stopped + 5 * MINUTE, stopped + 50 * MINUTE  # inside the downtime
    status, out = await again.call("GET", f"/data?window=1m&since={since}&until={until}", token=key)
    assert status == 200 and not out["released"] and out["refused"], out
    assert {r["error"] for r in out["refused"]} == {"not_released"}, out["refused"][:2]
    browser = await signed_in(again, "household", households[0][0])
    status, html, _ = await browser.get("/ui/me/access")
    await browser.close()
    assert status == 200, html
    included, cell = ROW.findall(html)[0]
    # before the fix (measured at 81e4507): "yes", from the index (not "from your permissions"), for 45 windows never decided
    assert included == "no" or "from your permissions" in cell, \
        f"the page says {included!r} of 45 windows decided while the device was down"
