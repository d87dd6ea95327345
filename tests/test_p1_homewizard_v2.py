"""A HomeWizard P1 meter's local API v2 read as a meter: a real aiohttp HTTPS server on 127.0.0.1 with a
self-signed certificate made here (as the device's own is HomeWizard's, valid for no address), the token from
pairing (POST /api/user while the button is pressed) and the certificate pinned. A wrong token is a clear port
error; a certificate other than the pinned one is refused before anything, the token included, is sent."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.cli import main as cli_main
from agent.config import ConfigError, parse_config
from drivers.homewizard import reading_from_measurement
from drivers.homewizard_https import HomeWizardPortError, fingerprint, pair, parse_pin
from drivers.p1_reader import MeterSpec, P1Reader
from tests.helpers.p1 import Collector, direct, record
from tests.helpers.telegrams import telegram_bytes
from tests.helpers.wait import wait_until

TOKEN = "0123456789ABCDEF0123456789ABCDEF"
SERIAL = "5c2fafaabbcc"


def make_certificate(tmp_path, name: str) -> tuple[ssl.SSLContext, bytes]:
    """A server context with a fresh self-signed certificate for `name`, and the certificate (DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / f"{id(key)}.crt", tmp_path / f"{id(key)}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert.public_bytes(serialization.Encoding.DER)


MEASUREMENT = {"protocol_version": 50, "meter_model": "ISKRA 2M550T-101", "unique_id": "00112233445566778899",
               "timestamp": "2024-06-28T14:12:34", "tariff": 2, "energy_import_kwh": 13779.338,
               "energy_import_t1_kwh": 10830.511, "energy_import_t2_kwh": 2948.827, "energy_export_kwh": 0,
               "power_w": -543, "power_l1_w": -676, "voltage_l1_v": 235.4, "current_l1_a": -2.6,
               "frequency_hz": 50.0, "voltage_sag_l1_count": 1, "any_power_fail_count": 4,
               "long_power_fail_count": 5, "average_power_15m_w": 123.0, "monthly_power_peak_w": 1111.0,
               "monthly_power_peak_timestamp": "2023-01-01T08:00:10",
               "external": [{"unique_id": "aa", "type": "gas_meter", "timestamp": "2023-01-25T22:09:57",
                             "value": 111.111, "unit": "m3"},
                            {"unique_id": "bb", "type": "water_meter", "timestamp": "2023-01-25T22:09:57",
                             "value": 222.222, "unit": "m3"}]}


@pytest.fixture
async def device(tmp_path):
    """A HomeWizard-like P1 meter (API v2) over HTTPS on 127.0.0.1. `state["telegram"] = None`: no telegram
    endpoint; `state["presses"]`: POSTs to /api/user answered 403 before the button counts as pressed."""
    context, der = make_certificate(tmp_path, f"appliance/p1dongle/{SERIAL}")
    state = {"telegram": telegram_bytes("v5.txt"), "requests": [], "presses": 2, "der": der}

    def authorized(request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}" and request.headers.get(
            "X-Api-Version") == "2"

    async def telegram(request):
        state["requests"].append(request.path)
        if not authorized(request):
            return web.json_response({"error": "user:unauthorized"}, status=401)
        if state["telegram"] is None:
            raise web.HTTPNotFound()
        return web.Response(body=state["telegram"], content_type="text/plain")

    async def measurement(request):
        state["requests"].append(request.path)
        if not authorized(request):
            return web.json_response({"error": "user:unauthorized"}, status=401)
        return web.json_response(MEASUREMENT)

    async def user(request):
        state["requests"].append(request.path)
        body = await request.json()
        assert body == {"name": "local/edge"} and request.headers.get("X-Api-Version") == "2"
        if state["presses"] > 0:
            state["presses"] -= 1
            return web.json_response({"error": "user:creation-not-enabled"}, status=403)
        return web.json_response({"token": TOKEN, "name": "local/edge"})

    app = web.Application()
    app.router.add_get("/api/telegram", telegram)
    app.router.add_get("/api/measurement", measurement)
    app.router.add_post("/api/user", user)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    state["url"] = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield state
    await runner.cleanup()


def spec(device, token=TOKEN, pin=None, profile="auto") -> MeterSpec:
    return MeterSpec("m1", device["url"], profile, token=token,
                     certificate_sha256=parse_pin(pin or fingerprint(device["der"])))


async def _read(spec_: MeterSpec, until):
    got = Collector()
    reader = P1Reader(spec_, got, read_timeout=0.05, max_backoff=0.5)
    reader.start()
    try:
        await asyncio.to_thread(wait_until, lambda: until(reader, got))
    finally:
        await asyncio.to_thread(reader.stop)
    return reader, got


async def test_the_telegram_is_read_by_the_same_decoder(device):
    reader, got = await _read(spec(device), lambda r, g: len(g.readings) >= 2)
    assert reader.profile_name == "dsmr5" and reader.http_source == "telegram"
    assert record(got.readings[0]) == direct("v5.txt")
    assert set(device["requests"]) == {"/api/telegram"}
    assert reader.snapshot()["telegrams_ok"] >= 2 and reader.last_port_error is None


