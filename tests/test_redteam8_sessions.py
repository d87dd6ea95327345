"""Red team 8, R8-2 (closed): a form posted with a session the rotation ended acted, whenever its sender finished it.

R6b-3's fix ends every session of a household at once when its token is rotated (agent/web/signin.py `end`,
the registry's `token_ended`). PRIVACY.md leaves "a request already past the session check when the token is
rotated completes (a consent change posted the same moment)". But the pages check the session *before* reading
the form's body (agent/web/render.py `guarded_page`: `current_session`, then `await request.post()`, then the
CSRF field against the session object it already holds, then the handler as `session.subject`), and nothing
bounds how long a body may take to arrive. So whoever holds the leaked token signs in, sends the headers of as
many forms as it likes (grant a consent, set the notification endpoint, register an appliance) and holds their
last byte; after the rotation, after the household signed in with its new token and undid what it saw, the
thief finished them one by one, when it chose. The API had the same order, bounded by its body's 30 s.
Closed: the pages look the session up again once the body is here (agent/web/render.py `guarded_page`), the API
the token (agent/api/common.py `still_caller`, in `read_body`); one ended meanwhile is 401.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from urllib.parse import urlencode, urlsplit

import pytest

from agent.web.render import SESSION_COOKIE
from tests.helpers.agent import delivery_config, grant, make_config
from tests.helpers.web import Browserless, csrf_of, sign_in_with_token


async def held(base: str, method: str, path: str, header: str, content_type: str, body: bytes):
    """A request whose headers and all but its body's last byte are sent now: the connection and that byte."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\n{header}\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:-1])
    await writer.drain()
    return reader, writer, body[-1:]


async def finish(request) -> str:
    """The held request's last byte, sent now; the answer's status line."""
    reader, writer, last = request
    writer.write(last)
    await writer.drain()
    answer = (await reader.read()).decode(errors="replace")
    writer.close()
    return answer.splitlines()[0] if answer else ""


async def held_form(browser: Browserless, path: str, fields: dict):
    """A page's form POST with the browser's session, held before its last byte."""
    cookie = next(c.value for c in browser.http.cookie_jar if c.key == SESSION_COOKIE)
    return await held(browser.base, "POST", path, f"Cookie: {SESSION_COOKIE}={cookie}",
                      "application/x-www-form-urlencoded", urlencode(fields).encode())


async def test_a_form_held_open_across_the_rotation_does_not_act(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    household_id, leaked = await running.create_household()
    org_id, _ = await running.create_org("Data Broker", "dso")
    thief = await sign_in_with_token(running, leaked)
    status, html, _ = await thief.get("/ui/me/consents")
    assert status == 200, html
    form = await held_form(thief, "/ui/me/consents", {"organization": org_id, "service": "aggregates",
                                                       "action": "grant", "csrf": csrf_of(html)})
    # the household finds out: the operator rotates its token; it signs in again and says no to the broker
    status, body = await running.call("POST", f"/households/{household_id}/token")
    assert status == 200, body
    fresh = body["token"]
    assert (await thief.get("/ui/me"))[0] == 303  # the thief's session is gone, as R6b-3 says
    await grant(running, fresh, org_id, "aggregates")
    status, _ = await running.call("DELETE", f"/households/me/consents/{org_id}/aggregates", token=fresh)
    assert status in (200, 204)
    await asyncio.sleep(2)  # later: as late as the thief likes (no timeout on a body)
    answer = await finish(form)
    await thief.close()
    granted = running.agent.registry.consent_state(household_id, org_id, "aggregates")
    # before the fix: 303, and the broker had the household's aggregates again, after rotation and revocation
    assert answer.startswith("HTTP/1.1 401"), answer
    assert not granted, f"the thief's form granted the broker after the rotation: {answer}"


async def test_an_api_request_held_open_across_the_rotation_does_not_act(tmp_path, start_agent):
    """The API's form of it: the thief's `PUT /households/me/notify` with the leaked token, finished after the
    rotation, sets the household's notification endpoint to the thief's and hands it the webhook's secret: every
    notification of the household's conditions goes to the thief from then on."""
    running = await start_agent(replace(make_config(tmp_path), delivery=delivery_config()))
    household_id, leaked = await running.create_household()
    request = await held(running.base, "PUT", "/households/me/notify", f"Authorization: Bearer {leaked}",
                         "application/json",
                         json.dumps({"url": "http://thief.example:8443/hook", "kind": "webhook"}).encode())
    status, body = await running.call("POST", f"/households/{household_id}/token")
    assert status == 200, body
    fresh = body["token"]
    assert (await running.call("GET", "/households/me", token=leaked))[0] == 401
    await asyncio.sleep(1)
    answer = await finish(request)
    status, endpoint = await running.call("GET", "/households/me/notify", token=fresh)
    # before the fix: 200, and the household's endpoint was the thief's (with its secret in the thief's answer)
    assert answer.startswith("HTTP/1.1 401"), answer
    assert status == 404, f"{answer}: the household's notifications now go to {endpoint.get('url')}"


# The API compares the hash its check found with the holder's hash after the body (agent/auth.py
# `still_identified`): every credential and every way one ends, and the changes that must not end it.
@pytest.mark.parametrize(("credential", "change", "ends"), [
    ("token", "token", True), ("token", "datalogger_token", False), ("token", "delete", True),
    ("datalogger_token", "datalogger_token", True), ("datalogger_token", "token", False),
    ("datalogger_token", "delete", True), ("token", "another household's token", False)])
async def test_a_reading_held_open_across_a_credential_change(tmp_path, start_agent, credential, change, ends):
    running = await start_agent(make_config(tmp_path))
    status, created = await running.call("POST", "/households", json={})
    assert status == 201, created
    household_id, other_id = created["id"], (await running.create_household())[0]
    reading = json.dumps({"timestamp": running.agent.clock(), "power_import_w": 500.0}).encode()
    request = await held(running.base, "POST", "/readings", f"Authorization: Bearer {created[credential]}",
                         "application/json", reading)
    if change == "delete":
        status, body = await running.call("DELETE", f"/households/{household_id}")
    else:
        target = other_id if change == "another household's token" else household_id
        status, body = await running.call("POST", f"/households/{target}/{change.split()[-1]}")
    assert status in (200, 204), body
    answer = await finish(request)
    stored = running.agent.pipeline.latest.get(created["meter_id"])
    assert answer.startswith("HTTP/1.1 401" if ends else "HTTP/1.1 201"), answer
    assert (stored is None) == ends, f"{answer}: the reading was {'stored' if stored else 'not stored'}"


@pytest.mark.parametrize(("change", "ends"), [("key", True), ("delete", True), ("none", False)])
async def test_an_organization_request_held_open_across_its_key_change(tmp_path, start_agent, change, ends):
    running = await start_agent(make_config(tmp_path))
    org_id, key = await running.create_org("Data Broker", "dso")
    request = await held(running.base, "POST", "/data/subscribe", f"Authorization: Bearer {key}",
                         "application/json", b"{}")
    if change != "none":
        status, body = await running.call("DELETE" if change == "delete" else "POST",
                                          f"/organizations/{org_id}" + ("/key" if change == "key" else ""))
        assert status in (200, 204), body
    answer = await finish(request)
    # still its caller: the body is looked at (and refused: no endpoint); ended: 401 before it is
    assert answer.startswith("HTTP/1.1 401") == ends, answer
    assert ends or answer.startswith("HTTP/1.1 4"), answer
