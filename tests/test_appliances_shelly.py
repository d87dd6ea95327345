"""The Shelly Gen2+ driver (drivers/appliances/shelly.py) against a real aiohttp server on 127.0.0.1 that answers
like one (tests/helpers/appliances.py): Switch.Set, Switch.GetStatus and Shelly.GetDeviceInfo, and answers of other
firmware refused."""

from __future__ import annotations

import aiohttp
import pytest

from drivers.appliances import ApplianceError, driver
from drivers.appliances.base import Status
from tests.helpers.appliances import MeteringShelly, answering, shelly  # noqa: F401  (answering, shelly: fixtures)


async def test_shelly_switch_set(shelly):
    async with aiohttp.ClientSession() as session:
        await driver("shelly").command(session, shelly.address, None, "on")
        await driver("shelly").command(session, shelly.address + "/", 1, "on")
        await driver("shelly").command(session, shelly.address, 0, "off")
        assert shelly.calls == [{"id": 0, "on": True}, {"id": 1, "on": True}, {"id": 0, "on": False}]
        assert shelly.state == [False, True]
        with pytest.raises(ApplianceError, match="HTTP 500"):
            await driver("shelly").command(session, shelly.address, 7, "on")
        with pytest.raises(ApplianceError):
            await driver("shelly").command(session, shelly.address, 0, "explode")


async def test_unreachable_device_is_an_error():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        with pytest.raises((ApplianceError, aiohttp.ClientError, OSError)):
            await driver("shelly").command(session, "http://127.0.0.1:9", 0, "on")


async def test_status_reads_the_switchs_output_only():
    device = MeteringShelly(switches=2)
    await device.start()
    try:
        async with aiohttp.ClientSession() as session:
            assert await driver("shelly").status(session, device.address, None) == Status(False)
            await driver("shelly").command(session, device.address, 1, "on")
            assert await driver("shelly").status(session, device.address + "/", 1) == Status(True)
            assert await driver("shelly").status(session, device.address, 0) == Status(False)
            with pytest.raises(ApplianceError, match="HTTP 500"):
                await driver("shelly").status(session, device.address, 5)
        assert device.reads == 4
    finally:
        await device.runner.cleanup()


async def test_identity_is_the_devices_mac(shelly):  # noqa: F811
    async with aiohttp.ClientSession() as session:
        assert await driver("shelly").identity(session, shelly.address) == shelly.mac.lower()


@pytest.mark.parametrize("body", [b"{}", b"[]", b'{"code": -105, "message": "no"}', b'"was_on"'])
async def test_a_switch_answer_without_was_on_is_refused(answering, body):  # noqa: F811
    device = await answering(body)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ApplianceError, match="unexpected answer from Switch.Set"):
            await driver("shelly").command(session, device.address, 0, "on")
    assert device.paths == ["/rpc/Switch.Set"]


@pytest.mark.parametrize("body", [b"{}", b'{"output": "on"}', b'{"output": 1}', b"[true]"])
async def test_a_status_answer_without_a_boolean_output_is_refused(answering, body):  # noqa: F811
    device = await answering(body)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ApplianceError, match="unexpected answer from Switch.GetStatus"):
            await driver("shelly").status(session, device.address, 2)
    assert device.paths == ["/rpc/Switch.GetStatus?id=2"]


@pytest.mark.parametrize("body", [b"{}", b'{"mac": "none"}', b'["A8032ABE54DC"]', b'{"mac": 5}'])
async def test_a_device_info_without_a_mac_is_no_identity(answering, body):  # noqa: F811
    device = await answering(body)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ApplianceError, match="no hardware address"):
            await driver("shelly").identity(session, device.address)


async def test_a_redirect_is_not_followed(answering):  # noqa: F811
    # a relay does not redirect; a trap might, to an address the caller's policy never checked
    elsewhere = await answering(b'{"was_on": false, "output": true, "mac": "A8032ABE54DC"}')
    device = await answering(b"", 307, {"Location": elsewhere.address + "/"})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ApplianceError, match="HTTP 307"):
            await driver("shelly").command(session, device.address, 0, "on")
        with pytest.raises(ApplianceError, match="HTTP 307"):
            await driver("shelly").status(session, device.address, 0)
        with pytest.raises(ApplianceError, match="HTTP 307"):
            await driver("shelly").identity(session, device.address)
    assert elsewhere.paths == []
