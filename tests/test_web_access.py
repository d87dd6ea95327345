"""The household's access log, over plain HTTP: "included you" from the release module's members index (exact, also
after a restart), the privacy loss of each row, and the log paged over the ledger's horizon, newest first."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from tests.helpers.agent import make_config
from tests.helpers.clock import HOUR as T0, StepClock
from tests.helpers.web import access_rows as _rows, signed_in


async def _town(tmp_path, start_agent, clock, level="dso"):
    running = await start_agent(make_config(tmp_path), clock=clock)
    org_id, org_key = await running.create_org("Grid Co", level)
    households = [await running.create_household() for _ in range(12)]
    for _, token in households:
        status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token)
        assert status == 200
    return running, org_id, org_key, households


async def _second(running, clock, households) -> None:
    """Eleven households send a reading; the twelfth, consenting too, sends nothing."""
    clock.now += 0.5
    for _, token in households[:11]:
        status, body = await running.call("POST", "/readings", token=token,
                                          json={"timestamp": clock.now, "power_import_w": 400.0})
        assert status == 201, body
    clock.now += 0.5


async def test_an_exact_release_says_who_it_included_also_after_a_restart(tmp_path, start_agent):
    clock = StepClock(float(T0))
    running, org_id, org_key, households = await _town(tmp_path, start_agent, clock)
    silent, sender = households[11][0], households[0][0]
    for _ in range(3):
        await _second(running, clock, households)
    clock.now += 0.1
    status, body = await running.call("GET", "/data?window=1s", token=org_key)
    assert status == 200 and body["households"] == 11, body
    assert [r[0] for r in (await _rows(running, silent))[0]] == ["no"]  # it consented: the old log said "yes"
    [(included, rho)] = (await _rows(running, sender))[0]
    assert included == "yes" and "no noise" in rho  # exact sums charge nothing
    await running.http.close()
    await running.agent.stop()
    again = await start_agent(make_config(tmp_path), clock=clock)
    assert [r[0] for r in (await _rows(again, silent))[0]] == ["no"]
    assert [r[0] for r in (await _rows(again, sender))[0]] == ["yes"]


async def test_each_row_shows_its_privacy_loss_and_the_log_is_paged(tmp_path, start_agent):
    clock = StepClock(float(T0))
    running, org_id, org_key, households = await _town(tmp_path, start_agent, clock, level="supplier")
    me = households[0][0]
    rho = running.agent.config.levels["supplier"].dp.loss()
    clock.now = T0 + 900 + 1
    status, body = await running.call("GET", "/data?window=15m", token=org_key)
    assert status == 200, body
    for _ in range(54):  # the same quarter asked for again: a row each time
        assert (await running.call("GET", "/data?window=15m", token=org_key))[0] == 200
    clock.now = T0 + 2 * 900 + 1
    rows, html = await _rows(running, me)
    assert len(rows) == 50 and all(r[0] == "yes" for r in rows)
    assert all(float(r[1]) == pytest.approx(rho) for r in rows)  # each row: what that release charged
    older, more = [], re.search(r'href="/ui/me/access\?before=([0-9.]+)"', html)
    assert more, "no link to the older rows"
    while more:  # pages end at 50 rows or after a week of days: follow them to the ledger's horizon
        page, html = await _rows(running, me, f"/ui/me/access?before={more.group(1)}")
        older += page
        more = re.search(r'href="/ui/me/access\?before=([0-9.]+)"', html)
    assert len(older) == 5  # 55 reads in all, nothing lost between pages
    browser = await signed_in(running, "household", me)
    assert (await browser.get("/ui/me/access?before=nonsense"))[0] == 400
    await browser.close()


async def test_times_show_in_the_zone_the_household_chose(tmp_path, start_agent):
    clock = StepClock(float(T0))
    running, org_id, org_key, households = await _town(tmp_path, start_agent, clock)
    browser = await signed_in(running, "household", households[0][0])
    status, html, _ = await browser.get("/ui/me/consents")
    stamp = re.search(r"<td>(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC</td>", html)
    assert stamp, "times are shown in UTC until a zone is chosen"
    assert (await browser.post("/ui/zone", {"zone": "Mars/Olympus", "back": "/ui/me/consents"}))[0] == 400
    await browser.get("/ui/me/consents")
    status, _, headers = await browser.post("/ui/zone", {"zone": "Europe/Amsterdam", "back": "/ui/me/consents"})
    assert status == 303 and headers["Location"] == "/ui/me/consents"
    status, html, _ = await browser.get("/ui/me/consents")
    utc = datetime.fromisoformat(stamp.group(1)).replace(tzinfo=timezone.utc)
    local = utc.astimezone(ZoneInfo("Europe/Amsterdam"))
    assert local.tzname() == "CEST" and f"{local:%Y-%m-%d %H:%M:%S} CEST" in html  # T0 is in September
    assert '<option value="Europe/Amsterdam" selected>' in html
    await browser.get("/ui/me/consents")
    assert (await browser.post("/ui/zone", {"zone": "UTC", "back": "https://elsewhere.example/"}))[0] == 400
    await browser.close()
