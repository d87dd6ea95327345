"""Red team 6: a household's own "Who used my data" page as a window onto another organization's refusals.

The page (agent/web/views.py, `access_row`) lists every access of an organization the household ever consented to,
but only the accesses that released something (`released` false is left out). An exact level's refusals depend on
other households (the audit refuses `isolating` for an audit period after one household's cohort change: a
datalogger silent past the hold-over, a revocation, a join). So an organization with one household of its own
that consents to the custodian's aggregates reads, window by window, when some household of the custodian's cohort
changed: presence and consent changes across organizations, exact, to a noisy-level organization. PRIVACY.md
states this bit only through the members index's fsync timing ("not measured"); here it is on a page, per window.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest

from tests.helpers.agent import delivery_config, grant, make_config
from tests.helpers.clock import StepClock, T0
from tests.helpers.receiver import receiver  # noqa: F401  (receiver: the fixture)
from tests.helpers.triggers import body, close_window, town_config
from tests.helpers.wait import eventually
from tests.helpers.web import signed_in

MINUTE = 60
QUARTER_S = 900
ROW = re.compile(r'<td class="included-(\w+)">')


async def access_rows(running, household_id: str) -> list[str]:
    browser = await signed_in(running, "household", household_id)
    status, html, _ = await browser.get("/ui/me/access")
    await browser.close()
    assert status == 200, html
    return ROW.findall(html)


async def custodian_minutes(tmp_path, start_agent, silent_from: int | None, push_to: str | None = None,
                            push_filter: dict | None = None, ramp: float = 1.0) -> tuple[list[str], list[bool]]:
    """Eleven neighbours and the spy's household consent to the custodian's aggregates and post every minute (400 W,
    the neighbours `ramp` W more each minute); the custodian reads each minute live, or (`push_to`: its endpoint)
    has each minute pushed by a subscription with `push_filter`. The target (a neighbour) stops posting from
    `silent_from` (None: never). Returns the spy's page (its rows) and which of the custodian's reads were
    refused."""
    config = make_config(tmp_path)
    levels = {**config.levels, "dso": replace(config.levels["dso"], windows=("1m", "15m", "1h"))}
    clock = StepClock(T0)
    running = await start_agent(replace(config, levels=levels, delivery=delivery_config()), clock=clock)
    dso, dso_key = await running.create_org("Grid operator", "dso")
    neighbours = [await running.create_household() for _ in range(11)]
    target = neighbours[0]
    spy = await running.create_household()  # a supplier's employee's home: unmarked
    for _, token in [*neighbours, spy]:
        await grant(running, token, dso, "aggregates")
    if push_to is not None:
        status, out = await running.call("POST", "/data/subscribe", token=dso_key, json={
            "endpoint": push_to, "interval": MINUTE, "window": "1m", **({"filter": push_filter} if push_filter else {})})
        assert status == 201, out
    clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1
    refused = []
    for minute in range(14):
        for household in [*neighbours, spy]:
            if household is target and silent_from is not None and minute >= silent_from:
                continue
            power = 400.0 + minute * (1.0 if household is spy else ramp)
            status, out = await running.call("POST", "/readings", token=household[1],
                                             json={"timestamp": clock.now, "power_import_w": power})
            assert status == 201, out
        clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1
        if push_to is None:
            status, out = await running.call("GET", "/data?window=1m", token=dso_key)
            refused.append(status != 200)
        else:
            await running.agent.releases.settle()
            running.agent.delivery.produce_due()
    return await access_rows(running, spy[0]), refused


async def test_an_own_households_page_does_not_show_when_another_organizations_windows_were_refused(
        tmp_path, start_agent):
    quiet, _ = await custodian_minutes(tmp_path / "a", start_agent, None)
    page, refused = await custodian_minutes(tmp_path / "b", start_agent, 3)  # the target stops in minute 3
    # The spy's page: one row per released read; the first refused minute is the target's last reading plus the
    # 5-minute hold-over, to the minute.
    first = refused.index(True) if True in refused else None
    assert page == quiet, (f"the spy's page has {len(page)} rows where it has {len(quiet)} when nobody went "
                           f"silent: the custodian's refusals from minute {first} (the target stopped in minute 3)")


async def test_an_own_households_page_does_not_show_which_of_another_organizations_pushes_went_out(
        tmp_path, start_agent, receiver):
    """The same through a subscription: a push is sent only for a window released and passing its filter, so rows
    of sent pushes alone would read the custodian's refusals, and through a threshold filter its neighbours'
    consumption (here whether it crossed 5 kW: 12 x 400 W rising 12 W a minute does not in 14 minutes, rising
    111 W a minute does)."""
    quiet, _ = await custodian_minutes(tmp_path / "a", start_agent, None, receiver.url)
    silent, _ = await custodian_minutes(tmp_path / "b", start_agent, 3, receiver.url)
    await eventually(lambda: len(receiver.received) == 14 + 7)  # the silent run's stop when its windows are refused
    assert quiet == silent, f"the spy's push rows: {len(quiet)}, and {len(silent)} when a neighbour went silent"
    threshold = {"threshold": {"field": "consumption_w", "levels": [5000]}}
    sent = len(receiver.received)
    flat, _ = await custodian_minutes(tmp_path / "c", start_agent, None, receiver.url, threshold)
    rising, _ = await custodian_minutes(tmp_path / "d", start_agent, None, receiver.url, threshold, ramp=10.0)
    await eventually(lambda: len(receiver.received) - sent == 1 + 2)  # the threshold: flat once, rising twice
    assert flat == rising, f"the spy's push rows: {len(flat)} when flat, {len(rising)} when its neighbours crossed"


CURSOR = re.compile(r'href="/ui/me/access\?before=([0-9]+)\.([0-9]+)"')


async def test_the_access_pages_cursor_counts_nothing_of_other_households(tmp_path, start_agent):
    config = town_config(tmp_path)
    clock = StepClock(T0)
    running = await start_agent(replace(config, privacy=replace(config.privacy, k_min=10)), clock=clock)
    org_id, key = await running.create_org("Supplier", "supplier")
    target = await running.create_household()
    await grant(running, target[1], org_id, "triggers")  # tips by notification: nothing disclosed to the org
    own = [await running.create_household() for _ in range(10)]  # the supplier's: its cohort of 10
    for _, token in own:
        await grant(running, token, org_id, "aggregates")
    spy = own[0]
    status, out = await running.call("POST", "/triggers/create", token=key, json=body(
        ["household_power_consumption"], "def condition(household_power_consumption):\n"
        "    return household_power_consumption > 1000\n", interval=QUARTER_S, window="15m"))
    assert status == 201, out
    clock.now = (math.floor(clock.now / QUARTER_S) + 2) * QUARTER_S + 1  # a quarter the consents held throughout

    async def fifty_reads():  # the spy's rows: the organization's own released reads, 50 (a page) at a time
        for _ in range(50):
            status, out = await running.call("GET", "/data?window=15m", token=key)
            assert status == 200, out

    secret = [650.0, 1800.0, 2400.0, 300.0, 1200.0, 90.0]
    for watts in secret:
        await fifty_reads()
        await running.call("POST", "/readings", token=target[1], json={"timestamp": clock.now,
                                                                        "power_import_w": watts})
        await close_window(running, clock, QUARTER_S)  # the target's notification, if its condition held
        clock.now = (math.floor(clock.now / QUARTER_S) + 1) * QUARTER_S + 1
    await fifty_reads()
    browser = await signed_in(running, "household", spy[0])
    cursors, path = [], "/ui/me/access"
    for _ in range(len(secret) + 1):
        status, html, _ = await browser.get(path)
        assert status == 200, html
        found = CURSOR.search(html)
        assert found, html
        cursors.append(int(found.group(2)))
        path = f"/ui/me/access?before={found.group(1)}.{found.group(2)}"
    await browser.close()
    hidden = [newer - older - 50 for newer, older in zip(cursors, cursors[1:])][::-1]  # oldest round first
    truth = [int(w > 1000) for w in secret]
    recovered = sum(h == t for h, t in zip(hidden, truth)) / len(truth)
    assert len(set(hidden)) == 1, f"entries hidden between my pages: {hidden}, the target's condition: {truth} " \
                                  f"({recovered:.0%} recovered)"


async def spy_pages(tmp_path, start_agent, others_per_read: int) -> list[tuple[list[str], str | None]]:
    """60 reads of the spy's own supplier (through the API; ten households consent to it) with, between any two,
    `others_per_read` entries of what the spy never allowed: a grid operator's reads (through the real audit
    log: 6,000 reads through the API would be 6,000 fsyncs) and another household's trigger events. Returns the
    spy's pages, each its rows and its cursor, followed to the end."""
    clock = StepClock(T0)
    running = await start_agent(make_config(tmp_path), clock=clock)
    supplier, key = await running.create_org("Supplier", "supplier")
    dso, _ = await running.create_org("Grid operator", "dso")
    spy, neighbour = await running.create_household(), await running.create_household()
    for _, token in [spy, *[await running.create_household() for _ in range(9)]]:
        await grant(running, token, supplier, "aggregates")
    await grant(running, neighbour[1], dso, "aggregates")
    clock.now = (math.floor(clock.now / QUARTER_S) + 2) * QUARTER_S + 1
    audit = running.agent.audit
    for _ in range(60):
        assert (await running.call("GET", "/data?window=15m", token=key))[0] == 200
        for i in range(others_per_read):
            if i % 10:
                audit.record(dso, "organization", "data.read", durable=False, window="15m",
                             window_start=clock.now - QUARTER_S - 1, tag=None, released=True)
            else:
                audit.record(supplier, "organization", "trigger.action", durable=False, trigger_id="trg_x",
                             action_type="webhook", window_start=clock.now - 1, delivered=True,
                             household_id=neighbour[0], disclosed=True)
        clock.step(1)
    browser = await signed_in(running, "household", spy[0])
    pages, path = [], "/ui/me/access"
    while path:
        status, html, _ = await browser.get(path)
        assert status == 200, html
        found = re.search(r'href="(/ui/me/access\?before=[0-9.]+)"', html)
        pages.append((ROW.findall(html), found and found.group(1)))
        path = found.group(1) if found else None
    await browser.close()
    return pages


