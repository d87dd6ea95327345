"""The fleet with NATS credentials, for real: a three-node nats-server cluster on loopback whose authorization
file `edge-hub nats-auth` writes from the operator's signed fleet document (each device's nkey with only its own
subjects), two real `edge-agent run` processes signing in with their nkeys, a real `edge-hub serve`.

- An hour of releases offline: the whole cluster is down while the devices release 1-second windows; it stays
  down until each device has released at least 65 windows, an hour's count at the default widths (60 one-minute,
  4 fifteen-minute and 1 hourly message; the agent's fastest width stands in for the real ones: the count, the
  outbox and the catch-up are the same, the hour is not). The outbox is bounded (`outbox_max` 20: it fills,
  and the rest waits in the release log). When the cluster is back every one of those windows goes up once, in
  order (the stream holds each device's 1..N, window starts increasing), the hub applies them with no gap, each
  window at the hub has the device's own numbers and each area window is their sum.
- A device's nkey may publish only under edge.<device>. and read only its own key of the desired-state bucket:
  the real servers refuse the rest; one message naming another device on its own subject is dropped by the hub;
  an unknown nkey cannot connect.
- Level definitions in the desired state (`edge-hub set-levels`): applied on both devices through the bucket;
  a signed document with an invalid level is refused whole and shown in /health.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest

from agent.fleet import RELEASES_STREAM, desired_subject, document, inbox_prefix, releases_subject
from tests.helpers.agent import OPERATOR_TOKEN
from tests.helpers.fleet import DEVICES, ENV, Fleet, ROOT, epoch, hub_windows
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow
OUTBOX_MAX = 20
AN_HOUR = 60 + 4 + 1  # messages a device sends in an hour at the default widths (1m, 15m, 1h)


def hub_cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "hub.cli", *args], env=ENV, cwd=ROOT, capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return out.stdout.decode()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secured")
    hub_nkey = hub_cli("device-key", "--out", str(tmp / "hub.nk")).strip()  # the hub's and the operator's
    nkeys = {d: hub_cli("device-key", "--out", str(tmp / f"{d}.nk")).strip() for d in DEVICES}
    bootstrap = hub_cli("nats-auth", "--hub-nkey", hub_nkey)  # no fleet document yet: the hub's user alone
    fleet = Fleet(tmp, authorization=bootstrap, nkey_seed=tmp / "hub.nk")
    fleet.hub_nkey, fleet.nkeys = hub_nkey, nkeys
    fleet.cluster.start()
    try:
        for device in DEVICES:
            fleet.operator("assign-device", "--device", device, "--area", "north", "--nkey", nkeys[device])
        registered = fleet.operator("register-org", "--name", "Grid Co", "--level", "dso", "--area", "north")
        fleet.org, fleet.org_key = registered["organization"]["id"], registered["api_key"]
        fleet.cluster.reload(hub_cli("nats-auth", *fleet.servers(), "--operator-public-key", fleet.public,
                                     "--hub-nkey", hub_nkey))
        for device in DEVICES:
            fleet.start_agent(device, f'nkey_seed_file = "{tmp / f"{device}.nk"}"\noutbox_max = {OUTBOX_MAX}\n')
        for device in DEVICES:
            fleet.consenting_households(device)
        threading.Thread(target=fleet.feed, daemon=True).start()
        fleet.start_hub()
        fleet.t0 = time.time()
        yield fleet
    finally:
        fleet.stop()


async def connect(fleet: Fleet, seed: str, device: str | None = None, errors: list | None = None):
    import nats

    async def on_error(err):
        if errors is not None:
            errors.append(str(err))
    options = {"inbox_prefix": inbox_prefix(device)} if device else {}
    return await nats.connect(servers=fleet.cluster.urls, nkeys_seed=str(fleet.tmp / seed), error_cb=on_error,
                              allow_reconnect=False, **options)


async def releases(fleet: Fleet) -> dict[str, list[tuple[int, int, str]]]:
    """device -> [(Edge-Seq, window start, Nats-Msg-Id)] in stream order, read with the hub's identity."""
    nc = await connect(fleet, "hub.nk")
    js = nc.jetstream()
    info = await js.stream_info(RELEASES_STREAM)
    out: dict[str, list[tuple[int, int, str]]] = {}
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(RELEASES_STREAM, seq)
        out.setdefault(msg.subject.split(".")[1], []).append(
            (int(msg.headers["Edge-Seq"]), json.loads(msg.data)["start"], msg.headers["Nats-Msg-Id"]))
    await nc.close()
    return out


