"""Where webhooks may go. A subscription must not become a way into the operator's own network:
`https://` only, and no private, loopback, link-local or otherwise special address, unless the
operator allows them (`[delivery] allow_http`, `allow_private_endpoints`).

The address check happens in the HTTP client's resolver, at every connection, on the very
addresses the client then connects to: a name that resolves to a public address when the
subscription is made and to 10.0.0.1 later (DNS rebinding) is refused at delivery.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Callable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class TargetError(ValueError):
    pass


def check_url(url: str, allow_http: bool) -> str:
    if not isinstance(url, str) or len(url) > 2048:
        raise TargetError("endpoint must be a URL of at most 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise TargetError("endpoint must be an http(s) URL with a host")
    if parts.scheme == "http" and not allow_http:
        raise TargetError("endpoint must use https:// (plain http is not allowed on this device)")
    if parts.username or parts.password:
        raise TargetError("endpoint must not carry credentials")
    try:
        parts.port
    except ValueError:
        raise TargetError("endpoint has an invalid port") from None
    return url


def address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if allow_private:
        return not (ip.is_multicast or ip.is_unspecified)
    return ip.is_global and not ip.is_multicast


def check_literal_host(url: str, allow_private: bool) -> None:
    """At subscribe time: an IP literal can be judged without DNS."""
    host = urlsplit(url).hostname or ""  # check_url saw it has one
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host in ("localhost",) or host.endswith(".localhost") or host.endswith(".local"):
            if not allow_private:
                raise TargetError("endpoint points at this device or its local network") from None
        return
    if not address_allowed(host, allow_private):
        raise TargetError("endpoint points at a private, loopback or link-local address")


class PolicyResolver(AbstractResolver):
    """aiohttp resolver that drops disallowed addresses and refuses a host that has none left.
    `allowed` decides per address (default: the webhook policy); `refused_as` ends the error message."""

    def __init__(self, allow_private: bool, allowed: Callable[[str], bool] | None = None,
                 refused_as: str = "addresses webhooks may not reach"):
        self.allowed = allowed or (lambda address: address_allowed(address, allow_private))
        self.refused_as = refused_as
        self._resolver = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await self._resolver.resolve(host, port, family)
        allowed = [a for a in answers if self.allowed(a["host"])]
        if not allowed:
            # errno and strerror both set: aiohttp shows the strerror in the error it raises
            raise OSError(errno.EACCES, f"{host} resolves only to {self.refused_as}")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()
