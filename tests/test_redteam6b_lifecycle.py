"""Red team 6b: households' lifecycle on the web pages: a rotated token, a meter that changes hands.

- A household's token leaked (a former partner, a lodger, a phone sold): the operator rotates it
  (`POST /households/{id}/token`). The API refused the old token at once, but a web session opened with it, and a
  sign-in link printed before, lived on (agent/web/signin.py kept sessions by subject, nothing ended them but
  sign-out, idle 30 min or 12 h): whoever held the old token kept reading the household's live power and its
  data, and changing its consents, for as long as it kept the page busy, up to 12 h after the rotation (R6b-3,
  closed: the registry's `token_ended` ends every session, link and live page of the household at once;
  tests/test_web_sessions.py has its live pages and deletion).
- A household moves out: the operator deletes it and registers the new occupant on the same meter (the P1 port of
  that home, or its dongle's meter id). The registry frees the meter id, but the readings stay under it
  (agent/store, by meter id; the pipeline's latest reading too), and the pages read by meter id: the new
  household's *My data* "Now" and its live page's first value were the previous household's last reading, its
  charts (`series.json`, the store's rollups by meter id) the previous household's minutes, and organizations'
  household conditions for it were evaluated on the previous household's latest reading. PRIVACY.md: "Households
  always see their own data" -- here one household saw another's, to the second (R6b-4, closed: a household's
  data starts at its creation, `Household.owns` / `data_since`; deleting a household drops its meter's latest
  reading).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from agent.web import sign_in_url
from drivers.p1_reader import MeterSpec
from tests.helpers.agent import grant, make_config
from tests.helpers.clock import StepClock, T0
from tests.helpers.telegrams import telegram_bytes
from tests.helpers.triggers import body as trigger_body
from tests.helpers.triggers import close_window, town_config
from tests.helpers.web import Browserless, sign_in_with_token, signed_in

PREVIOUS_W = 244.0  # what the previous occupant's meter read (tests/telegrams/v5.txt, 1-0:1.7.0)


async def test_rotating_a_token_ends_the_sessions_and_links_it_opened(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    household_id, leaked = await running.create_household()
    thief = await sign_in_with_token(running, leaked)
    printed = sign_in_url(running.agent, running.base, "household", household_id)  # a link on the fridge door
    status, body = await running.call("POST", f"/households/{household_id}/token")
    assert status == 200, body
    assert (await running.call("GET", "/households/me", token=leaked))[0] == 401  # the API refuses it at once
    session_lives = (await thief.get("/ui/me"))[0] == 200
    await thief.close()
    finder = Browserless(running.base)
    link_works = (await finder.sign_in_with(printed))[0] == 303
    await finder.close()
    print(f"after the rotation: the old session reads the pages {session_lives}, the old link signs in {link_works}")
    assert not session_lives, "a session opened with the rotated token still reads the household's pages"
    assert not link_works, "a sign-in link made before the rotation still signs in"


async def _previous_occupant(running, clock, pty_pair) -> str:
    """A household on house-1 whose meter sends three telegrams (244 W) a minute apart: its first two minutes'
    rollups close. Its id."""
    previous_id, _ = await running.create_household("house-1")
    await running.wait_for(lambda: running.agent.readers["house-1"].opens >= 1)
    for _ in range(3):
        await _telegram(running, pty_pair, "v5.txt")
        clock.step(61)
    running.agent.store.flush()
    return previous_id


async def _telegram(running, pty_pair, name: str) -> None:
    before = running.agent.pipeline.readings_in
    pty_pair.write(telegram_bytes(name))
    await running.wait_for(lambda: running.agent.pipeline.readings_in > before)


async def _next_import(stream) -> bytes | None:
    """The live stream's next import_w value (its data line); None if the stream ends first."""
    while line := await stream.content.readline():
        if line == b"event: import_w\n":
            return await stream.content.readline()
    return None


