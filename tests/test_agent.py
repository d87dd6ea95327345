"""The running agent end to end: real telegrams into real pseudo-terminals, out of the real API."""

from __future__ import annotations

import pytest

from drivers.p1_reader import MeterSpec
from tests.helpers.agent import OPERATOR_TOKEN, make_config
from tests.helpers.p1_oracle import expected_values
from tests.helpers.pty import PtyPair
from tests.helpers.telegrams import TELEGRAM_PROFILES, telegram_bytes


async def test_every_real_telegram_through_a_pty_into_the_running_agent(tmp_path, start_agent):
    """All thirteen telegrams at once, one meter (and one pty) each, as on a multi-port device."""
    pairs = {name: PtyPair() for name in TELEGRAM_PROFILES}
    meters = [MeterSpec(name.removesuffix(".txt"), pair.path, TELEGRAM_PROFILES[name][0])
              for name, pair in pairs.items()]
    try:
        running = await start_agent(make_config(tmp_path, meters))
        readers = running.agent.readers
        await running.wait_for(lambda: all(r.opens >= 1 for r in readers.values()))
        for name, pair in pairs.items():
            pair.write(telegram_bytes(name))
        for name in pairs:
            meter_id = name.removesuffix(".txt")

            async def has_reading():
                status, _ = await running.get(f"/meters/{meter_id}/latest")
                return status == 200

            await running.wait_for(has_reading)
            status, reading = await running.get(f"/meters/{meter_id}/latest")
            for field, value in expected_values(name).items():
                assert reading[field] == pytest.approx(value), (name, field)
            assert reading["meter_id"] == meter_id
        status, health = await running.get("/health")  # the detail: the operator's
        assert status == 200 and health["status"] == "ok"
        assert all(m["state"] == "reading" and m["telegrams_ok"] == 1 for m in health["meters"].values())
        assert await running.get("/health", token=None) == (200, {"status": "ok"})
    finally:
        for pair in pairs.values():
            pair.close()


async def test_health_is_503_until_every_meter_reads(tmp_path, start_agent, pty_pair):
    meters = [MeterSpec("a", pty_pair.path, "dsmr5"), MeterSpec("b", str(tmp_path / "absent"), "dsmr5")]
    running = await start_agent(make_config(tmp_path, meters))
    await running.wait_for(lambda: running.agent.readers["a"].opens >= 1)
    pty_pair.write(telegram_bytes("v5.txt"))
    await running.wait_for(lambda: running.agent.readers["a"].state == "reading")
    # without the operator's token, the device only: a meter that stopped is one household's news (a power cut)
    assert await running.get("/health", token=None) == (200, {"status": "ok"})
    status, body = await running.get("/health")
    assert status == 503 and body["status"] == "degraded"
    assert body["meters"]["a"]["state"] == "reading" and body["meters"]["b"]["state"] == "disconnected"
    assert body["meters"]["a"]["telegrams_ok"] == 1 and body["meters"]["b"]["last_error"]


async def test_metrics_in_prometheus_format(tmp_path, start_agent, pty_pair):
    running = await start_agent(make_config(tmp_path, [MeterSpec("m1", pty_pair.path, "dsmr5")]))
    await running.wait_for(lambda: running.agent.readers["m1"].opens >= 1)
    raw = bytearray(telegram_bytes("v5.txt"))
    raw[raw.index(b"1-0:1.8.1(") + 12] ^= 1
    pty_pair.write(bytes(raw) + telegram_bytes("v5.txt"))
    await running.wait_for(lambda: running.agent.readers["m1"].state == "reading")
    status, body = await running.get("/metrics", token=None)
    assert status == 401 and body["error"] == "unauthorized"
    status, text = await running.get("/metrics")
    assert status == 200
    assert 'edge_meter_telegrams_total{meter="m1"} 1' in text
    assert 'edge_meter_crc_errors_total{meter="m1"} 1' in text
    assert 'edge_meter_state{meter="m1",state="reading"} 1' in text
    assert "# TYPE edge_meter_telegrams_total counter" in text
    for line in text.splitlines():  # every sample line is `name{labels} number`
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("path", ["/meters", "/meters/m1/latest", "/meters/m1/readings"])
async def test_operator_endpoints_need_the_operator_token(tmp_path, start_agent, pty_pair, path):
    running = await start_agent(make_config(tmp_path, [MeterSpec("m1", pty_pair.path, "dsmr5")]))
    status, body = await running.get(path, token=None)
    assert status == 401 and body["error"] == "unauthorized"
    status, body = await running.get(path, token="wrong-token-of-the-same-kind")
    assert status == 401 and body["error"] == "unauthorized"
    _, org_key = running.agent.registry.create_organization("Supplier X", "dso")
    status, body = await running.get(path, token=org_key)
    assert status == 403 and body["error"] == "forbidden"  # a valid token, but not the operator's
    async with running.http.get(running.base + path, headers={"Authorization": "Basic Zm9vOmJhcg=="}) as resp:
        assert resp.status == 401


