"""The web pages over plain HTTP (what a browser without JavaScript does): sign-in links used once and expiring,
sessions in HttpOnly SameSite=Strict cookies that expire, CSRF on every form, sign-out, the security headers,
the throttle, roles, the forms going through the API's own code (consent, household, endpoint, appliance), the
live stream, the installer's hints and QR code, and the language the browser asks for (tests/test_web_i18n.py and
tests/test_web_views.py have the catalogues and the tables' and the access log's numbers on data)."""

from __future__ import annotations

import base64
import re
from xml.etree import ElementTree

import pytest
from yarl import URL

from agent.config import MeterSpec
from agent.web import sign_in_url
from agent.web.render import CSP
from agent.web.signin import IDLE_S, LINK_TTL_S
from tests.helpers.agent import make_config
from tests.helpers.clock import StepClock, T0
from tests.helpers.web import Browserless, csrf_of, signed_in

PAGES = ["/ui/me", "/ui/me/consents", "/ui/me/access", "/ui/me/notifications", "/ui/me/devices"]


@pytest.fixture
async def device(tmp_path, start_agent):
    clock = StepClock(T0)
    running = await start_agent(make_config(tmp_path), clock=clock)
    org_id, org_key = await running.create_org("Energy Co", "dso")
    household_id, token = await running.create_household()
    clients: list[Browserless] = []

    async def client(role="household", subject=None, language="en"):
        c = await signed_in(running, role, subject or household_id, language)
        clients.append(c)
        return c

    yield running, clock, org_id, household_id, token, client
    for c in clients:
        await c.close()


async def test_a_link_signs_in_once_into_an_httponly_strict_cookie(device):
    running, clock, org_id, household_id, token, _ = device
    url = sign_in_url(running.agent, running.base, "household", household_id)
    first = Browserless(running.base)
    status, html, _ = await first.get(url.removeprefix(running.base))
    assert status == 200 and "Sign in to this device" in html  # opening it used nothing
    status, _, headers = await first.post("/ui/link", {"code": url.rsplit("/", 1)[1]})
    assert status == 303 and headers["Location"] == "/ui/me"
    session_cookie = next(c for c in headers.getall("Set-Cookie") if c.startswith("edge_session="))
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie and "Path=/ui" in session_cookie
    status, html, _ = await first.get("/ui/me")
    assert status == 200 and "My data" in html
    # the same link again, from another browser: refused
    second = Browserless(running.base)
    status, html, _ = await second.sign_in_with(url)
    assert status == 410 and "has been used" in html
    assert (await second.get("/ui/me"))[0] == 303
    await first.close()
    await second.close()


async def test_a_link_expires(device):
    running, clock, org_id, household_id, token, _ = device
    url = sign_in_url(running.agent, running.base, "household", household_id)
    clock.step(LINK_TTL_S + 1)
    browser = Browserless(running.base)
    status, _, _ = await browser.sign_in_with(url)
    assert status == 410
    await browser.close()


async def test_a_session_expires_when_idle_and_its_forms_are_refused(device):
    running, clock, org_id, household_id, token, client = device
    browser = await client()
    status, html, _ = await browser.get("/ui/me/consents")
    assert status == 200
    clock.step(IDLE_S - 5)
    assert (await browser.get("/ui/me/consents"))[0] == 200  # a request restarts the idle time
    clock.step(IDLE_S + 1)
    status, _, headers = await browser.get("/ui/me")
    assert status == 303 and headers["Location"] == "/ui/sign-in"
    status, html, _ = await browser.post("/ui/me/consents", {"organization": org_id, "service": "aggregates",
                                                             "action": "grant"}, csrf=csrf_of(html))
    assert status == 401
    assert not running.agent.registry.consent_state(household_id, org_id, "aggregates")


async def test_every_form_needs_its_csrf_token(device):
    running, clock, org_id, household_id, token, client = device
    browser = await client()
    await browser.get("/ui/me/consents")
    form = {"organization": org_id, "service": "aggregates", "action": "grant"}
    assert (await browser.post("/ui/me/consents", form, csrf=""))[0] == 403
    assert (await browser.post("/ui/me/consents", form, csrf="forged-" + "x" * 20))[0] == 403
    assert (await browser.post("/ui/sign-out", {}, csrf=""))[0] == 403
    assert not running.agent.registry.consent_state(household_id, org_id, "aggregates")
    # the sign-in forms too: a value that is not the one in this browser's cookie
    stranger = Browserless(running.base)
    await stranger.get("/ui/sign-in")
    assert (await stranger.post("/ui/sign-in", {"token": token}, csrf="not-the-cookie"))[0] == 403
    await stranger.close()


