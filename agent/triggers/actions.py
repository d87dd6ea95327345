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

An appliance address belongs to one household on this device (red team 6, R6-9: the Shelly and Tasmota relays
answer anyone on the LAN, so a household that registered its neighbour's address read and switched it).
`ApplianceBindings`: a second household's registration of the same host and port, in any spelling
(`appliance_key`), is refused; and every connection made for an appliance (a household's status read, an
organization's switch) is refused if the address it reaches (a literal, or what a name resolved to) is another
household's, as registered or as reached for it since the device started (a DNS alias of it: nip.io, mDNS).

A relay is one household's too, whatever address reaches it (red team 8, R8-1: a relay has an IPv4 and IPv6
addresses, port forwards, a new DHCP lease). `ApplianceBindings.reach` reads the relay's hardware address (its MAC,
from its own API) before every request made for an appliance, and at registration: one bound to another
household's appliance is refused, and so is an appliance whose address now answers with another relay than the
one it was bound to (a lease that moved to a neighbour's plug). The binding is written with the appliance record.
The identity read and the request go to one address: each connection for an appliance is new (no keep-alive) and
within one `acting` the first address a name resolved to is the only one it may reach (no rebinding between them).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, Awaitable, Callable, Iterator
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult

from agent.delivery.targets import PolicyResolver, TargetError, address_allowed, check_literal_host, check_url
from drivers.appliances import ApplianceDriver, ApplianceError


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


def check_appliance_address(url: object, allow_private_endpoints: bool) -> str:
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


def check_endpoint(url: str, allow_http: bool, allow_private_endpoints: bool) -> str:
    """An organization's or a household's endpoint: the subscriptions' rules."""
    endpoint = check_url(url, allow_http)
    check_literal_host(endpoint, allow_private_endpoints)
    return endpoint


def literal_allowed(url: str, allow_private_endpoints: bool) -> bool:
    """At send time, for IP literals (which never reach the resolver); an endpoint's (appliances:
    `ApplianceBindings.literal_allowed`)."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return address_allowed(host, allow_private_endpoints)


DEFAULT_PORTS = {"http": 80, "https": 443}


@lru_cache(maxsize=4096)
def appliance_key(url: str) -> str:
    """``host:port`` as the device connects to it: the same for every spelling of one address (host case, a
    trailing dot, the default port, IPv6 forms, IPv4-mapped IPv6, legacy numeric IPv4 such as 3232235777)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    return endpoint_key(host, parts.port or DEFAULT_PORTS.get(parts.scheme, 0))


def endpoint_key(host: str, port: int) -> str:
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        try:  # what getaddrinfo would make of 127.1, 0x7f.0.0.1, 2130706433
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return f"{host.lower()}:{port}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return f"[{ip}]:{port}"
        ip = ip.ipv4_mapped
    return f"{ip}:{port}"


class RelayTaken(ApplianceError):
    """The relay answering is bound to another household's appliance (R8-1)."""


MAX_REACHED = 4096
# the appliance a connection is made for: the LAN resolver's check reads it (set around each request)
ACTING_FOR: ContextVar[tuple[str, str] | None] = ContextVar("acting_for", default=None)
# the one address (key) the connections made within that `acting` go to: the first one allowed
PINNED: ContextVar[list[str] | None] = ContextVar("pinned", default=None)


class ApplianceBindings:
    """Which household each appliance address is on this device. `appliances`: the household store's
    (id -> doc); `known`: whether a household id is still registered (a removed one's address is free at once)."""

    def __init__(self, appliances: dict[str, dict[str, Any]], known: Callable[[str], bool],
                 bind: Callable[[str, str], Awaitable[None]]):
        """`bind(appliance_id, mac)`: records the relay's identity with the appliance, durably (the store)."""
        self.appliances = appliances
        self.known = known
        self.bind = bind
        self._reached: dict[str, tuple[str, str]] = {}  # key -> (household, appliance) it was reached for
        self._binding: asyncio.Lock | None = None  # a relay's check and its binding are one step (two first reaches)

    @property
    def binding(self) -> asyncio.Lock:
        if self._binding is None:
            self._binding = asyncio.Lock()
        return self._binding

    def device_taken(self, mac: str, household_id: str) -> bool:
        """Whether the relay is bound to another (still registered) household's appliance."""
        return any(doc.get("device") == mac and doc["household_id"] != household_id and self.known(doc["household_id"])
                   for doc in self.appliances.values())

    async def identify(self, session: aiohttp.ClientSession, device: ApplianceDriver, appliance: dict[str, Any]) -> str:
        """The relay's identity at the appliance's address, if it is not another household's (ApplianceError).
        Call it inside `acting(appliance)`, with `lan_session`'s session."""
        mac = await device.identity(session, appliance["address"])
        if self.device_taken(mac, appliance["household_id"]):
            raise RelayTaken("the relay is another household's appliance")
        return mac

    async def reach(self, session: aiohttp.ClientSession, device: ApplianceDriver, appliance: dict[str, Any]) -> None:
        """Before each request for a registered appliance: its relay is not another household's, and is the one it
        was bound to; the first relay reached is bound to it. Inside `acting(appliance)`; ApplianceError if not."""
        mac = await self.identify(session, device, appliance)
        async with self.binding:
            current = self.appliances.get(appliance["id"])
            if current is None or current["household_id"] != appliance["household_id"]:
                raise ApplianceError("the appliance was removed")
            if self.device_taken(mac, appliance["household_id"]):  # bound by another while this one was reading
                raise RelayTaken("the relay is another household's appliance")
            if current.get("device") is None:
                await self.bind(appliance["id"], mac)
            elif current["device"] != mac:
                raise ApplianceError("another relay answers at the appliance's address")

    def taken(self, key: str, household_id: str) -> bool:
        """Whether the address is another household's: registered by it, or reached for one of its appliances."""
        for doc in self.appliances.values():
            if doc["household_id"] != household_id and appliance_key(doc["address"]) == key \
                    and self.known(doc["household_id"]):
                return True
        reached = self._reached.get(key)
        if reached is None or reached[0] == household_id:
            return False
        appliance = self.appliances.get(reached[1])
        return appliance is not None and appliance["household_id"] == reached[0] and self.known(reached[0])

    @contextlib.contextmanager
    def acting(self, appliance: dict[str, Any]) -> Iterator[None]:
        token = ACTING_FOR.set((appliance["household_id"], appliance["id"]))
        pinned = PINNED.set([])
        try:
            yield
        finally:
            PINNED.reset(pinned)
            ACTING_FOR.reset(token)

    def connect_allowed(self, host: str, port: int) -> bool:
        """For the appliance being acted for (`acting`): not another household's address; it is then this one's."""
        acting = ACTING_FOR.get()
        if acting is None:
            return False
        key = endpoint_key(host, port)
        pinned = PINNED.get()
        if pinned is None or (pinned and pinned[0] != key) or self.taken(key, acting[0]):
            return False
        if not pinned:
            pinned.append(key)
        if len(self._reached) >= MAX_REACHED:  # bounded: those of appliances no longer registered go first
            self._reached = {k: v for k, v in self._reached.items() if v[1] in self.appliances}
        if len(self._reached) < MAX_REACHED or key in self._reached:
            self._reached[key] = acting
        return True

    def literal_allowed(self, appliance: dict[str, Any], allow_private_endpoints: bool) -> bool:
        """At send time, before the request: the LAN rules and, for an IP literal (aiohttp does not resolve it),
        the binding. Call it inside `acting(appliance)`."""
        parts = urlsplit(appliance["address"])
        host = parts.hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return True  # a name: the LAN resolver checks what it resolves to
        return lan_address_allowed(host, allow_private_endpoints) \
            and self.connect_allowed(host, parts.port or DEFAULT_PORTS.get(parts.scheme, 0))


class LanResolver(PolicyResolver):
    """The LAN rules per address, then the appliance bindings per address and port."""

    def __init__(self, allow_private_endpoints: bool, bindings: ApplianceBindings):
        super().__init__(allow_private_endpoints, refused_as="addresses this appliance may not have",
                         allowed=lambda address: lan_address_allowed(address, allow_private_endpoints))
        self.bindings = bindings

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = [a for a in await super().resolve(host, port, family)
                   if self.bindings.connect_allowed(a["host"], a["port"] or port)]
        if not answers:
            raise OSError(errno.EACCES, f"{host} resolves only to {self.refused_as}")
        return answers


def web_session(allow_private_endpoints: bool, timeout_s: float, limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(allow_private_endpoints), limit=limit,
                                     use_dns_cache=False)
    # no cookie jar: one session sends every household's notifications, and a cookie a service set in its answer to
    # one household would go out with the next household's (red team 9, R9b-5)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 cookie_jar=aiohttp.DummyCookieJar())


def lan_session(allow_private_endpoints: bool, timeout_s: float, limit: int,
                bindings: ApplianceBindings) -> aiohttp.ClientSession:
    """Requests for appliances: each inside `bindings.acting(appliance)`, on a connection of its own (no
    keep-alive: a connection is resolved and checked, and pinned to the `acting`'s one address, for each)."""
    connector = aiohttp.TCPConnector(resolver=LanResolver(allow_private_endpoints, bindings), limit=limit,
                                     use_dns_cache=False, force_close=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 cookie_jar=aiohttp.DummyCookieJar())  # an organization's, for every household: R9b-5
