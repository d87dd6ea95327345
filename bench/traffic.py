"""Bytes sent upstream in one simulated hour for 100 households, Edge beside forwarding every raw
telegram as DSMR-reader's remote datalogger does; and the latency from a telegram's arrival at the
device to the receiver's 2xx, on loopback. Prints figures, asserts nothing.

Bytes are counted on the wire by a raw TCP receiver (request line, headers and body) for both.
- Baseline: real emulated DSMR 5 telegrams POSTed as form field `telegram` with `Authorization: Token`,
  one request per telegram per household per second (a sample is sent and scaled to the hour).
- Edge: the agent on a stepped clock, 100 households at 1 Hz for 3,600 simulated seconds, one
  subscription on 1-minute windows: without a filter, and with a 5% deadband on consumption.
Latency: the agent on the real clock, 10 households posting raw telegrams once a second for
`seconds`, a subscription on 1-second windows; latency = receiver's time - the telegram's arrival.

Usage: python bench/traffic.py [latency_seconds]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp

from agent.config import Config, DeliveryConfig, PrivacyConfig, StorageConfig
from agent.service import Agent
from drivers.emulator import TelegramGenerator
from drivers.profiles import get_profile
from drivers.telegram import TelegramDecoder

HOUSEHOLDS = 100
HOUR = 3600
TOKEN = "bench-operator-token-0123456789"


class ByteCounter(asyncio.Protocol):
    """Counts every byte of every HTTP request and answers each with 204; records arrival times."""

    total = 0
    requests = 0
    arrivals: list[float] = []

    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes):
        ByteCounter.total += len(data)
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            ByteCounter.requests += 1
            ByteCounter.arrivals.append(time.time())
            self.transport.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    @classmethod
    def reset(cls):
        cls.total = cls.requests = 0
        cls.arrivals = []


async def counter_server() -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.get_running_loop().create_server(ByteCounter, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def baseline_bytes(port: int, sample: int = 1000) -> tuple[float, int]:
    """DSMR-reader's datalogger: one form POST per telegram. Returns bytes per telegram on the wire."""
    generator = TelegramGenerator("dsmr5", seed=1)
    start = datetime(2026, 6, 1, 10, tzinfo=timezone.utc)
    telegrams = [generator.next_telegram(start + timedelta(seconds=i)).decode("ascii") for i in range(sample)]
    ByteCounter.reset()
    async with aiohttp.ClientSession() as http:
        for telegram in telegrams:
            async with http.post(f"http://127.0.0.1:{port}/api/v1/datalogger/dsmrreading",
                                 data={"telegram": telegram}, headers={"Authorization": "Token " + "k" * 40}) as r:
                await r.read()
    return ByteCounter.total / sample, ByteCounter.requests


def household_minutes(households: int, minutes: int, start: datetime):
    """Per household, one decoded reading of an emulated DSMR 5 meter per simulated minute."""
    decoder = TelegramDecoder("x", get_profile("dsmr5"))
    series = []
    for h in range(households):
        generator = TelegramGenerator("dsmr5", seed=100 + h, pv_peak_w=3000 if h % 3 == 0 else 0)
        series.append([decoder.decode(generator.next_telegram(start + timedelta(minutes=m)).decode("ascii"), start)
                       for m in range(minutes)])
    return series


