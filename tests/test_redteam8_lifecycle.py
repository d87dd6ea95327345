"""Red team 8: a new household on a reused meter is "in" windows its meter sent nothing of its own in.

R6b-4's fix starts everything a household sees of its meter at its creation (registry `Household.owns`,
`data_since`). The release module does not: it holds a silent meter at its last window's values for up to
`hold_s` (5 minutes; agent/release/door.py `_held_over`, keyed by meter id), so that a datalogger posting every
10 s does not make a cohort flicker. When a household moves out (deleted) and the next one is registered on the
same meter, the previous household's last values are held over under the meter for the next one: the new household
counts as "has data" in the windows after its consent, its page says "Yes: you allowed it and your meter sent
data" (the members index records it so), and the sums of those windows carry the previous household's consumption
in the new one's place, after its consents ended with its deletion. PRIVACY.md: "A reading received before is never
shown to it nor used for it". At an exact level the audit refuses those windows (`isolating`: one household
swapped for another), asserted here; a noisy level's cohort does not depend on data, and its noisy sums would
carry the held values (not measured here).

The sequence: a wired meter (house-1) and three posting neighbours consent to the custodian (k_min 2); the
household on house-1 sends its last telegram, its dongle is unplugged as it moves out; the operator deletes it and
registers the next occupant on house-1, which consents at once; two minutes with nothing from house-1.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace


from drivers.p1_reader import MeterSpec
from drivers.telegram import crc16
from tests.helpers.agent import grant, make_config
from tests.helpers.clock import StepClock, T0
from tests.helpers.telegrams import telegram_bytes
from tests.helpers.web import signed_in

MINUTE = 60
ROW = re.compile(r'<tr>\s*<td>[^<]*</td>\s*<td>[^<]*</td>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>\s*'
                 r'<td class="included-(\w+)">', re.S)


async def _telegram(running, pty_pair, name: str) -> None:
    before = running.agent.pipeline.readings_in
    pty_pair.write(telegram_bytes(name))
    await running.wait_for(lambda: running.agent.pipeline.readings_in > before)


async def test_a_new_household_is_not_in_windows_its_meter_sent_nothing_of_its_own(tmp_path, start_agent,
                                                                                 pty_pair):
    config = make_config(tmp_path, [MeterSpec("house-1", pty_pair.path, "dsmr5")])
    config = replace(config, levels={**config.levels, "dso": replace(config.levels["dso"], windows=("1m", "15m"))},
                     privacy=replace(config.privacy, k_min=2))
    clock = StepClock(T0)
    running = await start_agent(config, clock=clock)
    org_id, key = await running.create_org("Grid operator", "dso")
    neighbours = [await running.create_household() for _ in range(3)]
    previous_id, previous_token = await running.create_household("house-1")
    await running.wait_for(lambda: running.agent.readers["house-1"].opens >= 1)
    for token in [*(t for _, t in neighbours), previous_token]:
        await grant(running, token, org_id, "aggregates")
    clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1

    async def minute(previous_sends: bool):
        for _, token in neighbours:
            status, out = await running.call("POST", "/readings", token=token,
                                             json={"timestamp": clock.now, "power_import_w": 400.0})
            assert status == 201, out
        if previous_sends:
            await _telegram(running, pty_pair, "v5.txt")  # 244 W
        clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1
        await running.agent.releases.settle()
        return await running.call("GET", "/data?window=1m", token=key)

    await minute(True)  # the previous occupant's last minute; then its dongle is unplugged as it moves out
    assert (await running.call("DELETE", f"/households/{previous_id}"))[0] == 204
    new_id, new_token = await running.create_household("house-1")  # the next occupant, same meter
    await grant(running, new_token, org_id, "aggregates")
    await minute(False)  # its consent began inside this minute
    status, answer = await minute(False)  # and held throughout this one; the meter sends nothing
    assert status == 409 and answer["error"] == "isolating", answer  # the swap of one household: the audit holds
    browser = await signed_in(running, "household", new_id)
    status, html, _ = await browser.get("/ui/me/access")
    await browser.close()
    assert status == 200, html
    rows = ROW.findall(html)
    assert rows, html
    _, _, included = rows[0]  # newest first: the read of the minute its consent held throughout
    # before the fix (453d9eb): "yes" -- the previous household's held-over reading made the new one "have data"
    assert included == "no", f"the new household is 'in' a minute with none of its own readings: {rows}"



def _with_failures(name: str, count: int) -> bytes:
    """A real telegram with its count of long power failures (0-0:96.7.9) set, its CRC recomputed."""
    raw = telegram_bytes(name).replace(b"0-0:96.7.9(00000)", b"0-0:96.7.9(%05d)" % count)
    body = raw[raw.index(b"/"): raw.rindex(b"!") + 1]
    return body + b"%04X\r\n" % crc16(body)


async def test_a_new_households_first_failure_count_is_its_own_baseline(tmp_path, start_agent, pty_pair):
    """The class of R8-4 in the window books: a meter's count of long power failures is compared with its previous
    reading, on a meter that changed hands the previous household's. The next household's first reading must be
    its own baseline (as any meter's first is), not a rise over the previous household's last count (a failure at
    the address before it moved in, counted in its first window as a failure of its own)."""
    config = make_config(tmp_path, [MeterSpec("house-1", pty_pair.path, "dsmr5")])
    config = replace(config, levels={**config.levels, "dso": replace(config.levels["dso"], windows=("1m", "15m"))},
                     privacy=replace(config.privacy, k_min=2, audit_period_s=1))
    clock = StepClock(T0)
    running = await start_agent(config, clock=clock)
    org_id, key = await running.create_org("Grid operator", "dso")
    neighbours = [await running.create_household() for _ in range(3)]
    newcomers = [await running.create_household() for _ in range(3)]  # they begin posting with the new household
    previous_id, previous_token = await running.create_household("house-1")
    await running.wait_for(lambda: running.agent.readers["house-1"].opens >= 1)
    for token in [*(t for _, t in neighbours + newcomers), previous_token]:
        await grant(running, token, org_id, "aggregates")
    clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1

    async def minute(posting, telegram: bytes | None):
        for _, token in posting:
            status, out = await running.call("POST", "/readings", token=token, json={
                "timestamp": clock.now, "power_import_w": 400.0, "voltage_l1_v": 230.0, "long_power_failures": 0})
            assert status == 201, out
        if telegram is not None:
            before = running.agent.pipeline.readings_in
            pty_pair.write(telegram)
            await running.wait_for(lambda: running.agent.pipeline.readings_in > before)
        start = math.floor(clock.now / MINUTE) * MINUTE
        clock.now = start + MINUTE + 1
        await running.agent.releases.settle()
        return start

    await minute(neighbours, _with_failures("v5.txt", 0))  # the previous household's last minute: count 0
    assert (await running.call("DELETE", f"/households/{previous_id}"))[0] == 204
    new_id, new_token = await running.create_household("house-1")
    await grant(running, new_token, org_id, "aggregates")
    await minute(neighbours, None)
    await minute(neighbours, None)  # the previous one's hold-over has no owner: the cohort is the neighbours
    # the count rose (a long failure before the new household's first reading), and four households join at once
    start = await minute(neighbours + newcomers, _with_failures("v5.txt", 1))
    status, out = await running.call("GET", f"/data?window=1m&since={start}&until={start + MINUTE}", token=key)
    assert status == 200 and out["released"], out
    body = out["released"][0]
    assert body["households"] == 7, body
    # before the fix: 1 -- the new household's first count read as a rise over the previous household's last one
    assert body["grid"]["long_power_failures"]["meters"] == 0, body["grid"]
