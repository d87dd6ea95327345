"""Area windows pushed to organizations as Standard Webhooks (agent/delivery/signing.py's signatures, the same
endpoint policy as the devices': agent/delivery/targets.py).

A subscription (`sub.<id>` in the hub's devices bucket, listed in `subscriptions`) names an area, a window width,
an optional tag and an endpoint. Its cursor is the last window pushed. The next window is due once every device of
the area has reported it (`complete`) or `grace_s` after its end, whichever comes first; what the hub answers for
it then (the sum, or the refusal) is pushed, in order, one window after another. Several hub replicas may run:
a replica takes a window by writing a lease into the subscription with compare-and-set, sends it, and moves the
cursor on a 2xx; a failure is retried with backoff (the lease of a replica that died expires). The webhook id is
the subscription and the window, so a receiver can drop a window it has seen: at least once, in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

import aiohttp

from agent.delivery import signing
from agent.delivery.targets import PolicyResolver
from hub.service import WIDTHS, Hub

log = logging.getLogger("edge.hub.push")

INDEX = "subscriptions"
LEASE_S = 30.0
BACKOFF_S = (1, 5, 30, 120, 600)
MAX_PER_TICK = 60  # windows one subscription may catch up per pass


def sub_key(sub_id: str) -> str:
    return f"sub.{sub_id}"


async def create(hub: Hub, org_id: str, area: str, window: str, tag: str | None, endpoint: str) -> dict[str, Any]:
    sub_id = "hsub_" + secrets.token_hex(6)
    width = WIDTHS[window]
    sub = {"id": sub_id, "org": org_id, "area": area, "window": window, "tag": tag, "endpoint": endpoint,
           "secret": signing.new_secret(), "created_at": time.time(),
           "cursor": int(time.time() // width) * width - width, "failures": 0, "retry_at": 0.0, "lease": None}
    await hub._update(sub_key(sub_id), lambda value: value or sub)
    await hub._update(INDEX, lambda value: {"ids": sorted({*value.get("ids", []), sub_id})})
    return sub


async def listing(hub: Hub, org_id: str) -> list[dict[str, Any]]:
    _, index = await hub._get(INDEX)
    out = []
    for sub_id in index.get("ids", []):
        _, sub = await hub._get(sub_key(sub_id))
        if sub and sub["org"] == org_id:
            out.append(public(sub))
    return out


async def delete(hub: Hub, org_id: str, sub_id: str) -> bool:
    _, sub = await hub._get(sub_key(sub_id))
    if not sub or sub["org"] != org_id:
        return False
    await hub._update(INDEX, lambda value: {"ids": [i for i in value.get("ids", []) if i != sub_id]})
    await hub._update(sub_key(sub_id), lambda value: {})
    return True


def public(sub: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sub.items() if k not in ("secret", "lease")}


class Pusher:
    def __init__(self, hub: Hub, grace_s: float = 60.0, allow_private: bool = False, timeout_s: float = 15.0):
        self.hub = hub
        self.grace_s = grace_s
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.me = secrets.token_hex(4)
        self.sent = 0
        self.failed = 0
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(self.allow_private), limit=32)
        self._http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._task = asyncio.create_task(self._run(), name="hub-push")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._http:
            await self._http.close()

    async def _run(self) -> None:
        while True:
            try:
                _, index = await self.hub._get(INDEX)
                await asyncio.gather(*(self._serve(sub_id) for sub_id in index.get("ids", [])))
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.hub.last_error = f"push: {type(err).__name__}: {err}"
            await asyncio.sleep(0.5)

    async def _serve(self, sub_id: str) -> None:
        for _ in range(MAX_PER_TICK):
            if not await self._one(sub_id):
                return

    async def _one(self, sub_id: str) -> bool:
        """Push the subscription's next window if it is due and no other replica holds it; True if pushed."""
        key = sub_key(sub_id)
        self.hub._cache.pop(key, None)  # another replica may have moved it
        _, sub = await self.hub._get(key)
        now = time.time()
        if not sub or sub.get("retry_at", 0) > now:
            return False
        lease = sub.get("lease")
        if lease and lease["until"] > now and lease["by"] != self.me:
            return False
        width = WIDTHS[sub["window"]]
        start = sub["cursor"] + width
        if now < start + width:
            return False
        answer = await self.hub.window(sub["org"], sub["area"], sub["window"], start, sub["tag"])
        complete = answer is not None and (answer.get("released") or answer["refused"]).get("complete")
        if not complete and now < start + width + self.grace_s:
            return False
        if not await self._take(key, start, now):
            return False
        body = self._body(sub, start, width, answer)
        ok = await self._send(sub, f"{sub['id']}-{start}", body)
        await self.hub._update(key, lambda value: _after(value, start, ok, time.time()))
        return ok

    async def _take(self, key: str, start: int, now: float) -> bool:
        taken = False

        def take(value: dict[str, Any]) -> dict[str, Any]:
            nonlocal taken
            lease = value.get("lease")
            if not value or value["cursor"] + WIDTHS[value["window"]] != start or (
                    lease and lease["until"] > now and lease["by"] != self.me):
                taken = False
                return value
            taken = True
            return {**value, "lease": {"by": self.me, "start": start, "until": now + LEASE_S}}
        await self.hub._update(key, take)
        return taken

    def _body(self, sub: dict[str, Any], start: int, width: int, answer: dict[str, Any] | None) -> bytes:
        from hub import aggregate
        from hub.answers import AreaRefusal

        if answer is None:  # no device of the area sent anything for this window
            answer = {"refused": {"area": sub["area"], "window": sub["window"], "window_start": aggregate.stamp(start),
                                  "window_end": aggregate.stamp(start + width), "tag": sub["tag"], "devices": 0,
                                  "error": AreaRefusal.NO_DATA,
                                  "detail": "no device of the area reported this window"}}
        kind = "released" if "released" in answer else "refused"
        return json.dumps({"type": "area_window", "subscription": sub["id"], kind: answer[kind]},
                          separators=(",", ":")).encode()

    async def _send(self, sub: dict[str, Any], msg_id: str, body: bytes) -> bool:
        headers = signing.headers([sub["secret"]], msg_id, int(time.time()), body)
        try:
            if self._http is None:
                raise RuntimeError("not started")
            async with self._http.post(sub["endpoint"], data=body, headers=headers) as resp:
                ok = 200 <= resp.status < 300
        except Exception as err:  # unreachable, refused by the endpoint policy, timed out
            log.info("push %s: %s", sub["id"], err)
            ok = False
        if ok:
            self.sent += 1
        else:
            self.failed += 1
        return ok


def _after(value: dict[str, Any], start: int, ok: bool, now: float) -> dict[str, Any]:
    if not value:
        return value  # deleted meanwhile
    value = {**value, "lease": None}
    if ok and value["cursor"] + WIDTHS[value["window"]] == start:
        value.update(cursor=start, failures=0, retry_at=0.0)
    elif not ok:
        failures = value.get("failures", 0) + 1
        value.update(failures=failures, retry_at=now + BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])
    return value
