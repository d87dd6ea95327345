"""Who is calling: the operator, an organization, a household or a household's datalogger, from one Bearer token.
A datalogger's token only posts its household's readings (whoever controls the datalogger holds it).

401 without a valid token, 403 for a valid token without the right. A client (an IPv4 address, an IPv6 /64) that
keeps presenting bad tokens gets 429 for its bad tokens for a while; a valid token from it is never refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass

from agent.registry import Household, Organization, Registry

OPERATOR, ORGANIZATION, HOUSEHOLD, DATALOGGER = "operator", "organization", "household", "datalogger"


@dataclass(frozen=True)
class Principal:
    role: str
    organization: Organization | None = None
    household: Household | None = None

    @property
    def id(self) -> str:
        if self.organization:
            return self.organization.id
        if self.household:
            return self.household.id
        return "operator"


def identify(token: str, operator_token: str, registry: Registry) -> Principal | None:
    try:
        presented = token.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8 (aiohttp keeps them as surrogates): no token of ours
        return None
    if hmac.compare_digest(presented, operator_token.encode()):
        return Principal(OPERATOR)
    if token.startswith("edge_org_"):
        org = registry.organization_by_key(token)
        return Principal(ORGANIZATION, organization=org) if org else None
    if token.startswith("edge_hh_"):
        household = registry.household_by_token(token)
        return Principal(HOUSEHOLD, household=household) if household else None
    if token.startswith("edge_dl_"):
        household = registry.household_by_datalogger_token(token)
        return Principal(DATALOGGER, household=household) if household else None
    return None


def credential(found: Principal) -> str | None:
    """The registry's hash of the token that identified `found`, read just after `identify` (so it is the presented
    token's hash); None for the operator, whose token is the config's."""
    if found.organization is not None:
        return found.organization.key_hash
    if found.household is not None:
        return found.household.token_hash if found.role == HOUSEHOLD else found.household.datalogger_hash
    return None


def still_identified(found: Principal, remembered: str, registry: Registry) -> bool:
    """Whether the token whose hash was `remembered` (`credential`) still identifies the same caller, as
    `identify` would say now, without hashing the token again: the organization or household of that id is still
    in the registry and still holds that hash (a rotation replaces it, a deletion removes the entry)."""
    if found.organization is not None:
        org = registry.organizations.get(found.organization.id)
        held = org.key_hash if org is not None else None
    elif found.household is not None:
        household = registry.households.get(found.household.id)
        held = None if household is None else (
            household.token_hash if found.role == HOUSEHOLD else household.datalogger_hash)
    else:
        return False
    return held is not None and hmac.compare_digest(held, remembered)


def client_key(address: str) -> str:
    """Who counts as one client: an IPv4 address, or an IPv6 /64 (one host's whole subnet: it has 2**64 addresses
    to rotate through). An IPv4-mapped IPv6 address is its IPv4 one; anything else (a Unix socket) as it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureThrottle:
    """Per client (`client_key`): after `limit` bad tokens within `window_s` of its first one, refuse its bad tokens
    for the rest of that window.

    A count is never reset before its window ends, so no one can flush another client's entry with junk
    addresses: when `max_clients` windows are running, a bad token from a new client waits (429) until the oldest
    ends. And at most `global_per_s` bad tokens a second are counted from everyone together (the last line against
    an attacker with many subnets). Only bad tokens are refused: callers check a token before asking here."""

    def __init__(self, limit: int = 10, window_s: float = 60.0, max_clients: int = 10_000,
                 global_per_s: int = 100, clock=time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.global_per_s = global_per_s
        self.clock = clock
        # client -> (window start, count), in order of window start (an entry is updated in place)
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._second = 0.0  # the start of the current global second, and bad tokens counted in it
        self._in_second = 0

    def _expire(self, now: float) -> None:
        while self._failures:
            started, _ = next(iter(self._failures.values()))
            if now - started < self.window_s:
                return
            self._failures.popitem(last=False)

    def retry_after(self, client: str) -> float:
        """Seconds this client's bad token must wait (0: check it and count it with `failed`)."""
        now = self.clock()
        self._expire(now)
        key = client_key(client)
        entry = self._failures.get(key)
        if entry is not None and entry[1] >= self.limit:
            return entry[0] + self.window_s - now
        if entry is None and len(self._failures) >= self.max_clients:
            oldest, _ = next(iter(self._failures.values()))
            return oldest + self.window_s - now
        if now - self._second < 1.0 and self._in_second >= self.global_per_s:
            return self._second + 1.0 - now
        return 0.0

    def failed(self, client: str) -> None:
        now = self.clock()
        self._expire(now)
        if now - self._second >= 1.0:
            self._second, self._in_second = now, 0
        self._in_second += 1
        key = client_key(client)
        entry = self._failures.get(key)
        if entry is not None:
            self._failures[key] = (entry[0], entry[1] + 1)
        elif len(self._failures) < self.max_clients:  # bounded memory; `retry_after` refused it when full
            self._failures[key] = (now, 1)