async def test_an_hour_of_releases_offline_goes_up_once_in_order_with_a_bounded_outbox(fleet):
    wait_until(lambda: len(hub_windows(fleet, fleet.t0, time.time())["released"]) >= 3, 60)
    cut = int(time.time()) + 1  # the first window wholly after the cut
    for i in range(3):  # the whole cluster: unreachable for both devices
        fleet.cluster.kill(i)
    deepest = {d: 0 for d in DEVICES}

    def an_hour_released_offline():
        done = True
        for device in DEVICES:
            health = fleet.health(device)
            deepest[device] = max(deepest[device], health.get("outbox", 0))
            status, data = fleet.device(device, f"/data?window=1s&since={cut}&until={time.time()}",
                                        fleet.org_key)
            done &= status == 200 and len(data["released"]) >= AN_HOUR
        return done
    wait_until(an_hour_released_offline, 180)
    back = time.time()
    fleet.cluster.start()
    for device in DEVICES:
        wait_until(lambda: fleet.health(device).get("connected"), 60)
    fleet.stop_feeding.set()
    assert deepest == {d: OUTBOX_MAX for d in DEVICES}  # it filled, and never held more: the rest was in the log

    snapshot = {}

    def caught_up():  # the outbox empty, and the release log read past the outage into it
        for device in DEVICES:
            health = fleet.health(device)
            if health.get("outbox") != 0 or health.get("cursor", {}).get("1s", 0) < back + 2:
                return False
            snapshot[device] = health
        return True
    wait_until(caught_up, 120)
    published = {d: snapshot[d]["published"] for d in DEVICES}

    def hub_caught_up():
        status, body = fleet.hub_api("/devices", OPERATOR_TOKEN)
        return status == 200 and all(d["last_seq"] >= published[d["device"]] for d in body["devices"]
                                     if d["device"] in published)
    wait_until(hub_caught_up, 120)

    stream = await releases(fleet)
    for device in DEVICES:  # once each, in order: sequence 1..N, window starts increasing, ids unique
        entries = stream[device]
        assert [seq for seq, _, _ in entries] == list(range(1, len(entries) + 1)), device
        starts = [start for _, start, _ in entries]
        assert starts == sorted(set(starts)), device
        assert len({msg_id for _, _, msg_id in entries}) == len(entries)
    status, body = fleet.hub_api("/devices", OPERATOR_TOKEN)
    for entry in body["devices"]:
        assert entry["gaps"] == 0 and entry["out_of_order"] == 0, entry

    # every window each device released while unreachable went up, with its numbers; the area's are their sum
    until = min(snapshot[d]["cursor"]["1s"] for d in DEVICES) + 1
    offline = {}
    for device in DEVICES:
        status, data = fleet.device(device, f"/data?window=1s&since={cut}&until={back}", fleet.org_key)
        offline[device] = {epoch(w["window_start"]): w for w in data["released"]}
        assert len(offline[device]) >= AN_HOUR
        assert set(offline[device]) <= {start for _, start, _ in stream[device]}
    served = {epoch(w["window_start"]): w for w in hub_windows(fleet, cut, until)["released"]}
    both = set(offline["dev-a"]) & set(offline["dev-b"])
    assert len(both) >= AN_HOUR - 5 and both <= set(served)
    for start in both:
        parts = [offline[d][start] for d in DEVICES]
        assert served[start]["devices"] == 2 and served[start]["households"] == 6
        assert served[start]["consumption_w"] == pytest.approx(sum(p["consumption_w"] for p in parts), abs=1e-3)


