"""The streams and buckets of the fleet, created (or left as they are) by `edge-hub init` and at `edge-hub serve`.

EDGE_RELEASES keeps every device's releases (replicated, file storage, de-duplicated by Nats-Msg-Id over a
window long enough for a device's retries after an outage) until the hub's consumer has taken them and for a
while after (`max_age`), so a replaced hub can be replayed. EDGE_HEALTH keeps each device's last heartbeat.
Buckets: edge_desired (the operator's signed documents), edge_hub (the hub's area windows, shared by its
replicas, kept `keep_days`), edge_hub_devices (each device's sequence bookkeeping). EDGE_RELEASES and
edge_desired allow direct gets: a device reads its own key and its own last release by a subject its NATS
permissions can name (agent/fleet/__init__.py); one created before that is updated to allow them.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

from agent.fleet import HEALTH_STREAM, RELEASES_STREAM
from agent.fleet.document import BUCKET as DESIRED_BUCKET

HUB_BUCKET = "edge_hub"
DEVICES_BUCKET = "edge_hub_devices"
KEEP_DAYS = 35.0  # area windows kept (a month's bills; the devices keep their own release log)
CONSUMER = "edge-hub"
DEDUPE_WINDOW_S = 3600.0
RELEASES_MAX_AGE_S = 7 * 86400.0


async def ensure(js: JetStreamContext, replicas: int = 3, keep_days: float = KEEP_DAYS, attempts: int = 60) -> None:
    """Create what is missing; a new cluster may still be electing its meta leader: retried."""
    for attempt in range(attempts):
        try:
            await _ensure(js, replicas, keep_days)
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)


async def _ensure(js: JetStreamContext, replicas: int, keep_days: float) -> None:
    await _stream(js, StreamConfig(name=RELEASES_STREAM, subjects=["edge.*.releases"], num_replicas=replicas,
                                   storage=StorageType.FILE, retention=RetentionPolicy.LIMITS,
                                   duplicate_window=DEDUPE_WINDOW_S, max_age=RELEASES_MAX_AGE_S,
                                   discard=DiscardPolicy.OLD, allow_direct=True))
    await _stream(js, StreamConfig(name=HEALTH_STREAM, subjects=["edge.*.health"], num_replicas=replicas,
                                   storage=StorageType.FILE, max_msgs_per_subject=1))
    for bucket, history, ttl in ((DESIRED_BUCKET, 5, None), (HUB_BUCKET, 1, keep_days * 86400),
                                 (DEVICES_BUCKET, 1, None)):
        try:
            await js.key_value(bucket)
        except Exception:
            await js.create_key_value(KeyValueConfig(bucket=bucket, history=history, replicas=replicas,
                                                     storage=StorageType.FILE, ttl=ttl,
                                                     direct=bucket == DESIRED_BUCKET))
    await _allow_direct(js, f"KV_{DESIRED_BUCKET}")


async def _stream(js: JetStreamContext, config: StreamConfig) -> None:
    name = config.name
    if name is None:  # nats-py's is optional; ours are named
        raise ValueError("a stream needs a name")
    try:
        await js.stream_info(name)
    except Exception:
        await js.add_stream(config)
    if config.allow_direct:
        await _allow_direct(js, name)


async def desired(js: JetStreamContext, key: str) -> bytes | None:
    """A key of the desired-state bucket as its stream's leader has it (not a direct get, which any replica
    answers and one a few writes behind would give the operator an older fleet document to build upon)."""
    from nats.js.errors import NotFoundError

    try:
        msg = await js.get_msg(f"KV_{DESIRED_BUCKET}", subject=f"$KV.{DESIRED_BUCKET}.{key}")
    except NotFoundError:
        return None
    return msg.data or None  # a delete or purge marker has no value


async def _allow_direct(js: JetStreamContext, stream: str) -> None:
    info = await js.stream_info(stream)
    if not info.config.allow_direct:
        info.config.allow_direct = True
        await js.update_stream(info.config)
