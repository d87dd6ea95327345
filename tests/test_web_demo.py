"""The README's first command opens on the pages: the demo prints a household's and the installer's sign-in
links, and each signs a browser in (once)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

from tests.helpers.agent import free_port
from tests.helpers.web import Browserless

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/ui/link/[\w-]+)")


async def test_the_demo_prints_sign_in_links_that_work(tmp_path):
    demo = subprocess.Popen([sys.executable, "-m", "agent.cli", "demo", "--duration", "3", "--households", "3",
                             "--port", str(free_port()), "--data", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while len(lines) < 2:
            line = await asyncio.to_thread(demo.stdout.readline)
            assert line, f"the demo ended without printing its links: {demo.stderr.read()}"
            if "/ui/link/" in line:
                lines.append(line)
        household, installer = (LINK.search(line).group(1) for line in lines)
        assert "household" in lines[0] and "installer" in lines[1]
        base = household.split("/ui/")[0]
        for url, page, words in [(household, "/ui/me", "My data"), (installer, "/ui/installer", "demo-meter")]:
            browser = Browserless(base)
            status, _, headers = await browser.sign_in_with(url)
            assert status == 303 and headers["Location"] == page
            status, html, _ = await browser.get(page)
            assert status == 200 and words in html
            await browser.close()
            again = Browserless(base)
            assert (await again.sign_in_with(url))[0] == 410  # once only
            await again.close()
    finally:
        demo.communicate(timeout=60)
    assert demo.returncode == 0
