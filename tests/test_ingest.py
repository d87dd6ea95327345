"""Readings over HTTP: JSON, raw telegrams, and DSMR-reader's remote datalogger contract.
Every bad request gets a clear 4xx and stores nothing."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from tests.helpers.agent import make_config
from tests.helpers.p1_oracle import expected_values
from tests.helpers.telegrams import TELEGRAM_PROFILES, telegram_bytes


def ts(seconds_ago: float = 0) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


@pytest.fixture
async def household(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    household_id, token = await running.create_household()
    meter_id = running.agent.registry.household(household_id).meter_id
    return running, token, meter_id


async def stored(running, meter_id):
    status, body = await running.call("GET", f"/meters/{meter_id}/readings?limit=100000")
    return body["readings"] if status == 200 else []


async def test_single_reading_with_channels(household):
    running, token, meter_id = household
    status, body = await running.call("POST", "/readings", token=token, json={
        "timestamp": ts(), "power_import_w": 420.5, "voltage_l1_v": 231.0,
        "channels": {"fridge": 80.5, "lighting": 12.0}})
    assert status == 201 and body == {"accepted": 1}
    rows = await stored(running, meter_id)
    assert len(rows) == 1 and rows[0]["power_import_w"] == 420.5 and rows[0]["channels"]["fridge"] == 80.5
    assert rows[0]["power_export_w"] is None and rows[0]["meter_id"] == meter_id


@pytest.mark.parametrize("shape", ["list", "object"])
async def test_batches(household, shape):
    running, token, meter_id = household
    items = [{"timestamp": ts(60 - i), "power_import_w": 100 + i} for i in range(50)]
    payload = items if shape == "list" else {"readings": items}
    status, body = await running.call("POST", "/readings", token=token, json=payload)
    assert status == 201 and body["accepted"] == 50
    assert len(await stored(running, meter_id)) == 50


@pytest.mark.parametrize("bad, status, words", [
    ({"power_import_w": 1}, 422, "timestamp is required"),
    ({"timestamp": "yesterday"}, 422, "ISO 8601"),
    ({"timestamp": "2026-01-01T00:00:00"}, 422, "UTC offset"),
    ({"timestamp": ts(), "power_import_w": "100"}, 422, "must be a number"),
    ({"timestamp": ts(), "power_import_w": True}, 422, "must be a number"),
    ({"timestamp": ts(), "power_import_w": 1e9}, 422, "between"),
    ({"timestamp": ts(), "power_import_w": -5000}, 422, "power_import_w must not be negative"),
    ({"timestamp": ts(), "power_export_w": -0.5}, 422, "power_export_w must not be negative"),
    ({"timestamp": ts(), "power_import_l2_w": -1}, 422, "power_import_l2_w must not be negative"),
    ({"timestamp": ts(), "power_export_l3_w": -1}, 422, "power_export_l3_w must not be negative"),
    ({"timestamp": ts(), "tariff": 1.5}, 422, "whole number"),
    ({"timestamp": ts(), "powr_import_w": 1}, 422, "unknown field"),
    ({"timestamp": ts(), "meter_id": "someone-else"}, 422, "set by the device"),
    ({"timestamp": ts(), "channels": {"Fridge!": 1}}, 422, "channel tag"),
    ({"timestamp": ts(), "channels": {"fridge": -5}}, 422, "channels.fridge must not be negative"),
    ({"timestamp": ts(-3600)}, 422, "ahead of the device's clock"),
    ([], 422, "no readings"),
    ("just a string", 422, "JSON object"),
])


async def test_bad_readings_are_refused_and_nothing_is_stored(household, bad, status, words):
    running, token, meter_id = household
    got, body = await running.call("POST", "/readings", token=token, json=bad)
    assert got == status and words in body["detail"], body
    assert set(body) >= {"error", "detail"}
    assert await stored(running, meter_id) == []


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
@pytest.mark.parametrize("field", ["power_import_w", "power_export_l1_w", "energy_import_wh", "gas_m3"])
async def test_non_finite_numbers_are_refused(household, literal, field):
    """Python's JSON reader takes NaN and Infinity, which are not JSON: they must not reach a sum."""
    running, token, meter_id = household
    body = b'{"timestamp": "%s", "%s": %s}' % (ts().encode(), field.encode(), literal)
    status, answer = await running.call("POST", "/readings", token=token, data=body,
                                        headers={"Content-Type": "application/json"})
    assert status == 422 and answer["error"] == "invalid_reading"
    assert answer["detail"] == f"{field} must be a finite number"
    assert await stored(running, meter_id) == []


async def test_a_tag_outside_the_vocabulary_is_refused_naming_the_allowed_ones(household):
    running, token, meter_id = household
    vocabulary = running.agent.config.privacy.tags
    assert "dialysis" not in vocabulary and "fridge" in vocabulary
    status, body = await running.call("POST", "/readings", token=token, json=[
        {"timestamp": ts(2), "channels": {"fridge": 50.0}},
        {"timestamp": ts(1), "channels": {"fridge": 50.0, "dialysis": 300.0}}])
    assert status == 422 and body["error"] == "unknown_tag", body
    assert body["detail"].startswith("readings[1]: channel tag 'dialysis' is not in this device's vocabulary")
    assert body["detail"].endswith("tags: " + ", ".join(vocabulary))
    assert await stored(running, meter_id) == []  # the whole batch


