"""The web pages in a real browser: Playwright driving Debian's Chromium (`make system-deps` installs it; browsers
are never downloaded). A household signs in from its link, revokes a consent and sees the next window leave it
out, grants it again, sees its access log grow as an organization reads, reads a notification and watches its
live power arrive by server-sent events; an installer sees a stopped meter turn its port to stalled and back;
every page passes axe-core (no serious or critical violation) at a phone's and a desktop's width, and is
screenshotted into build/web-screenshots/.

One Chromium serves the whole module (launching it is most of a short test's time on a loaded machine): the tests
share its event loop, each has its own browser contexts (cookies) and its own agent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import async_playwright, expect

from agent.config import MeterSpec
from agent.demo import start_emulator
from agent.web import sign_in_url
from agent.web.signin import IDLE_S
from tests import conftest
from tests.helpers.agent import make_config
from tests.helpers.clock import StepClock, T0

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SCREENSHOTS = Path(__file__).parent.parent / "build" / "web-screenshots"
WIDTHS = {"phone": {"width": 375, "height": 740}, "desktop": {"width": 1280, "height": 900}}
QUARTER = 900
WAIT_MS = 30_000  # how long the browser may take to show what the device already did (a wait, not a timing check)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def start_agent():
    """conftest's agents, started on the module's event loop (the browser's); conftest's own fixture untouched."""
    agents = conftest.start_agent.__wrapped__()
    yield await anext(agents)
    with contextlib.suppress(StopAsyncIteration):
        await anext(agents)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium():
    assert os.path.exists(CHROMIUM), "Chromium is missing: `make system-deps` (as root) installs Debian's chromium"
    async with async_playwright() as p:
        # as root (CI containers) Chromium refuses its own sandbox
        browser = await p.chromium.launch(executable_path=CHROMIUM,
                                          args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield browser
        await browser.close()


async def page_in(browser, csp_errors: list | None = None, **context):
    ctx = await browser.new_context(**{"viewport": WIDTHS["desktop"], "locale": "en-GB", **context})
    page = await ctx.new_page()
    page.set_default_timeout(WAIT_MS)
    if csp_errors is not None:
        page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    return page


async def sign_in(page, url: str) -> None:
    await page.goto(url)
    await page.get_by_role("button", name="Sign in to this device").click()
    await page.wait_for_url("**/ui/me")


@pytest_asyncio.fixture(loop_scope="module")
async def neighbourhood(tmp_path, start_agent):
    """12 households, all consenting to a noisy-level organization's aggregates (k_min is 10)."""
    clock = StepClock(T0)
    running = await start_agent(make_config(tmp_path), clock=clock)
    org_id, org_key = await running.create_org("Energy Co", "supplier")
    households = [await running.create_household() for _ in range(12)]
    for _, token in households:
        status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token)
        assert status == 200
    return running, clock, org_id, org_key, households


async def org_reads(running, clock, org_key, to: float) -> dict:
    """The clock moves to `to`; the organization asks for the newest quarter decided."""
    clock.now = to
    status, body = await running.call("GET", "/data?window=15m", token=org_key)
    assert status == 200, body
    return body


async def access_rows(page) -> list[str]:
    await page.goto(page.url.split("/ui/")[0] + "/ui/me/access")
    return await page.locator("#access-log tbody tr td[class^=included]").all_inner_texts()


