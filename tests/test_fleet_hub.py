"""The hub on a real JetStream server (one node, loopback) and its real HTTP API: devices' messages as the fleet
link makes them (agent/fleet/link.py's `message` and `records_of`, bodies from the release module's
`fine_body`), published with their Nats-Msg-Id. An area's window is the sum of its devices' releases, by tag
too, served only once `min_devices` devices released it; a redelivered message changes nothing; the hub mode of
`edge-agent query` gives the tariff example from one question; errors are JSON with the right status; the
OpenAPI document describes every route."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone

import aiohttp
import pytest
from aiohttp import web

from agent.fleet import document, releases_subject
from agent.fleet.link import message, records_of
from agent.query import query_hub, tariff
from agent.registry import new_secret
from agent.release import Refusal
from agent.release.records import fine_body
from hub import natsdev
from hub.api import create_app
from hub.service import Hub
from tests.helpers.wait import eventually as until

DAY = int(time.time()) // 86400 * 86400 - 86400  # yesterday, UTC
HOUR = 3600
KEY = document.new_private_key()
ORG_KEY, OTHER_KEY = new_secret("edge_org"), new_secret("edge_org")
OPERATOR = "hub-operator-token-0123456789"


def fridge_body(start: int, households: int, watts: float) -> dict:
    return fine_body("1h", start, HOUR, "fridge", households, watts, None, {"kind": "exact"})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cluster = natsdev.Cluster(tmp_path_factory.mktemp("nats1"), nodes=1)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def hub(server, tmp_path):
    import nats

    nc = await nats.connect(servers=server.urls)
    js = nc.jetstream()
    hub = Hub(server.urls, document.public_key_text(KEY), min_devices=2, replicas=1, operator_token=OPERATOR)
    await hub.start()
    fleet = {"kind": "fleet", "version": int(time.time() * 1000), "not_after": time.time() + 3600,
             "areas": {"north": ["dev-1", "dev-2", "dev-3"], "south": ["dev-9"]},
             "organizations": [{"id": "org_grid", "name": "Grid", "level": "dso", "areas": ["north"],
                                "key_hash": hashlib.sha256(ORG_KEY.encode()).hexdigest()},
                               {"id": "org_gone", "name": "Gone", "level": "dso", "areas": ["north"],
                                "key_hash": hashlib.sha256(OTHER_KEY.encode()).hexdigest()}],
             "revoked": [hashlib.sha256(OTHER_KEY.encode()).hexdigest()]}
    assert hub.offer_fleet(document.sign(fleet, KEY))
    runner = web.AppRunner(create_app(hub, tmp_path / "audit.jsonl", allow_http=True, allow_private=True))
    await runner.setup()
    port = natsdev.free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    hub.base = f"http://127.0.0.1:{port}"
    hub.test_js = js
    hub.audit_path = tmp_path / "audit.jsonl"
    yield hub
    await runner.cleanup()
    await hub.stop()
    await js.delete_stream("EDGE_RELEASES")  # the next test starts from an empty stream and consumer
    for bucket in ("edge_hub", "edge_hub_devices"):
        await js.delete_key_value(bucket)
    await nc.close()


async def publish(hub, device: str, seq: int, window: str, start: int, answers: dict) -> None:
    payload = message(device, seq, window, start, 1, records_of(answers))
    await hub.test_js.publish(releases_subject(device), json.dumps(payload).encode(),
                              headers={"Nats-Msg-Id": f"{device}-{seq}", "Edge-Seq": str(seq)})


async def get(hub, path: str, token: str | None = ORG_KEY):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(hub.base + path, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_area_windows_are_sums_by_tag_and_need_enough_devices(hub):
    # devices 1 and 2 release the day's 24 hours of the fridge tag; device 3 refuses them (too few homes);
    # dev-9 is in another area
    homes = {"dev-1": 12, "dev-2": 10, "dev-3": 4, "dev-9": 30}
    watts = {d: 100.0 * (i + 1) for i, d in enumerate(homes)}
    seq = {d: 0 for d in homes}
    for hour in range(24):
        start = DAY + hour * HOUR
        for device in homes:
            seq[device] += 1
            result = (Refusal("cohort_too_small", "4 households") if device == "dev-3"
                      else fridge_body(start, homes[device], watts[device] + hour))
            await publish(hub, device, seq[device], "1h", start, {("org_grid", "fridge"): result})
    # the last hour again (a device's re-send after an outage, past the stream's de-duplication: a new id)
    payload = message("dev-1", 24, "1h", DAY + 23 * HOUR, 1,
                      records_of({("org_grid", "fridge"): fridge_body(DAY + 23 * HOUR, 12, watts["dev-1"] + 23)}))
    await hub.test_js.publish(releases_subject("dev-1"), json.dumps(payload).encode(),
                              headers={"Nats-Msg-Id": "dev-1-24-again"})
    await until(lambda: _applied(hub, 96))
    await until(lambda: _duplicates(hub, 1))

    status, body = await get(hub, f"/areas/north/data?window=1h&tag=fridge&since={DAY}&until={DAY + 86400}")
    assert status == 200
    assert len(body["released"]) == 24 and body["refused"] == []
    for hour, window in enumerate(body["released"]):
        assert window["devices"] == 2 and window["devices_refused"] == 1 and window["devices_expected"] == 3
        assert window["households"] == 22 and window["complete"]
        assert window["consumption_w"] == pytest.approx(watts["dev-1"] + watts["dev-2"] + 2 * hour)
        assert window["mean_w"] == pytest.approx(window["consumption_w"] / 22, abs=1e-3)
    status, devices = await get(hub, "/devices", OPERATOR)
    dev1 = next(d for d in devices["devices"] if d["device"] == "dev-1")
    assert dev1["last_seq"] == 24 and dev1["gaps"] == 0 and dev1["out_of_order"] == 0

    # the hub mode of `edge-agent query`: one question, the tariff example, from the area's sums
    result = await query_hub(hub.base, ["north"], ORG_KEY, "fridge", datetime.fromtimestamp(DAY, timezone.utc).date())
    mean = sum(watts["dev-1"] + watts["dev-2"] + 2 * h for h in range(24)) / (22 * 24)
    assert result["mean_w"] == pytest.approx(mean, abs=1e-3)
    assert result["tariff"] == pytest.approx(tariff(mean), abs=1e-3)
    assert [json.loads(line)["action"] for line in hub.audit_path.read_text().splitlines()] == ["area.data"] * 2


async def test_two_hub_replicas_share_the_consumer(hub, server):
    """A second hub process on the same durable consumer: the work is shared, the sums stay exact (both write
    the same area windows, with compare-and-set)."""
    import asyncio

    other = Hub(server.urls, document.public_key_text(KEY), min_devices=2, replicas=1)
    await other.start()
    other.fleet, other.device_area = hub.fleet, hub.device_area
    try:
        for hour in range(24):  # in rounds, so both replicas' pull requests are waiting
            for n, device in enumerate(("dev-1", "dev-2", "dev-3")):
                start = DAY + hour * HOUR
                await publish(hub, device, hour + 1, "1h", start,
                              {("org_grid", None): fine_body("1h", start, HOUR, None, 10 + n, 100.0 * (n + 1) + hour,
                                                             10.0, {"kind": "exact"})})
            await asyncio.sleep(0.05)
        await until(lambda: _applied_both(hub, other, 72))
    finally:
        await other.stop()
    assert hub.applied > 0 and other.applied > 0  # both took part
    status, body = await get(hub, f"/areas/north/data?window=1h&since={DAY}&until={DAY + 86400}")
    assert [w["consumption_w"] for w in body["released"]] == [600.0 + 3 * h for h in range(24)]
    assert all(w["devices"] == 3 and w["households"] == 33 for w in body["released"])


async def _applied_both(a, b, count: int) -> bool:
    return a.applied + b.applied >= count


async def test_one_device_is_not_enough(hub):
    await publish(hub, "dev-1", 1, "1h", DAY, {("org_grid", None): fine_body("1h", DAY, HOUR, None, 12, 900.0,
                                                                               100.0, {"kind": "exact"})})
    await until(lambda: _applied(hub, 1))
    status, body = await get(hub, f"/areas/north/data?window=1h&since={DAY}&until={DAY + HOUR}")
    assert status == 200 and body["released"] == []
    assert body["refused"][0]["error"] == "too_few_devices" and body["refused"][0]["devices"] == 1


async def test_area_windows_are_pushed_as_standard_webhooks_in_order_at_least_once(hub):
    import asyncio

    from standardwebhooks import Webhook

    from hub.push import Pusher

    attempts, received = [], []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        attempts.append(request.headers["webhook-id"])
        if len(attempts) == 1:
            return web.Response(status=500)  # the first push fails: retried with the same id
        received.append((dict(request.headers), body))
        return web.Response(status=204)
    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = natsdev.free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as http:
        bad = await http.post(hub.base + "/subscriptions", headers={"Authorization": f"Bearer {ORG_KEY}"},
                              json={"endpoint": "ftp://x", "area": "north", "window": "1s"})
        assert bad.status == 400 and (await bad.json())["error"] == "bad_endpoint"
        made = await http.post(hub.base + "/subscriptions", headers={"Authorization": f"Bearer {ORG_KEY}"},
                               json={"endpoint": f"http://127.0.0.1:{port}/hook", "area": "north", "window": "1s"})
        assert made.status == 201
        sub = await made.json()
    first = int(time.time()) + 1
    for k in range(4):  # four seconds of the area's three devices
        for n, device in enumerate(("dev-1", "dev-2", "dev-3")):
            body = fine_body("1s", first + k, 1, None, 10, 100.0 * (n + 1) + k, 0.0, {"kind": "exact"})
            await publish(hub, device, k + 1, "1s", first + k, {("org_grid", None): body})
    pusher = Pusher(hub, grace_s=2.0, allow_private=True)
    await pusher.start()
    try:
        await until(lambda: _pushed(received, first + 3), 30)
    finally:
        await pusher.stop()
        await runner.cleanup()
    assert attempts[0] == attempts[1]  # the retry carries the same webhook-id
    starts = []
    for headers, body in received:
        Webhook(sub["secret"]).verify(body, headers)  # a standard library checks the signature
        event = json.loads(body)
        window = event.get("released") or event["refused"]
        start = int(datetime.fromisoformat(window["window_start"].replace("Z", "+00:00")).timestamp())
        assert headers["webhook-id"] == f"{sub['id']}-{start}"
        starts.append(start)
        if first <= start <= first + 3:
            assert event["released"]["devices"] == 3
            assert event["released"]["consumption_w"] == pytest.approx(600.0 + 3 * (start - first))
        else:
            assert event["refused"]["error"] == "no_data"  # no device reported it: pushed after the grace
    assert starts == list(range(starts[0], starts[-1] + 1))  # in order, none skipped, none twice


async def _pushed(received, start: int) -> bool:
    return any(f"-{start}" in headers["webhook-id"] for headers, _ in received)


async def test_errors_are_json_with_the_right_status(hub):
    path = f"/areas/north/data?window=1h&since={DAY}&until={DAY + HOUR}"
    cases = [(path, None, 401), (path, OTHER_KEY, 401), (path, "edge_org_unknown", 401),  # none, revoked, unknown
             (path, OPERATOR, 403), ("/devices", ORG_KEY, 403),
             (f"/areas/south/data?window=1h&since={DAY}&until={DAY + HOUR}", ORG_KEY, 404),
             (f"/areas/north/data?window=2h&since={DAY}&until={DAY + HOUR}", ORG_KEY, 400),
             ("/areas/north/data?window=1h&since=x&until=1", ORG_KEY, 400),
             (f"/areas/north/data?window=1s&since={DAY}&until={DAY + 86400}", ORG_KEY, 400)]
    for route, token, expected in cases:
        status, body = await get(hub, route, token)
        assert status == expected, (route, token, body)
        assert set(body) == {"error", "detail"}
    status, body = await get(hub, "/areas", ORG_KEY)
    assert body == {"areas": [{"area": "north", "devices": ["dev-1", "dev-2", "dev-3"]}]}


async def test_a_subscription_body_not_of_its_schema_is_refused_saying_what_is_wrong(hub):
    """hub/bodies.py's SubscribeIn decodes the body: its shape refused with the field named, before any check of
    what it means; then the area (404), the window and the tag (400), the endpoint (bad_endpoint), as before."""
    good = {"endpoint": "https://example.com/hook", "area": "north", "window": "1m"}
    cases = [(b"{", 400, "bad_request", "not valid JSON"), (b"[]", 400, "bad_request", "must be a JSON object"),
             ({"area": "north"}, 400, "bad_request", "endpoint is required"),
             ({**good, "windw": "1h"}, 400, "bad_request", "unknown field 'windw'"),
             ({**good, "tag": 5}, 400, "bad_request", "tag has the wrong type"),
             ({**good, "area": "south"}, 404, "not_found", "no area 'south'"),
             ({**good, "window": "2h"}, 400, "bad_request", "window must be one of"),
             ({**good, "tag": "a b"}, 400, "bad_request", "tag: letters"),
             ({**good, "endpoint": "ftp://x"}, 400, "bad_endpoint", "")]
    async with aiohttp.ClientSession() as http:
        for body, status, error, words in cases:
            sent = {"data": body} if isinstance(body, bytes) else {"json": body}
            async with http.post(hub.base + "/subscriptions", headers={"Authorization": f"Bearer {ORG_KEY}"},
                                 **sent) as resp:
                answer = await resp.json()
            assert (resp.status, answer["error"]) == (status, error) and words in answer["detail"], (body, answer)
    assert await get(hub, "/subscriptions", ORG_KEY) == (200, {"subscriptions": []})  # none was made


async def test_openapi_names_every_route(hub):
    status, spec = await get(hub, "/openapi.json", None)
    assert status == 200 and spec["openapi"].startswith("3.")
    routes = {r.resource.canonical for r in create_app(hub).router.routes()}
    assert routes == set(spec["paths"]) | {"/openapi.json"}


async def test_every_answer_is_the_struct_the_document_names(hub):
    """Real answers of a running hub, each validated against the schema its route's document names and converted
    into that hub/answers.py Struct, strictly (a field the Struct does not declare, a missing one or a wrong type
    fails; an error's code is one of HubCode's); every documented answer is seen."""
    import jsonschema_rs
    import msgspec

    from hub import answers

    structs = {kind.__name__: kind for kind in answers.ANSWERS}
    _, spec = await get(hub, "/openapi.json", None)
    seen: set[str] = set()

    def check(method: str, template: str, status: int, body) -> None:
        schema = spec["paths"][template][method.lower()]["responses"][str(status)]["content"]["application/json"]
        name = schema["schema"]["$ref"].rsplit("/", 1)[1]
        validator = jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                                        "components": spec["components"]})
        assert not [str(e) for e in validator.iter_errors(body)], (template, name, body)
        msgspec.convert(body, structs[name])
        seen.add(name)

    for n, device in enumerate(("dev-1", "dev-2")):  # an hour of both (released), the next of one (refused)
        await publish(hub, device, 1, "1h", DAY, {("org_grid", "fridge"): fridge_body(DAY, 10 + n, 100.0)})
    await publish(hub, "dev-1", 2, "1h", DAY + HOUR, {("org_grid", "fridge"): fridge_body(DAY + HOUR, 10, 100.0)})
    await until(lambda: _applied(hub, 3))
    for path, template, key in (("/health", "/health", None), ("/areas", "/areas", ORG_KEY),
                                ("/devices", "/devices", OPERATOR),
                                (f"/areas/north/data?window=1h&tag=fridge&since={DAY}&until={DAY + 2 * HOUR}",
                                 "/areas/{area}/data", ORG_KEY), ("/areas/south/data", "/areas/{area}/data", ORG_KEY),
                                ("/areas/north/data?window=2h", "/areas/{area}/data", ORG_KEY),  # errors: 400,
                                ("/devices", "/devices", None), ("/devices", "/devices", ORG_KEY)):  # 401, 403
        status, body = await get(hub, path, key)
        check("GET", template, status, body)
        if template == "/areas/{area}/data" and status == 200:
            assert len(body["released"]) == len(body["refused"]) == 1, body
    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {ORG_KEY}"}
        async with http.post(hub.base + "/subscriptions", headers=auth,
                             json={"endpoint": "https://example.com/hook", "area": "north", "window": "1h"}) as resp:
            created = await resp.json()
            check("POST", "/subscriptions", resp.status, created)
        status, body = await get(hub, "/subscriptions")
        check("GET", "/subscriptions", status, body)
        assert body["subscriptions"][0]["id"] == created["id"] and "secret" not in body["subscriptions"][0]
        async with http.delete(hub.base + f"/subscriptions/{created['id']}", headers=auth) as resp:
            check("DELETE", "/subscriptions/{sub_id}", resp.status, await resp.json())
    names = {r["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1] for ops in spec["paths"].values()
             for op in ops.values() for r in op["responses"].values() if "content" in r}
    assert seen == names == set(structs), (seen, names)


async def _applied(hub, count: int) -> bool:
    return hub.applied >= count


async def _duplicates(hub, count: int) -> bool:
    return hub.duplicates >= count


async def test_every_route_with_roles_refuses_the_others_before_its_handler(hub):
    """The router and the role check come from hub/api.py's ROUTES: no key is a 401, another role's key a 403."""
    from hub.api import ORGANIZATION, ROUTES

    keys = {"operator": OPERATOR, ORGANIZATION: ORG_KEY}
    assert {(r.method, r.resource.canonical) for r in create_app(hub).router.routes() if r.method != "HEAD"} == \
        {(route.method, route.path) for route in ROUTES}
    _, spec = await get(hub, "/openapi.json", None)
    for route in ROUTES:  # the document says what the row's role check does
        if route.operation is not None:
            op = spec["paths"][route.path][route.method.lower()]
            assert ("security" in op, "401" in op["responses"], "403" in op["responses"]) == (bool(route.roles),) * 3
    async with aiohttp.ClientSession() as http:
        for route in ROUTES:
            if not route.roles:
                continue
            path = route.path.replace("{area}", "north").replace("{sub_id}", "sub_x")
            for role, key in [(None, None), *keys.items()]:
                if role in route.roles:
                    continue
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                async with http.request(route.method, hub.base + path, headers=headers, json={}) as resp:
                    body = await resp.json()
                assert (resp.status, body["error"]) == ((401, "unauthorized") if key is None else (403, "forbidden")), \
                    (route, role, body)
