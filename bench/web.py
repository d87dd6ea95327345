"""The web pages' cost, beside the bare API on the same data, in one run of one agent (its own process).

1. Render: a household's "My data" and "Who may use my data" pages and the installer's page, against the API's
   JSON for the same facts (GET /households/me/consents, GET /health with the operator token): ms per request.
2. Live pages: 100 households each with a live page open (server-sent events, in a separate process); one reading
   per household posted: how long until every page has its value, against polling the API for the same value
   (GET /meters/{id}/latest).
3. Ingestion: readings/s through POST /readings (batches of 100) with no page open, then with the 100 live pages
   open and receiving every household's readings. The pages' process shares this machine's cores with the agent
   (on a device they are other people's phones), so the second figure is a bound from below. Prints figures,
   asserts nothing.

Usage: python bench/web.py [seconds_per_ingest_run]
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import TOKEN, Load, operator, start_agent, stop  # noqa: E402

PAGES = 100
RENDERS = 200
BATCH = 100

# The live pages: a process of its own (the load and the pages must not share one event loop), each page a
# signed-in session holding /ui/me/live open. Prints "ready", then one line per event batch: "<page> <t>".
PAGES_SCRIPT = r"""
import asyncio, re, sys, time, aiohttp
base, tokens = sys.argv[1], sys.argv[2:]
async def page(i, token, opened):
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=None)) as s:
        async with s.get(base + "/ui/sign-in") as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
        async with s.post(base + "/ui/sign-in", data={"csrf": csrf, "token": token}) as r:
            assert r.status == 200, r.status
        async with s.get(base + "/ui/me/live") as r:
            opened.append(i)
            if len(opened) == len(tokens):
                print("ready", flush=True)
            async for line in r.content:
                if line.startswith(b"data: {") and b'"321"' in line:  # the fan-out's marker value only
                    print(i, time.time(), flush=True)
async def main():
    opened = []
    await asyncio.gather(*(page(i, t, opened) for i, t in enumerate(tokens)))
