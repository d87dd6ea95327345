"""`edge-agent demo`: Edge's main job on an embedded default, everything on this machine.

- an emulated meter on a pseudo-terminal, read by the agent like a P1 cable (`drivers.emulator`);
- simulated households whose dataloggers post their own meters' telegrams over HTTP;
- an organization subscribed to 1-second neighbourhood aggregates, with a local webhook receiver
  that checks every signature the way an organization would.
Everything goes through the real API with the real tokens; the demo prints what each party sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from agent.auth import HOUSEHOLD, OPERATOR
from agent.config import parse_config
from agent.delivery import signing
from agent.web import sign_in_url
from drivers.emulator import TelegramGenerator
from drivers.reading import Reading

if TYPE_CHECKING:
    from agent.service import Agent

METER_ID = "demo-meter"


def free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


def start_emulator(profile: str, speed: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "drivers.emulator", "--pty", "--profile", profile,
                             "--speed", str(speed)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise RuntimeError("the meter emulator did not start")
    return proc, line.split()[-1]


def format_reading(reading: Reading) -> str:
    def w(value: float | None) -> str:
        return "   -   " if value is None else f"{value:7.0f}"

    volts = "/".join("-" if v is None else f"{v:.0f}" for v in
                     (reading.voltage_l1_v, reading.voltage_l2_v, reading.voltage_l3_v))
    gas = "-" if reading.gas_m3 is None else f"{reading.gas_m3:.3f} m3"
    return (f"{reading.received_at:%H:%M:%S}  P1 {reading.meter_id}  import {w(reading.power_import_w)} W  "
            f"export {w(reading.power_export_w)} W  tariff {reading.tariff}  V {volts}  gas {gas}")


class WebhookReceiver:
    """The organization's endpoint: verifies each Standard Webhooks signature, prints the aggregate."""

    def __init__(self) -> None:
        self.secret: str | None = None
        self.received = 0
        self.bad = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        if self.secret is None:  # a message before the subscription's answer was read: the agent sends it again
            return web.Response(status=503)
        expected = signing.signature(self.secret, headers.get("webhook-id", ""),
                                     int(headers.get("webhook-timestamp", "0")), body)
        if expected not in headers.get("webhook-signature", "").split(" "):
            self.bad += 1
            return web.Response(status=400)
        self.received += 1
        message = json.loads(body)
        if message["type"] == "aggregate":
            a = message["aggregate"]  # the window's one recorded release (agent/release/)
            print(f"{datetime.now():%H:%M:%S}  webhook #{message['sequence']} (signature ok) to Demo Energy Co: "
                  f"{a['households']} households, consumption {a['consumption_w'] / 1000:.2f} kW, production "
                  f"{a['production_w'] / 1000:.2f} kW, net {a['net_w'] / 1000:+.2f} kW ({a['privacy']['kind']})",
                  flush=True)
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class Neighbourhood:
    """Households without a P1 cable to the device: their dataloggers post raw telegrams, each with its household's
    datalogger token (which posts readings and nothing else)."""

    def __init__(self, count: int):
        self.generators = [TelegramGenerator("dsmr5", seed=1000 + i, pv_peak_w=3500 if i % 3 == 0 else 0)
                           for i in range(count)]
        self.tokens: list[str] = []

    async def post_forever(self, http: aiohttp.ClientSession, base: str) -> None:
        while True:
            tick = time.monotonic()
            now = datetime.now(timezone.utc)
            for generator, token in zip(self.generators, self.tokens):
                async with http.post(f"{base}/readings", data=generator.next_telegram(now),
                                     headers={"Content-Type": "text/plain",
                                              "Authorization": f"Bearer {token}"}) as resp:
                    await resp.read()
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))


