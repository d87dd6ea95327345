"""What an appliance driver is: a name, a default channel, an async `switch` over HTTP, a `status` read and the
relay's hardware `identity` (its MAC address, which the caller binds to one household: red team 8, R8-1).

Drivers do the I/O only. Which addresses may be reached is the caller's business: it hands in an
aiohttp session whose resolver enforces its policy, and checks IP literals itself (aiohttp does not
resolve them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import aiohttp

COMMANDS = ("on", "off")
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Status:
    on: bool  # only: the power a relay meters is never read (a household's consumption, R6-9)


class ApplianceError(Exception):
    """The appliance could not be reached or did not do what it was told. The message is ours, short."""


class ApplianceDriver:
    """Subclass, set `name` (and `default_channel`), implement `switch`, decorate with `@register`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_channel: ClassVar[int | None] = 0
    max_channel: ClassVar[int] = 15

    async def switch(self, session: aiohttp.ClientSession, address: str, channel: int | None, on: bool) -> None:
        raise NotImplementedError

    async def read_status(self, session: aiohttp.ClientSession, address: str, channel: int | None) -> Status:
        raise ApplianceError(f"{self.name} cannot read a relay's state")

    async def read_identity(self, session: aiohttp.ClientSession, address: str) -> object:
        """What the relay's API says its MAC address is (any spelling: `mac_identity` reads it)."""
        raise ApplianceError(f"{self.name} cannot read a relay's identity")

    async def identity(self, session: aiohttp.ClientSession, address: str) -> str:
        """The relay's MAC address, 12 lowercase hex digits; ApplianceError if it reports none."""
        mac = mac_identity(await self.read_identity(session, address.rstrip("/")))
        if mac is None:
            raise ApplianceError("the relay reports no hardware address")
        return mac

    async def status(self, session: aiohttp.ClientSession, address: str, channel: int | None) -> Status:
        """The relay's state now (a household testing its appliance); ApplianceError if it cannot be read."""
        return await self.read_status(session, address.rstrip("/"),
                                      self.default_channel if channel is None else channel)

    async def command(self, session: aiohttp.ClientSession, address: str, channel: int | None,
                      command: str) -> None:
        if command not in COMMANDS:
            raise ApplianceError(f"unknown command {command!r}")
        await self.switch(session, address.rstrip("/"),
                          self.default_channel if channel is None else channel, command == "on")


def mac_identity(value: object) -> str | None:
    """A MAC address as 12 lowercase hex digits (from "A8032ABE54DC", "24:0A:C4:00:00:01", "24-0a-..."); None if
    it is not one, or is all zeros or all ones (a relay that has none to report)."""
    if not isinstance(value, str) or len(value) > 17:
        return None
    digits = value.replace(":", "").replace("-", "").lower()
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits) or digits in ("0" * 12, "f" * 12):
        return None
    return digits


async def read_json(resp: aiohttp.ClientResponse) -> object:
    """The answer's JSON body, bounded; ApplianceError if it is not 200 with JSON."""
    body = await resp.content.read(MAX_ANSWER_BYTES + 1)
    if resp.status != 200:
        raise ApplianceError(f"HTTP {resp.status}")
    if len(body) > MAX_ANSWER_BYTES:
        raise ApplianceError("answer too large")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApplianceError("answer is not JSON") from None
