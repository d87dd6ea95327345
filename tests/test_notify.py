"""Notifications to a household's own endpoint (drivers/notify.py) against real aiohttp servers on 127.0.0.1: a
webhook gets the JSON and the caller's headers, an ntfy topic the text and a safe Title; anything but a 2xx, a
redirect included, is a short NotifyError."""

from __future__ import annotations

import aiohttp
import pytest

from drivers.notify import NotifyError, send
from tests.helpers.appliances import answering  # noqa: F401  (the fixture)
from tests.helpers.receiver import receiver  # noqa: F401  (the fixture)


async def test_a_webhook_gets_the_json_and_the_callers_headers(receiver):  # noqa: F811
    async with aiohttp.ClientSession() as session:
        status = await send(session, receiver.url, "webhook", title="ignored", message="ignored",
                            body=b'{"type": "notification"}', headers={"webhook-id": "msg_1"})
    assert status == 204
    (headers, body), = receiver.received
    assert body == b'{"type": "notification"}' and headers["webhook-id"] == "msg_1"
    assert headers["Content-Type"] == "application/json"


async def test_an_ntfy_topic_gets_the_text_and_a_printable_title(receiver):  # noqa: F811
    async with aiohttp.ClientSession() as session:
        await send(session, receiver.url, "ntfy", title="Überschuss\r\nX-Injected: 1" + "t" * 300,
                   message="Zet de vaatwasser aan ☀", body=b"{}")
    (headers, body), = receiver.received
    assert body == "Zet de vaatwasser aan ☀".encode() and headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Title"] == ("?berschuss??X-Injected: 1" + "t" * 300)[:200] and "X-Injected" not in headers
    assert headers["Tags"] == "zap"


@pytest.mark.parametrize("mode,error", [("fail", "HTTP 500"), ("gone", "HTTP 410"), ("slow_down", "HTTP 429")])
async def test_an_endpoint_that_refuses_is_an_error_with_its_status(receiver, mode, error):  # noqa: F811
    receiver.mode = mode
    async with aiohttp.ClientSession() as session:
        with pytest.raises(NotifyError, match=error):
            await send(session, receiver.url, "webhook", title="", message="", body=b"{}")


async def test_a_redirect_is_not_followed(answering, receiver):  # noqa: F811
    device = await answering(b"", 307, {"Location": receiver.url})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(NotifyError, match="HTTP 307"):
            await send(session, device.address + "/hook", "ntfy", title="t", message="m", body=b"")
    assert receiver.received == []


async def test_an_unreachable_endpoint_or_unknown_kind_is_a_short_error():
    async with aiohttp.ClientSession() as session:
        with pytest.raises(NotifyError) as unreachable:
            await send(session, "http://127.0.0.1:9/hook", "webhook", title="", message="", body=b"{}")
        assert str(unreachable.value).endswith("Error") and "127.0.0.1" not in str(unreachable.value)  # its class
        with pytest.raises(NotifyError, match="unknown endpoint kind 'email'"):
            await send(session, "http://127.0.0.1:9/hook", "email", title="", message="", body=b"")
        with pytest.raises(NotifyError, match="^InvalidUrl"):
            await send(session, "not a url", "webhook", title="", message="", body=b"{}")
