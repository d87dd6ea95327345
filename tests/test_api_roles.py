"""Every endpoint against every role: whoever must not reach it is refused (401 or 403), and the
right caller is let through. The table is checked against the app's routes, so a new endpoint
without a row in tests/helpers/roles.py fails."""

from __future__ import annotations

import pytest

from agent.api.openapi import SPEC
from tests.helpers.agent import make_config
from tests.helpers.roles import ANY, DL, HH, MATRIX, OP, ORG

BODIES = {
    ("POST", "/organizations"): {"json": {"name": "New Org", "level": "service"}},
    ("PATCH", "/organizations/{org_id}"): {"json": {"name": "Renamed"}},
    ("POST", "/households"): {"json": {}},
    ("PATCH", "/households/{household_id}"): {"json": {"related_organizations": []}},
    ("POST", "/readings"): {"json": {"timestamp": "2026-01-01T00:00:00Z", "power_import_w": 100}},
    ("POST", "/api/v1/datalogger/dsmrreading"): {"data": {"telegram": "/x\r\n!\r\n"}},
    ("POST", "/data/subscribe"): {"json": {"endpoint": "https://example.com/hook", "interval": 60}},
    ("POST", "/triggers/create"): {"json": {
        "parameters": ["neighborhood_power_consumption", "neighborhood_power_production"],
        "function": "ZGVmIGNvbmRpdGlvbihuZWlnaGJvcmhvb2RfcG93ZXJfY29uc3VtcHRpb24sIG5laWdoYm9yaG9vZF9wb3dlcl9wcm9k"
                    "dWN0aW9uKToKICAgIHJldHVybiBuZWlnaGJvcmhvb2RfcG93ZXJfcHJvZHVjdGlvbiAtIG5laWdoYm9yaG9vZF9wb3dl"
                    "cl9jb25zdW1wdGlvbiA+IDUwMAo=",
        "interval": 36000, "action": {"type": "notification", "content": "Surplus: charge your EV"}}},
    ("PUT", "/households/me/notify"): {"json": {"url": "https://example.com/notify"}},
    ("POST", "/households/me/appliances"): {"json": {"name": "Heater", "driver": "shelly",
                                                     "address": "http://192.168.1.20"}},
}


def test_matrix_covers_every_route_of_the_app():
    documented = {(m.upper(), p) for p, methods in SPEC["paths"].items() for m in methods}
    assert {(m, p) for m, p, _ in MATRIX} == documented


@pytest.fixture
async def world(tmp_path, start_agent, pty_pair):
    from drivers.p1_reader import MeterSpec

    running = await start_agent(make_config(tmp_path, [MeterSpec("m1", pty_pair.path, "dsmr5")]))
    org_id, org_key = await running.create_org("Supplier X", "dso")
    status, household = await running.call("POST", "/households", json={})
    assert status == 201, household
    household_id = household["id"]
    tokens = {OP: running.auth()["Authorization"].split()[1], ORG: org_key, HH: household["token"],
              DL: household["datalogger_token"]}
    status, sub = await running.call("POST", "/data/subscribe", token=org_key,
                                     json={"endpoint": "https://example.com/hook", "interval": 60})
    assert status == 201, sub
    ids = {"meter_id": "m1", "org_id": org_id, "household_id": household_id, "service": "aggregates",
           "sub_id": sub["id"], "trigger_id": "trg_000000000000", "appliance_id": "app_000000000000"}
    return running, tokens, ids


@pytest.mark.parametrize("method, template, allowed", MATRIX, ids=[f"{m} {p}" for m, p, _ in MATRIX])
async def test_role_matrix(world, method, template, allowed):
    running, tokens, ids = world
    path = template.format(**ids)
    kwargs = BODIES.get((method, template), {})
    if ANY in allowed:
        status, _ = await running.call(method, path, token=None, **kwargs)
        assert status in (200, 503), status
        return
    status, body = await running.call(method, path, token=None, **kwargs)
    assert status == 401 and body["error"] == "unauthorized"
    status, body = await running.call(method, path, token="edge_org_not-a-real-key", **kwargs)
    assert status == 401
    for role, token in tokens.items():
        if role in allowed:
            continue
        headers = {"Authorization": f"Token {token}"} if template.startswith("/api/v1/datalogger") else None
        status, body = await running.call(method, path, token=None if headers else token, headers=headers,
                                          **kwargs)
        assert status == 403 and body["error"] == "forbidden", (role, status, body)
    # The right role gets past authentication (whatever the request's own merits: a 403 of its own, such as
    # GET /data/dp's not_noisy for an exact level, is not the role check's "forbidden").
    for role in allowed:
        token = tokens[role]
        headers = {"Authorization": f"Token {token}"} if template.startswith("/api/v1/datalogger") else None
        status, body = await running.call(method, path, token=None if headers else token, headers=headers,
                                          **kwargs)
        forbidden = status == 403 and (not isinstance(body, dict) or body.get("error") == "forbidden")
        assert status != 401 and not forbidden, (role, status, body)


