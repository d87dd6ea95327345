"""The fleet for real: a three-node nats-server cluster with JetStream on loopback, two real `edge-agent run`
processes in one area, a real `edge-hub serve`, the operator's commands as `edge-hub` processes.

While households post readings and 1-second releases flow: kill -9 a NATS node, then a device, then the hub,
then the whole cluster for a while (the devices' outboxes grow, then catch up). Afterwards: every device's
messages are in the stream exactly once and in order (device sequence 1..N); the hub applied each device's
1..N with no gap and nothing out of order; every window a device released (its own /data) is in the hub with
the same numbers, and each area window the hub serves is the sum of its devices' releases. The hub never holds
a household id, token, meter id or one household's reading (checked over everything it stores and serves).
Then desired state through the bucket: a bad signature is refused and shown; an organization registered once
reads from both devices and the hub with one key; a revoked key stops working on both devices and the hub.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

from agent.fleet import RELEASES_STREAM, document
from hub.setup import DEVICES_BUCKET, HUB_BUCKET
from tests.helpers.agent import OPERATOR_TOKEN
from tests.helpers.fleet import DEVICES, ENV, Fleet, POWERS, ROOT, epoch, hub_windows
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    fleet.cluster.start()
    try:
        for device in DEVICES:
            fleet.operator("assign-device", "--device", device, "--area", "north")
        registered = fleet.operator("register-org", "--name", "Grid Co", "--level", "dso", "--area", "north")
        fleet.org, fleet.org_key = registered["organization"]["id"], registered["api_key"]
        for device in DEVICES:
            fleet.start_agent(device)
        for device in DEVICES:
            fleet.consenting_households(device)
        feeder = threading.Thread(target=fleet.feed, daemon=True)
        feeder.start()
        fleet.start_hub()
        fleet.t0 = time.time()
        yield fleet
    finally:
        fleet.stop()


async def stream_contents(fleet: Fleet) -> tuple[dict[str, list[int]], list[bytes]]:
    """Every message of EDGE_RELEASES: device -> Edge-Seq in stream order; and every message's bytes."""
    import nats

    nc = await nats.connect(servers=fleet.cluster.urls)
    js = nc.jetstream()
    info = await js.stream_info(RELEASES_STREAM)
    order: dict[str, list[int]] = {}
    raw = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(RELEASES_STREAM, seq)
        order.setdefault(msg.subject.split(".")[1], []).append(int(msg.headers["Edge-Seq"]))
        raw.append(msg.data)
    stored = {}
    for bucket in (HUB_BUCKET, DEVICES_BUCKET):  # everything the hub keeps
        kv = await js.key_value(bucket)
        stored.update({key: (await kv.get(key)).value for key in await kv.keys()})
    await nc.close()
    return order, raw, stored


