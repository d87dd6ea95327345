"""A household's web sessions, sign-in links and live pages are its own: bounded per household (its new one ends
its own oldest, never another's), and ended all at once, live pages included, when its token is rotated or it is
deleted. The attacks of red team 6b's class beyond its tests (tests/test_redteam6b_*.py): a deleted or rotated
household's open live page, a deleted household's link, one household's CSRF token on another's session."""

from __future__ import annotations

import time

import pytest

from agent.web import sign_in_url
from agent.web.live import STREAMS_PER_HOUSEHOLD, LiveHub
from agent.web.signin import IDLE_S, LINKS_PER_SUBJECT, SESSIONS_PER_SUBJECT, SignIn
from tests.helpers.agent import make_config
from tests.helpers.clock import StepClock, T0
from tests.helpers.web import Browserless, csrf_of, signed_in


async def post_reading(running, token: str, watts: float) -> None:
    status, body = await running.call("POST", "/readings", token=token, json={"timestamp": time.time(), "power_import_w": watts})
    assert status == 201, body


async def end_of(running, household_id: str, how: str) -> None:
    if how == "rotate":
        status, body = await running.call("POST", f"/households/{household_id}/token")
        assert status == 200, body
    else:
        status, body = await running.call("DELETE", f"/households/{household_id}")
        assert status == 204, body


@pytest.mark.parametrize("how", ["rotate", "delete"])
async def test_rotating_or_deleting_a_household_closes_its_open_live_pages_at_once(tmp_path, start_agent, how):
    """Its live page ends now, not at the stream's next heartbeat (15 s: past the client's 10 s timeout); another
    household's live page goes on."""
    running = await start_agent(make_config(tmp_path))
    household_id, token = await running.create_household()
    other_id, other_token = await running.create_household()
    watcher, neighbour = await signed_in(running, "household", household_id), \
        await signed_in(running, "household", other_id)
    async with watcher.http.get(running.base + "/ui/me/live") as mine, \
            neighbour.http.get(running.base + "/ui/me/live") as theirs:
        for stream in (mine, theirs):
            assert stream.status == 200 and (await stream.content.readline()).startswith(b"retry:")
        await end_of(running, household_id, how)
        rest = await mine.content.read()  # the stream ends (a timeout here: it is still open)
        assert rest in (b"", b"\n"), rest
        await post_reading(running, other_token, 512.0)
        lines = [await theirs.content.readline() for _ in range(4)]
        assert b"data: 512\n" in lines, lines
    assert (await watcher.get("/ui/me"))[0] == 303  # and its session is gone
    await watcher.close()
    await neighbour.close()


async def test_a_deleted_households_sign_in_link_opens_no_session(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    household_id, _ = await running.create_household()
    printed = sign_in_url(running.agent, running.base, "household", household_id)
    await end_of(running, household_id, "delete")
    finder = Browserless(running.base)
    status, _, headers = await finder.sign_in_with(printed)
    await finder.close()
    assert status == 410, "a link made for a deleted household still opens a session"
    assert "edge_session=" not in " ".join(headers.getall("Set-Cookie", []))


async def test_one_households_csrf_token_is_refused_on_another_households_session(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    org_id, _ = await running.create_org("Energy Co", "dso")
    mine_id, _ = await running.create_household()
    theirs_id, _ = await running.create_household()
    spy, target = await signed_in(running, "household", mine_id), await signed_in(running, "household", theirs_id)
    spy_csrf = csrf_of((await spy.get("/ui/me/consents"))[1])
    await target.get("/ui/me/consents")
    status, _, _ = await target.post("/ui/me/consents", {"organization": org_id, "service": "aggregates",
                                                        "action": "grant"}, csrf=spy_csrf)
    assert status == 403
    assert not running.agent.registry.consent_state(theirs_id, org_id, "aggregates")
    await spy.close()
    await target.close()


# --- the tables themselves, on a stepped clock (agent/web/signin.py, agent/web/live.py) --------------------------
def test_a_households_new_session_ends_only_its_own_least_recently_used_one():
    clock = StepClock(T0)
    sign_in = SignIn(clock)
    mine = [sign_in.open("household", "hh_a")[0] for _ in range(SESSIONS_PER_SUBJECT)]
    theirs = [sign_in.open("household", "hh_b")[0] for _ in range(SESSIONS_PER_SUBJECT)]
    operator, _ = sign_in.open("operator", "operator")
    clock.step(1)
    assert sign_in.session(mine[0])  # used just now: the least recently used is mine[1]
    newest, _ = sign_in.open("household", "hh_a")
    assert [sign_in.session(s, touch=False) is not None for s in mine] == [True, False] + [True] * (len(mine) - 2)
    assert sign_in.session(newest) and sign_in.session(operator)
    assert all(sign_in.session(s) for s in theirs)


def test_no_bound_over_all_households_is_reached_by_thousands_at_their_own_limit():
    sign_in = SignIn(StepClock(T0))
    households = [f"hh_{n:012x}" for n in range(3000)]
    sessions = {h: [sign_in.open("household", h)[0] for _ in range(SESSIONS_PER_SUBJECT)] for h in households}
    links = {h: [sign_in.new_link("household", h) for _ in range(LINKS_PER_SUBJECT)] for h in households}
    assert all(sign_in.session(s, touch=False) for h in households for s in sessions[h])
    assert all(sign_in.redeem(c) for h in households for c in links[h])


def test_expired_sessions_never_keep_a_live_ones_place():
    clock = StepClock(T0)
    sign_in = SignIn(clock)
    for _ in range(SESSIONS_PER_SUBJECT):
        sign_in.open("household", "hh_a")
    clock.step(IDLE_S)
    first, _ = sign_in.open("household", "hh_a")
    others = [sign_in.open("household", "hh_a")[0] for _ in range(SESSIONS_PER_SUBJECT - 1)]
    assert all(sign_in.session(s, touch=False) for s in [first, *others])


def test_a_households_new_link_ends_only_its_own_oldest_link():
    sign_in = SignIn(StepClock(T0))
    mine = [sign_in.new_link("household", "hh_a") for _ in range(LINKS_PER_SUBJECT + 1)]
    theirs = sign_in.new_link("household", "hh_b")
    assert sign_in.redeem(mine[0]) is None
    assert all(sign_in.redeem(c) for c in mine[1:]) and sign_in.redeem(theirs).subject == "hh_b"


def test_ending_a_household_ends_its_sessions_and_links_only():
    sign_in = SignIn(StepClock(T0))
    mine, theirs = sign_in.open("household", "hh_a")[0], sign_in.open("household", "hh_b")[0]
    my_link, their_link = sign_in.new_link("household", "hh_a"), sign_in.new_link("household", "hh_b")
    sign_in.end("hh_a")
    assert sign_in.session(mine) is None and sign_in.redeem(my_link) is None
    assert sign_in.session(theirs) and sign_in.redeem(their_link)
    sign_in.new_link("household", "hh_a")  # and the household's table works on
    assert sign_in.session(sign_in.open("household", "hh_a")[0])


def test_a_households_next_live_page_ends_its_own_oldest_and_end_ends_only_its_own():
    hub = LiveHub()
    mine = [hub.open("hh_a", "m_a") for _ in range(STREAMS_PER_HOUSEHOLD + 1)]
    theirs = [hub.open("hh_b", "m_b") for _ in range(STREAMS_PER_HOUSEHOLD)]
    assert [s.ended for s in mine] == [True] + [False] * STREAMS_PER_HOUSEHOLD
    assert not any(s.ended for s in theirs)
    hub.end("hh_a")
    assert all(s.ended for s in mine) and not any(s.ended for s in theirs)
