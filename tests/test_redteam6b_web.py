"""Red team 6b: the web pages' shared, bounded tables as one household's window onto another's visits (R6b-1,
R6b-2; closed: the tables are bounded per household, with no bound over all households to reach).

- Sessions (agent/web/signin.py): the first design had one table of 1000 for every household and the operator;
  when it was full, the *oldest* session went, whoever's it was. A household's own token signs it in as often as it
  likes (a valid token is never throttled, and a request without the session cookie is a new browser). So one
  household filled the table with sessions of its own: every other household (and the installer) was signed out
  at once, and from then on each sign-in by anyone else evicted exactly one of the spy's sessions, oldest first.
  Probing its oldest session (GET /ui/me: 200 or 303) the spy counted, round by round, when other households
  opened the pages. Now a household's new session ends only its own least recently used one.
- Live pages (agent/web/live.py): the first design had one cap of 500 open live streams for every household. The
  spy opened streams until 503: the number it got was the cap minus everyone else's open live pages, i.e. whether
  the target was watching its live power now (someone at home, awake, looking). Holding the cap it also kept every
  other household's live page at 503. Now a household's next live page ends its own oldest; there is no cap over
  all households. The test lowers the household's own cap to 3 and the heartbeat to 0.2 s (a closed page is
  noticed at the next write) and has the spy open twice its cap, every round.

PRIVACY.md's threat model has households see their own data only; here one household tries to read another's
presence on the device's own pages (and to switch them off), with nothing but its own token.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

import agent.web.household
import agent.web.live
from agent.web.render import PRE_COOKIE, SESSION_COOKIE
from tests.helpers.agent import make_config
from tests.helpers.web import Browserless, signed_in

SECRET = [1, 0, 1, 1, 0, 1]  # the target opens the pages (1) or not (0), round by round
SIGN_INS = 1000  # the first design's whole table: a bound over all households this small would show


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


async def test_one_household_can_neither_sign_another_out_nor_count_its_sign_ins(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    _, spy_token = await running.create_household()
    _, target_token = await running.create_household()
    target = await target_signs_in(running, target_token)
    installer = await signed_in(running, "operator", "operator")
    assert (await target.get("/ui/me"))[0] == 200

    spy = Raw(running.base)
    sessions: list[str] = []
    for _ in range(SIGN_INS):  # the spy's own token, from "new browsers"
        session = await spy.sign_in(spy_token)
        if session is not None:
            sessions.append(session)
    target_still_in = (await target.get("/ui/me"))[0] == 200
    installer_still_in = (await installer.get("/ui/installer"))[0] == 200

    alive = []  # the spy's sessions still signed in: the newest, back to the first one gone
    for session in reversed(sessions):
        if not await spy.alive(session):
            break
        alive.append(session)
    recovered = []
    for bit in SECRET:
        if bit:  # the target opens its pages (its phone, a new browser, or a session that had expired)
            await (await target_signs_in(running, target_token)).close()
        still = [s for s in alive if await spy.alive(s)]
        recovered.append(len(alive) - len(still))  # the spy's sessions the target's sign-in ended
        alive = still
    await spy.close()
    await target.close()
    await installer.close()
    print(f"spy sessions {len(sessions)} ({len(alive)} still in), target still signed in: {target_still_in}, "
          f"installer: {installer_still_in}; the spy's sessions ended per round {recovered} vs {SECRET}")
    assert target_still_in, "the spy's sign-ins signed the target out"
    assert installer_still_in, "the spy's sign-ins signed the installer out"
    assert alive, "the spy's newest session was signed out by others' sign-ins"
    assert recovered == [0] * len(SECRET), f"others' sign-ins ended the spy's sessions: {recovered}"


async def open_live(http: aiohttp.ClientSession, base: str, session: str):
    """A live page's stream held open, or None when the device answers 503."""
    resp = await http.get(base + "/ui/me/live", headers={"Cookie": f"{SESSION_COOKIE}={session}"},
                          allow_redirects=False)
    if resp.status != 200:
        resp.release()
        return None
    await resp.content.readline()  # "retry:": the stream is open on the device
    return resp


async def test_one_household_cannot_tell_whether_another_watches_its_live_page(tmp_path, start_agent,
                                                                              monkeypatch):
    cap = 3
    monkeypatch.setattr(agent.web.live, "STREAMS_PER_HOUSEHOLD", cap)
    # a closed page is noticed at the stream's next write (a heartbeat, 15 s): sooner, to keep the test short
    monkeypatch.setattr(agent.web.household, "HEARTBEAT_S", 0.2)
    running = await start_agent(make_config(tmp_path))
    _, spy_token = await running.create_household()
    _, target_token = await running.create_household()
    raw = Raw(running.base)
    spy_session = await raw.sign_in(spy_token)
    target_session = await raw.sign_in(target_token)
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None))

    tries = 2 * cap  # beyond its own cap, as the spy of the first design went beyond everyone's
    got, target_refused, target_ended = [], 0, 0
    for bit in SECRET:
        watching = await open_live(http, running.base, target_session) if bit else None
        held = []
        while len(held) < tries:
            stream = await open_live(http, running.base, spy_session)
            if stream is None:
                break
            held.append(stream)
        got.append(len(held))
        if await open_live(http, running.base, target_session) is None:  # while the spy holds its streams
            target_refused += 1
        if watching is not None:  # the target's page still shows its power
            status, body = await running.call("POST", "/readings", token=target_token,
                                              json={"timestamp": time.time(), "power_import_w": 321.0})
            assert status == 201, body
            if not await shows(watching, b"data: 321\n"):
                target_ended += 1
        for stream in [*held, watching]:
            if stream is not None:
                stream.close()
        await asyncio.sleep(1.0)  # the device sees the streams closed (its next heartbeat write)
    await http.close()
    await raw.close()
    recovered = [1 if n < max(got) else 0 for n in got]  # fewer than its best round: someone else held a place
    print(f"streams the spy got per round {got}: recovered {recovered} vs {SECRET}; target's live page refused {target_refused}/{len(SECRET)}, "
          f"ended {target_ended}/{sum(SECRET)}")
    assert recovered != SECRET, f"the spy read when the target watched its live page: {recovered}"
    assert got == [tries] * len(SECRET), f"what the spy got depends on others: {got}"
    assert target_refused == 0, "the spy's streams kept the target's live page at 503"
    assert target_ended == 0, "the spy's streams ended the target's live page"


async def shows(stream, line: bytes) -> bool:
    """The stream sends `line` before it ends (heartbeats skipped)."""
    async for got in stream.content:
        if got == line:
            return True
    return False