async def test_the_operator_defines_the_vocabulary(tmp_path, start_agent):
    from dataclasses import replace

    from agent.config import PrivacyConfig

    config = make_config(tmp_path)
    running = await start_agent(replace(config, privacy=PrivacyConfig(tags=("sauna", "ev"))))
    _, token = await running.create_household()
    status, body = await running.call("POST", "/readings", token=token,
                                      json={"timestamp": ts(2), "channels": {"sauna": 6000.0}})
    assert status == 201, body
    status, body = await running.call("POST", "/readings", token=token,
                                      json={"timestamp": ts(1), "channels": {"fridge": 60.0}})
    assert status == 422 and body["error"] == "unknown_tag" and body["detail"].endswith("tags: sauna, ev")


def _telegram_with(name: str, old: bytes, new: bytes) -> bytes:
    """A real telegram with one value changed and its CRC made right again: what a hostile datalogger sends."""
    from drivers.telegram import crc16

    raw = telegram_bytes(name)
    assert old in raw
    raw = raw.replace(old, new)
    body = raw[: raw.index(b"!") + 1]
    return body + b"%04X\r\n" % crc16(body)


# A telegram's profile is learnt from the first one (the profile that reads the most fields): a value only some
# profiles read may instead be left out by the one that wins, which is as good (the value is not stored).
@pytest.mark.parametrize("old, new, field, outcome", [
    (b"1-0:2.7.0(00.000*kW)", b"1-0:2.7.0(-5.000*kW)", "power_export_w is negative", "refused"),
    (b"1-0:1.7.0(00.244*kW)", b"1-0:1.7.0(Infinity*kW)", "power_import_w is not a finite number", "refused"),
    (b"1-0:1.7.0(00.244*kW)", b"1-0:1.7.0(NaN*kW)", "power_import_w is not a finite number", "refused"),
    (b"1-0:21.7.0(00.070*kW)", b"1-0:21.7.0(NaN*kW)", "power_import_l1_w", "left out"),
    (b"1-0:1.8.1(000004.426*kWh)", b"1-0:1.8.1(-00004.426*kWh)", "energy_import_t1_wh", "left out"),
])


@pytest.mark.parametrize("path", ["/readings", "/api/v1/datalogger/dsmrreading"])
async def test_telegrams_with_negative_or_non_finite_values_are_refused(household, old, new, field, outcome, path):
    running, token, meter_id = household
    raw = _telegram_with("v5.txt", old, new)
    if path == "/readings":
        status, body = await running.call("POST", path, token=token, data=raw, headers={"Content-Type": "text/plain"})
    else:
        status, body = await running.call("POST", path, token=None, headers={"Authorization": f"Token {token}"},
                                          data={"telegram": raw.decode("latin-1")})
    rows = await stored(running, meter_id)
    if outcome == "refused":
        assert status == 422 and body["error"] == "bad_telegram" and field in body["detail"], body
        assert rows == []
    else:
        assert status == 201 and len(rows) == 1 and rows[0][field.split()[0]] is None, (body, rows)
    for row in rows:
        for name, value in row.items():
            if isinstance(value, float):
                assert math.isfinite(value) and (value >= 0 or name.endswith("_a")), (name, value)


async def test_a_signed_power_register_is_read_as_export_never_a_negative_import(household):
    """A meter with one signed register reports export as negative import: stored as export, import 0."""
    running, token, meter_id = household
    raw = _telegram_with("v5.txt", b"1-0:1.7.0(00.244*kW)", b"1-0:1.7.0(-01.500*kW)")
    status, body = await running.call("POST", "/readings", token=token, data=raw,
                                      headers={"Content-Type": "text/plain"})
    assert status == 201, body
    latest = (await running.call("GET", f"/meters/{meter_id}/latest"))[1]
    assert (latest["power_import_w"], latest["power_export_w"]) == (0.0, 1500.0)


async def test_batch_is_all_or_nothing(household):
    running, token, meter_id = household
    items = [{"timestamp": ts(10 - i), "power_import_w": 100} for i in range(5)]
    items[3]["power_import_w"] = "oops"
    status, body = await running.call("POST", "/readings", token=token, json=items)
    assert status == 422 and body["detail"].startswith("readings[3]:")
    assert await stored(running, meter_id) == []


