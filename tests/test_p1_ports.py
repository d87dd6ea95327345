"""Every real telegram end to end through a real pty (its profile, and `auto`), what /health says about wrong
serial settings, and a HomeWizard P1 meter (a real aiohttp server on 127.0.0.1 imitating its local API v1)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import serial
from aiohttp import web

from drivers.p1_reader import MeterSpec, MeterState, P1Reader
from drivers.profiles import get_profile
from drivers.telegram import TelegramDecoder
from tests.helpers.p1 import Collector, direct, readers, record  # noqa: F401  (readers: the fixture)
from tests.helpers.p1_oracle import EXTRA_PROFILES
from tests.helpers.telegrams import TELEGRAM_PROFILES, telegram_bytes, with_even_parity_bit
from tests.helpers.wait import wait_until

# What `auto` may call each family: DSMR 2.2 and 3 share dsmr_parser's specification; the decrypted Sagemcom
# telegram is read by E.ON Hungary's (a superset); unpadded_crc.txt is a heat-meter module that V4 reads best.
AUTO_NAMES = {"v2_2.txt": {"dsmr22", "dsmr3"}, "v3.txt": {"dsmr22", "dsmr3"}, "sagemcom_t210_d_r.txt": {"eon_hungary"},
              "unpadded_crc.txt": {"dsmr4", "dsmr5"}}


@pytest.mark.parametrize("name", sorted(TELEGRAM_PROFILES))
def test_each_real_telegram_over_a_pty_with_its_profile(pty_pair, readers, name):
    got = Collector()
    reader = readers(MeterSpec("m1", pty_pair.path, TELEGRAM_PROFILES[name][0]), got)
    wait_until(lambda: reader.opens >= 1)
    pty_pair.write(telegram_bytes(name))
    got.wait_for(1)
    assert record(got.readings[0]) == direct(name)


@pytest.mark.parametrize("name", sorted(TELEGRAM_PROFILES))
def test_each_real_telegram_over_a_pty_with_auto(pty_pair, readers, name):
    """A pty reads at every serial setting, as ser2net and Wi-Fi gateways do: the first setting tried must
    still find the meter's own family (DSMR 2.2/3 used to be taken for iskra_ie and lose gas)."""
    got = Collector()
    reader = readers(MeterSpec("m1", pty_pair.path, "auto"), got)
    wait_until(lambda: reader.opens >= 1)
    pty_pair.write(telegram_bytes(name))
    got.wait_for(1)
    assert reader.profile_name in AUTO_NAMES.get(name, {TELEGRAM_PROFILES[name][0]})
    assert record(got.readings[0]) == direct(name)


EXTRA = Path(__file__).parent / "telegrams_extra"
AUTO_EXTRA = {"iskra.txt": {"dsmr22", "dsmr3"}, "example_dsmr50.txt": {"dsmr5", "smarty"},
              "iskra_dsmr5_bus2.txt": {"dsmr5", "smarty"},
              # E.ON Hungary's specification has more of the Smarty's lines than Smarty's own: same values
              "luxembourg_smarty.txt": {"smarty", "eon_hungary"}}


@pytest.mark.parametrize("auto", [False, True], ids=["profile", "auto"])
@pytest.mark.parametrize("name", sorted(EXTRA_PROFILES))
def test_dsmr_reader_telegrams_over_a_pty(pty_pair, readers, name, auto):
    """Sent as they are, twice (some end without a line end after the CRC: the next telegram's '/' ends them)."""
    from datetime import datetime, timezone

    profile = EXTRA_PROFILES[name][0]
    raw = (EXTRA / name).read_bytes()
    got = Collector()
    reader = readers(MeterSpec("m1", pty_pair.path, "auto" if auto else profile), got)
    wait_until(lambda: reader.opens >= 1)
    pty_pair.write(raw + raw)
    got.wait_for(1)
    if auto:
        assert reader.profile_name in AUTO_EXTRA.get(name, {profile})
    alone = TelegramDecoder("m1", get_profile(profile)).decode(raw.decode("latin-1"), datetime.now(timezone.utc))
    assert record(got.readings[0]) == record(alone)


def test_a_7e1_meter_read_at_8n1_says_so(pty_pair, readers):
    got = Collector()
    reader = readers(MeterSpec("m1", pty_pair.path, "dsmr5", stall_seconds=0.5), got)
    wait_until(lambda: reader.opens >= 1)
    for _ in range(3):
        pty_pair.write(with_even_parity_bit(telegram_bytes("v5.txt")))
    wait_until(lambda: reader.state == MeterState.STALLED)
    snapshot = reader.snapshot()
    assert "7E1" in snapshot["hint"] and snapshot["last_error"] == snapshot["hint"], snapshot
    assert got.readings == []


def test_a_silent_port_says_no_data(pty_pair, readers):
    reader = readers(MeterSpec("m1", pty_pair.path, "dsmr5", stall_seconds=0.3), Collector())
    wait_until(lambda: reader.state == MeterState.STALLED)
    assert reader.snapshot()["last_error"].startswith("no data at all")


def test_a_termios_error_is_a_port_error(tmp_path, readers):
    """termios.error is no OSError: a port whose tcflush fails (a hung-up pty, as a pulled USB adapter) used to
    count as a reader crash and a 30 s pause. Real: pyserial's own open flushes the pty after its other end
    closed, which raises termios.error."""
    serial.protocol_handler_packages.append("tests.hungup_pty")
    try:
        reader = readers(MeterSpec("m1", "hungup://", "dsmr5"), Collector())
        wait_until(lambda: reader.last_port_error is not None)
        assert reader.state == MeterState.DISCONNECTED
        assert reader.last_port_error.startswith("open: ") and "reader failed" not in reader.last_port_error
        wait_until(lambda: reader.snapshot()["last_error"].startswith("open: "))
    finally:
        serial.protocol_handler_packages.remove("tests.hungup_pty")