async def test_a_household_revokes_and_grants_and_sees_who_used_its_data(chromium, neighbourhood):
    running, clock, org_id, org_key, households = neighbourhood
    hour = T0 - 10
    me, _ = households[0]
    csp_errors: list[str] = []
    page = await page_in(chromium, csp_errors)
    first = await org_reads(running, clock, org_key, hour + 2 * QUARTER + 1)  # the quarter from hour + 15 min
    assert first["households"] == 12
    link = sign_in_url(running.agent, running.base, "household", me)
    await sign_in(page, link)
    reused = await page_in(chromium)  # the same link in another browser: refused
    await reused.goto(link)
    await reused.get_by_role("button", name="Sign in to this device").click()
    await expect(reused.get_by_role("alert")).to_contain_text("has been used")
    await reused.context.close()
    assert await access_rows(page) == ["Yes"]
    spent = float(await page.locator("meter#budget").get_attribute("value"))
    assert spent > 0  # the noisy release was charged to this household's ledger

    await page.goto(running.base + "/ui/me/consents")
    await page.get_by_role("button", name="Stop Neighbourhood totals for Energy Co").click()
    await expect(page.get_by_role("button", name="Allow Neighbourhood totals for Energy Co")).to_be_visible()
    assert not running.agent.registry.consent_state(me, org_id, "aggregates")
    left_out = await org_reads(running, clock, org_key, hour + 3 * QUARTER + 1)
    assert left_out["households"] == 11
    assert await access_rows(page) == ["No", "Yes"]  # the log grew, and says it was left out
    assert float(await page.locator("meter#budget").get_attribute("value")) == spent  # and not charged

    await page.goto(running.base + "/ui/me/consents")
    await page.get_by_role("button", name="Allow Neighbourhood totals for Energy Co").click()
    await expect(page.get_by_role("button", name="Stop Neighbourhood totals for Energy Co")).to_be_visible()
    history = page.locator("#history-h + .table-wrap tbody tr")
    await expect(history).to_have_count(3)  # granted (by the API), stopped, allowed: append-only
    # granted during a quarter: that quarter still leaves it out, the next one counts it
    assert (await org_reads(running, clock, org_key, hour + 4 * QUARTER + 1))["households"] == 11
    assert await access_rows(page) == ["No", "No", "Yes"]
    assert (await org_reads(running, clock, org_key, hour + 5 * QUARTER + 1))["households"] == 12
    assert await access_rows(page) == ["Yes", "No", "No", "Yes"]
    assert float(await page.locator("meter#budget").get_attribute("value")) > spent
    assert csp_errors == []
    clock.step(IDLE_S)  # half an hour without a request: the session has expired
    await page.goto(running.base + "/ui/me/consents")
    assert page.url.endswith("/ui/sign-in")


async def test_a_household_reads_a_notification_and_sees_live_power_without_a_reload(chromium, neighbourhood):
    running, clock, org_id, org_key, households = neighbourhood
    me, token = households[0]
    running.agent.triggers.households.deliver({
        "id": "ntf_0123456789abcdef", "household_id": me, "organization_id": org_id, "organization_name": "Energy Co",
        "trigger_id": "trg_0123456789ab", "title": "Cheap power now", "content": "Run the dishwasher until 14:00.",
        "at": clock.now})
    csp_errors: list[str] = []
    page = await page_in(chromium, csp_errors)
    await sign_in(page, sign_in_url(running.agent, running.base, "household", me))
    await page.get_by_role("link", name="Notifications").click()
    await page.get_by_role("link", name="Cheap power now").click()
    await expect(page.locator(".note")).to_have_text("Run the dishwasher until 14:00.")

    await page.get_by_role("link", name="My data", exact=True).click()
    await expect(page.locator(".chart canvas")).to_have_count(2)  # uPlot drew both charts under the CSP
    await page.evaluate("window.edgeMarker = 42")
    live = page.locator("#live-import")
    for i in range(200):  # until the page's event stream is open, each reading may arrive before it
        clock.step(1)
        status, body = await running.call("POST", "/readings", token=token,
                                          json={"timestamp": clock.now, "power_import_w": 1234.0 + i})
        assert status == 201, body
        if (await live.inner_text()).startswith("12"):
            break
        await asyncio.sleep(0.1)
    clock.step(1)
    await running.call("POST", "/readings", token=token, json={"timestamp": clock.now, "power_import_w": 777.0})
    await expect(live).to_have_text("777")
    assert await page.evaluate("window.edgeMarker") == 42  # the same page: no reload
    assert csp_errors == []


async def test_an_installer_sees_a_stopped_meter_stall_and_recover(chromium, tmp_path, start_agent):
    emulator, pty = start_emulator("dsmr5", 1)
    try:
        meter = MeterSpec(meter_id="house-1", port=pty, profile="dsmr5", stall_seconds=2)
        running = await start_agent(make_config(tmp_path, meters=[meter]))
        page = await page_in(chromium)
        await page.goto(sign_in_url(running.agent, running.base, "operator", "operator"))
        await page.get_by_role("button", name="Sign in to this device").click()
        await page.wait_for_url("**/ui/installer")
        state = page.locator("#port-house-1 .state")
        await expect(state).to_have_attribute("data-state", "reading")
        await page.evaluate("window.edgeMarker = 1")
        os.kill(emulator.pid, signal.SIGSTOP)  # the meter stops sending, as with a pulled cable
        await expect(state).to_have_attribute("data-state", "stalled")
        await expect(page.locator("#port-house-1")).to_contain_text("the cable may be pulled out")
        os.kill(emulator.pid, signal.SIGCONT)
        await expect(state).to_have_attribute("data-state", "reading")
        assert await page.evaluate("window.edgeMarker") == 1  # htmx refreshed the table, not the page
        await page.locator("form[action='/ui/installer/households'] button").click()  # the house on this port
        qr = page.locator("#sign-in-qr")
        await expect(qr).to_be_visible()
        assert await qr.evaluate("img => img.complete && img.naturalWidth > 0")  # the CSP lets the QR code show
        # the ports' markup too passes axe (the page-by-page audit below has no P1 port)
        audited = await signed_in_page(chromium, running, "operator", "operator", WIDTHS["phone"])
        await expect(audited.locator("#port-house-1 .state")).to_have_attribute("data-state", "reading")
        assert await axe_violations(audited) == []
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await audited.screenshot(path=str(SCREENSHOTS / "installer-with-port-phone.png"), full_page=True)
    finally:
        os.kill(emulator.pid, signal.SIGCONT)
        emulator.terminate()
        emulator.wait(10)