async def test_duplicates_and_going_backwards(household):
    running, token, meter_id = household
    first = {"timestamp": ts(5), "power_import_w": 1}
    assert (await running.call("POST", "/readings", token=token, json=first))[0] == 201
    status, body = await running.call("POST", "/readings", token=token, json=first)
    assert status == 409 and body["error"] == "duplicate"
    same = ts(1)
    status, body = await running.call("POST", "/readings", token=token, json=[
        {"timestamp": same, "power_import_w": 1}, {"timestamp": same, "power_import_w": 2}])
    assert status == 409 and body["error"] == "duplicate"
    status, body = await running.call("POST", "/readings", token=token, json={"timestamp": ts(60)})
    assert status == 409  # older than what was accepted
    assert len(await stored(running, meter_id)) == 1


async def test_malformed_json_and_wrong_media_type(household):
    running, token, meter_id = household
    status, body = await running.call("POST", "/readings", token=token, data=b"{not json",
                                      headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"] == "malformed_json"
    status, body = await running.call("POST", "/readings", token=token, data=b"<xml/>",
                                      headers={"Content-Type": "application/xml"})
    assert status == 415


async def test_body_size_limit(household):
    running, token, meter_id = household
    status, body = await running.call("POST", "/readings", token=token, data=b"[" + b" " * (2 * 1024 * 1024) + b"]",
                                      headers={"Content-Type": "application/json"})
    assert status == 413 and "error" in body


async def test_batch_size_limit(household):
    running, token, meter_id = household
    items = [{"timestamp": ts(3000 - i), "power_import_w": 1} for i in range(1001)]
    status, body = await running.call("POST", "/readings", token=token, json=items)
    assert status == 413 and body["error"] == "batch_too_large"


@pytest.mark.parametrize("name", sorted(TELEGRAM_PROFILES))
async def test_raw_telegrams_as_text_plain(household, name):
    running, token, meter_id = household
    status, body = await running.call("POST", "/readings", token=token, data=telegram_bytes(name),
                                      headers={"Content-Type": "text/plain"})
    assert status == 201, body
    latest = (await running.call("GET", f"/meters/{meter_id}/latest"))[1]
    for field, value in expected_values(name).items():
        assert latest[field] == pytest.approx(value), field


async def test_telegram_with_bad_crc_is_refused(household):
    running, token, meter_id = household
    raw = bytearray(telegram_bytes("v5.txt"))
    raw[raw.index(b"1-0:1.8.1(") + 12] ^= 1
    status, body = await running.call("POST", "/readings", token=token, data=bytes(raw),
                                      headers={"Content-Type": "text/plain"})
    assert status == 422 and body["error"] == "bad_crc"
    status, body = await running.call("POST", "/readings", token=token, data=b"hello",
                                      headers={"Content-Type": "text/plain"})
    assert status == 422 and body["error"] == "bad_telegram"
    assert await stored(running, meter_id) == []


@pytest.mark.parametrize("header", ["Token", "X-AUTHKEY"])
@pytest.mark.parametrize("name", ["v5.txt", "v4_2.txt", "fluvius_v171.txt", "v2_2.txt"])
async def test_dsmr_reader_datalogger_contract(household, header, name):
    """What DSMR-reader's dsmr_datalogger sends: form field `telegram`, 201 expected."""
    running, token, meter_id = household
    headers = {"Authorization": f"Token {token}"} if header == "Token" else {"X-AUTHKEY": token}
    status, body = await running.call("POST", "/api/v1/datalogger/dsmrreading", token=None, headers=headers,
                                      data={"telegram": telegram_bytes(name).decode("latin-1")})
    assert status == 201, body
    latest = (await running.call("GET", f"/meters/{meter_id}/latest"))[1]
    for field, value in expected_values(name).items():
        assert latest[field] == pytest.approx(value), field
    status, body = await running.call("POST", "/api/v1/datalogger/dsmrreading", token=None,
                                      headers={"X-AUTHKEY": "wrong"}, data={"telegram": "x"})
    assert status == 401
    status, body = await running.call("POST", "/api/v1/datalogger/dsmrreading", token=None, headers=headers,
                                      data={"other": "x"})
    assert status == 400 and "telegram" in body["detail"]


async def test_a_wired_household_cannot_post(tmp_path, start_agent, pty_pair):
    from drivers.p1_reader import MeterSpec

    running = await start_agent(make_config(tmp_path, [MeterSpec("m1", pty_pair.path, "dsmr5")]))
    _, token = await running.create_household("m1")
    status, body = await running.call("POST", "/readings", token=token, json={"timestamp": ts()})
    assert status == 409 and body["error"] == "wired_meter"
    status, body = await running.call("POST", "/households", json={"meter_id": "not-a-port"})
    assert status == 422
    status, body = await running.call("POST", "/households", json={"meter_id": "m1"})
    assert status == 409


async def test_hostile_bodies_and_parameters_are_4xx_not_500(household):
    running, token, meter_id = household
    status, body = await running.call("POST", "/readings", token=token, data=b"[" * 100_000,
                                      headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"] == "malformed_json"
    assert (await running.call("POST", "/readings", token=token, json={"timestamp": ts()}))[0] == 201
    status, body = await running.call("GET", f"/meters/{meter_id}/readings?limit=%C2%B2")  # "²".isdigit()
    assert status == 400 and body["error"] == "bad_parameter"
