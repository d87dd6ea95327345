"""The fleet at scale, on a real three-node nats-server cluster on loopback (hub/natsdev.py) and a real
`edge-hub serve` process.

1. Baseline, same run: the raw JetStream rate on this cluster: messages of the same size published one at a
   time with an acknowledgement each (as a device's outbox does) from many publishers at once, and consumed by
   a pull consumer with acknowledgements.
2. 1,000 simulated devices (light publishers, not full agents: the fleet link's message format, Nats-Msg-Id,
   expected last subject sequence, one message in flight per device), in 20 areas of 50, each sending a
   realistic 1-minute release: the custodian's sum and its 15 channel tags (16 records). First a backlog of
   `--minutes` minutes (a whole fleet back after an outage): the hub's throughput draining it. Then live
   minutes, compressed (`--minute-s` seconds each): the end-to-end lag from a device's publish to the area's
   window being served complete by the hub's API, and the hub's memory.
3. One simulated device offline for an hour: its 60 one-minute windows sent when it comes back, in order.
4. `--agents` real `edge-agent run` processes in one area with households posting readings, publishing their
   1-second and 1-minute releases for `--agent-minutes` minutes (the level's two finest widths stand in for 1
   and 15 minutes: the same path, a derived wider window after its fine ones), and with --long also one
   15-minute window (up to 30 minutes): from each window's end on the devices to the hub serving its area window
   complete (both devices' parts), beside the raw JetStream publish-to-consume latency of one message.

    PYTHONPATH=. .venv/bin/python bench/fleet.py [--devices 1000] [--minutes 3] [--agents 2] [--agent-minutes 2]
                                                 [--long]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

from agent.fleet import RELEASES_STREAM, document, releases_subject  # noqa: E402
from agent.fleet.document import FLEET_KEY  # noqa: E402
from agent.fleet.link import message, records_of  # noqa: E402
from agent.release.records import fine_body  # noqa: E402
from hub import natsdev  # noqa: E402
from hub.operator import Operator  # noqa: E402
from hub.setup import ensure  # noqa: E402

TAGS = ("ev", "heat_pump", "fridge", "freezer", "washing_machine", "dryer", "dishwasher", "boiler",
        "air_conditioning", "cooking", "lighting", "battery", "pv_inverter", "pool_pump", "other")
OPERATOR_TOKEN = "bench-operator-token-0123456789"
OFFLINE_OUTBOX = 20  # the offline agent's outbox_max: it fills, the release log holds the rest
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "EDGE_HUB_OPERATOR_TOKEN": OPERATOR_TOKEN}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def get(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except OSError:  # not up yet
        return 0, {}


def minute_records(org: str, start: int, households: int) -> list[dict]:
    answers = {(org, None): fine_body("1m", start, 60, None, households, 400.0 * households, 50.0 * households,
                                      {"kind": "exact"})}
    for tag in TAGS:
        answers[(org, tag)] = fine_body("1m", start, 60, tag, households, 30.0 * households, None, {"kind": "exact"})
    return records_of(answers)


class Device:
    """A light publisher with the fleet link's wire behaviour."""

    def __init__(self, name: str, js):
        self.name, self.js, self.seq, self.stream_seq = name, js, 0, 0

    async def send(self, org: str, start: int) -> float:
        self.seq += 1
        payload = message(self.name, self.seq, "1m", start, 1, minute_records(org, start, 40))
        data = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Nats-Msg-Id": f"{self.name}-{self.seq}", "Edge-Seq": str(self.seq),
                   "Nats-Expected-Last-Subject-Sequence": str(self.stream_seq)}
        while True:
            try:
                ack = await self.js.publish(releases_subject(self.name), data, headers=headers, timeout=10)
                self.stream_seq = ack.seq
                return time.monotonic()
            except nats.errors.TimeoutError:
                continue


