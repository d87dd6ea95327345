"""The OpenAPI document is complete and true: every route is in it, and schemathesis, sending
what the document allows (and much it does not) to the running agent, finds no 5xx and no
response that breaks its schema."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from agent.api import create_app
from agent.api.openapi import SPEC
from tests.helpers.agent import OPERATOR_TOKEN, free_port, make_config
from tests.helpers.openapi import conforms as _conforms
from tests.helpers.roles import HH, MATRIX, OP, ORG
from tests.helpers.wait import wait_until


def test_every_route_is_documented_and_nothing_else(tmp_path):
    class Stub:
        config = make_config(tmp_path)

    app = create_app(Stub())
    routes = set()
    for resource in app.router.resources():
        path = resource.canonical
        for route in resource:
            if route.method != "HEAD":
                routes.add((route.method, path))
    documented = {(m.upper(), _template(p)) for p, methods in SPEC["paths"].items() for m in methods}
    assert {(m, _template(p)) for m, p in routes} == documented


def _template(path: str) -> str:
    """aiohttp's `{id:regex}` and OpenAPI's `{id}` compare equal."""
    import re

    return re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)


def test_document_is_openapi_3_1_with_every_error_described():
    assert SPEC["openapi"] == "3.1.0"
    for path, methods in SPEC["paths"].items():
        for method, op in methods.items():
            assert op["summary"] and op["responses"], (method, path)
            if op.get("security"):
                assert {"401", "403"} <= set(op["responses"]), (method, path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    port = free_port()
    config = tmp / "edge.toml"  # no meters: /health is 200 and stays so
    config.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\n[auth]\noperator_token = "{OPERATOR_TOKEN}"\n'
                      f'[storage]\npath = "{tmp / "store"}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def call(method, path, body=None, token=OPERATOR_TOKEN):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data, method=method,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    try:
        wait_until(lambda: urllib.request.urlopen(base + "/openapi.json", timeout=2).status == 200)
        org = call("POST", "/organizations", {"name": "Org", "level": "dso"})
        household = call("POST", "/households", {})
        tokens = {OP: OPERATOR_TOKEN, ORG: org["api_key"], HH: household["token"]}
        yield base, tokens
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


schema = schemathesis.openapi.from_dict(SPEC)
ROLES = {(m, p): allowed for m, p, allowed in MATRIX}
# Operations that would end the session's own credentials: exercised in test_api_roles instead.
SKIP = {("DELETE", "/organizations/{org_id}"), ("POST", "/organizations/{org_id}/key"),
        ("DELETE", "/households/{household_id}"), ("POST", "/households/{household_id}/token")}


@schema.parametrize()
@settings(max_examples=int(os.environ.get("EDGE_SCHEMATHESIS_EXAMPLES", "15")), deadline=None,
          suppress_health_check=list(HealthCheck))


def test_api_conforms_to_its_document(case, server):
    base, tokens = server
    key = (case.method.upper(), case.path)
    if key in SKIP:
        pytest.skip("revokes the test's own credentials")
    allowed = ROLES.get(key, {OP})  # methods the document does not list: the operator gets a 405
    role = next((r for r in (OP, ORG, HH) if r in allowed), OP)
    case.call_and_validate(base_url=base, headers={"Authorization": f"Bearer {tokens[role]}"},
                           checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])


# --- the bodies of the one door (agent/release/), checked against the document ---------------------------------
async def test_released_bodies_and_refusals_are_what_the_document_says(tmp_path, start_agent):
    """Exact (fine, derived, tag) and noisy (fine, derived) releases, history with refused windows, refusals and a
    webhook, from a running agent on a stepped clock, each validated against its schema (strict: a field the
    document does not name fails, as a removed one still named would)."""
    import math
    from datetime import datetime, timezone

    from drivers.reading import Reading
    from tests.helpers.agent import delivery_config
    from tests.helpers.clock import StepClock

    t0 = math.floor(1_790_000_000 / 3600) * 3600
    clock = StepClock(t0 - 60)
    running = await start_agent(make_config(tmp_path, delivery=delivery_config()), clock=clock)
    dso_id, dso = await running.create_org("Grid", "dso")
    supplier_id, supplier = await running.create_org("Supplier", "supplier")
    few_id, few = await running.create_org("Small Grid", "dso")
    homes = [await running.create_household() for _ in range(12)]
    for i, (_, token) in enumerate(homes):
        for org_id in (dso_id, supplier_id) + ((few_id,) if i < 3 else ()):
            assert (await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token))[0] == 200
    status, sub = await running.call("POST", "/data/subscribe", token=dso,
                                     json={"endpoint": "http://127.0.0.1:9/hook", "interval": 1, "window": "1s"})
    assert status == 201, sub
    agent = running.agent
    meters = [agent.registry.household(h).meter_id for h, _ in homes]
    for minute in range(61):  # a reading a minute (held over between), an hour decided minute by minute
        clock.now = t0 + minute * 60 + 0.5
        when = datetime.fromtimestamp(clock.now, timezone.utc)
        for i, meter in enumerate(meters):
            agent.ingest_http(Reading(meter_id=meter, timestamp=when, received_at=when, power_import_w=300.0 + i,
                                      power_export_w=50.0, channels={"fridge": 40.0 + i}))
        await agent.releases.settle()

    bodies = {}
    for name, key, query in (("exact 1s", dso, "window=1s"), ("exact 1h", dso, "window=1h"),
                             ("exact tag 1m", dso, "window=1m&tag=fridge"), ("noisy 15m", supplier, "window=15m"),
                             ("noisy 1h", supplier, "window=1h")):
        status, body = await running.call("GET", f"/data?{query}", token=key)
        assert status == 200, (name, body)
        _conforms("Aggregate", body)
        bodies[name] = body
    assert bodies["exact 1h"]["privacy"] == {"kind": "exact", "derived_from": "4 x 15m"}
    assert bodies["exact 1h"]["households_max"] >= bodies["exact 1h"]["households"]
    assert bodies["exact tag 1m"]["mean_w"] is not None and bodies["noisy 1h"]["privacy"]["kind"] == "noisy"
    status, body = await running.call("GET", "/data/dp?window=15m", token=supplier)
    assert status == 200 and body == bodies["noisy 15m"]
    for key, query in ((dso, f"window=15m&since={t0 - 1800}&until={t0 + 3600}"),
                       (supplier, f"window=15m&since={t0 - 1800}&until={t0 + 3600}"),
                       (dso, f"window=1m&tag=fridge&since={t0 - 120}&until={t0 + 600}")):
        status, history = await running.call("GET", f"/data?{query}", token=key)
        assert status == 200 and history["released"] and history["refused"], history
        _conforms("AggregateHistory", history)
    # refusals: a cohort too small (with its counts), a window not decided yet, an exact level asking for noise
    status, refused = await running.call("GET", "/data?window=1s", token=few)
    assert status == 409 and refused["error"] == "cohort_too_small" and refused["missing"] == 7, refused
    _conforms("Refusal", refused)
    status, refused = await running.call("GET", f"/data?window=1s&since={t0 - 70}&until={t0 - 60}", token=dso)
    assert status == 200 and not refused["released"]  # before the device started
    assert {r["error"] for r in refused["refused"]} == {"not_released"}
    _conforms("AggregateHistory", refused)
    status, error = await running.call("GET", "/data/dp?window=15m", token=dso)
    assert status == 403 and error["error"] == "not_noisy"
    _conforms("Error", error)
    message = agent.delivery.outboxes[sub["id"]].head()  # never delivered: nothing listens on port 9
    assert message is not None and message.payload["aggregate"]["privacy"] == {"kind": "exact"}
    _conforms("WebhookMessage", {**message.payload, "sequence": 1})


def test_the_first_designs_fields_are_gone_from_the_document():
    text = json.dumps(SPEC)
    for gone in ("epsilon_per_day", "epsilon_remaining", "renews_at", "budget_exhausted", "dominated", "max_share",
                 "dp_only", "DPAggregate", "Budget"):
        assert gone not in text, gone
    dp_params = {p["name"] for p in SPEC["paths"]["/data/dp"]["get"]["parameters"]}
    assert dp_params == {"window", "tag", "since", "until"}  # no clamp_w: the clamp is the level's
    aggregate = SPEC["components"]["schemas"]["Aggregate"]
    assert "privacy" in aggregate["required"] and "suppressed" not in aggregate["properties"]
    refusals = set(SPEC["components"]["schemas"]["Refusal"]["properties"]["error"]["enum"])
    assert {"cohort_too_small", "isolating", "not_settled", "not_released", "incomplete",
            "storage_error"} <= refusals
