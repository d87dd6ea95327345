"""Where webhooks may go (agent/delivery/targets.py) on data, and its resolver on this machine's own resolver: https
only, no credentials, no private, loopback, link-local or special address unless the operator allows them, judged on
the addresses the client connects to (a real aiohttp client against a loopback receiver)."""

from __future__ import annotations

import errno

import aiohttp
import pytest

from agent.delivery.targets import PolicyResolver, TargetError, address_allowed, check_literal_host, check_url
from tests.helpers.receiver import receiver  # noqa: F401  (the fixture)


@pytest.mark.parametrize("url", ["https://org.example/hook", "https://org.example:8443/a?b=c",
                                 "https://[2001:db8::1]/x"])
def test_an_https_url_with_a_host_is_taken_as_it_is(url):
    assert check_url(url, allow_http=False) == url


@pytest.mark.parametrize("url,allow_http,words", [
    ("http://org.example/hook", False, "https://"), ("ftp://org.example/", True, "http(s) URL"),
    ("https:///path", False, "with a host"), ("org.example/hook", False, "http(s) URL"),
    ("https://user:pw@org.example/", False, "credentials"), ("https://user@org.example/", False, "credentials"),
    ("https://org.example:99999/", False, "invalid port"), ("https://org.example:x/", False, "invalid port"),
    ("https://org.example/" + "a" * 2048, False, "2048"), (None, False, "2048"),
])
def test_any_other_endpoint_is_refused_saying_why(url, allow_http, words):
    with pytest.raises(TargetError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_url(url, allow_http)
    assert check_url("http://org.example/", allow_http=True) == "http://org.example/"


@pytest.mark.parametrize("address,public,private", [
    ("93.184.216.34", True, True), ("2606:2800:220:1::1", True, True),
    ("10.0.0.1", False, True), ("192.168.1.2", False, True), ("172.16.0.1", False, True), ("100.64.0.1", False, True),
    ("127.0.0.1", False, True), ("::1", False, True), ("169.254.169.254", False, True), ("fe80::1%eth0", False, True),
    ("fd00::12", False, True), ("::ffff:127.0.0.1", False, True), ("::ffff:93.184.216.34", True, True),
    ("192.0.2.1", False, True),  # documentation
    ("224.0.0.1", False, False), ("ff02::1", False, False), ("0.0.0.0", False, False), ("::", False, False),
])
def test_which_addresses_a_webhook_may_reach(address, public, private):
    assert address_allowed(address, False) is public
    assert address_allowed(address, True) is private


@pytest.mark.parametrize("url,private_only", [
    ("https://127.0.0.1/hook", True), ("https://[::1]/", True), ("https://10.1.2.3:8443/", True),
    ("https://localhost/", True), ("https://printer.local/", True), ("https://a.b.localhost/", True),
    ("https://93.184.216.34/", False), ("https://org.example/", False),  # a name: judged when it is resolved
])
def test_a_literal_host_is_judged_at_once(url, private_only):
    if private_only:
        with pytest.raises(TargetError):
            check_literal_host(url, False)
    else:
        check_literal_host(url, False)
    check_literal_host(url, True)


async def test_the_resolver_drops_what_may_not_be_reached():
    strict = PolicyResolver(allow_private=False)
    try:
        with pytest.raises(OSError) as refused:
            await strict.resolve("localhost", 443)
        assert refused.value.errno == errno.EACCES and "localhost resolves only to addresses webhooks" in str(
            refused.value)
    finally:
        await strict.close()
    lenient = PolicyResolver(allow_private=True)
    try:
        assert {a["host"] for a in await lenient.resolve("localhost", 443)} <= {"127.0.0.1", "::1"}
    finally:
        await lenient.close()
    own = PolicyResolver(False, allowed=lambda address: address == "127.0.0.1", refused_as="the LAN")
    try:
        assert [a["host"] for a in await own.resolve("localhost", 80)] == ["127.0.0.1"]
    finally:
        await own.close()


async def test_a_client_with_the_resolver_never_connects_to_a_refused_address(receiver):  # noqa: F811
    url = receiver.url.replace("127.0.0.1", "localhost")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=PolicyResolver(False))) as session:
        with pytest.raises(aiohttp.ClientConnectorError, match="resolves only to"):
            await session.post(url, data=b"{}")
    assert receiver.received == []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=PolicyResolver(True))) as session:
        async with session.post(url, data=b"{}") as resp:
            assert resp.status == 204
    assert len(receiver.received) == 1