async def raw_rate(urls: list[str], size: int, count: int, publishers: int) -> tuple[float, float]:
    """Publish with an ack each from `publishers` at once, then consume with acks: messages per second."""
    conns = [await nats.connect(servers=urls) for _ in range(4)]
    js = conns[0].jetstream()
    from nats.js.api import StreamConfig

    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"], num_replicas=3))
    data = b"x" * size

    async def publisher(i: int):
        pjs = conns[i % len(conns)].jetstream()
        for n in range(count // publishers):
            await pjs.publish(f"raw.{i}", data, headers={"Nats-Msg-Id": f"{i}-{n}"})
    t = time.monotonic()
    await asyncio.gather(*(publisher(i) for i in range(publishers)))
    publish_rate = count / (time.monotonic() - t)
    sub = await js.pull_subscribe("raw.>", durable="raw", stream="RAW")
    t, got = time.monotonic(), 0
    while got < count - count % publishers:
        for msg in await sub.fetch(256, timeout=5):
            await msg.ack()
            got += 1
    consume_rate = got / (time.monotonic() - t)
    await js.delete_stream("RAW")
    for c in conns:
        await c.close()
    return publish_rate, consume_rate


async def raw_latency(urls: list[str], size: int, count: int) -> list[float]:
    """One message at a time: from its publish to a pull consumer already waiting for it having it."""
    nc = await nats.connect(servers=urls)
    js = nc.jetstream()
    from nats.js.api import StreamConfig

    await js.add_stream(StreamConfig(name="RAWLAG", subjects=["rawlag.>"], num_replicas=3))
    sub = await js.pull_subscribe("rawlag.>", durable="rawlag", stream="RAWLAG")
    data, lags = b"x" * size, []
    for n in range(count):
        fetch = asyncio.ensure_future(sub.fetch(1, timeout=10))
        await asyncio.sleep(0.02)  # the pull request is at the server
        t = time.monotonic()
        await js.publish("rawlag.x", data)
        for msg in await fetch:
            await msg.ack()
        lags.append(time.monotonic() - t)
    await js.delete_stream("RAWLAG")
    await nc.close()
    return lags


async def main(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="edge-fleet-bench-"))
    cluster = natsdev.Cluster(tmp / "nats", advertise=False)  # a device behind a cut link finds no other way
    cluster.start()
    hub = None
    agents = []
    try:
        nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1)
        js = nc.jetstream(timeout=10)
        await ensure(js, 3)
        sample = len(json.dumps(message("dev-0000", 1, "1m", 0, 1, minute_records("org_x", 0, 40))))
        print(f"cluster: 3 nats-server {subprocess.run(['nats-server', '--version'], capture_output=True, text=True).stdout.strip()} "
              f"nodes, JetStream R3, file storage; one 1-minute message = {sample} bytes ({len(TAGS) + 1} records)")
        pub, con = await raw_rate(cluster.urls, sample, 6000, 100)
        raw_lag = await raw_latency(cluster.urls, sample, 50)
        print(f"baseline raw JetStream: publish (ack each, 100 publishers) {pub:,.0f} msg/s; pull consume (ack "
              f"each) {con:,.0f} msg/s; one message from publish to a waiting pull consumer: median "
              f"{statistics.median(raw_lag) * 1000:.1f} ms, max {max(raw_lag) * 1000:.1f} ms")

        # --- the fleet: areas, one organization, the hub --------------------------------------------------
        key = document.new_private_key()
        operator = Operator(js, key)
        names = [f"dev-{i:04d}" for i in range(args.devices)]
        agent_names = [f"agent-{i}" for i in range(args.agents)]
        per_area = 50
        areas = {f"area-{a:02d}": names[a * per_area:(a + 1) * per_area] for a in range(len(names) // per_area)}
        areas["area-agents"] = agent_names
        api_key = "edge_org_bench_" + "k" * 30
        import hashlib
        org = {"id": "org_bench", "name": "Bench DSO", "level": "dso", "areas": sorted(areas),
               "key_hash": hashlib.sha256(api_key.encode()).hexdigest()}
        fleet = {"kind": "fleet", "version": 0, "areas": areas, "organizations": [org], "revoked": []}
        await operator.publish(FLEET_KEY, fleet)
        for name in agent_names:
            await operator.publish_device(name)
        hub_port = natsdev.free_ports(1)[0]
        servers = [a for u in cluster.urls for a in ("--servers", u)]

        def start_hub():
            return subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", *servers, "--operator-public-key",
                                     document.public_key_text(key), "--listen", f"127.0.0.1:{hub_port}",
                                     "--min-devices", "2"], env=ENV, cwd=ROOT,
                                    stdout=open(tmp / "hub.log", "ab"), stderr=subprocess.STDOUT)

        conns = [await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1) for _ in range(20)]
        devices = [Device(n, conns[i % len(conns)].jetstream(timeout=10)) for i, n in enumerate(names)]
        base = (int(time.time()) // 60 - args.minutes - 120) * 60

        # --- backlog: every device's minutes queued, then the hub drains them --------------------------
        t = time.monotonic()
        for minute in range(args.minutes):
            await asyncio.gather(*(d.send("org_bench", base + minute * 60) for d in devices))
        backlog = args.devices * args.minutes
        print(f"simulated devices: {args.devices} published {backlog:,} one-minute messages in "
              f"{time.monotonic() - t:.1f} s ({backlog / (time.monotonic() - t):,.0f} msg/s, one in flight per "
              f"device)")
        hub = start_hub()
        t = time.monotonic()
        while True:
            status, health = get(f"http://127.0.0.1:{hub_port}/health")
            if status == 200 and health.get("applied", 0) >= backlog:
                break
            await asyncio.sleep(0.2)
        drain = time.monotonic() - t
        print(f"hub throughput (backlog): {backlog / drain:,.0f} msg/s ({backlog * (len(TAGS) + 1) / drain:,.0f} "
              f"device records/s) with {health['writes'] / drain:,.0f} key-value compare-and-set writes/s "
              f"({health['writes'] / backlog:.2f} per message: a batch writes each area window once); "
              f"{drain:.1f} s for the backlog (hub start included), hub RSS {rss_mb(hub.pid):.0f} MB")

        # --- live minutes: lag from publish to the area window served complete ----------------------------
        lags = []
        for minute in range(args.minutes, args.minutes + args.live):
            start = base + minute * 60
            sent_at = {}

            async def one(d):
                sent_at[d.name] = await d.send("org_bench", start)
            t0 = time.monotonic()
            await asyncio.gather(*(one(d) for d in devices))
            pending = set(areas) - {"area-agents"}
            while pending:
                for area in list(pending):
                    status, body = get(f"http://127.0.0.1:{hub_port}/areas/{area}/data?window=1m&since={start}"
                                       f"&until={start + 60}", api_key)
                    window = (body.get("released") or [{}])[0] if status == 200 else {}
                    if window.get("complete"):
                        now = time.monotonic()
                        lags += [now - sent_at[d] for d in areas[area]]
                        pending.discard(area)
                await asyncio.sleep(0.05)
            spent = time.monotonic() - t0
            await asyncio.sleep(max(0.0, args.minute_s - spent))
        lags.sort()
        print(f"end-to-end lag (device publish -> area window served complete), {args.live} live minutes x "
              f"{args.devices} devices: median {statistics.median(lags):.2f} s, p95 {lags[int(0.95 * len(lags))]:.2f} s, "
              f"max {lags[-1]:.2f} s; hub RSS {rss_mb(hub.pid):.0f} MB, nats-server RSS "
              f"{max(rss_mb(p.pid) for p in cluster.processes if p):.0f} MB (largest node)")

        # --- one device offline for an hour -------------------------------------------------------------
        late = Device("dev-offline", conns[0].jetstream(timeout=10))
        t = time.monotonic()
        for minute in range(60):
            await late.send("org_bench", base + minute * 60)
        while True:
            status, body = get(f"http://127.0.0.1:{hub_port}/devices", OPERATOR_TOKEN)
            entry = next((d for d in body.get("devices", []) if d["device"] == "dev-offline"), None)
            if entry and entry["last_seq"] == 60:
                break
            await asyncio.sleep(0.1)
        print(f"a device back after an hour offline: 60 one-minute windows sent and applied in "
              f"{time.monotonic() - t:.2f} s, in order (gaps {entry['gaps']}, out of order {entry['out_of_order']})")

        # --- real agents --------------------------------------------------------------------------------
        if args.agents:
            await real_agents(args, tmp, cluster, key, agent_names, hub_port, api_key, agents)
        for c in conns:
            await c.close()
        await nc.close()
    finally:
        for process in [hub, *agents]:
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(15)
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


class Link:
    """A device's network link to the cluster: one loopback TCP forwarder per node, which can be cut (every
    connection closed, new ones refused) and restored, while the cluster itself stays up. Its own thread and
    event loop: the bench's blocking HTTP polls never delay what it forwards."""

    def __init__(self, urls: list[str]):
        self.targets = [int(u.rsplit(":", 1)[1]) for u in urls]
        self.ports = natsdev.free_ports(len(self.targets))
        self.servers: list[asyncio.base_events.Server] = []
        self.open: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    async def restore(self) -> None:
        for port, target in zip(self.ports, self.targets):
            async def forward(reader, writer, target=target):
                try:
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
                except OSError:
                    writer.close()
                    return
                self.open |= {writer, up_writer}
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            self.servers.append(await asyncio.start_server(forward, "127.0.0.1", port))

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.open.discard(writer)

    async def cut(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []
        for writer in list(self.open):
            writer.close()
        self.open.clear()


async def real_agents(args, tmp, cluster, key, names, hub_port, api_key, agents) -> None:
    ports = natsdev.free_ports(len(names))
    windows = '["1s", "1m", "15m"]' if args.long else '["1s", "1m"]'
    link = Link(cluster.urls)  # the last agent's: cut for --offline-s
    link.run(link.restore())
    for name, port in zip(names, ports):
        offline = name == names[-1] and args.offline_s > 0
        servers = ", ".join(f'"{u}"' for u in (link.urls if offline else cluster.urls))
        directory = tmp / name
        directory.mkdir()
        (directory / "edge.toml").write_text(f"""
[api]
listen = "127.0.0.1:{port}"
[auth]
operator_token = "{OPERATOR_TOKEN}"
[storage]
path = "{directory / 'store'}"
[privacy]
k_min = 2
[fleet]
enabled = true
device_id = "{name}"
servers = [{servers}]
operator_public_key = "{document.public_key_text(key)}"
windows = {windows}
heartbeat_s = 5
{f"outbox_max = {OFFLINE_OUTBOX}" if offline else ""}
""")
        agents.append(subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config",
                                        str(directory / "edge.toml")], env=ENV, cwd=ROOT,
                                       stdout=open(tmp / f"{name}.log", "ab"), stderr=subprocess.STDOUT))
    tokens = {}
    for name, port in zip(names, ports):
        while True:
            try:
                status, health = get(f"http://127.0.0.1:{port}/health", OPERATOR_TOKEN)
                if "org_bench" in health.get("fleet", {}).get("organizations", []):
                    break
            except OSError:
                pass
            await asyncio.sleep(0.2)
        tokens[port] = []
        for _ in range(3):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/households", data=b"{}", method="POST",
                                             headers={"Authorization": f"Bearer {OPERATOR_TOKEN}",
                                                      "Content-Type": "application/json"})
            body = json.loads(urllib.request.urlopen(request).read())
            request = urllib.request.Request(f"http://127.0.0.1:{port}/households/me/consents/org_bench/aggregates",
                                             method="PUT", headers={"Authorization": f"Bearer {body['token']}"})
            urllib.request.urlopen(request).read()
            tokens[port].append(body["token"])
    stop = threading.Event()

    def feed():  # each household posts a reading every second (a constant power of its own)
        while not stop.is_set():
            now = datetime.now(timezone.utc).isoformat()
            for port, household_tokens in tokens.items():
                for i, token in enumerate(household_tokens):
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{port}/readings", method="POST",
                        data=json.dumps({"timestamp": now, "power_import_w": 300.0 + 100 * i}).encode(),
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
                    try:
                        urllib.request.urlopen(request).read()
                    except OSError:
                        pass
            time.sleep(1.0)
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        if args.offline_s > 0:
            await offline_agent(args, link, names[-1], ports[-1], agents[-1].pid, hub_port, api_key)
        first = (int(time.time()) // 60 + 1) * 60  # the first whole minute after the households joined
        until = first + 60 * args.agent_minutes
        print(f"real agents: {len(names)} running, 3 households each, 1-second and 1-minute releases from "
              f"{datetime.fromtimestamp(first, timezone.utc):%H:%M:%S} UTC for {args.agent_minutes} minute(s) ...")
        lags = await area_lags(hub_port, api_key, {"1s": 1, "1m": 60}, first, until)
        for window, found in lags.items():
            values = sorted(found.values())
            expected = (until - first) // {"1s": 1, "1m": 60}[window]
            if not values:
                print(f"real agents: no {window} window reached the hub complete (see the agents' logs)")
                continue
            print(f"real agents, {window} releases: {len(values)} of {expected} windows served complete by the hub "
                  f"(both devices), from the window's end: median {statistics.median(values):.2f} s, p95 "
                  f"{values[math.ceil(0.95 * len(values)) - 1]:.2f} s, max {values[-1]:.2f} s (the device decides "
                  "it after its end, flushes, publishes; the hub applies)")
        if args.long:
            start = (int(time.time()) // 900 + 1) * 900
            print(f"real agents: waiting for the 15-minute window starting "
                  f"{datetime.fromtimestamp(start, timezone.utc):%H:%M:%S} UTC ...")
            found = (await area_lags(hub_port, api_key, {"15m": 900}, start, start + 900))["15m"]
            print(f"real agents, 15m release: at the hub complete {found.get(start, float('nan')):.2f} s after "
                  "it ended on the devices")
    finally:
        stop.set()


async def offline_agent(args, link: Link, name: str, port: int, pid: int, hub_port: int, api_key: str) -> None:
    """One real agent's link cut for --offline-s seconds while it releases 1-second windows (65 of them are an
    hour's messages at the default widths: 60 + 4 + 1), then restored: what it released offline goes up, in
    order, with a bounded outbox; its memory before, at the end of the outage and after the catch-up."""
    def health():
        return get(f"http://127.0.0.1:{port}/health", OPERATOR_TOKEN)[1].get("fleet", {})
    while not health().get("connected") or health().get("outbox", 1):
        await asyncio.sleep(0.2)
    rss_before = rss_mb(pid)
    link.run(link.cut())
    cut = time.time()
    deepest = 0
    while time.time() < cut + args.offline_s:
        deepest = max(deepest, health().get("outbox", 0))
        await asyncio.sleep(0.5)
    status, data = get(f"http://127.0.0.1:{port}/data?window=1s&since={cut + 1}&until={time.time()}", api_key)
    offline = sorted(int(datetime.fromisoformat(w["window_start"].replace("Z", "+00:00")).timestamp())
                     for w in data.get("released", []))
    rss_offline = rss_mb(pid)
    link.run(link.restore())
    back = time.time()
    while (h := health()).get("outbox", 1) or h.get("cursor", {}).get("1s", 0) < back + 1:
        await asyncio.sleep(0.2)
    published = h["published"]
    while True:
        status, body = get(f"http://127.0.0.1:{hub_port}/devices", OPERATOR_TOKEN)
        entry = next((d for d in body.get("devices", []) if d["device"] == name), None)
        if entry and (entry["last_seq"] or 0) >= published:
            break
        await asyncio.sleep(0.2)
    caught_up = time.time() - back
    at_hub = 0
    for start in offline:
        status, body = get(f"http://127.0.0.1:{hub_port}/areas/area-agents/data?window=1s&since={start}"
                           f"&until={start + 1}", api_key)
        at_hub += bool(status == 200 and body["released"] and body["released"][0]["devices"] == 2)
    print(f"real agent offline (its link cut, the cluster up) {args.offline_s:.0f} s: {len(offline)} one-second "
          f"releases made offline (an hour at the default widths is 65 messages); outbox peaked at {deepest} "
          f"(outbox_max {OFFLINE_OUTBOX}: the rest waited in the release log); all at the hub {caught_up:.1f} s "
          f"after the link returned, {at_hub} of {len(offline)} windows served with both devices' parts; gaps "
          f"{entry['gaps']}, out of order {entry['out_of_order']}; agent RSS {rss_before:.0f} MB before, "
          f"{rss_offline:.0f} MB at the end of the outage, {rss_mb(pid):.0f} MB after")


async def area_lags(hub_port: int, api_key: str, widths: dict[str, int], first: int, until: int
                    ) -> dict[str, dict[int, float]]:
    """{window: {start: seconds from its end until the hub first served it complete}} for windows in
    [first, until), polled every 0.2 s; gives up 120 s after `until`."""
    found: dict[str, dict[int, float]] = {w: {} for w in widths}
    while time.time() < until + 120 and any(len(found[w]) < (until - first) // width for w, width in widths.items()):
        for window, width in widths.items():
            since = max(first, int(time.time()) - 30 * width)
            status, body = get(f"http://127.0.0.1:{hub_port}/areas/area-agents/data?window={window}&since={since}"
                               f"&until={until}", api_key)
            now = time.time()
            for entry in body.get("released", []) if status == 200 else []:
                start = int(datetime.fromisoformat(entry["window_start"].replace("Z", "+00:00")).timestamp())
                if entry.get("complete") and start not in found[window]:
                    found[window][start] = now - (start + width)
        await asyncio.sleep(0.2)
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=3, help="backlog minutes per device")
    parser.add_argument("--live", type=int, default=3, help="live minutes, compressed")
    parser.add_argument("--minute-s", type=float, default=5.0, help="seconds per compressed live minute")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--agent-minutes", type=int, default=2, help="minutes of the real agents' releases")
    parser.add_argument("--offline-s", type=float, default=70.0, help="seconds one real agent's link is cut "
                                                                      "(0: not); 65 one-second releases at least")
    parser.add_argument("--long", action="store_true", help="real agents also publish 15-minute windows and "
                                                            "the bench waits for one (15 to 30 minutes more)")
    asyncio.run(main(parser.parse_args()))