async def test_a_device_may_use_only_its_own_subjects(fleet):
    import nats

    errors: list[str] = []
    nc = await connect(fleet, "dev-a.nk", "dev-a", errors)
    js = nc.jetstream(timeout=2)
    own = await js.get_msg("KV_edge_desired", subject=desired_subject("dev-a"), direct=True)
    assert document.verify(own.data, document.public_key_from_text(fleet.public))["device"] == "dev-a"

    forged = json.dumps({"device": "dev-b", "seq": 10 ** 6, "window": "1s", "start": 0, "records": []}).encode()
    with pytest.raises(nats.errors.TimeoutError):  # as another device: refused by the server, never acked
        await js.publish(releases_subject("dev-b"), forged, headers={"Nats-Msg-Id": "forged-1"})
    with pytest.raises(nats.errors.TimeoutError):  # another device's desired state
        await js.get_msg("KV_edge_desired", subject=desired_subject("dev-b"), direct=True)
    with pytest.raises(nats.errors.TimeoutError):  # ... nor by the body form of the message get
        await js.get_msg("KV_edge_desired", subject=desired_subject("dev-b"))
    for subject in (desired_subject("dev-b"), "$KV.edge_desired.>", "_INBOX.>", "edge.*.releases"):
        await nc.subscribe(subject)
    await nc.flush()
    await asyncio.sleep(0.5)
    await nc.close()
    text = "\n".join(errors)
    for subject in (releases_subject("dev-b"), "$js.api.direct.get.kv_edge_desired.$kv.edge_desired.dev-b",
                    "$js.api.stream.msg.get.kv_edge_desired", "subscription to \"$kv.edge_desired.dev-b\"",
                    "subscription to \"$kv.edge_desired.>\"", "subscription to \"_inbox.>\"",
                    "subscription to \"edge.*.releases\""):
        assert subject in text.lower(), (subject, text)
    assert not any(msg_id == "forged-1" for _, _, msg_id in (await releases(fleet)).get("dev-b", []))

    # on its own subject, a message that names another device: the hub drops it, dev-b's count is untouched
    status, before = fleet.hub_api("/devices", OPERATOR_TOKEN)
    nc = await connect(fleet, "dev-a.nk", "dev-a")
    await nc.jetstream(timeout=5).publish(releases_subject("dev-a"), forged, headers={"Nats-Msg-Id": "forged-2"})
    await nc.close()
    wait_until(lambda: fleet.hub_api("/health", None)[1].get("impersonations") == 1, 30)
    status, after = fleet.hub_api("/devices", OPERATOR_TOKEN)
    seqs = {d["device"]: d["last_seq"] for d in before["devices"]}
    # dev-b itself goes on publishing meanwhile: its count may move on, never to the forged message's
    assert seqs["dev-b"] <= next(d for d in after["devices"] if d["device"] == "dev-b")["last_seq"] < 10 ** 6

    # a key the servers do not know cannot sign in
    hub_cli("device-key", "--out", str(fleet.tmp / "stranger.nk"))
    with pytest.raises(Exception, match="(?i)authorization"):
        await connect(fleet, "stranger.nk")


async def test_level_definitions_arrive_with_the_desired_state(fleet):
    (fleet.tmp / "levels.toml").write_text('[levels.street]\nkind = "exact"\nwindows = ["1s", "1m"]\n'
                                           'parameters = ["neighborhood_*"]\n')
    fleet.operator("set-levels", "--file", str(fleet.tmp / "levels.toml"))
    registered = fleet.operator("register-org", "--name", "Street Co", "--level", "street", "--area", "north")
    for device in DEVICES:
        wait_until(lambda: fleet.device(device, "/parameters", registered["api_key"])[0] == 200, 30)
        assert fleet.health(device)["levels"] == ["street"]
        status, body = fleet.device(device, "/parameters", registered["api_key"])
        permitted = {p["name"] for p in body["parameters"] if p["permitted"]}
        assert "neighborhood_power_consumption" in permitted and not any(n.startswith("household_") for n in permitted)

    # an invalid level (checked by the device with edge.toml's own rules): the whole document refused, shown
    (fleet.tmp / "bad.toml").write_text('[levels.fuzzy]\nkind = "fuzzy"\n')
    out = subprocess.run([sys.executable, "-m", "hub.cli", "set-levels", "--file", str(fleet.tmp / "bad.toml"),
                          *fleet.servers(), "--key", str(fleet.tmp / "operator.key")], env=ENV, cwd=ROOT,
                         capture_output=True, timeout=60)
    assert out.returncode == 1 and b"levels.fuzzy.kind" in out.stderr  # the operator's tool says so first
    version = fleet.health("dev-a")["desired_version"]
    key = document.private_key_from_text((fleet.tmp / "operator.key").read_text())
    nc = await connect(fleet, "hub.nk")
    kv = await nc.jetstream().key_value(document.BUCKET)
    current = document.verify((await kv.get("dev-a")).value, key.public_key())
    await kv.put("dev-a", document.sign({**current, "version": version + 1, "levels": {"fuzzy": {"kind": "fuzzy"}},
                                         "organizations": []}, key))
    await nc.close()
    wait_until(lambda: (fleet.health("dev-a").get("refused") or {}).get("error") == "invalid_level", 30)
    health = fleet.health("dev-a")
    assert "levels.fuzzy.kind" in health["refused"]["detail"] and health["desired_version"] == version
    assert fleet.device("dev-a", "/parameters", registered["api_key"])[0] == 200  # nothing of it was applied
