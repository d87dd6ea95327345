"""Red team 6b: the web pages' shared, bounded tables as one household's window onto another's visits.

- Sessions (agent/web/signin.py): one table of `MAX_SESSIONS` (1000) for every household and the operator; when
  it is full, the *oldest* session goes, whoever's it is. A household's own token signs it in as often as it likes
  (a valid token is never throttled, and a request without the session cookie is a new browser). So one household
  fills the table with sessions of its own: every other household (and the installer) is signed out at once, and
  from then on each sign-in by anyone else evicts exactly one of the spy's sessions, oldest first. Probing its
  oldest session (GET /ui/me: 200 or 303) the spy counts, round by round, when other households open the pages.
- Live pages (agent/web/live.py): one cap of `MAX_STREAMS` (500) open live streams for every household. The spy
  opens streams until 503: the number it got is the cap minus everyone else's open live pages, i.e. whether the
  target is watching its live power now (someone at home, awake, looking). Holding the cap it also keeps every
  other household's live page at 503. The test lowers the cap to 6 (the same arithmetic as 500, fewer sockets)
  and the heartbeat to 0.2 s (a closed page frees its place at the next write).

PRIVACY.md's threat model has households see their own data only; here one household reads another's presence
on the device's own pages (and switches them off), with nothing but its own token.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

import agent.web.household
import agent.web.live
from agent.web.render import PRE_COOKIE, SESSION_COOKIE
from agent.web.signin import MAX_SESSIONS
from tests.helpers.agent import make_config
from tests.helpers.web import Browserless

SECRET = [1, 0, 1, 1, 0, 1]  # the target opens the pages (1) or not (0), round by round


class Raw:
    """Requests with explicit cookies only (no jar): every sign-in is a new browser."""

    def __init__(self, base: str):
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                          timeout=aiohttp.ClientTimeout(total=10))

    async def sign_in(self, token: str) -> str | None:
        pre = "spy-pre-session-value-0123456789"
        async with self.http.post(self.base + "/ui/sign-in", data={"token": token, "csrf": pre},
                                  headers={"Cookie": f"{PRE_COOKIE}={pre}"}, allow_redirects=False) as resp:
            morsel = resp.cookies.get(SESSION_COOKIE)
            return morsel.value if resp.status == 303 and morsel is not None else None

    async def alive(self, session: str) -> bool:
        async with self.http.get(self.base + "/ui/me", headers={"Cookie": f"{SESSION_COOKIE}={session}"},
                                 allow_redirects=False) as resp:
            return resp.status == 200

    async def close(self) -> None:
        await self.http.close()


async def target_signs_in(running, token: str) -> Browserless:
    browser = Browserless(running.base)
    await browser.get("/ui/sign-in")
    status, html, _ = await browser.post("/ui/sign-in", {"token": token})
    assert status == 303, html
    return browser


@pytest.mark.xfail(strict=True, reason="red team 6b R6b-1: one session table for all households, the oldest "
                   "evicted: a household's own sign-ins sign every other household out and count their sign-ins "
                   "(agent/web/signin.py SignIn.open, MAX_SESSIONS)")
async def test_one_household_can_neither_sign_another_out_nor_count_its_sign_ins(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    _, spy_token = await running.create_household()
    _, target_token = await running.create_household()
    target = await target_signs_in(running, target_token)
    assert (await target.get("/ui/me"))[0] == 200

    spy = Raw(running.base)
    sessions: list[str] = []
    for _ in range(MAX_SESSIONS):  # the spy's own token, from "new browsers"
        session = await spy.sign_in(spy_token)
        if session is not None:
            sessions.append(session)
    target_still_in = (await target.get("/ui/me"))[0] == 200

    recovered, oldest = [], 0
    for bit in SECRET:
        if bit:  # the target opens its pages (its phone, a new browser, or a session that had expired)
            await (await target_signs_in(running, target_token)).close()
        evicted = 0
        while oldest < len(sessions) and not await spy.alive(sessions[oldest]):
            oldest, evicted = oldest + 1, evicted + 1
        recovered.append(1 if evicted else 0)
    await spy.close()
    await target.close()
    print(f"spy sessions {len(sessions)}, target still signed in: {target_still_in}, "
          f"recovered {recovered} vs {SECRET}")
    assert target_still_in, "the spy's sign-ins signed the target out"
    assert recovered != SECRET, f"the spy counted the target's sign-ins: {recovered}"


async def open_live(http: aiohttp.ClientSession, base: str, session: str):
    """A live page's stream held open, or None when the device answers 503."""
    resp = await http.get(base + "/ui/me/live", headers={"Cookie": f"{SESSION_COOKIE}={session}"},
                          allow_redirects=False)
    if resp.status != 200:
        resp.release()
        return None
    await resp.content.readline()  # "retry:": the stream is open on the device
    return resp


@pytest.mark.xfail(strict=True, reason="red team 6b R6b-2: one cap of open live pages for all households: a "
                   "household opening streams until 503 reads whether another household's live page is open, and "
                   "holding the cap keeps it at 503 (agent/web/live.py LiveHub.open, MAX_STREAMS)")
async def test_one_household_cannot_tell_whether_another_watches_its_live_page(tmp_path, start_agent,
                                                                              monkeypatch):
    cap = 6
    monkeypatch.setattr(agent.web.live, "MAX_STREAMS", cap)
    # a closed page is noticed at the stream's next write (a heartbeat, 15 s): sooner, to keep the test short
    monkeypatch.setattr(agent.web.household, "HEARTBEAT_S", 0.2)
    running = await start_agent(make_config(tmp_path))
    _, spy_token = await running.create_household()
    _, target_token = await running.create_household()
    raw = Raw(running.base)
    spy_session = await raw.sign_in(spy_token)
    target_session = await raw.sign_in(target_token)
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None))

    recovered, target_refused = [], 0
    for bit in SECRET:
        watching = await open_live(http, running.base, target_session) if bit else None
        held = []
        while len(held) <= cap:
            stream = await open_live(http, running.base, spy_session)
            if stream is None:
                break
            held.append(stream)
        recovered.append(1 if len(held) < cap else 0)  # someone else holds a place
        if await open_live(http, running.base, target_session) is None:  # while the spy holds the rest
            target_refused += 1
        for stream in [*held, watching]:
            if stream is not None:
                stream.close()
        await asyncio.sleep(1.0)  # the device sees the streams closed (its next heartbeat write)
    await http.close()
    await raw.close()
    print(f"recovered {recovered} vs {SECRET}; target's live page refused {target_refused}/{len(SECRET)}")
    assert recovered != SECRET, f"the spy read when the target watched its live page: {recovered}"
    assert target_refused == 0, "the spy's streams kept the target's live page at 503"
