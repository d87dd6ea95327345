"""The Tasmota driver (drivers/appliances/tasmota.py) against a real aiohttp server on 127.0.0.1 that answers like
one (tests/helpers/appliances.py): `cm?cmnd=Power%20On` written as documented, relays by number, the state read
back, the MAC address from `Status 5`, and answers of other firmware refused."""

from __future__ import annotations

import aiohttp
import pytest

from drivers.appliances import ApplianceError, driver
from drivers.appliances.base import Status
from tests.helpers.appliances import FakeTasmota, answering, tasmota  # noqa: F401  (answering, tasmota: fixtures)


async def test_tasmota_power_commands(tasmota):
    async with aiohttp.ClientSession() as session:
        await driver("tasmota").command(session, tasmota.address, None, "on")
        assert tasmota.state == ["ON"] and tasmota.raw_queries == ["cmnd=Power%20On"]
        await driver("tasmota").command(session, tasmota.address, None, "off")
        assert tasmota.state == ["OFF"] and tasmota.raw_queries[-1] == "cmnd=Power%20Off"
        with pytest.raises(ApplianceError, match="relay reports"):
            await driver("tasmota").command(session, tasmota.address, 3, "on")  # no third relay


async def test_tasmota_second_relay():
    device = FakeTasmota(relays=2)
    await device.start()
    try:
        async with aiohttp.ClientSession() as session:
            await driver("tasmota").command(session, device.address, 2, "on")
        assert device.state == ["OFF", "ON"] and device.raw_queries == ["cmnd=Power2%20On"]
    finally:
        await device.runner.cleanup()


async def test_status_reads_the_relays_power(tasmota):  # noqa: F811
    async with aiohttp.ClientSession() as session:
        assert await driver("tasmota").status(session, tasmota.address, None) == Status(False)
        await driver("tasmota").command(session, tasmota.address, None, "on")
        assert await driver("tasmota").status(session, tasmota.address + "/", None) == Status(True)
    assert tasmota.raw_queries == ["cmnd=Power", "cmnd=Power%20On", "cmnd=Power"]


async def test_identity_is_the_mac_of_status_5(tasmota):  # noqa: F811
    async with aiohttp.ClientSession() as session:
        assert await driver("tasmota").identity(session, tasmota.address) == tasmota.mac.replace(":", "").lower()


@pytest.mark.parametrize("channel,body,on", [
    (1, b'{"POWER": "ON"}', True),  # a one-relay device answers POWER to Power1
    (None, b'{"POWER1": "OFF"}', False),  # and POWER1 to Power
    (None, b'{"POWER": "ON", "POWER1": "OFF"}', True),  # its own key first
])
async def test_a_one_relay_device_answers_under_either_key(answering, channel, body, on):  # noqa: F811
    device = await answering(body)
    async with aiohttp.ClientSession() as session:
        assert await driver("tasmota").status(session, device.address, channel) == Status(on)


@pytest.mark.parametrize("channel,body,detail", [
    (2, b'{"POWER": "ON"}', "relay reports 'None'"),  # another relay's answer is not relay 2's
    (None, b'{"Command": "Unknown"}', "relay reports 'None'"),
    (None, b'{"POWER": "MAYBE-ON-MAYBE-OFF"}', "relay reports 'MAYBE-ON-M'"),  # cut short
    (None, b'["ON"]', "unexpected answer"),
])
async def test_an_unknown_state_is_refused(answering, channel, body, detail):  # noqa: F811
    device = await answering(body)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ApplianceError, match=detail):
            await driver("tasmota").status(session, device.address, channel)


async def test_a_switch_the_relay_does_not_report_is_an_error(answering):  # noqa: F811
    device = await answering(b'{"POWER": "OFF"}')  # a relay stuck off
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ApplianceError, match="relay reports 'OFF', expected 'ON'"):
            await driver("tasmota").command(session, device.address, None, "on")
        await driver("tasmota").command(session, device.address, None, "off")
    assert device.paths == ["/cm?cmnd=Power%20On", "/cm?cmnd=Power%20Off"]


@pytest.mark.parametrize("body", [b"{}", b'{"StatusNET": "24:0A:C4:00:00:01"}', b'{"StatusNET": {"Mac": ""}}'])
async def test_a_status_without_a_mac_is_no_identity(answering, body):  # noqa: F811
    device = await answering(body)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ApplianceError, match="no hardware address"):
            await driver("tasmota").identity(session, device.address)
    assert device.paths == ["/cm?cmnd=Status%205"]


async def test_a_redirect_is_not_followed(answering):  # noqa: F811
    elsewhere = await answering(b'{"POWER": "ON", "StatusNET": {"Mac": "24:0A:C4:00:00:01"}}')
    device = await answering(b"", 302, {"Location": elsewhere.address + "/cm?cmnd=Power%20On"})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ApplianceError, match="HTTP 302"):
            await driver("tasmota").command(session, device.address, None, "on")
        with pytest.raises(ApplianceError, match="HTTP 302"):
            await driver("tasmota").identity(session, device.address)
    assert elsewhere.paths == []
