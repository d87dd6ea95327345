"""Disk writes asked for from the event loop, run in a worker thread: one change at a time per owner (a store,
the release log, the delivery engine), in the order asked, and reported only once durable.

Here rather than in agent/api/common.py: the stores below the API use it, and the API package imports them.
"""

from __future__ import annotations

import asyncio
import functools


async def serially(writes: asyncio.Lock, write, *args, then=None, check=None, **kwargs):
    """Run `write(*args, **kwargs)` (an fsync'd append or an atomic rewrite) in a worker thread, after every
    change asked for before it (`writes` is the owner's asyncio.Lock), then `then()` on the event loop; return
    `write`'s result once it is durable. `check()`, if given, runs on the event loop once the changes before
    this one have landed, just before the write: it raises to refuse the change (nothing is written). Shielded:
    a cancelled request must neither leave its write half-reported (memory and file apart) nor let the next
    change overtake it."""
    async def change():
        async with writes:
            if check is not None:
                check()
            result = await asyncio.to_thread(functools.partial(write, *args, **kwargs))
            if then is not None:
                then()
            return result
    return await asyncio.shield(change())