async def test_the_pages_hold_the_same_rows_however_many_entries_of_others_fill_the_day(tmp_path, start_agent):
    """A page once ended after 5,000 entries looked at, anyone's: a household reads from its page sizes how many
    entries other households and other organizations had that day."""
    alone = await spy_pages(tmp_path / "a", start_agent, 0)
    crowded = await spy_pages(tmp_path / "b", start_agent, 100)
    assert [len(rows) for rows, _ in alone][:2] == [50, 10]
    assert crowded == alone, f"pages of {[len(r) for r, _ in crowded]} rows where alone {[len(r) for r, _ in alone]}"


async def spy_notified(tmp_path, start_agent, endpoint: str, neighbours_watts: float) -> list[str]:
    """Ten households consent to a household webhook trigger (`> 1000 W`) of an organization whose lane takes 5
    actions (2 slots, 3 queued; the rest dropped); the spy, the last one, uses 2 kW, its nine neighbours
    `neighbours_watts`. Returns the spy's page (its rows: only that trigger's events about it)."""
    clock = StepClock(T0)
    running = await start_agent(town_config(tmp_path, organization_action_slots=2, organization_action_queue=3,
                                            timeout_ms=1000),
                                clock=clock)
    org_id, key = await running.create_org("Energy Co", "dso")
    households = [await running.create_household() for _ in range(10)]
    status, trig = await running.call("POST", "/triggers/create", token=key, json=body(
        ["household_power_consumption"], "def condition(household_power_consumption):\n"
        "    return household_power_consumption > 1000\n", interval=60,
        action={"type": "webhook", "endpoint": endpoint}, description="high use"))
    assert status == 201, trig
    for _, token in households:
        await grant(running, token, org_id, "aggregates", "triggers", f"trigger_events:{trig['id']}")
    clock.now = (math.floor(clock.now / MINUTE) + 2) * MINUTE + 1
    spy = households[-1]
    for household in households:
        status, out = await running.call("POST", "/readings", token=household[1], json={
            "timestamp": clock.now, "power_import_w": 2000.0 if household is spy else neighbours_watts})
        assert status == 201, out
    await close_window(running, clock)
    return await access_rows(running, spy[0])


async def test_a_households_own_event_shows_whether_or_not_its_neighbours_filled_the_organizations_lane(
        tmp_path, start_agent, receiver):
    """An event about a household was on its page only once delivered, and an organization's lane drops what
    is beyond its slots and queue: the spy's own event missing from its page said that five neighbours' conditions
    held in that window."""
    def events() -> int:  # an attempt that timed out on a loaded machine is sent again with its webhook-id
        return len({headers["webhook-id"] for headers, _ in receiver.received})
    alone = await spy_notified(tmp_path / "a", start_agent, receiver.url, 500.0)
    await eventually(lambda: events() == 1)
    crowded = await spy_notified(tmp_path / "b", start_agent, receiver.url, 1500.0)
    await eventually(lambda: events() == 1 + 5)  # the lane took five; the spy's was dropped
    assert alone == ["yes"]
    assert crowded == alone, f"the spy's page: {alone} when only it fired, {crowded} when its neighbours did too"