async def test_readings_history_and_resolutions(tmp_path, start_agent, pty_pair):
    running = await start_agent(make_config(tmp_path, [MeterSpec("m1", pty_pair.path, "dsmr5")]))
    await running.wait_for(lambda: running.agent.readers["m1"].opens >= 1)
    for _ in range(5):
        pty_pair.write(telegram_bytes("v5.txt"))
    await running.wait_for(lambda: running.agent.readers["m1"].stats.telegrams_ok == 5)
    await running.wait_for(lambda: running.agent.pipeline.readings_in == 5)
    status, body = await running.get("/meters/m1/readings")
    assert status == 200 and body["count"] == 5 and body["resolution"] == "raw"
    assert all(r["power_import_w"] == 244.0 for r in body["readings"])
    stamps = [r["received_at"] for r in body["readings"]]
    assert stamps == sorted(stamps)
    status, body = await running.get("/meters/m1/readings?limit=2")
    assert body["count"] == 2
    status, body = await running.get("/meters/m1/readings?since=2100-01-01T00:00:00Z")
    assert status == 200 and body["count"] == 0
    for resolution in ("1m", "15m"):
        status, body = await running.get(f"/meters/m1/readings?resolution={resolution}")
        assert status == 200 and body["resolution"] == resolution


@pytest.mark.parametrize("query, words", [
    ("resolution=5m", "resolution"),
    ("since=yesterday", "since"),
    ("limit=0", "limit"),
    ("limit=abc", "limit"),
    ("since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
])


async def test_bad_query_parameters_are_400_with_json(tmp_path, start_agent, pty_pair, query, words):
    running = await start_agent(make_config(tmp_path, [MeterSpec("m1", pty_pair.path, "dsmr5")]))
    status, body = await running.get(f"/meters/m1/readings?{query}")
    assert status == 400 and body["error"] == "bad_parameter" and words in body["detail"]


async def test_unknown_meter_and_unknown_path(tmp_path, start_agent, pty_pair):
    running = await start_agent(make_config(tmp_path, [MeterSpec("m1", pty_pair.path, "dsmr5")]))
    status, body = await running.get("/meters/nope/latest")
    assert status == 404 and body["error"] == "not_found"
    status, body = await running.get("/meters/m1/latest")
    assert status == 404 and body["error"] == "no_reading"
    status, body = await running.get("/no/such/path", token=None)
    assert status == 404 and "error" in body


async def test_meters_list(tmp_path, start_agent, pty_pair):
    running = await start_agent(make_config(tmp_path, [MeterSpec("m1", pty_pair.path, "dsmr5")]))
    status, body = await running.get("/meters")
    assert status == 200
    assert body["meters"][0]["id"] == "m1" and body["meters"][0]["port"] == pty_pair.path
    assert OPERATOR_TOKEN not in str(body)


async def test_readings_survive_a_restart(tmp_path, start_agent, pty_pair):
    config = make_config(tmp_path, [MeterSpec("m1", pty_pair.path, "dsmr5")])
    running = await start_agent(config)
    await running.wait_for(lambda: running.agent.readers["m1"].opens >= 1)
    for _ in range(3):
        pty_pair.write(telegram_bytes("v5.txt"))
    await running.wait_for(lambda: running.agent.pipeline.readings_in == 3)
    await running.http.close()
    await running.agent.stop()  # a clean stop flushes
    again = await start_agent(config)
    status, body = await again.get("/meters/m1/readings")
    assert status == 200 and body["count"] == 3
    status, latest = await again.get("/meters/m1/latest")
    assert status == 200 and latest["power_import_w"] == 244.0


async def test_a_rejected_config_shows_in_health(tmp_path, start_agent):
    """The image's boot step keeps the last good edge.toml and leaves the error beside the data."""
    running = await start_agent(make_config(tmp_path))
    status, body = await running.get("/health")
    assert status == 200 and body["config_error"] is None
    (tmp_path / "store" / "config-error.txt").write_text("edge.toml: meters[0].profile: unknown profile 'dsmr9'\n")
    status, body = await running.get("/health")
    assert status == 503 and body["status"] == "degraded"
    assert body["config_error"] == "edge.toml: meters[0].profile: unknown profile 'dsmr9'"
    assert await running.get("/health", token=None) == (503, {"status": "degraded"})
    (tmp_path / "store" / "config-error.txt").unlink()
    assert (await running.get("/health", token=None))[0] == 200
