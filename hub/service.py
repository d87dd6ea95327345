"""The hub: every device's releases through one durable JetStream consumer, area windows in a shared bucket.

- The consumer (`edge-hub`, a pull consumer: several hub replicas share it) hands messages over in stream order;
  each is applied, then acknowledged: a kill -9 in between redelivers it, and applying again writes the same
  values (a device's part of a window is keyed by the device), so nothing is counted twice.
- State lives in buckets, written with compare-and-set (replicas may touch the same key): `edge_hub` (kept
  `--keep-days`): `w.<org>.<area>.<window>.<start>.<tag or _>` = {"devices": {device: contribution}}
  (hub/aggregate.py); `edge_hub_devices`: `d.<device>` = the device's sequence bookkeeping (contiguous,
  out-of-order, gaps) and its last window, and `devices`, the index of them.
- Which devices form an area and which organization may read what come from the operator's signed `fleet`
  document (agent/fleet/document.py), watched in the `edge_desired` bucket.
Nothing of a household reaches the hub: devices send released records only (agent/fleet/link.py). A message is
its subject's device's (edge.<device>.releases, which only that device's nkey may publish to): one that names
another device inside is dropped and counted, never applied as that device's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from nats.js.api import ConsumerConfig

from agent.config import WINDOW_SECONDS
from agent.fleet import RELEASES_STREAM, document
from agent.fleet.document import FLEET_KEY
from hub import aggregate
from hub.setup import CONSUMER, DEVICES_BUCKET, HUB_BUCKET, KEEP_DAYS, desired, ensure

log = logging.getLogger("edge.hub")

WIDTHS = WINDOW_SECONDS  # the devices' windows, by name
FETCH_BATCH = 512
ACK_WAIT_S = 10.0  # a killed hub's unacknowledged batch is delivered again this long after
HOLD_S = 1.0  # a held message comes back after this
MAX_HOLDS = 120  # ...so many times at most: a hole that never fills (a message past the stream's age) is a gap
WRITERS = 64  # key-value writes in flight at once


def window_key(org: str, area: str, window: str, start: int, tag: str | None) -> str:
    return f"w.{org}.{area}.{window}.{start}.{tag or '_'}"


class Conflict(Exception):
    pass


class Hub:
    def __init__(self, servers: list[str], public_key: str, min_devices: int = 2, replicas: int = 3,
                 operator_token: str | None = None, name: str = "edge-hub", keep_days: float = KEEP_DAYS,
                 nkey_seed: str | None = None):
        self.servers = servers
        self.nkey_seed = nkey_seed  # the hub's NATS identity, when the servers require one
        self.public_key = document.public_key_from_text(public_key)
        self.min_devices = min_devices
        self.replicas = replicas
        self.keep_days = keep_days
        self.operator_token = operator_token
        self.name = name
        self.fleet: dict | None = None  # the running fleet document
        self.fleet_refusal: dict | None = None
        self.device_area: dict[str, str] = {}
        self._by_key_hash: dict[str, document.FleetOrg] = {}
        self.nc = self.js = self.kv = self.kv_devices = None
        self._cache: dict[str, tuple[int, dict]] = {}  # key -> (revision, value): one round trip when unchanged
        self._tasks: list[asyncio.Task] = []
        self._known_devices: set[str] = set()
        self.applied = 0
        self.writes = 0  # key-value writes done
        self.redelivered = 0
        self.duplicates = 0  # messages applied before (redelivered, or re-sent past de-duplication)
        self.held = 0  # messages after a hole in a device's sequence, delivered again later
        self.unassigned = 0
        self.impersonations = 0  # messages naming a device other than their subject's
        self.last_applied_at: float | None = None
        self.last_error: str | None = None
        self.started_at = time.time()

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and run: the consumer and the fleet document's watch."""
        await self.open()
        self._tasks = [asyncio.create_task(self._consume(), name="hub-consume"),
                       asyncio.create_task(self._watch_fleet(), name="hub-fleet")]

    async def open(self) -> None:
        """Connect, the streams and buckets, the fleet document: enough to read (`edge-hub devices`)."""
        import nats

        self.nc = await nats.connect(servers=self.servers, name=self.name, max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.5, connect_timeout=2, error_cb=self._nats_error,
                                     nkeys_seed=self.nkey_seed)
        self.js = self.nc.jetstream(timeout=5)
        await ensure(self.js, self.replicas, self.keep_days)
        self.kv = await self.js.key_value(HUB_BUCKET)
        self.kv_devices = await self.js.key_value(DEVICES_BUCKET)
        try:
            await self._read_fleet()
        except Exception as err:  # read again before anything is consumed
            self.last_error = f"fleet document: {type(err).__name__}: {err}"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nc is not None:
            try:
                await self.nc.close()
            except Exception:
                pass

    async def _nats_error(self, err) -> None:
        self.last_error = f"nats: {type(err).__name__}: {err}"

    # --- the fleet document --------------------------------------------------------------------
    async def _read_fleet(self) -> None:
        """The fleet document from the bucket; raises if the cluster cannot say (never taken as "no document")."""
        value = await desired(self.js, FLEET_KEY)
        if value:  # else none published yet
            self.offer_fleet(value)

    def offer_fleet(self, envelope: bytes) -> bool:
        running = self.fleet["version"] if self.fleet else None
        try:
            doc = document.check(envelope, self.public_key, "fleet", time.time(), running)
        except document.Refused as err:
            if err.error == "older_version":
                return False
            self.fleet_refusal = {"at": time.time(), "error": err.error, "detail": err.detail}
            log.warning("hub: fleet document refused: %s: %s", err.error, err.detail)
            return False
        self.fleet, self.fleet_refusal = doc, None
        self.device_area = {d: area for area, devices in document.areas(doc).items() for d in devices}
        self._by_key_hash = {o.key_hash: o for o in document.organizations(doc).values()}  # revoked ones left out
        log.info("hub: fleet document version %d: %d area(s), %d organization(s)", doc["version"],
                 len(document.areas(doc)), len(document.organizations(doc)))
        return True

    async def _watch_fleet(self) -> None:
        while True:
            try:
                await self._read_fleet()
            except Exception:
                pass
            await asyncio.sleep(1.0)

    def areas(self) -> dict[str, tuple[str, ...]]:
        return document.areas(self.fleet) if self.fleet else {}

    def organizations(self) -> dict[str, document.FleetOrg]:
        return document.organizations(self.fleet) if self.fleet else {}

    def organization_by_key_hash(self, digest: str) -> document.FleetOrg | None:
        return self._by_key_hash.get(digest)

    # --- consuming -----------------------------------------------------------------------------
    async def _consume(self) -> None:
        sub = None
        while True:
            try:
                if self.fleet is None:  # which devices form which area: nothing can be attributed without it
                    await self._read_fleet()
                    if self.fleet is None:
                        await asyncio.sleep(0.5)
                        continue
                if sub is None:
                    sub = await self.js.pull_subscribe("edge.*.releases", durable=CONSUMER, stream=RELEASES_STREAM,
                                                       config=ConsumerConfig(ack_wait=ACK_WAIT_S))
                try:
                    messages = await sub.fetch(FETCH_BATCH, timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                done, held = await self.apply(messages)
                for msg in done:  # only once every write of the batch is in the bucket
                    await msg.ack()
                for msg in held:
                    await msg.nak(delay=HOLD_S)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a node down, a leader moving: the consumer is durable, bind to it again
                self.last_error = f"consume: {type(err).__name__}: {err}"
                if sub is not None:
                    try:
                        await sub.unsubscribe()
                    except Exception:
                        pass
                    sub = None
                await asyncio.sleep(0.5)

    async def apply(self, messages: list) -> tuple[list, list]:
        """One fetched batch: every device's parts merged per window key and every device's sequence numbers
        per device, then each key written once (concurrently). Applying a batch again writes the same values.

        Each device's messages are applied in its order: one already applied is done (a redelivery), one after
        a hole (the messages of a killed hub not yet redelivered) is held, with the rest of that device's in the
        batch, and comes back later. Returns (done: to acknowledge, held: to deliver again)."""
        payloads = [json.loads(msg.data) for msg in messages]
        senders = [msg.subject.split(".")[1] for msg in messages]  # edge.<device>.releases
        devices = sorted(set(senders))
        states = await asyncio.gather(*(self._fresh(f"d.{d}") for d in devices))
        expected = {d: state.get("contiguous", 0) + 1 for d, state in zip(devices, states)}
        epochs = {d: state.get("epoch") for d, state in zip(devices, states)}
        parts: dict[str, dict[str, dict]] = {}
        seen: dict[str, list[tuple[int, dict, str | None]]] = {}
        done, held = [], []
        for msg, payload, device in zip(messages, payloads, senders):
            seq = int(payload["seq"])
            if payload.get("device") != device:  # a device publishing as another: not that device's release
                log.warning("hub: a message on %s names device %r: dropped", msg.subject, payload.get("device"))
                self.impersonations += 1
                done.append(msg)
                continue
            if msg.metadata.num_delivered > 1:
                self.redelivered += 1
            epoch = payload.get("epoch")
            if epoch != epochs[device] and seq == 1:  # a new outbox (a replaced disk): its numbers start again
                epochs[device], expected[device] = epoch, 1
            if seq < expected[device] and epoch == epochs[device]:
                done.append(msg)  # applied before
                self.duplicates += 1
                continue
            if (seq > expected[device] or epoch != epochs[device]) and msg.metadata.num_delivered < MAX_HOLDS:
                held.append(msg)
                self.held += 1
                continue
            expected[device] = seq + 1  # in order, or a hole that never filled (taken, counted as a gap)
            done.append(msg)
            area = self.device_area.get(device)
            if area is None:  # a device assigned since the document was read? (a failed read: the batch again)
                await self._read_fleet()
                area = self.device_area.get(device)
            if area is None:  # in no area of the operator's document: nothing to add it to
                self.unassigned += 1
            else:
                for record in payload["records"]:
                    key = window_key(record["org"], area, payload["window"], int(payload["start"]),
                                     record.get("tag"))
                    parts.setdefault(key, {})[device] = aggregate.contribution(record)
            seen.setdefault(device, []).append((seq, payload, area))
        new = set(seen) - self._known_devices
        if new:  # the index of devices (listing a bucket's keys is not filtered before NATS 2.10)
            await self._update("devices", lambda value: {"devices": sorted({*value.get("devices", []), *new})})
            self._known_devices |= new
        now = time.time()
        # the parts first, then the sequence bookkeeping: a kill -9 between them leaves parts written twice on
        # redelivery (the same values), never a sequence marked applied whose parts are not in the bucket
        await self._all(self._update(key, lambda value, p=p: _with_parts(value, p)) for key, p in parts.items())
        await self._all(self._update(f"d.{device}", lambda value, s=s: _device_seen_all(value, s, now))
                        for device, s in seen.items())
        self.applied += sum(len(s) for s in seen.values())
        self.last_applied_at = now
        return done, held

    async def _fresh(self, key: str) -> dict:
        """A key read now (another replica may have moved it), kept for the compare-and-set that follows."""
        revision, value = await self._get(key)
        self._cache[key] = (revision, value)
        return value

    async def _all(self, coroutines) -> None:
        """Run the writes concurrently, at most WRITERS at once (the cluster pipelines them)."""
        gate = asyncio.Semaphore(WRITERS)

        async def one(coroutine):
            async with gate:
                await coroutine
        await asyncio.gather(*(one(c) for c in coroutines))

    async def _update(self, key: str, change) -> None:
        """Compare-and-set `change(value) -> value` of one key; retried on a concurrent writer."""
        while True:
            cached = self._cache.get(key)
            if cached is None:
                cached = await self._get(key)
            revision, value = cached
            new = change(json.loads(json.dumps(value)))
            if new == value:
                return
            data = json.dumps(new, separators=(",", ":")).encode()
            try:
                if revision == 0:
                    revision = await self._bucket(key).create(key, data)
                else:
                    revision = await self._bucket(key).update(key, data, last=revision)
            except Exception as err:
                if _conflict(err):
                    self._cache.pop(key, None)
                    continue
                raise
            self._cache[key] = (revision, new)
            self.writes += 1
            if len(self._cache) > 200_000:
                self._cache.clear()
            return

    def _bucket(self, key: str):
        """Area windows expire with their bucket's max age; devices' bookkeeping does not."""
        return self.kv if key.startswith("w.") else self.kv_devices

    async def _get(self, key: str) -> tuple[int, dict]:
        try:
            entry = await self._bucket(key).get(key)
        except Exception as err:
            if "not found" in str(err).lower() or "deleted" in str(err).lower():
                return 0, {}
            raise
        return entry.revision, json.loads(entry.value) if entry.value else {}

    # --- reading -------------------------------------------------------------------------------
    async def window(self, org: str, area: str, window: str, start: int, tag: str | None) -> dict | None:
        try:
            entry = await self.kv.get(window_key(org, area, window, start, tag))
        except Exception as err:
            if "not found" in str(err).lower() or "deleted" in str(err).lower():
                return None
            raise
        value = json.loads(entry.value)
        return aggregate.area_window(area, window, WIDTHS[window], start, tag, value.get("devices", {}),
                                     self.areas().get(area, ()), self.min_devices)

    async def devices(self) -> list[dict]:
        """Every device the operator assigned or that sent something: area, applied version, last release and
        last heartbeat."""
        from agent.fleet import HEALTH_STREAM, health_subject

        names = set(self.device_area) | set((await self._get("devices"))[1].get("devices", []))
        gate = asyncio.Semaphore(WRITERS)

        async def one(device: str) -> dict:
            async with gate:
                _, state = await self._get(f"d.{device}")
                health = None
                try:
                    msg = await self.js.get_last_msg(HEALTH_STREAM, health_subject(device))
                    health = json.loads(msg.data)
                except Exception:
                    pass  # no heartbeat yet
            return {"device": device, "area": self.device_area.get(device),
                    "applied_version": (health or {}).get("applied_version"),
                    "last_seq": state.get("contiguous"), "gaps": state.get("gaps", 0),
                    "out_of_order": state.get("out_of_order", 0), "last_release": state.get("last_window"),
                    "health": health}
        return list(await asyncio.gather(*(one(d) for d in sorted(names))))

    def health(self) -> dict:
        return {"status": "ok" if self.nc is not None and self.nc.is_connected else "degraded",
                "uptime_s": round(time.time() - self.started_at, 1),
                "fleet_version": self.fleet["version"] if self.fleet else None, "fleet_refused": self.fleet_refusal,
                "applied": self.applied, "writes": self.writes, "redelivered": self.redelivered, "duplicates": self.duplicates, "held": self.held, "unassigned": self.unassigned,
                "impersonations": self.impersonations,
                "last_applied_at": self.last_applied_at, "last_error": self.last_error}


def _conflict(err: Exception) -> bool:
    text = str(err).lower()
    return getattr(err, "err_code", None) in (10071, 10058) or "wrong last sequence" in text or \
        "key exists" in text


def _with_parts(value: dict, parts: dict[str, dict]) -> dict:
    value.setdefault("devices", {}).update(parts)
    return value


def _device_seen_all(value: dict, seen: list[tuple[int, dict, str | None]], now: float) -> dict:
    for seq, payload, area in seen:  # in stream order
        value = _device_seen(value, seq, payload, area, now)
    return value


def _device_seen(value: dict, seq: int, payload: dict, area: str | None, now: float) -> dict:
    """A device's sequence bookkeeping: the contiguous prefix applied, sequence numbers applied above it, how
    many arrived out of order (a later one before an earlier one) and how many times a gap was seen."""
    if payload.get("epoch") != value.get("epoch"):  # a new outbox: its sequence starts again
        value = {"epoch": payload.get("epoch"), "gaps": value.get("gaps", 0),
                 "out_of_order": value.get("out_of_order", 0), "epochs": value.get("epochs", 0) + 1}
    contiguous = value.get("contiguous", 0)
    above = set(value.get("above", []))
    if seq <= contiguous or seq in above:
        return value  # applied before (a redelivery): nothing changes
    if seq != contiguous + 1:
        value["gaps"] = value.get("gaps", 0) + (not above)
    if above and seq < max(above):
        value["out_of_order"] = value.get("out_of_order", 0) + 1
    above.add(seq)
    while contiguous + 1 in above:
        contiguous += 1
        above.remove(contiguous)
    value.update(contiguous=contiguous, above=sorted(above), area=area, last_at=now,
                 last_window={"window": payload["window"], "start": payload["start"]})
    return value