async def test_health_says_only_ok_or_degraded_but_to_the_operator(world):
    """The detail (meters, readings in, storage, triggers) told anyone on the network who was posting now."""
    running, tokens, _ = world
    status, public = await running.call("GET", "/health", token=None)
    assert public == {"status": "ok" if status == 200 else "degraded"} and status in (200, 503)
    for role in (ORG, HH, DL):
        assert await running.call("GET", "/health", token=tokens[role]) == (status, public), role
    status, detail = await running.call("GET", "/health", token=tokens[OP])
    assert {"status", "device", "meters", "readings_in", "storage", "triggers"} <= set(detail)
    assert "m1" in detail["meters"]
    # the public status is the device's alone: a meter not reading (one household's news) degrades only the detail
    meters_reading = all(m["state"] == "reading" for m in detail["meters"].values())
    assert detail["status"] == public["status"] if meters_reading else public["status"] == "ok"
    # a token that is sent is checked: a wrong one is refused (and throttled), never read as "no token"
    status, body = await running.call("GET", "/health", token="not-the-operator-token")
    assert status == 401 and body["error"] == "unauthorized"


async def test_bad_tokens_are_throttled(world):
    running, tokens, _ = world
    for _ in range(10):
        status, _ = await running.call("GET", "/meters", token="edge_org_guess")
        assert status == 401
    status, body = await running.call("GET", "/meters", token="edge_org_guess")
    assert status == 429 and body["error"] == "too_many_failures"
    # per address, for bad tokens only: a valid token from the same address (a NAT, a proxy) is never refused
    status, _ = await running.call("GET", "/meters", token=tokens[OP])
    assert status == 200


async def test_secrets_are_shown_once_and_stored_hashed(world, tmp_path):
    running, tokens, ids = world
    status, body = await running.call("GET", f"/organizations/{ids['org_id']}")
    assert status == 200 and "api_key" not in body and "key_hash" not in body
    status, body = await running.call("GET", "/households")
    assert all("token" not in h and "token_hash" not in h for h in body["households"])
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    for token in (tokens[ORG], tokens[HH], tokens[DL]):
        assert token.encode() not in on_disk


async def test_rotated_and_deleted_credentials_stop_working(world):
    running, tokens, ids = world
    status, body = await running.call("POST", f"/organizations/{ids['org_id']}/key")
    assert status == 200
    assert (await running.call("GET", "/parameters", token=tokens[ORG]))[0] == 401
    assert (await running.call("GET", "/parameters", token=body["api_key"]))[0] == 200
    status, body = await running.call("POST", f"/households/{ids['household_id']}/token")
    assert (await running.call("GET", "/households/me", token=tokens[HH]))[0] == 401
    assert (await running.call("GET", "/households/me", token=body["token"]))[0] == 200
    assert (await running.call("DELETE", f"/households/{ids['household_id']}"))[0] == 204
    assert (await running.call("GET", "/households/me", token=body["token"]))[0] == 401


async def test_registry_survives_restart(tmp_path, start_agent):
    config = make_config(tmp_path)
    running = await start_agent(config)
    org_id, org_key = await running.create_org()
    household_id, token = await running.create_household()
    assert (await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token))[0] == 200
    await running.http.close()
    await running.agent.stop()
    again = await start_agent(config)
    assert (await again.call("GET", "/parameters", token=org_key))[0] == 200
    status, body = await again.call("GET", "/households/me/consents", token=token)
    assert status == 200 and body["consents"][0]["organization_id"] == org_id