asyncio.run(main())
"""


def ms(samples: list[float]) -> str:
    samples = sorted(samples)
    return f"{statistics.median(samples) * 1000:7.2f} {samples[int(len(samples) * 0.99) - 1] * 1000:7.2f}"


async def signed_in(session: aiohttp.ClientSession, base: str, token: str) -> None:
    async with session.get(base + "/ui/sign-in") as r:
        csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
    async with session.post(base + "/ui/sign-in", data={"csrf": csrf, "token": token}) as r:
        assert r.status == 200, r.status


async def timed(session: aiohttp.ClientSession, url: str, headers: dict | None = None) -> list[float]:
    out = []
    for _ in range(RENDERS):
        started = time.perf_counter()
        async with session.get(url, headers=headers) as r:
            await r.read()
            assert r.status == 200, (url, r.status)
        out.append(time.perf_counter() - started)
    return out


async def renders(base: str, token: str) -> dict[str, list[float]]:
    auth = {"Authorization": f"Bearer {token}"}
    op = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as household, \
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as installer:
        await signed_in(household, base, token)
        await signed_in(installer, base, TOKEN)
        return {"page  /ui/me (my data)": await timed(household, base + "/ui/me"),
                "page  /ui/me/consents": await timed(household, base + "/ui/me/consents"),
                "API   GET /households/me/consents": await timed(household, base + "/households/me/consents", auth),
                "page  /ui/installer": await timed(installer, base + "/ui/installer"),
                "API   GET /health (operator)": await timed(installer, base + "/health", op)}


async def post_one_each(base: str, tokens: list[str]) -> list[float]:
    """One reading per household, all at once; when each POST was answered (time.time(), by household)."""
    async with aiohttp.ClientSession() as session:
        async def post(token):
            body = {"timestamp": time.time(), "power_import_w": 321.0}
            async with session.post(base + "/readings", json=body, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 201, await r.text()
            return time.time()
        return list(await asyncio.gather(*(post(t) for t in tokens)))


async def poll_latest(base: str, meters: list[str]) -> list[float]:
    async with aiohttp.ClientSession() as session:
        out = []
        for meter in meters:
            started = time.perf_counter()
            async with session.get(f"{base}/meters/{meter}/latest", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                await r.read()
            out.append(time.perf_counter() - started)
        return out


def read_until(proc: subprocess.Popen, count: int) -> dict[int, float]:
    """When each page got the next marker reading (time.time(), by page = household)."""
    arrivals: dict[int, float] = {}
    while len(arrivals) < count:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the live pages' process ended")
        page, at = line.split()
        arrivals.setdefault(int(page), float(at))
    return arrivals


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest(port: int, agent_pid: int, tokens: list[str], seconds: float) -> tuple[float, float, int]:
    """(readings/s, the agent's CPU microseconds per reading, errors) of one run."""
    load = Load(port, tokens, BATCH)
    load.clock = {t: time.time() for t in tokens}  # after each household's latest reading
    cpu = cpu_seconds(agent_pid)
    elapsed = asyncio.run(load.run(seconds))
    cpu = cpu_seconds(agent_pid) - cpu  # includes the half-second warm-up: a small overestimate in both runs
    return load.readings / elapsed, cpu / max(1, load.readings) * 1e6, load.errors


def open_pages(base: str, tokens: list[str]) -> subprocess.Popen:
    pages = subprocess.Popen([sys.executable, "-c", PAGES_SCRIPT, base, *tokens], stdout=subprocess.PIPE, text=True)
    while pages.stdout.readline().strip() != "ready":
        pass
    time.sleep(0.5)
    return pages


def close_pages(pages: subprocess.Popen) -> None:
    pages.terminate()
    pages.wait(10)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    runs: dict[str, list[tuple[float, float, int]]] = {"none": [], "pages": []}
    with tempfile.TemporaryDirectory() as tmp:
        agent, port = start_agent(Path(tmp))
        base = f"http://127.0.0.1:{port}"
        try:
            made = [operator(port, "/households", {}) for _ in range(PAGES)]
            tokens, meters = [h["token"] for h in made], [h["meter_id"] for h in made]
            asyncio.run(post_one_each(base, tokens))  # every household has a latest value
            render = asyncio.run(renders(base, tokens[0]))
            api_poll = asyncio.run(poll_latest(base, meters))
            fanout = []
            for attempt in range(2):  # alternated: the machine is shared and its load drifts
                runs["none"].append(ingest(port, agent.pid, tokens, seconds))
                pages = open_pages(base, tokens)
                try:
                    if attempt == 0:
                        for _ in range(5):
                            answered = asyncio.run(post_one_each(base, tokens))
                            got = read_until(pages, PAGES)
                            fanout.extend(got[i] - answered[i] for i in range(PAGES))
                    runs["pages"].append(ingest(port, agent.pid, tokens, seconds))
                finally:
                    close_pages(pages)
        finally:
            stop(agent)

    print(f"Web pages vs the API, one agent process on 127.0.0.1, {os.cpu_count()} cores")
    print(f"{'render (sequential, ' + str(RENDERS) + ' each)':46} {'p50 ms':>7} {'p99 ms':>7}")
    for name, samples in render.items():
        print(f"{name:46} {ms(samples)}")
    print(f"{'a new value, ' + str(PAGES) + ' households at once':46} {'p50 ms':>7} {'p99 ms':>7}")
    print(f"{'SSE: its POST answered -> its live page has it':46} {ms([max(0.0, f) for f in fanout])}")
    print(f"{'API: GET /meters/{id}/latest, one poll':46} {ms(api_poll)}")
    print(f"ingestion, POST /readings x{BATCH}, {seconds:g} s runs, alternated (readings/s, agent CPU per reading):")
    for name, label in (("none", "no live page"), ("pages", f"{PAGES} live pages")):
        print(f"  {label:16} " + "   ".join(f"{rate:7,.0f}/s {cpu:6.1f} us" for rate, cpu, _ in runs[name])
              + f"   errors {sum(r[2] for r in runs[name])}")
    best = {name: max(r[0] for r in rs) for name, rs in runs.items()}
    cpu = {name: min(r[1] for r in rs) for name, rs in runs.items()}
    print(f"best readings/s with {PAGES} live pages vs none: {best['pages'] / best['none'] - 1:+.1%}; agent CPU per "
          f"reading {cpu['pages'] / cpu['none'] - 1:+.1%} (the pages' process shares this machine's cores)")


if __name__ == "__main__":
    main()
