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
4. `--agents` real `edge-agent run` processes with households posting readings, publishing 1-minute releases
   (and 15-minute ones with --long): the lag from the window's end on the device to the hub having applied it.

    PYTHONPATH=. .venv/bin/python bench/fleet.py [--devices 1000] [--minutes 3] [--agents 2] [--long]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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


async def main(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="edge-fleet-bench-"))
    cluster = natsdev.Cluster(tmp / "nats")
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
        print(f"baseline raw JetStream: publish (ack each, 100 publishers) {pub:,.0f} msg/s; pull consume (ack "
              f"each) {con:,.0f} msg/s")

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


async def real_agents(args, tmp, cluster, key, names, hub_port, api_key, agents) -> None:
    ports = natsdev.free_ports(len(names))
    servers = ", ".join(f'"{u}"' for u in cluster.urls)
    windows = '["1m", "15m"]' if args.long else '["1m"]'
    for name, port in zip(names, ports):
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
    width = 900 if args.long else 60
    target = (int(time.time()) // width + 2) * width  # the first whole window after the households joined
    print(f"real agents: {len(names)} running; posting readings until the {width // 60}-minute window starting "
          f"{datetime.fromtimestamp(target, timezone.utc):%H:%M:%S} UTC has ended ...")
    while time.time() < target + width + 2:
        now = datetime.now(timezone.utc).isoformat()
        for port, household_tokens in tokens.items():
            for i, token in enumerate(household_tokens):
                request = urllib.request.Request(f"http://127.0.0.1:{port}/readings", method="POST",
                                                 data=json.dumps({"timestamp": now,
                                                                  "power_import_w": 300.0 + 100 * i}).encode(),
                                                 headers={"Authorization": f"Bearer {token}",
                                                          "Content-Type": "application/json"})
                try:
                    urllib.request.urlopen(request).read()
                except OSError:
                    pass
        await asyncio.sleep(1.0)
    while True:
        status, body = get(f"http://127.0.0.1:{hub_port}/areas/area-agents/data?window=1m&since={target}"
                           f"&until={target + 60}", api_key)
        if status == 200 and body["released"] and body["released"][0]["complete"]:
            break
        if time.time() > target + width + 120:
            print("real agents: the window did not reach the hub in time (see the agents' logs)")
            return
        await asyncio.sleep(0.1)
    window = body["released"][0]
    print(f"real agents: their first minute at the hub {time.time() - (target + 60):.2f} s after it ended on the "
          f"devices (the device decides it after its end, flushes, publishes; the hub applies): "
          f"{window['devices']} devices, {window['households']} households, {window['consumption_w']} W")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=3, help="backlog minutes per device")
    parser.add_argument("--live", type=int, default=3, help="live minutes, compressed")
    parser.add_argument("--minute-s", type=float, default=5.0, help="seconds per compressed live minute")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--long", action="store_true", help="real agents also publish 15-minute windows and "
                                                            "the bench waits for one (about 17 minutes)")
    asyncio.run(main(parser.parse_args()))
