"""The device's link to the fleet: releases up, heartbeats beside them, desired state down.

Up: when the release module has decided a window of a width in `[fleet] windows`, every record of that window for
the fleet's organizations (a released body or a refusal's code, nothing else) becomes one outbox message, on disk
first (agent/fleet/outbox.py); one publisher sends the outbox head to `edge.<device>.releases` with its
Nats-Msg-Id and the expected last subject sequence, and drops it only on JetStream's acknowledgement. After a
restart the release log is read from the outbox's cursor, so a window decided just before a kill -9 still goes.

Down: the device watches its key in the `edge_desired` bucket (the key's subject, and a direct get of it on
connecting and every heartbeat: both are its own subjects, so its NATS permissions need name nothing of another
device). A document is checked whole (agent/fleet/document.py: signature, device, version, not-after, content,
level definitions by edge.toml's own checks) and applied whole in one step on the event loop: its level
definitions are added to edge.toml's, the fleet's organizations replace the previous ones in the registry
(`replace_organizations`; their one key each; a revoked or removed key stops working at once), related
households are marked. The accepted document is kept on disk and
applied again at start, before the API or the release module run. A refusal is logged and shown in /health; the
device keeps the version it runs.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.clock import Clock
from agent.config import WINDOW_SECONDS, Config
from agent.fleet import (RELEASES_STREAM, desired_subject, document, health_subject, inbox_prefix, public_key_from_text,
                         releases_subject)
from agent.fleet.outbox import FleetOutbox
from agent.ports import FleetRegistry, FleetReleases
from agent.registry import Organization
from agent.release import Refusal, RefusalCode
from agent.release.door import TAG_GRID_S
from agent.store.durable import Durable, replace_file

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

Json = dict[str, Any]
Answers = dict[tuple[str, str | None], Json | Refusal]  # {(organization, tag): the release module's answer}
log = logging.getLogger("edge.fleet")

DESIRED_FILE = "desired.json"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Subject-Sequence
CATCH_UP_MAX_WINDOWS = 10_000  # per width, read back from the release log after a restart
SKIPPED = (RefusalCode.NOT_RELEASED, RefusalCode.NOT_SETTLED)  # no record: nothing to send


def records_of(answers: Answers) -> list[Json]:
    """{(organization, tag): the release module's answer} -> what goes up: a released body as the organization
    sees it, or only the code of a refusal (its detail may name counts: not needed upstream)."""
    records: list[Json] = []
    for (org_id, tag), result in answers.items():
        if isinstance(result, Refusal):
            if result.error not in SKIPPED:
                records.append({"org": org_id, "tag": tag, "refused": result.error})
        else:
            records.append({"org": org_id, "tag": tag, "body": result})
    return records


def message(device: str, seq: int, window: str, start: int, desired_version: int | None, records: list[Json],
            epoch: str | None = None) -> Json:
    """One outbox message: one window of one width, every fleet organization's record of it; `seq` counts in
    the outbox's `epoch`."""
    return {"v": 1, "device": device, "epoch": epoch, "seq": seq, "window": window, "start": start,
            "desired_version": desired_version, "records": records}


def _digest(envelope: bytes) -> str:
    return hashlib.sha256(envelope).hexdigest()


@dataclass(frozen=True)
class FleetNeeds:
    """What the fleet link uses of the rest of the agent (agent/ports.py)."""

    clock: Clock
    releases: FleetReleases
    registry: FleetRegistry
    health: Callable[[], tuple[bool, dict[str, Any]]]  # the device's /health, published as its heartbeat
    config: Config  # its [fleet] table, the device's name and data directory, and the levels a document adds to


class FleetLink:
    def __init__(self, needs: FleetNeeds) -> None:
        self.needs = needs
        self.config = needs.config.fleet
        self.device = self.config.device_id or needs.config.device_name
        self.public_key = public_key_from_text(self.config.operator_public_key)
        self.directory = Path(needs.config.storage.path) / "fleet"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.outbox = FleetOutbox(self.directory / "outbox.seg", self.config.outbox_max)
        self.own_levels = dict(needs.config.levels)  # edge.toml's; a document's levels are added to these
        self.writes = Durable("fleet link", self.directory, log, what="the fleet's state")
        self.applied: Json | None = None
        self.applied_at: float | None = None
        self.refusal: Json | None = None
        self._refused_envelope: bytes | None = None
        self._ran: collections.deque[str] = collections.deque(maxlen=64)  # digests of documents applied
        self._fleet_orgs: set[str] = set()
        self._fleet_levels: list[str] = []
        self._fleet_related: dict[str, set[str]] = {}
        self._scanned: dict[str, int] = {}  # see _done
        self._windows: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.duplicates = 0
        self.sequence_resyncs = 0
        self.last_publish_error: str | None = None
        self.last_watch_error: str | None = None  # why the desired state could not be read (shown in /health)
        self._load_desired()
        needs.releases.listen(self._on_window)

    # --- desired state -------------------------------------------------------------------------
    def _load_desired(self) -> None:
        path = self.directory / DESIRED_FILE
        if not path.exists():
            return
        envelope = path.read_bytes()
        try:  # accepted before; checked again (signature, device, content) but not for age: it is what runs
            doc = document.check(envelope, self.public_key, "device", float("-inf"), None, self.device,
                                 self.own_levels, self.needs.config.privacy.tags)
        except document.Refused as err:
            self._refuse(None, err)
            return
        self._apply(doc)
        self._ran.append(_digest(envelope))

    async def offer(self, envelope: bytes) -> bool:
        """A document from the bucket: applied whole, or refused (logged once, shown in /health)."""
        if envelope == self._refused_envelope:
            return False  # read again every heartbeat: said once
        running = self.applied["version"] if self.applied else None
        try:
            doc = document.check(envelope, self.public_key, "device", time.time(), running, self.device,
                                 self.own_levels, self.needs.config.privacy.tags)
            self._check_households(doc)
        except document.Refused as err:
            if err.error == "older_version" and _digest(envelope) in self._ran:
                return False  # one it ran, seen again (a direct get answered by a replica behind): nothing to say
            self._refuse(envelope, err)
            self._refused_envelope = envelope
            return False
        await self.writes.write(replace_file, self.directory / DESIRED_FILE, envelope)  # durable, then applied
        self._apply(doc)
        self._ran.append(_digest(envelope))
        log.info("fleet: desired state version %d applied (%d organization(s))", doc["version"],
                 len(self._fleet_orgs))
        return True

    def _check_households(self, doc: Json) -> None:
        households = self.needs.registry.households
        unknown = [h for h in document.related(doc) if h not in households]
        if unknown:
            raise document.Refused("unknown_household", f"related household {unknown[0]!r} is not on this device")

    def _refuse(self, envelope: bytes | None, err: document.Refused) -> None:
        version = None
        if envelope is not None:
            try:
                version = json.loads(envelope)["doc"].get("version")
            except (ValueError, KeyError, TypeError, AttributeError):
                pass
        self.refusal = {"at": time.time(), "version": version, "error": err.error, "detail": err.detail}
        log.warning("fleet: desired state %s refused: %s: %s", version, err.error, err.detail)

    def _apply(self, doc: Json) -> None:
        """One step on the event loop (no await): nothing sees half of it. The levels are replaced in the
        configuration's own mapping, which every part of the agent (the release module, the API, delivery,
        triggers) reads at each use."""
        registry, levels = self.needs.registry, self.needs.config.levels
        defined = document.levels_of(doc, self.needs.config.privacy.tags)
        levels.clear()
        levels.update({**self.own_levels, **defined})
        self._fleet_levels = sorted(defined)
        wanted = document.organizations(doc, levels)
        registry.replace_organizations(self._fleet_orgs, [
            Organization(id=org_id, name=o.name, level=o.level, key_hash=o.key_hash,
                         created_at=old.created_at if (old := registry.organizations.get(org_id)) else time.time(),
                         parameters=None if o.parameters is None else list(o.parameters))
            for org_id, o in wanted.items()])
        self._fleet_orgs = set(wanted)
        related = {h: set(orgs) for h, orgs in document.related(doc).items()}
        for household in registry.all_households():
            before = self._fleet_related.get(household.id, set())
            mine = related.get(household.id, set())
            if before or mine:
                local = set(household.related_organizations) - before
                household.related_organizations = sorted(local | mine)
        self._fleet_related = related
        self.applied, self.applied_at, self.refusal = doc, time.time(), None

    @property
    def organizations(self) -> set[str]:
        return set(self._fleet_orgs)

    # --- releases up ---------------------------------------------------------------------------
    def _on_window(self, window: str, start: int) -> None:
        if window in self.config.windows:
            self._windows.put_nowait((window, start))

    def _wanted(self, window: str) -> list[tuple[str, str | None]]:
        """(organization, tag) pairs the fleet's organizations may have a record for in this width."""
        config, registry = self.needs.config, self.needs.registry
        out = []
        for org_id in sorted(self._fleet_orgs):
            org = registry.organizations.get(org_id)
            level = config.levels.get(org.level) if org else None
            if level is not None and window in level.windows:
                tags = config.privacy.tags if WINDOW_SECONDS[window] >= TAG_GRID_S else ()
                out += [(org_id, tag) for tag in (None, *tags)]
        return out

    def _answers_now(self, window: str, start: int) -> Answers:
        releases = self.needs.releases
        return {(o, t): releases.answer(o, window, start, t) for o, t in self._wanted(window)}

    async def _answers_from_log(self, window: str, starts: list[int]) -> dict[int, Answers]:
        """{start: {(organization, tag): answer}} read back from the release log, one read per pair."""
        out: dict[int, Answers] = {start: {} for start in starts}
        for org_id, tag in self._wanted(window):
            found = await self.needs.releases.history(org_id, window, starts, tag)
            for start, answer in found.items():
                out[start][(org_id, tag)] = answer
        return out

    async def _enqueue(self, window: str, start: int, answers: Answers) -> None:
        if self.outbox.full:
            return  # the cursor stays: read from the release log once the outbox has drained
        records = records_of(answers)
        version = self.applied["version"] if self.applied else None

        def payload(seq: int) -> Json:
            return message(self.device, seq, window, start, version, records, self.outbox.epoch)
        await self.writes.write(self.outbox.enqueue, window, start, payload)
        self._wake.set()

    async def _collect(self) -> None:
        """Windows decided while running, in order; first the ones a restart or a full outbox left behind."""
        await self._catch_up()
        while True:
            window, start = await self._windows.get()
            if start <= self._done(window) or self.outbox.full:
                continue
            if start > self._done(window) + WINDOW_SECONDS[window] and window in self.outbox.cursor:
                await self._catch_up()
                if start <= self._done(window) or self.outbox.full:
                    continue  # the catch-up sent it already (it reads the log up to the last settled window)
            # the exact records to the release log first: what goes up is what a restart reads back
            await self.needs.releases.flush()
            await self._enqueue(window, start, self._answers_now(window, start))

    def _done(self, window: str) -> int:
        """The newest window of this width already sent to the outbox or found to have nothing to send."""
        return max(self.outbox.cursor.get(window, -1), self._scanned.get(window, -1))

    async def _catch_up(self) -> None:
        now = self.needs.clock()
        for window in self.config.windows:
            if window not in self.outbox.cursor:
                continue  # a first start: from the windows decided from now on
            width = WINDOW_SECONDS[window]
            last = self.needs.releases.last_settled(window)
            until = int(last if last is not None else (now // width) * width - width)
            first = max(self._done(window) + width, until - CATCH_UP_MAX_WINDOWS * width)
            starts = list(range(int(first), until + 1, width))
            if not starts:
                continue
            found = await self._answers_from_log(window, starts)
            for start in starts:
                if self.outbox.full:
                    return
                answers = found[start]
                if any(isinstance(a, Refusal) and a.error == RefusalCode.NOT_SETTLED for a in answers.values()):
                    break  # decided later: the release module's listener brings it
                if any(not isinstance(a, Refusal) or a.error not in SKIPPED for a in answers.values()):
                    await self._enqueue(window, start, answers)
                self._scanned[window] = start

    async def _publish(self) -> None:
        subject = releases_subject(self.device)
        backoff = 0.2
        while True:
            head = self.outbox.head()
            if head is None or self._js is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            headers = {"Nats-Msg-Id": head.id, "Edge-Seq": str(head.seq)}
            if self.outbox.stream_seq is not None:
                headers["Nats-Expected-Last-Subject-Sequence"] = str(self.outbox.stream_seq)
            try:
                ack = await self._js.publish(subject, json.dumps(head.payload, separators=(",", ":")).encode(),
                                             timeout=5, headers=headers)
            except Exception as err:
                if getattr(err, "err_code", None) == WRONG_LAST_SEQUENCE:
                    await self._resync(subject)
                    continue
                self.last_publish_error = f"{type(err).__name__}: {err}"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            self.duplicates += bool(ack.duplicate)
            await self.writes.write(self.outbox.ack, head, ack.seq)
            self.last_publish_error = None

    async def _resync(self, subject: str) -> None:
        """The subject's last sequence is not the one the outbox expected: the head landed already (its ack was
        lost and the de-duplication window has passed), or the stream was reset. Learn where it stands."""
        self.sequence_resyncs += 1
        head = self.outbox.head()
        from nats.js.errors import NotFoundError

        assert self._js is not None  # connected
        try:  # the direct get of its own subject: all a device's permissions allow
            last = await self._js.get_last_msg(RELEASES_STREAM, subject, direct=True)
        except Exception as err:
            if isinstance(err, NotFoundError) or getattr(err, "code", None) == 404:
                log.warning("fleet: the stream has no message of this device: publishing again from sequence 0")
                self.outbox.stream_seq = 0
                return
            await asyncio.sleep(1)
            return
        if head is not None and (last.headers or {}).get("Nats-Msg-Id") == head.id:
            await self.writes.write(self.outbox.ack, head, last.seq)
            return
        log.warning("fleet: the stream's last message of this device is at %d, not %s as expected: "
                    "continuing after it", last.seq, self.outbox.stream_seq)
        self.outbox.stream_seq = last.seq

    # --- connection, heartbeats, the watched key ---------------------------------------------------
    async def _connect(self) -> None:
        import nats

        backoff = 0.5
        while True:
            try:
                self._nc = await nats.connect(servers=list(self.config.servers), name=f"edge-{self.device}",
                                              connect_timeout=2, reconnect_time_wait=0.5,
                                              max_reconnect_attempts=-1, error_cb=self._nats_error,
                                              disconnected_cb=self._nats_state, reconnected_cb=self._nats_state,
                                              inbox_prefix=inbox_prefix(self.device),
                                              nkeys_seed=self.config.nkey_seed_file or None)
                self._js = self._nc.jetstream(timeout=5)
                log.info("fleet: connected to %s as device %s", self._nc.connected_url and
                         self._nc.connected_url.netloc, self.device)
                self._wake.set()
                return
            except Exception as err:
                self.last_publish_error = f"connect: {type(err).__name__}: {err}"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _nats_error(self, err: Exception) -> None:
        self.last_publish_error = f"nats: {type(err).__name__}: {err}"

    async def _nats_state(self) -> None:
        self._wake.set()

    async def _heartbeats(self) -> None:
        while True:
            if self._js is not None:
                try:
                    await self._js.publish(health_subject(self.device),
                                           json.dumps(self.heartbeat(), separators=(",", ":")).encode(),
                                           timeout=5)
                except Exception:
                    pass  # a heartbeat lost is replaced by the next one
            await asyncio.sleep(self.config.heartbeat_s)

    def heartbeat(self) -> Json:
        ok, body = self.needs.health()
        return {"device": self.device, "at": time.time(), "status": body["status"],
                "applied_version": self.applied["version"] if self.applied else None,
                "refused": self.refusal, "outbox": self.outbox.depth, "published_seq": self.outbox.next_seq - 1
                - self.outbox.depth, "last_release": {w: s for w, s in self.outbox.cursor.items()},
                "meters": {"total": len(body["meters"]),
                           "reading": sum(1 for m in body["meters"].values() if m.get("state") == "reading")}}

    async def _watch(self) -> None:
        """The device's key in the bucket: its subject subscribed (a put is published there), and the key read
        with a direct get on connecting and every heartbeat, in case a put was missed while disconnected
        (applying is idempotent: an equal version is ignored)."""
        updates: asyncio.Queue[bytes] = asyncio.Queue()
        subscription = None

        async def put(msg: Msg) -> None:
            updates.put_nowait(msg.data)
        while True:
            if self._js is None or self._nc is None:
                await asyncio.sleep(0.2)
                continue
            try:
                if subscription is None:
                    subscription = await self._nc.subscribe(desired_subject(self.device), cb=put)
                value = await self._desired_now()
                self.last_watch_error = None
                if value:
                    await self.offer(value)
                deadline = time.monotonic() + self.config.heartbeat_s
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        value = await asyncio.wait_for(updates.get(), left)
                    except asyncio.TimeoutError:
                        break
                    if value:  # a delete or purge marker has no value
                        await self.offer(value)
            except Exception as err:  # no bucket yet, a node down: try again
                self.last_watch_error = f"{type(err).__name__}: {err}"
                await asyncio.sleep(1.0)

    async def _desired_now(self) -> bytes | None:
        from nats.js.errors import NotFoundError

        assert self._js is not None  # connected
        try:
            entry = await self._js.get_msg(f"KV_{document.BUCKET}", subject=desired_subject(self.device),
                                           direct=True)
        except NotFoundError:
            return None  # nothing for this device yet
        return bytes(entry.data) if entry.data is not None else None

    # --- lifecycle and /health -----------------------------------------------------------------
    async def start(self) -> None:
        async def run() -> None:
            await self._connect()
            await asyncio.gather(self._publish(), self._heartbeats(), self._watch())
        self._tasks = [asyncio.create_task(run(), name="fleet"),
                       asyncio.create_task(self._collect(), name="fleet-collect")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception:
                pass
        async with self.writes:
            await asyncio.to_thread(self.outbox.close)
        self.needs.config.levels.clear()  # edge.toml's again: the document's are this run's, applied at each start
        self.needs.config.levels.update(self.own_levels)

    def health(self) -> Json:
        applied = self.applied
        now = time.time()
        return {
            "device": self.device,
            "connected": bool(self._nc and self._nc.is_connected),
            "desired_version": applied["version"] if applied else None,
            "applied_at": self.applied_at,
            "not_after": applied["not_after"] if applied else None,
            "expired": bool(applied and applied["not_after"] <= now),
            "organizations": sorted(self._fleet_orgs),
            "levels": self._fleet_levels,  # the levels the document defines (the others are edge.toml's)
            "refused": self.refusal,
            "outbox": self.outbox.depth,
            "cursor": dict(self.outbox.cursor),  # per width, the newest window enqueued
            "published": self.outbox.acked_total,
            "duplicates": self.duplicates,
            "sequence_resyncs": self.sequence_resyncs,
            "last_error": self.last_publish_error,
            "watch_error": self.last_watch_error,
        }