async def test_releases_survive_killed_nodes_devices_hub_and_an_outage(fleet):
    wait_until(lambda: len(hub_windows(fleet, fleet.t0, time.time())["released"]) >= 3, 60)

    fleet.cluster.kill(0)  # a NATS node
    time.sleep(2)
    fleet.cluster.start(0)
    fleet.agents["dev-a"].kill9()  # a device
    time.sleep(1)
    fleet.agents["dev-a"].start()
    fleet.hub.kill9()  # the hub
    time.sleep(1)
    fleet.hub.start()
    wait_until(lambda: fleet.health("dev-a").get("connected"), 60)
    for i in range(3):  # the whole cluster: the devices are offline, their outboxes grow
        fleet.cluster.kill(i)
    wait_until(lambda: all(fleet.health(d).get("outbox", 0) >= 3 for d in DEVICES), 60)
    fleet.cluster.start()
    fleet.stop_feeding.set()
    time.sleep(2)  # the last readings' windows are decided

    snapshot = {}

    def drained():  # each device once with its outbox empty: everything up to its cursor has been published
        for device in DEVICES:
            health = fleet.health(device)
            if health.get("outbox") != 0 or not health.get("connected"):
                return False
            snapshot[device] = health
        return True
    wait_until(drained, 90)
    published = {d: snapshot[d]["published"] for d in DEVICES}
    # windows keep being released after the readings stop (silent households are held over): compare those up
    # to the snapshot (GET /data's until is exclusive of the window containing it)
    until = min(snapshot[d]["cursor"]["1s"] for d in DEVICES) + 1

    def hub_caught_up():
        status, body = fleet.hub_api("/devices", OPERATOR_TOKEN)
        return status == 200 and all(d["last_seq"] >= published[d["device"]] and d["health"]
                                     for d in body["devices"] if d["device"] in published)
    wait_until(hub_caught_up, 90)

    order, raw, stored = await stream_contents(fleet)
    for device in DEVICES:  # in the stream once each, in order: 1..N
        assert order[device] == list(range(1, len(order[device]) + 1)), device
        assert len(order[device]) >= published[device]
    status, body = fleet.hub_api("/devices", OPERATOR_TOKEN)
    for entry in body["devices"]:
        assert entry["gaps"] == 0 and entry["out_of_order"] == 0, entry
        assert entry["health"]["device"] == entry["device"] and entry["applied_version"]

    # every window a device released is at the hub with the same numbers; every area window is their sum
    by_device = {}
    for device in DEVICES:
        status, data = fleet.device(device, f"/data?window=1s&since={fleet.t0}&until={until}", fleet.org_key)
        assert status == 200, data
        by_device[device] = {epoch(w["window_start"]): w for w in data["released"]}
        assert len(by_device[device]) >= 5
    for device, windows in by_device.items():
        for start, body in windows.items():
            parts = json.loads(stored[f"w.{fleet.org}.north.1s.{start}._"])["devices"]
            assert device in parts, (device, start)
            part = parts[device]
            assert part["consumption_w"] == body["consumption_w"] and part["households"] == body["households"]
    served = hub_windows(fleet, fleet.t0, until)
    assert served["released"]
    for window in served["released"]:
        start = epoch(window["window_start"])
        parts = [by_device[d][start] for d in DEVICES if start in by_device[d]]
        assert window["devices"] == len(parts) == 2
        assert window["consumption_w"] == pytest.approx(sum(p["consumption_w"] for p in parts), abs=1e-3)
        assert window["households"] == sum(p["households"] for p in parts) == 6
    both = set(by_device["dev-a"]) & set(by_device["dev-b"])
    assert {epoch(w["window_start"]) for w in served["released"]} == both  # none lost at the hub

    # nothing of a household at the hub: not in the stream, its bucket, or anything it serves
    served_text = [json.dumps(fleet.hub_api(p, t)[1]) for p, t in (
        ("/areas", fleet.org_key), ("/devices", OPERATOR_TOKEN), ("/health", None),
        (f"/areas/north/data?window=1s&since={fleet.t0}&until={until}", fleet.org_key))]
    files = [(fleet.tmp / "hub" / "audit.jsonl").read_text(), (fleet.tmp / "hub.log").read_text()]  # its audit, log
    everything = [r.decode() for r in raw] + [f"{k} {v.decode()}" for k, v in stored.items()] + served_text + files
    secrets_of_households = [x for hh in fleet.households.values() for pair in hh for x in pair]
    for device in DEVICES:  # and the meter ids the devices gave them
        secrets_of_households += [h["meter_id"] for h in fleet.device(device, "/households")[1]["households"]]
    assert len(secrets_of_households) == 18
    for text in everything:
        assert not any(s in text for s in secrets_of_households)
        assert "consent" not in text
        numbers = {float(n) for n in re.findall(r"-?\d+\.\d+", text)}
        assert not numbers & set(POWERS.values())  # no single household's reading


async def test_desired_state_through_the_bucket(fleet):
    import nats

    version = fleet.health("dev-a")["desired_version"]
    forged = document.sign({"kind": "device", "device": "dev-a", "version": version + 10 ** 9,
                            "not_after": time.time() + 3600, "organizations": []}, document.new_private_key())
    nc = await nats.connect(servers=fleet.cluster.urls)
    kv = await nc.jetstream().key_value(document.BUCKET)
    await kv.put("dev-a", forged)
    await nc.close()
    wait_until(lambda: (fleet.health("dev-a").get("refused") or {}).get("error") == "bad_signature", 30)
    assert fleet.health("dev-a")["desired_version"] == version
    assert fleet.device("dev-a", "/parameters", fleet.org_key)[0] == 200

    # registered once, for the area: one key works on both devices and at the hub
    registered = fleet.operator("register-org", "--name", "Supplier", "--level", "supplier", "--area", "north")
    key = registered["api_key"]
    for device in DEVICES:
        wait_until(lambda: fleet.device(device, "/parameters", key)[0] == 200, 30)
    wait_until(lambda: fleet.hub_api("/areas", key)[0] == 200, 30)

    # a household marked related to the organization on one device, by the operator's command
    household = fleet.households["dev-a"][0][0]
    fleet.operator("relate", "--device", "dev-a", "--household", household, "--org", registered["organization"]["id"])
    wait_until(lambda: registered["organization"]["id"] in
               fleet.device("dev-a", f"/households/{household}")[1].get("related_organizations", []), 30)

    # the operator's device list
    out = subprocess.run([sys.executable, "-m", "hub.cli", "devices", *fleet.servers(), "--operator-public-key",
                          fleet.public], env=ENV, cwd=ROOT, capture_output=True, timeout=60)
    listed = {d["device"]: d for d in json.loads(out.stdout)}
    assert set(listed) == set(DEVICES) and all(d["area"] == "north" and d["last_seq"] for d in listed.values())

    # revoked: stops working on both devices and at the hub
    fleet.operator("revoke-key", "--org", registered["organization"]["id"])
    for device in DEVICES:  # 401, or 429 once the polling of a bad key is throttled (valid keys never are)
        wait_until(lambda: fleet.device(device, "/parameters", key)[0] in (401, 429), 30)
    wait_until(lambda: fleet.hub_api("/areas", key)[0] == 401, 30)
    assert fleet.device("dev-a", "/parameters", fleet.org_key)[0] == 200  # the other organization is untouched