async def test_a_new_household_on_a_meter_does_not_see_the_previous_households_readings(tmp_path, start_agent,
                                                                                       pty_pair):
    """Failed until a household's pages showed its meter's data from its creation on only, and deleting a
    household cleared its meter's latest reading (red team 6b, R6b-4)."""
    clock = StepClock(T0)
    running = await start_agent(make_config(tmp_path, [MeterSpec("house-1", pty_pair.path, "dsmr5")]), clock=clock)
    previous_id = await _previous_occupant(running, clock, pty_pair)
    previous = await signed_in(running, "household", previous_id)
    status, body, _ = await previous.get("/ui/me/series.json?span=day")
    assert status == 200 and PREVIOUS_W in json.loads(body)["import_w"], body  # what it saw of its minutes
    await previous.close()
    assert (await running.call("DELETE", f"/households/{previous_id}"))[0] == 204  # moved out
    assert "house-1" not in running.agent.pipeline.latest  # its last reading is gone with it
    new_id, _ = await running.create_household("house-1")  # the new occupant, same home, same meter

    browser = await signed_in(running, "household", new_id)
    status, html, _ = await browser.get("/ui/me")
    assert status == 200, html
    shown = re.search(r'id="live-import" sse-swap="import_w">([^<]*)<', html).group(1)
    async with browser.http.get(running.base + "/ui/me/live") as stream:
        await _telegram(running, pty_pair, "v5_two_mbus.txt")  # the new occupant's own: 111 W
        first = await _next_import(stream)
    clock.step(900)
    # closes the minutes and the quarter-hour before: the previous one's too (that quarter holds both's readings)
    await _telegram(running, pty_pair, "v5_two_mbus.txt")
    clock.step(61)
    await _telegram(running, pty_pair, "v5_two_mbus.txt")  # and its own minute before: its own, shown
    running.agent.store.flush()
    created_at = running.agent.registry.household(new_id).created_at
    rows = {}
    for span in ("day", "week"):
        status, body, _ = await browser.get(f"/ui/me/series.json?span={span}")
        assert status == 200, body
        rows[span] = json.loads(body)
    await browser.close()
    print(f"new household's My data 'Now': {shown} W; live page's first value: {first}; its series: {rows}")
    assert shown != "244", "the new household's page shows the previous one's last reading as its own"
    assert first == b"data: 111\n", "the new household's live page shows the previous one's last reading"
    for span, series in rows.items():
        assert all(t >= created_at for t in series["t"]), f"its {span} chart shows the previous one's readings"
    assert rows["day"]["import_w"] == [111.0], rows  # its own minute is shown (the one across its creation is not)


async def test_a_removed_households_open_page_does_not_see_the_next_households_readings(tmp_path, start_agent,
                                                                                      pty_pair):
    """The other way round: the previous occupant's live page, open when it was removed, streamed the meter's
    next readings, the new occupant's, for as long as its session lived (red team 6b, R6b-4; the deletion ends
    the household's live pages, agent/web/__init__.py)."""
    clock = StepClock(T0)
    running = await start_agent(make_config(tmp_path, [MeterSpec("house-1", pty_pair.path, "dsmr5")]), clock=clock)
    previous_id = await _previous_occupant(running, clock, pty_pair)
    previous = await signed_in(running, "household", previous_id)
    async with previous.http.get(running.base + "/ui/me/live") as stream:
        assert await _next_import(stream) == b"data: 244\n"  # its own last reading
        assert (await running.call("DELETE", f"/households/{previous_id}"))[0] == 204
        await running.create_household("house-1")
        await _telegram(running, pty_pair, "v5_two_mbus.txt")  # the new occupant's
        shown = await _next_import(stream)
    await previous.close()
    assert shown is None, f"the removed household's open page shows the new occupant's power: {shown}"


async def test_a_new_households_conditions_are_not_evaluated_on_the_previous_households_reading(tmp_path, start_agent,
                                                                                              pty_pair):
    """An organization's household condition for the new occupant read its meter's latest reading: the previous
    occupant's, a minute old; its notification was about the previous household's consumption (R6b-4)."""
    clock = StepClock(T0)
    config = replace(town_config(tmp_path), meters=(MeterSpec("house-1", pty_pair.path, "dsmr5"),))
    running = await start_agent(config, clock=clock)
    org_id, key = await running.create_org("Energy Co", "dso")
    previous_id = await _previous_occupant(running, clock, pty_pair)
    assert (await running.call("DELETE", f"/households/{previous_id}"))[0] == 204
    _, token = await running.create_household("house-1")
    await grant(running, token, org_id, "aggregates", "triggers")
    status, out = await running.call("POST", "/triggers/create", token=key, json=trigger_body(
        ["household_power_consumption"], "def condition(household_power_consumption):\n"
        "    return household_power_consumption > 100\n"))
    assert status == 201, out
    inboxes = []
    for own in (False, True):  # a window without a reading of its own, then one with (111 W)
        if own:
            await _telegram(running, pty_pair, "v5_two_mbus.txt")
        await close_window(running, clock)
        status, out = await running.call("GET", "/households/me/notifications", token=token)
        assert status == 200, out
        inboxes.append(len(out["notifications"]))
    assert inboxes == [0, 1], f"notifications after each window: {inboxes} (the first is the previous household's)"
