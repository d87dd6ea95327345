"""Red team 9, R9b-5: households' notifications shared one cookie jar.

Every household's notification goes out through one aiohttp session (agent/triggers/runner.py `_households_web`,
made by agent/triggers/actions.py `web_session`), and an aiohttp session keeps the cookies its answers set and sends
them with every later request to that host. So when two households' endpoints are on one service (a push service,
a webhook relay, a home-automation cloud: the usual places), a cookie the service set in its answer to one
household's notification (its session or account cookie there, or a per-request one) went out with the other
household's next notification, in a header that household's endpoint reads. What the spy learns: the target's
cookie itself, and, from a cookie that changes with each request, whether the target was notified since the spy's
last notification, i.e. whether the target's condition held (no consent of the target's says anything of this).

Request sequence (this test): target and spy consent to an organization's `triggers`; each sets its notification
endpoint on one service (`http://localhost:<port>/target`, `/spy`); the service answers the target's notification
with `Set-Cookie: account=<the target's>`; the organization's household condition `power > 1000` (a notification:
no event consent needed) notifies both. Measured on main at 7302dcf, before the fix: the spy's endpoint received
`Cookie: account=target-secret` with its second notification.

Fix (one line, done with this test): the sessions that send to endpoints and appliances keep no cookies
(`cookie_jar=aiohttp.DummyCookieJar()` in `web_session` and `lan_session`). The subscriptions' session
(agent/delivery/engine.py `start`) is shared by every organization the same way (an organization's cookie to another
organization on one host); changed alike.
"""

from __future__ import annotations

from aiohttp import web

from tests.helpers.triggers import body, town  # noqa: F401  (fixture)


class SharedService:
    """A push service both households use: it sets the target's account cookie, and shows the spy what its own
    requests carried (as a webhook relay's request log does)."""

    def __init__(self):
        self.spy_cookies: list[str] = []
        self.answered_target = 0
        self.runner: web.AppRunner | None = None

    async def target(self, request: web.Request) -> web.Response:
        await request.read()
        response = web.Response(status=204)
        response.set_cookie("account", "target-secret")
        self.answered_target += 1
        return response

    async def spy(self, request: web.Request) -> web.Response:
        await request.read()
        self.spy_cookies.append(request.headers.get("Cookie", ""))
        return web.Response(status=204)

    async def start(self) -> int:
        app = web.Application()
        app.router.add_post("/target", self.target)
        app.router.add_post("/spy", self.spy)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return self.runner.addresses[0][1]


async def test_no_household_gets_a_cookie_of_anothers_notification(town):  # noqa: F811
    t = await town(2)
    (_, target), (_, spy) = t.households
    service = SharedService()
    port = await service.start()
    try:
        for token, path in ((target, "target"), (spy, "spy")):
            status, out = await t.running.call("PUT", "/households/me/notify", token=token,
                                               json={"url": f"http://localhost:{port}/{path}", "kind": "ntfy"})
            assert status == 200, out
        status, out = await t.create(body(
            ["household_power_consumption"],
            "def condition(household_power_consumption):\n    return household_power_consumption > 1000\n",
            interval=60, action={"type": "notification", "content": "high"}))
        assert status == 201, out
        for _ in range(3):
            await t.window(values=[{"power_import_w": 2000.0}, {"power_import_w": 2000.0}])
            t.clock.step(60)
        print(f"the Cookie headers of the spy's notifications: {service.spy_cookies}")
        # the attack needs the target answered once and the spy notified after (a loaded machine may lose one)
        assert service.answered_target and len(service.spy_cookies) >= 2, (service.answered_target,
                                                                             service.spy_cookies)
        assert not any("target-secret" in c for c in service.spy_cookies), (
            f"the spy's notifications carried the target's cookie: {service.spy_cookies}")
    finally:
        await service.runner.cleanup()