async def axe_violations(page) -> list[dict]:
    if not await page.evaluate("typeof window.axe !== 'undefined'"):  # once per page loaded
        await page.add_script_tag(path=str(AXE))
    result = await page.evaluate(
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']},"
        " resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


async def signed_in_page(browser, running, role: str, subject: str, viewport: dict):
    # axe is injected as a script: only these contexts let it past the pages' CSP
    page = await page_in(browser, viewport=viewport, bypass_csp=True)
    await page.goto(sign_in_url(running.agent, running.base, role, subject))
    await page.locator("form[action='/ui/link'] button").click()
    await page.wait_for_url("**/ui/me" if role == "household" else "**/ui/installer")
    return page


async def audit_pages(browser, running, household_id: str) -> dict:
    """axe-core on every page at both widths (the page loaded once, then resized), each screenshotted:
    {page/width: serious or critical violations}."""
    household = await signed_in_page(browser, running, "household", household_id, WIDTHS["desktop"])
    operator = await signed_in_page(browser, running, "operator", "operator", WIDTHS["desktop"])
    base = running.base
    visits = [(household, "sign-in", base + "/ui/sign-in", None),
              (household, "link", sign_in_url(running.agent, base, "household", household_id), None),
              (household, "my-data", base + "/ui/me", ".chart canvas"),
              (household, "consents", base + "/ui/me/consents", None),
              (household, "access", base + "/ui/me/access", None),
              (household, "notifications", base + "/ui/me/notifications", None),
              (household, "notification", base + "/ui/me/notifications/ntf_00000000000000aa", None),
              (household, "devices", base + "/ui/me/devices", None),
              (household, "error", base + "/ui/me/notifications/ntf_none", None),
              (operator, "installer", base + "/ui/installer", None),
              (operator, "new-link", None, "#sign-in-link")]
    failures = {}
    for tab, name, url, ready in visits:
        if url:
            await tab.goto(url)
        else:  # the page shown once, after the form that creates a household
            await tab.locator("form[action='/ui/installer/households'] button").click()
        if ready:
            await tab.locator(ready).first.wait_for()
        for width, viewport in WIDTHS.items():
            await tab.set_viewport_size(viewport)
            violations = await axe_violations(tab)
            if violations:
                failures[f"{name}/{width}"] = violations
            await tab.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
    await household.context.close()
    await operator.context.close()
    return failures


async def test_every_page_passes_axe_at_phone_and_desktop_widths(chromium, neighbourhood):
    """English only: the Dutch pages are the same markup with other words (tests/test_web_signin.py)."""
    running, clock, org_id, org_key, households = neighbourhood
    me, token = households[0]
    await org_reads(running, clock, org_key, T0 - 10 + 2 * QUARTER + 1)  # one row in the access log
    running.agent.triggers.households.deliver({
        "id": "ntf_00000000000000aa", "household_id": me, "organization_id": org_id, "organization_name": "Energy Co",
        "trigger_id": "trg_0123456789ab", "title": "Cheap power now", "content": "Run the dishwasher.",
        "at": clock.now})
    for i in range(3):
        clock.step(1)
        await running.call("POST", "/readings", token=token, json={"timestamp": clock.now, "power_import_w": 500.0,
                                                                   "gas_m3": 100.0 + i})
    # an endpoint and an appliance: their test buttons are on the devices page too
    assert (await running.call("PUT", "/households/me/notify", token=token,
                               json={"url": "https://example.com/notify"}))[0] == 200
    assert (await running.call("POST", "/households/me/appliances", token=token, json={
        "name": "Boiler", "driver": "shelly", "address": "http://192.168.1.20"}))[0] == 201
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert await audit_pages(chromium, running, me) == {}