async def run_demo(args: argparse.Namespace, serve: Callable[..., Awaitable[None]]) -> None:
    workdir = Path(args.data or tempfile.mkdtemp(prefix="edge-demo-"))
    emulator, pty_path = start_emulator(args.profile, args.speed)
    port = free_port(args.port)
    token = secrets.token_urlsafe(24)
    config = parse_config({
        "device": {"name": "edge-demo"},
        "api": {"listen": f"127.0.0.1:{port}"},
        "auth": {"operator_token": token},
        "storage": {"path": str(workdir / "store"), "flush_seconds": 2},
        "delivery": {"allow_http": True, "allow_private_endpoints": True},  # the receiver is local
        "meters": [{"id": METER_ID, "port": pty_path, "profile": args.profile, "stall_seconds": 10}],
    }, "demo")
    base = f"http://127.0.0.1:{port}"
    receiver = WebhookReceiver()
    neighbourhood = Neighbourhood(args.households)
    tasks: list[asyncio.Task[None]] = []
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    print(f"Edge demo: emulated {args.profile} meter on {pty_path}, {args.households} households posting over "
          f"HTTP, data in {workdir}")
    print(f"API: {base}/health  {base}/docs   (operator token: {token}; /health's detail and /metrics need it)")

    async def call(method: str, path: str, bearer: str, body: object = None) -> dict[str, Any]:
        async with http.request(method, base + path, json=body, headers={"Authorization": f"Bearer {bearer}"}) as r:
            answer: dict[str, Any] = await r.json()
            if r.status >= 400:
                raise RuntimeError(f"{method} {path}: {r.status} {answer}")
            return answer

    async def on_started(agent: Agent, stop: asyncio.Event) -> None:
        last_print = 0.0

        def printer(reading: Reading) -> None:
            nonlocal last_print
            if reading.meter_id == METER_ID and time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                print(format_reading(reading), flush=True)

        agent.pipeline.subscribe(printer)
        await receiver.start()
        org = await call("POST", "/organizations", token, {"name": "Demo Energy Co", "level": "dso"})
        households = [await call("POST", "/households", token, {"meter_id": METER_ID})]
        households += [await call("POST", "/households", token, {}) for _ in range(args.households)]
        for household in households:
            await call("PUT", f"/households/me/consents/{org['id']}/aggregates", household["token"])
        neighbourhood.tokens = [h["datalogger_token"] for h in households[1:]]
        subscription = await call("POST", "/data/subscribe", org["api_key"],
                                  {"endpoint": receiver.url, "interval": 5, "window": "1s"})
        receiver.secret = subscription["secret"]
        print(f"Operator registered {len(households)} households and Demo Energy Co; all consented to "
              f"aggregates (each with its own token; their dataloggers post with datalogger tokens, which can do "
              f"nothing else); Demo Energy Co subscribed: 1-second aggregates every 5 s to {receiver.url}")
        # the device's own pages: each link signs in once (open them in a browser)
        print(f"Web pages: household on the P1 meter "
              f"{sign_in_url(agent, base, HOUSEHOLD, households[0]['id'])}\n"
              f"           installer {sign_in_url(agent, base, OPERATOR, 'operator')}", flush=True)
        tasks.append(asyncio.create_task(neighbourhood.post_forever(http, base)))

    async def before_stop(agent: Agent) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with http.get(f"{base}/health") as resp:  # anyone: ok or degraded, nothing else
            public = await resp.json()
        async with http.get(f"{base}/health", headers={"Authorization": f"Bearer {token}"}) as resp:
            health = await resp.json()  # the operator: every meter, readings in, storage
        print(f"GET /health -> {resp.status} {public['status']} (with the operator token: the detail below)")
        for meter_id, m in health["meters"].items():
            print(f"  {meter_id}: {m['state']}, {m['telegrams_ok']} telegrams, {m['crc_errors']} CRC errors, "
                  f"{m['parse_errors']} parse errors, {m['reconnects']} reconnects")
        rows = await call("GET", f"/meters/{METER_ID}/readings?limit=100000", token)
        print(f"GET /meters/{METER_ID}/readings -> {rows['count']} readings kept; "
              f"{health['readings_in']} readings in from the P1 port and HTTP")
        print(f"Webhooks received and verified: {receiver.received} (bad signatures: {receiver.bad})")
        await receiver.stop()
        await http.close()

    try:
        await serve(config, duration=args.duration, on_started=on_started, before_stop=before_stop)
    finally:
        emulator.terminate()
        try:
            emulator.wait(5)
        except subprocess.TimeoutExpired:
            emulator.kill()