async def test_the_consent_form_is_the_apis_consent(device):
    running, clock, org_id, household_id, token, client = device
    browser = await client()
    await browser.get("/ui/me/consents")
    status, _, headers = await browser.post("/ui/me/consents", {"organization": org_id, "service": "aggregates",
                                                                 "action": "grant"})
    assert status == 303 and headers["Location"].startswith("/ui/me/consents")
    status, body = await running.call("GET", "/households/me/consents", token=token)
    assert [(c["organization_id"], c["service"]) for c in body["consents"]] == [(org_id, "aggregates")]
    entries = running.agent.audit.entries(who=household_id)
    assert [e["action"] for e in entries] == ["consent.grant"]
    clock.step(5)
    status, html, _ = await browser.get("/ui/me/consents")
    assert "Stop" in html and "History of your choices" in html
    await browser.post("/ui/me/consents", {"organization": org_id, "service": "aggregates", "action": "revoke"})
    status, body = await running.call("GET", "/households/me/consents/history", token=token)
    assert [h["action"] for h in body["history"]] == ["grant", "revoke"]
    # a service that does not exist, an organization that does not
    await browser.get("/ui/me/consents")
    assert (await browser.post("/ui/me/consents", {"organization": org_id, "service": "everything",
                                                   "action": "grant"}))[0] == 400
    await browser.get("/ui/me/consents")
    assert (await browser.post("/ui/me/consents", {"organization": "org_nobody", "service": "aggregates",
                                                   "action": "grant"}))[0] == 404


async def test_sign_out_ends_the_session(device):
    running, clock, org_id, household_id, token, client = device
    browser = await client()
    await browser.get("/ui/me")
    cookie = browser.http.cookie_jar.filter_cookies(URL(running.base + "/ui/me"))["edge_session"].value
    status, _, headers = await browser.post("/ui/sign-out", {})
    assert status == 303 and headers["Location"] == "/ui/sign-in"
    assert (await browser.get("/ui/me"))[0] == 303
    # the old cookie, presented again by hand: no session
    async with browser.http.get(running.base + "/ui/me", allow_redirects=False,
                                headers={"Cookie": f"edge_session={cookie}"}) as resp:
        assert resp.status == 303


async def test_security_headers_and_no_inline_script_on_every_page(device):
    running, clock, org_id, household_id, token, client = device
    assert "frame-ancestors 'none'" in CSP and "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    browser = await client()
    operator = await client("operator", "operator")
    seen = []
    for who, path in [*((browser, p) for p in PAGES), (operator, "/ui/installer"), (browser, "/ui/installer"),
                      (browser, "/ui/static/app.js"), (Browserless(running.base), "/ui/sign-in"),
                      (browser, "/ui/me/notifications/404")]:
        status, html, headers = await who.get(path)
        seen.append(status)
        assert headers["Content-Security-Policy"] == CSP, path
        assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
        if headers.get("Content-Type", "").startswith("text/html"):
            assert headers["Cache-Control"] == "no-store"
            assert not re.search(r"<script(?![^>]*\bsrc=)", html), path  # every script is a file
            assert not re.search(r"\son\w+=|<style|\sstyle=", html), path  # no inline handlers or styles
            assert "edge_hh_" not in html and token not in html
    assert seen == [200, 200, 200, 200, 200, 200, 403, 200, 200, 404]


async def test_bad_links_are_throttled_as_bad_tokens_are_on_the_api(device):
    running, clock, org_id, household_id, token, _ = device
    browser = Browserless(running.base)
    statuses = []
    for i in range(11):
        statuses.append((await browser.sign_in_with(f"{running.base}/ui/link/guess{i}"))[0])
    assert statuses == [410] * 10 + [429]
    status, _, headers = await browser.sign_in_with(f"{running.base}/ui/link/guess-more")
    assert status == 429 and int(headers["Retry-After"]) > 0
    # the API's throttle is the same one: a bad bearer token from here is refused too
    status, _ = await running.call("GET", "/households/me", token="edge_hh_wrong")
    assert status == 429
    # a valid link is never refused (many households may share one address)
    status, _, _ = await browser.sign_in_with(sign_in_url(running.agent, running.base, "household", household_id))
    assert status == 303
    await browser.close()


async def test_the_token_form_signs_in_households_and_operators_not_organizations(device):
    running, clock, org_id, household_id, token, _ = device
    org_key = (await running.create_org("Other Co", "service"))[1]
    for secret, expected in [(token, "/ui/me"), (running.agent.config.operator_token, "/ui/installer")]:
        browser = Browserless(running.base)
        await browser.get("/ui/sign-in")
        status, _, headers = await browser.post("/ui/sign-in", {"token": secret})
        assert status == 303 and headers["Location"] == expected
        await browser.close()
    browser = Browserless(running.base)
    await browser.get("/ui/sign-in")
    assert (await browser.post("/ui/sign-in", {"token": org_key}))[0] == 403
    await browser.get("/ui/sign-in")
    status, html, _ = await browser.post("/ui/sign-in", {"token": "edge_hh_nope"})
    assert status == 401 and "not known" in html
    await browser.close()