# --- HomeWizard P1 -------------------------------------------------------------------------------
DATA = {"wifi_ssid": "home", "smr_version": 50, "meter_model": "ISKRA 2M550T-101", "unique_id": "00112233445566778899",
        "active_tariff": 2, "total_power_import_kwh": 13779.338, "total_power_import_t1_kwh": 10830.511,
        "total_power_import_t2_kwh": 2948.827, "total_power_export_kwh": 0.0, "active_power_w": -543,
        "active_power_l1_w": -676, "active_voltage_l1_v": 235.4, "active_current_l1_a": 2.6,
        "any_power_fail_count": 4, "long_power_fail_count": 5, "active_power_average_w": 123.0,
        "montly_power_peak_w": 1111.0, "montly_power_peak_timestamp": 230101080010,
        "external": [{"unique_id": "aa", "type": "gas_meter", "timestamp": 230125220957, "value": 111.111, "unit": "m3"},
                     {"unique_id": "bb", "type": "water_meter", "timestamp": 230125220957, "value": 222.222,
                      "unit": "m3"}]}


@pytest.fixture
async def homewizard():
    """A fake HomeWizard P1 meter on 127.0.0.1: /api/v1/telegram serves a real telegram, /api/v1/data its JSON;
    `state["telegram"] = None` makes it an older firmware without the telegram endpoint."""
    state = {"telegram": telegram_bytes("v5.txt"), "requests": []}

    async def telegram(request):
        state["requests"].append(request.path)
        if state["telegram"] is None:
            raise web.HTTPNotFound()
        return web.Response(body=state["telegram"], content_type="text/plain")

    async def data(request):
        state["requests"].append(request.path)
        return web.json_response(DATA)

    app = web.Application()
    app.router.add_get("/api/v1/telegram", telegram)
    app.router.add_get("/api/v1/data", data)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield state
    await runner.cleanup()


async def _start(spec):
    got = Collector()
    reader = P1Reader(spec, got, read_timeout=0.05, max_backoff=0.5)
    reader.start()
    return reader, got


async def test_homewizard_telegram_is_read_by_the_same_decoder(homewizard):
    reader, got = await _start(MeterSpec("m1", homewizard["url"], "auto"))
    try:
        await asyncio.to_thread(got.wait_for, 2)
        assert reader.profile_name == "dsmr5" and reader.http_source == "telegram"
        assert record(got.readings[0]) == direct("v5.txt")
        assert reader.snapshot()["state"] == MeterState.READING and reader.snapshot()["telegrams_ok"] >= 2
    finally:
        await asyncio.to_thread(reader.stop)


async def test_homewizard_without_a_telegram_endpoint_is_read_from_its_json(homewizard):
    homewizard["telegram"] = None
    reader, got = await _start(MeterSpec("m1", homewizard["url"], "dsmr5"))
    try:
        await asyncio.to_thread(got.wait_for, 1)
        reading = got.readings[0]
        assert reader.http_source == "data" and "/api/v1/data" in homewizard["requests"]
        assert (reading.power_import_w, reading.power_export_w, reading.power_export_l1_w) == (0.0, 543.0, 676.0)
        assert (reading.energy_import_t1_wh, reading.energy_import_wh, reading.tariff) == (10830511.0, 13779338.0, 2)
        assert (reading.voltage_l1_v, reading.demand_avg_w, reading.demand_peak_month_w) == (235.4, 123.0, 1111.0)
        assert reading.gas_m3 == 111.111 and [d["type"] for d in reading.mbus] == ["gas", "water"]
        assert reader.snapshot()["telegrams_ok"] >= 1
    finally:
        await asyncio.to_thread(reader.stop)


async def test_homewizard_that_goes_away_is_a_port_error_then_comes_back(homewizard):
    reader, got = await _start(MeterSpec("m1", homewizard["url"].replace("127.0.0.1", "127.0.0.1") + "/", "dsmr5"))
    try:
        await asyncio.to_thread(got.wait_for, 1)
        homewizard["telegram"] = b"<html>busy</html>"
        await asyncio.to_thread(wait_until, lambda: reader.stats.parse_errors >= 1)
        homewizard["telegram"] = telegram_bytes("v5.txt")
        count = len(got.readings)
        await asyncio.to_thread(got.wait_for, count + 1)
    finally:
        await asyncio.to_thread(reader.stop)


def test_a_homewizard_port_with_a_path_is_refused():
    from drivers.homewizard import base_url

    assert base_url("http://192.168.1.20") == "http://192.168.1.20"
    with pytest.raises(ValueError):
        base_url("http://192.168.1.20/api/v1/data")


@pytest.mark.parametrize("port, error", [("http://192.168.1.20", None), ("http://p1meter.local:80/", None),
                                         ("http://192.168.1.20/api/v1/telegram", "meters[0].port"),
                                         ("https://192.168.1.20", "meters[0].port")])


def test_check_config_knows_a_homewizard_port(port, error):
    """An http:// port used to pass check-config and fail at run time; now it runs, and a wrong one is refused."""
    from agent.config import ConfigError, parse_config

    data = {"auth": {"operator_token": "a-long-enough-operator-token"},
            "meters": [{"id": "house-1", "port": port, "profile": "auto"}]}
    if error is None:
        assert parse_config(data).meters[0].port == port
    else:
        with pytest.raises(ConfigError) as info:
            parse_config(data)
        assert info.value.key == error