async def test_without_a_telegram_the_measurement_is_read(device):
    device["telegram"] = None
    reader, got = await _read(spec(device, profile="dsmr5"), lambda r, g: len(g.readings) >= 1)
    reading = got.readings[0]
    assert reader.http_source == "data" and "/api/measurement" in device["requests"]
    assert (reading.power_import_w, reading.power_export_w, reading.power_export_l1_w) == (0.0, 543.0, 676.0)
    assert (reading.energy_import_t1_wh, reading.energy_import_wh, reading.tariff) == (10830511.0, 13779338.0, 2)
    assert (reading.voltage_l1_v, reading.current_l1_a, reading.frequency_hz) == (235.4, -2.6, 50.0)
    assert (reading.demand_avg_w, reading.demand_peak_month_w) == (123.0, 1111.0)
    assert reading.demand_peak_month_at == dt.datetime(2023, 1, 1, 7, 0, 10, tzinfo=dt.timezone.utc)  # CET
    assert (reading.voltage_sags_l1, reading.power_failures, reading.long_power_failures) == (1, 4, 5)
    assert reading.gas_m3 == 111.111 and [d["type"] for d in reading.mbus] == ["gas", "water"]
    assert reading.mbus[1]["timestamp"] == "2023-01-25T21:09:57Z"


async def test_a_wrong_token_is_a_clear_port_error(device):
    reader, got = await _read(spec(device, token="F" * 32), lambda r, g: r.last_port_error is not None)
    assert reader.opens == 0 and got.readings == []  # never counted as connected
    assert "refused the token" in reader.last_port_error and "homewizard-pair" in reader.last_port_error
    assert "F" * 32 not in reader.last_port_error  # the token is a secret


async def test_another_certificate_is_refused_and_nothing_is_sent(device, tmp_path):
    _, other = make_certificate(tmp_path, f"appliance/p1dongle/{SERIAL}")  # same name, another key
    reader, got = await _read(spec(device, pin=fingerprint(other)), lambda r, g: r.last_port_error is not None)
    assert reader.opens == 0 and got.readings == []
    assert "not the pinned one" in reader.last_port_error and fingerprint(device["der"]) in reader.last_port_error
    assert device["requests"] == []  # refused after the handshake: no request, no token ever reached it


async def test_no_pin_is_no_trust(device):
    """A spec built without a pin (check-config refuses one, see below) still never reads unverified."""
    unpinned = MeterSpec("m1", device["url"], "auto", token=TOKEN)
    reader, got = await _read(unpinned, lambda r, g: r.last_port_error is not None)
    assert "not the pinned one" in reader.last_port_error and device["requests"] == [] and got.readings == []


async def test_pairing_waits_for_the_button_and_pins_the_certificate(device):
    said = []
    token, pin = await asyncio.to_thread(pair, device["url"], "local/edge", 30.0, 0.05, said.append)
    assert (token, pin) == (TOKEN, fingerprint(device["der"]))
    assert device["requests"] == ["/api/user"] * 3  # 403, 403, then the token
    assert f"appliance/p1dongle/{SERIAL}" in said[0] and pin in said[0]
    assert said[1] == "press the button on the HomeWizard P1 meter now"


async def test_pairing_gives_up_when_the_button_is_not_pressed(device):
    device["presses"] = 10 ** 6
    with pytest.raises(HomeWizardPortError, match="not pressed within"):
        await asyncio.to_thread(pair, device["url"], "local/edge", 0.2, 0.05, lambda _: None)


async def test_the_pairing_command_prints_the_config_lines(device, capsys):
    device["presses"] = 0
    assert await asyncio.to_thread(cli_main, ["homewizard-pair", device["url"], "--wait", "5"]) == 0
    out = capsys.readouterr().out
    assert f'token = "{TOKEN}"' in out and f'certificate_sha256 = "{fingerprint(device["der"])}"' in out
    assert await asyncio.to_thread(cli_main, ["homewizard-pair", "http://127.0.0.1:9"]) == 1


def _config(**meter):
    return {"auth": {"operator_token": "a-long-enough-operator-token"},
            "meters": [{"id": "house-1", "profile": "auto", **meter}]}


PIN = "sha256:" + "ab" * 32


@pytest.mark.parametrize("meter, key, words", [
    ({"port": "https://192.168.1.20"}, "meters[0].port", "needs token and certificate_sha256"),
    ({"port": "https://192.168.1.20", "token": TOKEN}, "meters[0].certificate_sha256", "required"),
    ({"port": "https://192.168.1.20", "certificate_sha256": PIN}, "meters[0].token", "required"),
    ({"port": "https://192.168.1.20", "token": "secret", "certificate_sha256": PIN}, "meters[0].token", "32 hex"),
    ({"port": "https://192.168.1.20", "token": TOKEN, "certificate_sha256": "ab"}, "meters[0].certificate_sha256",
     "64 hex"),
    ({"port": "http://192.168.1.20", "token": TOKEN}, "meters[0].token", "https://"),
    ({"port": "/dev/ttyUSB0", "certificate_sha256": PIN}, "meters[0].certificate_sha256", "https://"),
])
def test_check_config_refuses_a_v2_port_without_its_token_and_pin(meter, key, words):
    with pytest.raises(ConfigError) as info:
        parse_config(_config(**meter))
    assert info.value.key == key and words in str(info.value)
    assert "secret" not in str(info.value)


def test_check_config_takes_a_paired_v2_port():
    spec_ = parse_config(_config(port="https://192.168.1.20", token=TOKEN, certificate_sha256=PIN)).meters[0]
    assert (spec_.token, spec_.certificate_sha256) == (TOKEN, bytes.fromhex("ab" * 32))
    assert TOKEN not in repr(spec_)


def test_a_v1_name_in_a_v2_document_is_not_read():
    reading = reading_from_measurement({"power_w": 100, "active_power_w": 5000}, "m", dt.datetime.now(dt.timezone.utc))
    assert reading.power_import_w == 100.0