async def edge_hour(tmp: Path, port: int, filter_spec: dict | None, series) -> tuple[int, int]:
    clock_now = [series[0][0].received_at.timestamp()]
    config = Config(operator_token=TOKEN, listen_host="127.0.0.1", listen_port=0,
                    storage=StorageConfig(path=tmp, flush_seconds=5), privacy=PrivacyConfig(k_min=10),
                    delivery=DeliveryConfig(allow_http=True, allow_private_endpoints=True))
    agent = Agent(config, clock=lambda: clock_now[0])
    await agent.start()
    try:
        org, _ = agent.registry.create_organization("Energy Co", "dso")
        meters = []
        for _ in range(HOUSEHOLDS):
            household, _, _ = agent.registry.create_household(None, "http")
            agent.registry.set_consent(household.id, org.id, "aggregates", True)
            meters.append(household.meter_id)
        clock_now[0] += 1
        agent.delivery.subscribe(org.id, f"http://127.0.0.1:{port}/hook", 60, "1m", None, filter_spec)
        ByteCounter.reset()
        start = clock_now[0]
        for second in range(HOUR):
            now = datetime.fromtimestamp(start + second, timezone.utc)
            for h, meter in enumerate(meters):
                base = series[h][second // 60]
                agent.pipeline.ingest(replace(base, meter_id=meter, timestamp=now, received_at=now))
            clock_now[0] = start + second + 1
            await agent.releases.settle()  # decides the second that ended; delivery's producer runs from it
            if second % 300 == 0:
                await asyncio.to_thread(agent.store.flush)
        await asyncio.sleep(0.5)
        deadline = time.monotonic() + 30
        while any(o.depth for o in agent.delivery.outboxes.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return ByteCounter.total, ByteCounter.requests
    finally:
        await agent.stop()


async def latency(tmp: Path, port: int, seconds: float) -> tuple[list[float], list[float]]:
    config = Config(operator_token=TOKEN, listen_host="127.0.0.1", listen_port=0,
                    storage=StorageConfig(path=tmp, flush_seconds=5), privacy=PrivacyConfig(k_min=10),
                    delivery=DeliveryConfig(allow_http=True, allow_private_endpoints=True))
    agent = Agent(config)
    await agent.start()
    generators = [TelegramGenerator("dsmr5", seed=500 + h) for h in range(10)]
    arrivals: list[tuple[float, str]] = []  # (arrival time, window start)
    try:
        org, _ = agent.registry.create_organization("Energy Co", "dso")
        tokens = []
        for _ in range(10):
            household, token, _ = agent.registry.create_household(None, "http")
            agent.registry.set_consent(household.id, org.id, "aggregates", True)
            tokens.append(token)
        await asyncio.sleep(1.01)  # consent held for whole windows from the next one on
        agent.delivery.subscribe(org.id, f"http://127.0.0.1:{port}/hook", 1, "1s", None, None)
        ByteCounter.reset()
        base = f"http://127.0.0.1:{agent.port}/readings"
        async with aiohttp.ClientSession() as http:
            until = time.monotonic() + seconds
            second = int(time.time()) + 1
            while time.monotonic() < until:
                # one telegram per household per whole second, stamped with that second: a telegram's time has
                # whole seconds, and a sleep that wakes a little early would stamp two with the same one
                await asyncio.sleep(max(0.0, second + 0.01 - time.time()))
                moment = datetime.fromtimestamp(second, timezone.utc)
                second = max(second + 1, int(time.time()) + 1)
                for generator, token in zip(generators, tokens):
                    telegram = generator.next_telegram(moment)
                    async with http.post(base, data=telegram, headers={"Content-Type": "text/plain",
                                                                       "Authorization": f"Bearer {token}"}) as r:
                        assert r.status == 201, await r.text()
                    arrivals.append(time.time())
        await asyncio.sleep(2)
    finally:
        await agent.stop()
    delivered = sorted(ByteCounter.arrivals)
    total, after_close = [], []
    for arrived in arrivals:
        window_end = int(arrived) + 1
        first = next((t for t in delivered if t >= window_end), None)
        if first is not None:
            total.append(first - arrived)
            after_close.append(first - window_end)
    return total, after_close


async def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
    server, port = await counter_server()
    per_telegram, _ = await baseline_bytes(port)
    baseline = per_telegram * HOUSEHOLDS * HOUR
    series = await asyncio.to_thread(household_minutes, HOUSEHOLDS, HOUR // 60 + 1,
                                     datetime(2026, 6, 1, 17, tzinfo=timezone.utc))
    with tempfile.TemporaryDirectory() as tmp:
        plain = await edge_hour(Path(tmp) / "plain", port, None, series)
        deadband = await edge_hour(Path(tmp) / "deadband", port,
                                   {"deadband": {"fields": ["consumption_w"], "percent": 5}}, series)
        delays = await latency(Path(tmp) / "latency", port, seconds)
    server.close()
    print(f"Upstream bytes in one simulated hour, {HOUSEHOLDS} households at 1 telegram/s (bytes on the wire)")
    print(f"  raw telegrams, DSMR-reader datalogger style: {baseline / 1e6:10.1f} MB "
          f"({per_telegram:.0f} B per telegram, {HOUSEHOLDS * HOUR} requests)")
    print(f"  Edge, 1-minute aggregates:                  {plain[0] / 1e3:10.1f} kB ({plain[1]} webhooks)"
          f"   {baseline / max(plain[0], 1):,.0f}x fewer bytes")
    print(f"  Edge, 1-minute aggregates, 5% deadband:     {deadband[0] / 1e3:10.1f} kB ({deadband[1]} webhooks)"
          f"   {baseline / max(deadband[0], 1):,.0f}x fewer bytes   (target >= 100x)")
    total, after_close = delays
    for label, values in (("telegram arrival -> receiver's 2xx", total),
                          ("window close -> receiver's 2xx   ", after_close)):
        if values:
            values.sort()
            p50 = statistics.median(values)
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            print(f"Latency, 1-second windows, {label}: p50 {p50 * 1000:5.0f} ms, p99 {p99 * 1000:5.0f} ms "
                  f"({len(values)} telegrams)")
    print("  (arrival -> 2xx includes waiting for the window to close: up to 1 s by design)")


if __name__ == "__main__":
    asyncio.run(main())
