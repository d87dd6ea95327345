"""What every appliance driver shares (drivers/appliances/base.py and the registry of drivers/appliances/): a
command checked before any request, the default channel, a relay's MAC address read in any spelling, and answers
read bounded; against real aiohttp servers on 127.0.0.1 (tests/helpers/appliances.py)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from drivers.appliances import ApplianceDriver, ApplianceError, driver, names, register
from drivers.appliances.base import MAX_ANSWER_BYTES, Status, mac_identity, read_json
from tests.helpers.appliances import answering  # noqa: F401  (the fixture)


class Recording(ApplianceDriver):
    """A driver of the test's own (not registered): what `command` hands its `switch`."""

    name = "recording"
    default_channel = 3
    mac: object = None  # what its relay reports as its identity

    def __init__(self):
        self.switched: list[tuple[str, int | None, bool]] = []

    async def switch(self, session, address, channel, on):
        self.switched.append((address, channel, on))

    async def read_identity(self, session, address):
        return self.mac


def test_registry_lists_the_drivers():
    assert {"shelly", "tasmota"} <= set(names())
    assert driver("shelly").name == "shelly" and driver("nope") is None


def test_a_driver_name_is_given_once():
    with pytest.raises(ValueError, match="taken"):
        register(type("Again", (ApplianceDriver,), {"name": "shelly"}))
    with pytest.raises(ValueError, match="empty"):
        register(type("Nameless", (ApplianceDriver,), {}))
    assert type(driver("shelly")).__name__ == "Shelly"  # still the first one


async def test_a_command_is_on_or_off_with_the_default_channel_and_no_trailing_slash():
    recording = Recording()
    async with aiohttp.ClientSession() as session:
        await recording.command(session, "http://192.168.1.9/", None, "on")
        await recording.command(session, "http://192.168.1.9", 0, "off")
        for bad in ("explode", "ON", "toggle", ""):
            with pytest.raises(ApplianceError, match="unknown command"):
                await recording.command(session, "http://192.168.1.9", 0, bad)
    assert recording.switched == [("http://192.168.1.9", 3, True), ("http://192.168.1.9", 0, False)]


async def test_a_driver_that_cannot_read_a_relay_says_so():
    base = ApplianceDriver()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ApplianceError, match="cannot read a relay's state"):
            await base.status(session, "http://192.168.1.9", None)
        with pytest.raises(ApplianceError, match="cannot read a relay's identity"):
            await base.identity(session, "http://192.168.1.9")
        with pytest.raises(NotImplementedError):
            await base.command(session, "http://192.168.1.9", None, "on")


@pytest.mark.parametrize("reported,mac", [
    ("A8032ABE54DC", "a8032abe54dc"), ("24:0A:C4:00:00:01", "240ac4000001"), ("24-0a-c4-00-00-01", "240ac4000001"),
    ("000000000000", None), ("FF:FF:FF:FF:FF:FF", None), ("A8032ABE54D", None), ("A8032ABE54DCX", None),
    ("G8032ABE54DC", None), ("24:0A:C4:00:00:01:02", None), ("24::0A:C4:00:00:01", None), (None, None),
    (0xA8032ABE54DC, None), (["A8032ABE54DC"], None), ("", None),
])
def test_a_mac_address_in_any_spelling_or_none(reported, mac):
    assert mac_identity(reported) == mac


async def test_identity_is_the_mac_or_an_error():
    recording = Recording()
    async with aiohttp.ClientSession() as session:
        recording.mac = "24:0A:C4:00:00:01"
        assert await recording.identity(session, "http://192.168.1.9/") == "240ac4000001"
        recording.mac = "00:00:00:00:00:00"
        with pytest.raises(ApplianceError, match="no hardware address"):
            await recording.identity(session, "http://192.168.1.9")


@pytest.mark.parametrize("body,status,error", [
    (b'{"was_on": false}', 200, None),
    (b'{"was_on": false}', 500, "HTTP 500"), (b"", 401, "HTTP 401"), (b"", 302, "HTTP 302"),
    (b"<html>a login page</html>", 200, "answer is not JSON"), (b"\xff\xfe{", 200, "answer is not JSON"),
    (json.dumps({"pad": "x" * MAX_ANSWER_BYTES}).encode(), 200, "answer too large"),
])
async def test_an_answer_is_200_with_bounded_json(answering, body, status, error):
    device = await answering(body, status)
    async with aiohttp.ClientSession() as session:
        async with session.get(device.address, allow_redirects=False) as resp:
            if error is None:
                assert await read_json(resp) == {"was_on": False}
            else:
                with pytest.raises(ApplianceError, match=error):
                    await read_json(resp)


def test_a_status_holds_only_whether_the_relay_is_on():
    assert [f for f in Status.__dataclass_fields__] == ["on"]  # never the power it meters (R6-9)
