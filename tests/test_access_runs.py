"""The access page shows a subscription's pushes as runs (agent/web/access_index.py `Run`): one row per run of a
subscription's consecutive windows within a clock hour, with how many windows it holds and in how many of them
the household was in the cohort (agent/release/members.py `run_inclusion`). A run's boundaries and counts are the
subscription's own windows and this household's own membership: a neighbour going silent or revoking (which
makes the custodian's windows refused, the outcome the page must not show) changes none of them."""

from __future__ import annotations

import math
import re
from dataclasses import replace

from agent.audit import AuditLog
from agent.release.members import Members
from agent.web import views
from agent.web.access_index import AccessIndex
from tests.helpers.agent import delivery_config, grant, make_config
from tests.helpers.clock import HOUR, StepClock
from tests.helpers.receiver import receiver  # noqa: F401  (receiver: the fixture)
from tests.helpers.web import signed_in

DAY0 = int(HOUR // 86400 * 86400)
MINUTE = 60
CONSENTED = {("org-1", "aggregates")}


def push(audit: AuditLog, clock: list[float], sub: str, window: str, start: int, **outcome) -> None:
    clock[0] = start + 0.5
    org = "org-1" if sub != "sub-other" else "org-2"
    audit.record(org, "organization", "data.push", durable=False, subscription_id=sub, window=window,
                 window_start=start, **outcome)


def own(index: AccessIndex) -> list[dict]:
    return index.own(DAY0, "h-1", ["org-1"], lambda e: views.concerns(e, "h-1", CONSENTED))


def test_a_subscriptions_pushes_are_runs_cut_at_the_clock_hour_and_at_a_break_whatever_came_of_them(tmp_path):
    clock = [float(HOUR - 30)]
    audit = AuditLog(tmp_path, clock=lambda: clock[0])
    index = AccessIndex(tmp_path)
    for i in range(60):  # 13:59:30 to 14:00:29: across the hour; released, filtered and withheld alike
        start = int(HOUR) - 30 + i
        push(audit, clock, "sub-1", "1s", start, released=i % 3 != 0, **({"filtered": True} if i % 3 == 1 else {}))
        push(audit, clock, "sub-other", "1s", start, released=True)  # another organization's: not on the page
        if i == 40:
            audit.record("org-1", "organization", "data.read", window="1m", window_start=int(HOUR), released=False)
    audit.flush()
    before = own(index)
    for i in range(70, 90):  # ten windows not decided (the agent was down): a new run
        push(audit, clock, "sub-1", "1s", int(HOUR) - 30 + i, released=True)
    audit.flush()
    after = own(index)
    shape = [(e["action"], e.get("window_start"), e.get("windows")) for e in after]
    assert shape == [("data.push", int(HOUR) - 30, 30), ("data.push", int(HOUR), 30), ("data.read", int(HOUR), None),
                     ("data.push", int(HOUR) + 40, 20)]
    # what a page read before is a prefix of what it reads now (its cursors hold), but the open run's count
    assert before[:-1] == after[:len(before) - 1] and len(before) == 3
    # the index holds one object per run, not one per window
    assert len(index._days[DAY0].entries) == 3 + 1 + 2  # sub-1's runs and read, sub-other's two runs
    audit.close()


def test_a_runs_membership_is_counted_as_each_of_its_windows_would_say(tmp_path):
    """run_inclusion against `inclusion` asked window by window: 1 s windows, and 1 min windows of a 1 s stream
    that the household's toggles and the stream's flag changes cut inside."""
    members = Members(tmp_path, keep_days=3, clock=lambda: float(HOUR))
    first = int(HOUR) - 1800
    inside = {*range(first + 100, first + 700), *range(first + 1000, first + 1013), first + 1500}
    for s in range(first, first + 3600):
        cohort = frozenset({"h-2", *(["h-1"] if s in inside else [])})
        noisy = s >= first + 1200
        members.note("org-1", None, 1, s, cohort, released=s % 7 != 0 or noisy, rho=0.01 if noisy else 0.0)
    for width, start, count in ((1, first, 3600), (1, first + 50, 900), (60, first, 60), (60, first + 90 * 60 // 60, 7),
                                (1, first + 1499, 3)):
        got = members.run_inclusion("h-1", "org-1", None, start, width, count)
        each = [members.inclusion("h-1", "org-1", None, start + i * width, start + (i + 1) * width)
                for i in range(count)]
        assert got is not None
        assert got.in_all == sum(1 for w in each if w.windows and w.included == w.windows)
        assert got.in_some == sum(1 for w in each if 0 < w.included < w.windows)
        assert got.known == sum(1 for w in each if w.windows)
        assert math.isclose(got.rho, sum(w.rho for w in each), abs_tol=1e-9)
        assert got.noisy == any(w.noisy for w in each)
    whole = members.run_inclusion("h-1", "org-1", None, first, 1, 3600)
    assert (whole.in_all, whole.in_some, whole.known) == (len(inside), 0, 3600)
    minutes = members.run_inclusion("h-1", "org-1", None, first, 60, 60)
    # 100..699 s: minutes 2..10 whole, 1 and 11 in part; 1000..1012 s: part of minute 16; 1500 s: of minute 25
    assert (minutes.in_all, minutes.in_some) == (9, 4)
    assert members.run_inclusion("h-1", "org-9", None, first, 1, 10) is None  # nothing of that stream
    members.close()


ROW = re.compile(r"<tr>\s*<td>.*?</tr>", re.S)
TAGS = re.compile(r"<[^>]+>")


async def spy_rows(tmp_path, start_agent, endpoint: str, neighbour: str | None,
                   spy_revokes_at: int | None = None) -> list[str]:
    """Eleven neighbours and the spy consent to the custodian's aggregates and post every minute, from 13:52 to
    14:06; the custodian has a 1 min subscription. A neighbour goes silent (`neighbour` "silent") or revokes
    ("revokes") from minute 3: the custodian's exact windows are refused then. Returns the spy's rows as text."""
    config = make_config(tmp_path)
    levels = {**config.levels, "dso": replace(config.levels["dso"], windows=("1m", "15m", "1h"))}
    clock = StepClock(HOUR - 8 * MINUTE + 10)
    running = await start_agent(replace(config, levels=levels, delivery=delivery_config()), clock=clock)
    dso, dso_key = await running.create_org("Grid operator", "dso")
    neighbours = [await running.create_household() for _ in range(11)]
    spy = await running.create_household()
    for _, token in [*neighbours, spy]:
        await grant(running, token, dso, "aggregates")
    status, out = await running.call("POST", "/data/subscribe", token=dso_key, json={
        "endpoint": endpoint, "interval": MINUTE, "window": "1m"})
    assert status == 201, out
    clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1
    for minute in range(14):
        if minute == 3 and neighbour == "revokes":
            status, _ = await running.call("DELETE", f"/households/me/consents/{dso}/aggregates",
                                           token=neighbours[0][1])
            assert status == 200
        if minute == spy_revokes_at:
            status, _ = await running.call("DELETE", f"/households/me/consents/{dso}/aggregates", token=spy[1])
            assert status == 200
        for household in [*neighbours, spy]:
            if household is neighbours[0] and neighbour is not None and minute >= 3:
                continue
            status, out = await running.call("POST", "/readings", token=household[1],
                                             json={"timestamp": clock.now, "power_import_w": 400.0})
            assert status == 201, out
        clock.now = (math.floor(clock.now / MINUTE) + 1) * MINUTE + 1
        await running.agent.releases.settle()
        running.agent.delivery.produce_due()
    browser = await signed_in(running, "household", spy[0])
    status, html, _ = await browser.get("/ui/me/access")
    await browser.close()
    assert status == 200, html
    return [" ".join(TAGS.sub(" ", row).split()) for row in ROW.findall(html)]


async def test_a_neighbour_going_silent_or_revoking_changes_none_of_the_spys_runs(tmp_path, start_agent, receiver):
    async def rows(name, neighbour, spy_revokes_at=None):
        return await spy_rows(tmp_path / name, start_agent, receiver.url, neighbour, spy_revokes_at)
    quiet = await rows("a", None)
    # two runs: the windows of 13:53-13:59 and those of 14:00 on (newest first), the spy in every one
    assert len(quiet) == 2, quiet
    for row, period in zip(quiet, ("14:00:00 UTC – 14:07:00 UTC", "13:53:00 UTC – 14:00:00 UTC")):
        assert "7 windows in a row" in row and period in row and "Yes (in 7 of 7 windows)" in row, quiet
    assert await rows("b", "silent") == quiet
    assert await rows("c", "revokes") == quiet
    # its own revocation does change them: from then on its data was in none of the windows
    revoked = await rows("d", None, spy_revokes_at=10)
    # (it revoked at 14:03:01: the windows of 14:00, 14:01 and 14:02 had it)
    assert revoked[1] == quiet[1] and "Partly (in 3 of 7 windows)" in revoked[0], revoked

