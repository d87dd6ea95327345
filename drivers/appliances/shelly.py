"""Shelly Gen2 and later (Plus, Pro, Gen3, Gen4) switches and plugs: JSON-RPC over HTTP.

``POST http://<device>/rpc/Switch.Set`` with ``{"id": <switch>, "on": true|false}``; the device answers
200 with ``{"was_on": <previous state>}``, or an error object ``{"code": ..., "message": ...}``.
``GET http://<device>/rpc/Switch.GetStatus?id=<switch>`` answers ``{"id": 0, "output": true, "apower": 8.9, ...}``
(``apower`` only on relays that meter; never read here).
``GET http://<device>/rpc/Shelly.GetDeviceInfo`` answers ``{"id": "shellyplus1pm-a8032abe54dc", "mac": "A8032ABE54DC",
...}``: the relay's identity.
Devices with authentication enabled (HTTP digest) are not supported yet.
"""

from __future__ import annotations

import aiohttp

from drivers.appliances import register
from drivers.appliances.base import ApplianceDriver, ApplianceError, Status, read_json


@register
class Shelly(ApplianceDriver):
    name = "shelly"
    description = "Shelly Gen2+ RPC: POST /rpc/Switch.Set"
    default_channel = 0

    async def switch(self, session: aiohttp.ClientSession, address: str, channel: int | None, on: bool) -> None:
        async with session.post(f"{address}/rpc/Switch.Set", json={"id": channel or 0, "on": on},
                                allow_redirects=False) as resp:
            answer = await read_json(resp)
        if not isinstance(answer, dict) or "was_on" not in answer:
            raise ApplianceError("unexpected answer from Switch.Set")

    async def read_status(self, session: aiohttp.ClientSession, address: str, channel: int | None) -> Status:
        async with session.get(f"{address}/rpc/Switch.GetStatus", params={"id": str(channel or 0)},
                               allow_redirects=False) as resp:
            answer = await read_json(resp)
        if not isinstance(answer, dict) or not isinstance(answer.get("output"), bool):
            raise ApplianceError("unexpected answer from Switch.GetStatus")
        return Status(answer["output"])  # not its "apower": the household's consumption through it

    async def read_identity(self, session: aiohttp.ClientSession, address: str) -> object:
        async with session.get(f"{address}/rpc/Shelly.GetDeviceInfo", allow_redirects=False) as resp:
            answer = await read_json(resp)
        return answer.get("mac") if isinstance(answer, dict) else None
