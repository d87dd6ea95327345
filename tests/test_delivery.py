"""Subscriptions and webhooks against real aiohttp receivers on 127.0.0.1: signatures checked with
`standardwebhooks` as an organization would, receivers that are down, failing, hanging or gone,
order and sequence kept, nothing lost silently."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from agent.config import DeliveryConfig
from tests.helpers.agent import make_config
from tests.helpers.delivery import town  # noqa: F401  (town: the fixture)
from tests.helpers.receiver import Receiver, receiver  # noqa: F401  (receiver: the fixture)
from tests.helpers.wait import eventually


async def test_signed_messages_verify_with_standardwebhooks(town, receiver):
    t = await town()
    sub = await t.subscribe(receiver.url)
    assert sub["secret"].startswith("whsec_")
    for _ in range(3):
        await t.window()
    await eventually(lambda: len(receiver.received) == 3)
    verifier = Webhook(sub["secret"])
    for headers, body in receiver.received:
        message = verifier.verify(body, headers)
        assert message["type"] == "aggregate" and message["aggregate"]["households"] == 3
    assert [m["sequence"] for m in receiver.messages()] == [1, 2, 3]
    assert receiver.messages()[0]["aggregate"]["consumption_w"] == pytest.approx(330.0)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(receiver.received[0][1], receiver.received[0][0])
    status, listed = await t.running.call("GET", "/data/subscriptions", token=t.org_key)
    assert "secret" not in json.dumps(listed)


async def test_receiver_down_then_back_gets_every_window_in_order(town, receiver):
    t = await town()
    sub = await t.subscribe(receiver.url)
    await t.window()
    await eventually(lambda: len(receiver.received) == 1)
    await receiver.stop()  # down for a while
    for _ in range(5):
        await t.window()
    await eventually(lambda: t.running.agent.delivery.stats[sub["id"]].failures >= 2)
    state = await t.state(sub["id"])
    assert state["delivery"]["queued"] >= 5 and state["delivery"]["last_error"]
    await receiver.start()  # back on the same port
    await eventually(lambda: len(receiver.received) >= 6)
    messages = receiver.messages()
    sequences = [m["sequence"] for m in messages]
    ids = [h["webhook-id"] for h, _ in receiver.received]
    # in order, no gaps; a repeat is only ever a retry of the same webhook-id
    assert sorted(set(sequences)) == list(range(1, 7))
    assert all(sequences[i] <= sequences[i + 1] for i in range(len(sequences) - 1))
    assert len(set(zip(ids, sequences))) == len(set(ids))
    starts = [m["window_start"] for m in messages]
    assert starts == sorted(starts)
    state = await t.state(sub["id"])
    assert state["delivery"]["queued"] == 0 and state["delivery"]["lag_s"] is None


async def test_failing_endpoint_keeps_retrying_with_the_same_id_and_does_not_hold_up_others(town, receiver):
    t = await town()
    bad = Receiver()
    await bad.start()
    bad.mode = "fail"
    try:
        failing = await t.subscribe(bad.url)
        healthy = await t.subscribe(receiver.url)
        for _ in range(3):
            await t.window()
        await eventually(lambda: len(receiver.received) == 3)
        await eventually(lambda: len(bad.arrivals) >= 4)
        state = await t.state(failing["id"])
        assert state["delivery"]["queued"] == 3 and state["delivery"]["last_error"] == "HTTP 500"
        assert state["delivery"]["retries"] >= 2
        bad.mode = "ok"
        await eventually(lambda: len(bad.received) == 3)
        assert [m["sequence"] for m in bad.messages()] == [1, 2, 3]
        assert (await t.state(healthy["id"]))["delivery"]["failures"] == 0
    finally:
        await bad.stop()


async def test_hanging_endpoint_times_out(town, receiver):
    t = await town(timeout_s=0.5)
    hang = Receiver()
    await hang.start()
    hang.mode = "hang"
    try:
        stuck = await t.subscribe(hang.url)
        healthy = await t.subscribe(receiver.url)
        await t.window()
        await t.window()
        await eventually(lambda: len(receiver.received) == 2)  # not held up by the hanging one
        await eventually(lambda: t.running.agent.delivery.stats[stuck["id"]].failures >= 1)
        assert "Timeout" in (await t.state(stuck["id"]))["delivery"]["last_error"]
    finally:
        await hang.stop()


async def test_410_gone_disables_and_enable_resumes(town, receiver):
    t = await town()
    sub = await t.subscribe(receiver.url)
    receiver.mode = "gone"
    await t.window()
    first_window = t.running.agent.delivery.outboxes[sub["id"]].head().window_start
    await eventually(lambda: t.running.agent.delivery.subscriptions[sub["id"]].state == "disabled")
    state = await t.state(sub["id"])
    assert state["state"] == "disabled" and "410" in state["disabled_reason"]
    await t.window()  # a disabled subscription makes nothing new
    assert (await t.state(sub["id"]))["delivery"]["queued"] == 1
    receiver.mode = "ok"
    status, _ = await t.running.call("POST", f"/data/subscriptions/{sub['id']}/enable", token=t.org_key)
    assert status == 200
    # the held window goes out first; the window decided while disabled may follow it at the producer's next
    # pass (caught up on enabling), so the count is not waited for as exactly 1
    await eventually(lambda: len(receiver.received) >= 1)
    assert receiver.messages()[0]["sequence"] == 1 and receiver.messages()[0]["window_start"] == first_window


async def test_retry_after_is_honoured(town, receiver):
    t = await town()
    await t.subscribe(receiver.url)
    receiver.mode = "slow_down"
    receiver.retry_after = "1"
    await t.window()
    await eventually(lambda: len(receiver.arrivals) >= 1)
    receiver.mode = "ok"
    await eventually(lambda: len(receiver.received) == 1)
    # the retry came no sooner than the receiver asked (a lower bound: slowness cannot break it)
    assert receiver.arrivals[1] - receiver.arrivals[0] >= 0.95


async def test_full_outbox_turns_the_oldest_into_a_gap_event(town, receiver):
    t = await town(max_queue=10)
    sub = await t.subscribe(receiver.url)
    await receiver.stop()
    for _ in range(25):
        await t.window()
    state = await t.state(sub["id"])
    assert state["delivery"]["queued"] <= 10 and state["delivery"]["dropped"] >= 15
    await receiver.start()
    await eventually(lambda: t.running.agent.delivery.outboxes[sub["id"]].depth == 0)
    messages = receiver.messages()
    gaps = [m for m in messages if m["type"] == "gap"]
    assert gaps and sum(g["lost_windows"] for g in gaps) >= 15 and gaps[0]["from"] and gaps[0]["to"]
    assert [m["sequence"] for m in messages] == list(range(1, len(messages) + 1))
    aggregates = [m for m in messages if m["type"] == "aggregate"]
    assert aggregates[-1]["aggregate"]["consumption_w"] == pytest.approx(3 * t.power)  # the newest survives


async def test_deadband_filter_cuts_traffic(town, receiver):
    t = await town()
    await t.subscribe(receiver.url, filter={"deadband": {"fields": ["consumption_w"], "absolute": 100},
                                            "fields": ["consumption_w"]})
    for power in (100, 101, 102, 200, 201, 99):
        await t.window(power)
    await eventually(lambda: len(receiver.received) >= 3)
    await asyncio.sleep(0.2)
    values = [m["aggregate"]["consumption_w"] for m in receiver.messages()]
    assert values == [300.0, 600.0, 297.0]
    # the fields asked for, and the privacy terms: a number never travels without them
    assert set(receiver.messages()[0]["aggregate"]) == {"window", "window_start", "window_end", "tag",
                                                        "consumption_w", "privacy"}


async def test_secret_rotation_without_a_gap(town, receiver):
    t = await town()
    sub = await t.subscribe(receiver.url)
    status, rotated = await t.running.call("POST", f"/data/subscriptions/{sub['id']}/secret", token=t.org_key)
    assert status == 200 and rotated["secret"] != sub["secret"]
    await t.window()
    await eventually(lambda: len(receiver.received) == 1)
    headers, body = receiver.received[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(sub["secret"]).verify(body, headers)  # receivers not yet switched
    Webhook(rotated["secret"]).verify(body, headers)  # receivers already switched


@pytest.mark.parametrize("endpoint, allow_http, allow_private, words", [
    ("http://example.com/hook", False, False, "https"),
    ("https://10.0.0.5/hook", False, False, "private"),
    ("https://127.0.0.1/hook", False, False, "private"),
    ("https://[::1]/hook", False, False, "private"),
    ("https://169.254.169.254/latest", False, False, "private"),
    ("https://localhost/hook", False, False, "local"),
    ("ftp://example.com/x", True, True, "http(s)"),
    ("https://user:pw@example.com/x", False, False, "credentials"),
])


async def test_endpoints_that_are_refused(tmp_path, start_agent, endpoint, allow_http, allow_private, words):
    config = replace(make_config(tmp_path), delivery=DeliveryConfig(allow_http=allow_http,
                                                                    allow_private_endpoints=allow_private))
    running = await start_agent(config)
    _, org_key = await running.create_org()
    status, body = await running.call("POST", "/data/subscribe", token=org_key,
                                      json={"endpoint": endpoint, "interval": 60})
    assert status == 422 and body["error"] == "endpoint_refused" and words in body["detail"]


async def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(town, receiver):
    """The check runs at every connection, after DNS, on the addresses used."""
    hostname = socket.gethostname()
    try:
        addresses = {a[4][0] for a in socket.getaddrinfo(hostname, receiver.port)}
    except OSError:
        pytest.skip("this machine's name does not resolve")
    from agent.delivery.targets import address_allowed

    if any(address_allowed(a, False) for a in addresses):
        pytest.skip("this machine's name resolves to a public address")
    t = await town(allow_private_endpoints=False)
    sub = await t.subscribe(f"http://{hostname}:{receiver.port}/hook")  # a name: accepted at subscribe
    await t.window()
    await eventually(lambda: t.running.agent.delivery.stats[sub["id"]].failures >= 1)
    assert "may not reach" in (await t.state(sub["id"]))["delivery"]["last_error"]
    assert receiver.received == []


async def test_other_organizations_cannot_see_or_touch_a_subscription(town, receiver):
    t = await town()
    sub = await t.subscribe(receiver.url)
    _, other_key = await t.running.create_org("Other", "dso")
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/secret"), ("POST", "/enable")):
        status, body = await t.running.call(method, f"/data/subscriptions/{sub['id']}{path}", token=other_key)
        assert status == 404
    status, body = await t.running.call("GET", "/data/subscriptions", token=other_key)
    assert body["subscriptions"] == []


async def test_bad_subscription_requests(town, receiver):
    t = await town()
    for bad, words in (({"endpoint": receiver.url}, "interval is required"),
                       ({"endpoint": receiver.url, "interval": 0}, "interval"),
                       ({"endpoint": receiver.url, "interval": 5, "window": "2m"}, "window"),
                       ({"endpoint": receiver.url, "interval": 5, "filter": {"bogus": 1}}, "unknown filter"),
                       ({"endpoint": receiver.url, "interval": 5, "filter": {"deadband": {"absolute": -1}}},
                        "positive")):
        status, body = await t.running.call("POST", "/data/subscribe", token=t.org_key, json=bad)
        assert status in (400, 422) and words in body["detail"], (bad, body)


async def test_delivery_counters_in_metrics(town, receiver):
    t = await town()
    sub = await t.subscribe(receiver.url)
    await t.window()
    await eventually(lambda: len(receiver.received) == 1)
    status, text = await t.running.call("GET", "/metrics")  # the operator's
    assert f'edge_webhook_messages_total{{subscription="{sub["id"]}"}} 1' in text
    assert f'edge_webhook_outbox_depth{{subscription="{sub["id"]}"}} 0' in text
    assert f'edge_webhook_bytes_total{{subscription="{sub["id"]}"}} {len(receiver.received[0][1])}' in text


async def test_a_level_change_withholds(town, receiver):
    t = await town()
    sub = await t.subscribe(receiver.url)
    await t.window()
    await eventually(lambda: len(receiver.received) == 1)
    # a release pass in the background may have decided the empty window before the first one for this
    # subscription (withheld, nothing to send): only what the downgrade withholds is counted
    withheld_before = (await t.state(sub["id"]))["delivery"]["withheld"]
    org_id = t.running.agent.delivery.subscriptions[sub["id"]].organization_id
    # the supplier level releases 15m and 1h only: the 1-second subscription may no longer be served
    assert (await t.running.call("PATCH", f"/organizations/{org_id}", json={"level": "supplier"}))[0] == 200
    await t.window()
    await t.window()
    await asyncio.sleep(0.2)
    assert len(receiver.received) == 1  # nothing after the downgrade
    state = await t.state(sub["id"])
    assert state["delivery"]["withheld"] == withheld_before + 2
    assert "may use windows 15m, 1h" in state["delivery"]["last_error"]


async def test_a_noisy_level_is_pushed_its_one_recorded_noisy_record(town, receiver):
    """Noisy levels subscribe like any other; what they are pushed is the release's record: the same noisy numbers
    GET /data answers with, never a new draw (the first design refused them subscriptions and drew noise per
    request). Two organizations of the level with the same cohort each get their own record (red team 9a, R9a-3)."""
    t = await town()
    running, clock = t.running, t.clock
    other = Receiver()
    await other.start()
    try:
        keys, subs = [], []
        for name, hook in (("Supplier A", receiver), ("Supplier B", other)):
            org_id, key = await running.create_org(name, "supplier")
            for token in t.tokens:
                status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token)
                assert status == 200
            status, body = await running.call("POST", "/data/subscribe", token=key,
                                              json={"endpoint": hook.url, "interval": 60, "window": "15m"})
            assert status == 201, body
            keys.append(key)
            subs.append(body)
        start = int(-(-clock.now // 900) * 900)  # the first quarter-hour both cohorts consent throughout
        clock.now = start + 10.0
        for token in t.tokens:
            status, body = await running.call("POST", "/readings", token=token,
                                              json={"timestamp": clock.now, "power_import_w": 400.0})
            assert status == 201, body
        clock.now = start + 901.0
        await running.agent.releases.settle()
        await eventually(lambda: len(receiver.received) == 1 and len(other.received) == 1)
        a, b = receiver.messages()[0]["aggregate"], other.messages()[0]["aggregate"]
        assert a["privacy"]["kind"] == "noisy" and a["households"] == 3
        assert a["window_start"] == b["window_start"] and a["consumption_w"] != b["consumption_w"]
        for key, pushed in zip(keys, (a, b)):  # polled later: the same record again, never a new draw
            status, body = await running.call("GET", "/data?window=15m", token=key)
            assert status == 200 and body == pushed
    finally:
        await other.stop()
