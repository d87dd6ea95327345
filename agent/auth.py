"""Who is calling: the operator, an organization or a household, from one Bearer token.

401 without a valid token, 403 for a valid token without the right. An address that keeps presenting bad
tokens gets 429 for its bad tokens for a while; a valid token from it is never refused.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass

from agent.registry import Household, Organization, Registry

OPERATOR, ORGANIZATION, HOUSEHOLD = "operator", "organization", "household"


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
    return None


class FailureThrottle:
    """Per client address: after `limit` bad tokens within `window_s`, refuse for the rest of the window."""

    def __init__(self, limit: int = 10, window_s: float = 60.0, max_clients: int = 10_000, clock=time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, client: str) -> float:
        entry = self._failures.get(client)
        if entry is None:
            return 0.0
        started, count = entry
        left = started + self.window_s - self.clock()
        if left <= 0:
            del self._failures[client]
            return 0.0
        return left if count >= self.limit else 0.0

    def failed(self, client: str) -> None:
        now = self.clock()
        started, count = self._failures.pop(client, (now, 0))
        if now - started > self.window_s:
            started, count = now, 0
        self._failures[client] = (started, count + 1)
        while len(self._failures) > self.max_clients:  # bounded memory under a spray of addresses
            self._failures.popitem(last=False)