async def test_roles_see_only_their_pages(device):
    running, clock, org_id, household_id, token, client = device
    household = await client()
    operator = await client("operator", "operator")
    assert (await household.get("/ui/installer"))[0] == 403
    assert (await operator.get("/ui/me"))[0] == 403
    assert (await Browserless(running.base).get("/ui/installer"))[0] == 303
    # a deleted household's session ends
    assert (await running.call("DELETE", f"/households/{household_id}"))[0] == 204
    assert (await household.get("/ui/me"))[0] == 303


async def test_the_installer_creates_a_household_and_shows_its_link_once(device):
    running, clock, org_id, household_id, token, client = device
    operator = await client("operator", "operator")
    await operator.get("/ui/installer")
    status, html, _ = await operator.post("/ui/installer/households", {"meter_id": ""})
    assert status == 200
    link = re.search(r'id="sign-in-link" href="([^"]+)"', html).group(1)
    qr = re.search(r'id="sign-in-qr" src="data:image/svg\+xml;base64,([^"]+)"', html).group(1)
    svg = ElementTree.fromstring(base64.b64decode(qr))
    assert svg.tag.endswith("svg") and len(svg.find("{http://www.w3.org/2000/svg}path").get("d")) > 1000
    hh_token = re.search(r'id="household-token">([^<]+)<', html).group(1)
    dl_token = re.search(r'id="datalogger-token">([^<]+)<', html).group(1)
    new_id = re.search(r"Sign-in link for (hh_[0-9a-f]+)", html).group(1)
    assert running.agent.registry.household_by_token(hh_token).id == new_id
    # the datalogger is given a token that only posts readings (red team 7: its installer may be an organization)
    assert running.agent.registry.household_by_datalogger_token(dl_token).id == new_id
    assert running.agent.registry.household_by_token(dl_token) is None
    status, html, _ = await operator.get("/ui/installer")
    assert new_id in html and link.rsplit("/", 1)[1] not in html and hh_token not in html and dl_token not in html
    # a new datalogger token, shown once; the old one stops, the household's token stays
    assert "Replace" in html  # it has one
    status, html, _ = await operator.post(f"/ui/installer/households/{new_id}/datalogger_token", {})
    fresh = re.search(r'id="datalogger-token">([^<]+)<', html).group(1)
    assert status == 200 and 'id="household-token"' not in html
    assert running.agent.registry.household_by_datalogger_token(fresh).id == new_id
    assert running.agent.registry.household_by_datalogger_token(dl_token) is None
    assert running.agent.registry.household_by_token(hh_token).id == new_id
    assert running.agent.audit.entries(who="operator")[-1]["action"] == "household.rotate_datalogger_token"
    assert running.agent.audit.entries(who="operator")[-2]["action"] == "household.create"
    browser = Browserless(running.base)
    assert (await browser.sign_in_with(link))[0] == 303
    assert (await browser.get("/ui/me"))[0] == 200
    await browser.close()


async def test_the_language_follows_accept_language(device):
    running, clock, org_id, household_id, token, client = device
    for header, language, words in [("nl-NL,nl;q=0.9,en;q=0.8", "nl", "Mijn gegevens"),
                                     ("fr-BE, nl-BE;q=0.5", "nl", "Mijn gegevens"),
                                     ("en-GB", "en", "My data"), ("de", "en", "My data"), ("", "en", "My data")]:
        browser = await client(language=header)
        status, html, headers = await browser.get("/ui/me")
        assert status == 200 and words in html and f'<html lang="{language}">' in html, header
        assert headers["Content-Language"] == language


async def test_the_live_stream_sends_new_values_and_ends_with_the_session(device):
    running, clock, org_id, household_id, token, client = device
    browser = await client()
    async with browser.http.get(running.base + "/ui/me/live") as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        assert (await stream.content.readline()).startswith(b"retry:")
        assert await stream.content.readline() == b"\n"  # no reading yet: nothing else until one arrives
        clock.step(1)
        assert (await running.call("POST", "/readings", token=token,
                                   json={"timestamp": clock.now, "power_import_w": 640.0}))[0] == 201
        lines = [await stream.content.readline() for _ in range(3)]
        assert lines == [b"event: import_w\n", b"data: 640\n", b"\n"]
        await browser.get("/ui/me")
        await browser.post("/ui/sign-out", {})
        clock.step(1)
        await running.call("POST", "/readings", token=token, json={"timestamp": clock.now, "power_import_w": 1.0})
        rest = await stream.content.read()  # the stream ends: no value after the session did
    assert b"data: 1\n" not in rest
    async with browser.http.get(running.base + "/ui/me/live", allow_redirects=False) as stream:
        assert stream.status == 401


