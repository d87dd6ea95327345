"""Tasmota firmware (Sonoff and many plugs): the HTTP command interface.

``GET http://<device>/cm?cmnd=Power%20On`` (``Power2%20Off`` for the second relay); the device answers
``{"POWER": "ON"}`` (``{"POWER2": "OFF"}``); ``cmnd=Power`` alone reads the state; ``cmnd=Status%205`` answers
``{"StatusNET": {"Mac": "24:0A:C4:00:00:01", ...}}``, the relay's identity. A web password
(``&user=&password=``) is not supported yet.
"""

from __future__ import annotations

import aiohttp
from yarl import URL

from drivers.appliances import register
from drivers.appliances.base import ApplianceDriver, ApplianceError, Status, read_json


@register
class Tasmota(ApplianceDriver):
    name = "tasmota"
    description = "Tasmota HTTP commands: GET /cm?cmnd=Power%20On"
    default_channel = None  # "Power": the first (or only) relay
    max_channel = 8

    async def switch(self, session: aiohttp.ClientSession, address: str, channel: int | None, on: bool) -> None:
        state = "On" if on else "Off"
        got = await self._power(session, address, channel, f"%20{state}")
        if got != state.upper():
            raise ApplianceError(f"relay reports {str(got)[:10]!r}, expected {state.upper()!r}")

    async def read_status(self, session: aiohttp.ClientSession, address: str, channel: int | None) -> Status:
        got = await self._power(session, address, channel, "")
        if got not in ("ON", "OFF"):
            raise ApplianceError(f"relay reports {str(got)[:10]!r}")
        return Status(got == "ON")

    async def read_identity(self, session: aiohttp.ClientSession, address: str) -> object:
        async with session.get(URL(f"{address}/cm?cmnd=Status%205", encoded=True), allow_redirects=False) as resp:
            answer = await read_json(resp)
        net = answer.get("StatusNET") if isinstance(answer, dict) else None
        return net.get("Mac") if isinstance(net, dict) else None

    @staticmethod
    async def _power(session: aiohttp.ClientSession, address: str, channel: int | None, argument: str) -> object:
        """The relay's state as the device reports it after `Power<n><argument>`."""
        relay = f"Power{channel}" if channel else "Power"
        # Encoded by hand: yarl would write the space as "+", the documented form is %20.
        url = URL(f"{address}/cm?cmnd={relay}{argument}", encoded=True)
        async with session.get(url, allow_redirects=False) as resp:
            answer = await read_json(resp)
        key = relay.upper()
        if not isinstance(answer, dict):
            raise ApplianceError("unexpected answer")
        # A one-relay device answers "POWER" to "Power1" as well as "POWER1" to "Power"
        got = answer.get(key)
        if got is None and key in ("POWER", "POWER1"):
            got = answer.get("POWER1" if key == "POWER" else "POWER")
        return got
