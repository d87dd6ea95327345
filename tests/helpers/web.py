"""What the web-page tests share: a cookie-keeping HTTP client that fills in the forms' CSRF field."""

from __future__ import annotations

import re

import aiohttp

from agent.web import sign_in_url

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page has no form with a CSRF field"
    return found.group(1)


class Browserless:
    """One browser's cookies, over plain HTTP (no JavaScript: what every form must work with)."""

    def __init__(self, base: str, language: str = "en"):
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                          headers={"Accept-Language": language},
                                          timeout=aiohttp.ClientTimeout(total=10))
        self.last_html = ""

    async def get(self, path: str, **kwargs):
        async with self.http.get(self.base + path, allow_redirects=False, **kwargs) as resp:
            self.last_html = await resp.text()
            return resp.status, self.last_html, resp.headers

    async def post(self, path: str, data: dict, csrf: str | None = None, **kwargs):
        """A form POST; its csrf field from the last page fetched unless given (None leaves it out: pass "")."""
        fields = dict(data)
        token = csrf_of(self.last_html) if csrf is None else csrf
        if token:
            fields["csrf"] = token
        async with self.http.post(self.base + path, data=fields, allow_redirects=False, **kwargs) as resp:
            self.last_html = await resp.text()
            return resp.status, self.last_html, resp.headers

    async def sign_in_with(self, url: str):
        """Open a one-time link and press its button, as a household would."""
        path = url.removeprefix(self.base)
        status, html, _ = await self.get(path)
        assert status == 200, html
        return await self.post("/ui/link", {"code": path.rsplit("/", 1)[1]})

    async def close(self) -> None:
        await self.http.close()


async def signed_in(running, role: str, subject: str, language: str = "en") -> Browserless:
    client = Browserless(running.base, language)
    status, _, headers = await client.sign_in_with(sign_in_url(running.agent, running.base, role, subject))
    assert status == 303, status
    return client


async def sign_in_with_token(running, token: str) -> Browserless:
    """A browser signed in on the sign-in page with a household's token (as a household would, by hand)."""
    browser = Browserless(running.base)
    await browser.get("/ui/sign-in")
    status, html, _ = await browser.post("/ui/sign-in", {"token": token})
    assert status == 303, html
    return browser


ROW = re.compile(r'<td class="included-(\w+)">.*?</td>\s*<td class="rho">(.*?)</td>', re.S)


async def access_rows(running, household_id: str, path: str = "/ui/me/access") -> tuple[list[tuple[str, str]], str]:
    browser = await signed_in(running, "household", household_id)
    status, html, _ = await browser.get(path)
    await browser.close()
    assert status == 200, html
    return ROW.findall(html), html
