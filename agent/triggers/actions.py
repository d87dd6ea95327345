"""Where actions may go, and the HTTP sessions that enforce it.

- Organizations' webhook endpoints and households' notification endpoints follow the subscriptions'
  rules (agent/delivery/targets.py): https only, public addresses only, unless the operator allows
  more (``[delivery] allow_http``, ``allow_private_endpoints``); checked at every connection.
- Appliances live on a household's LAN and are registered by the household itself, so private
  addresses (10/8, 172.16/12, 192.168/16, fc00::/7) and plain http are allowed for them; loopback,
  link-local (169.254.169.254, the cloud metadata address, and fe80::/10), multicast and unspecified
  addresses are not, unless ``[delivery] allow_private_endpoints``.

aiohttp does not run IP literals through the resolver, so literals are checked here as well, at
registration and again at every send.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import aiohttp

from agent.delivery.targets import PolicyResolver, TargetError, address_allowed, check_literal_host, check_url


def lan_address_allowed(address: str, allow_private_endpoints: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified:
        return False
    if allow_private_endpoints:
        return True
    if ip.is_loopback or ip.is_link_local or ip.is_reserved:
        return False
    return ip.is_private or ip.is_global


def check_appliance_address(url, allow_private_endpoints: bool) -> str:
    """A base URL ``http(s)://host[:port]``; returns it without a trailing slash. Raises TargetError."""
    if not isinstance(url, str) or len(url) > 200:
        raise TargetError("address must be a URL of at most 200 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError("address must be http://host or https://host (the appliance on your network)")
    if parts.username or parts.password:
        raise TargetError("address must not carry credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise TargetError("address is the appliance's base URL, without a path or query")
    try:
        parts.port
    except ValueError:
        raise TargetError("address has an invalid port") from None
    if any(c in parts.netloc for c in "%\\ \t\r\n") or not parts.netloc.isascii():
        raise TargetError("address has characters a host name cannot have")
    check_lan_literal(parts.hostname, allow_private_endpoints)
    return f"{parts.scheme}://{parts.netloc}"


def check_lan_literal(host: str, allow_private_endpoints: bool) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if (host == "localhost" or host.endswith(".localhost")) and not allow_private_endpoints:
            raise TargetError("address points at this device") from None
        return
    if not lan_address_allowed(host, allow_private_endpoints):
        raise TargetError("address is a loopback, link-local, multicast or unspecified address")


def check_endpoint(url, allow_http: bool, allow_private_endpoints: bool) -> str:
    """An organization's or a household's endpoint: the subscriptions' rules."""
    endpoint = check_url(url, allow_http)
    check_literal_host(endpoint, allow_private_endpoints)
    return endpoint


def literal_allowed(url: str, allow_private_endpoints: bool, lan: bool) -> bool:
    """At send time, for IP literals (which never reach the resolver)."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return lan_address_allowed(host, allow_private_endpoints) if lan else address_allowed(host, allow_private_endpoints)


def web_session(allow_private_endpoints: bool, timeout_s: float, limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(allow_private_endpoints), limit=limit,
                                     use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))


def lan_session(allow_private_endpoints: bool, timeout_s: float, limit: int) -> aiohttp.ClientSession:
    lan = PolicyResolver(allow_private_endpoints, refused_as="addresses appliances may not have",
                         allowed=lambda address: lan_address_allowed(address, allow_private_endpoints))
    connector = aiohttp.TCPConnector(resolver=lan, limit=limit,
                                     use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))