async def test_the_endpoint_and_appliance_forms_are_the_apis(device):
    running, clock, org_id, household_id, token, client = device
    browser = await client()
    await browser.get("/ui/me/devices")
    status, html, _ = await browser.post("/ui/me/devices/notify", {"url": "https://93.184.215.14/hook",
                                                                   "kind": "webhook"})
    assert status == 200, html
    secret = re.search(r'id="webhook-secret">([^<]+)<', html).group(1)
    assert secret.startswith("whsec_")
    status, body = await running.call("GET", "/households/me/notify", token=token)
    assert status == 200 and body["url"] == "https://93.184.215.14/hook" and "secret" not in body
    assert secret not in (await browser.get("/ui/me/devices"))[1]  # shown once
    status, html, _ = await browser.post("/ui/me/devices/notify", {"url": "http://127.0.0.1/x", "kind": "ntfy"})
    assert status == 422 and "refused" in html  # the API's endpoint policy
    await browser.get("/ui/me/devices")
    assert (await browser.post("/ui/me/devices/notify/remove", {}))[0] == 303
    assert (await running.call("GET", "/households/me/notify", token=token))[0] == 404

    await browser.get("/ui/me/devices")
    status, _, _ = await browser.post("/ui/me/devices/appliances", {
        "name": "Boiler", "kind": "heater", "driver": "shelly", "address": "http://192.168.1.20", "channel": "0",
        "allowed_organizations": org_id})
    assert status == 303
    status, body = await running.call("GET", "/households/me/appliances", token=token)
    [appliance] = body["appliances"]
    assert (appliance["name"], appliance["channel"], appliance["allowed_organizations"]) == ("Boiler", 0, [org_id])
    status, html, _ = await browser.get("/ui/me/devices")
    assert "Boiler" in html and "Energy Co" in html
    assert (await browser.post(f"/ui/me/devices/appliances/{appliance['id']}/remove", {}))[0] == 303
    assert (await running.call("GET", "/households/me/appliances", token=token))[1]["appliances"] == []
    assert [e["action"] for e in running.agent.audit.entries(who=household_id)] == [
        "notify.set", "notify.delete", "appliance.add", "appliance.delete"]


async def test_the_installer_page_shows_a_silent_ports_hint(tmp_path, start_agent, pty_pair):
    meter = MeterSpec(meter_id="house-1", port=pty_pair.path, profile="dsmr5", stall_seconds=2)
    running = await start_agent(make_config(tmp_path, meters=[meter]))
    operator = await signed_in(running, "operator", "operator")

    async def fragment():
        status, html, _ = await operator.get("/ui/installer/ports")
        assert status == 200
        return html if "What looks wrong:" in html else None
    html = await running.wait_for(fragment, timeout=30, interval=0.5)
    assert "no data at all" in html and 'data-state="stalled"' in html  # the reader's own hint, on the page
    await operator.close()


# --- the pages' route table (agent/web/__init__.py's PAGES): the router and the role check come from it ---------------
async def test_the_pages_routes_are_the_table_and_its_roles_are_checked(device):
    from agent.web import PAGES as TABLE
    from agent.web.render import PREFIX

    running, _, _, household_id, _, client = device
    mounted = {(route.method, resource.canonical) for resource in running.agent._runner.app.router.resources()
               for route in resource if route.method != "HEAD" and resource.canonical.startswith(PREFIX)
               and not resource.canonical.startswith(PREFIX + "/static")}
    assert mounted == {(row.method, PREFIX + row.path) for row in TABLE}  # no page added by hand, none missing
    household, operator, nobody = await client(), await client("operator", "operator"), Browserless(running.base)
    try:
        for row in TABLE:
            path = PREFIX + re.sub(r"\{\w+\}", "x", row.path)
            for role, browser in (("household", household), ("operator", operator), (None, nobody)):
                if not row.roles or role in row.roles and not row.form:
                    continue  # the handler's answer (a live stream would not end)
                if row.method == "GET":
                    status, _, _ = await browser.get(path)
                else:
                    status, _, _ = await browser.post(path, {}, csrf="")
                if role is None:
                    assert status == (303 if row.method == "GET" and not path.endswith(("/live", ".json"))
                                      else 401), (row, status)
                elif role not in row.roles:
                    assert status == 403, (row, role, status)
                elif row.form:
                    assert status == 403, (row, role, status)  # no CSRF token: refused before the handler
    finally:
        await nobody.close()
