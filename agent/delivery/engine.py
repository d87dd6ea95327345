"""Subscriptions in motion: make messages as windows close, send them, retry, never lose one.

- The producer runs every half second on the agent's clock: a subscription that is due gets the
  last closed window's release (the same privacy rules as GET /data), its filters decide, and the
  message goes into its outbox (on disk) before anything is sent.
- Each subscription has its own sender task: one request at a time, so order is kept and a slow or
  dead endpoint holds up nobody else; a global limit bounds open connections.
- Retries follow `retry_schedule` (the last step repeats) or the receiver's `Retry-After`; the
  `webhook-id` stays the same on every retry; 410 Gone disables the subscription; 3xx is a failure.
- Nothing is lost silently: a window that could not be queued (the disk refused the write), or that was never
  decided (the agent was down when it closed, the producer fell behind), becomes one `gap` message, queued as
  soon as the outbox can be written again; a sender that fails (a refused sequence or acknowledgement write)
  logs it, backs off and goes on. /health says which subscriptions cannot queue or send (`health`).
- Changes to the subscriptions from the event loop (the API, a 410) are written to subscriptions.seg in a
  worker thread, one at a time and in the order asked (agent/store/durable.py); a subscription changes in
  memory, and the API answers, only once its write is durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable

import aiohttp
from tinydb import where

from agent.access import denied
from agent.clock import Clock
from agent.config import WINDOW_SECONDS, DeliveryConfig, Level
from agent.delivery import signing
from agent.delivery.filters import FilterSet
from agent.delivery.outbox import FETCH_HINT, Message, Outbox
from agent.delivery.targets import PolicyResolver, TargetError, check_literal_host
from agent.ports import Decided, Organizations, PushTrail
from agent.release import Refusal
from agent.store.disk import DataDirectory
from agent.store.durable import Change, Durable
from agent.store.segment import SegmentDB, ensure_dir
from drivers.ratelog import RateLimitedLog
from drivers.reading import iso, unix_seconds

Json = dict[str, Any]
log = logging.getLogger("edge.delivery")

SECRET_OVERLAP_S = 24 * 3600  # after a rotation, the old secret signs too for this long
MAX_RETRY_AFTER_S = 24 * 3600
# Windows are produced as soon as the release module has decided them (its listener: the one window-close
# schedule); this tick only retries gaps that could not be queued.
PRODUCE_EVERY_S = 0.5
SENDER_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # a sender whose disk writes fail, after each failure in a row
CATCH_UP_MAX = 120  # windows a subscription's producer decides at once after falling behind
NOTE_DECIDED_S = 60  # windows decided but not queued (filtered, withheld) a kill -9 may put inside a gap


@dataclass
class DeliveryStats:
    messages_sent: int = 0
    bytes_sent: int = 0
    failures: int = 0
    retries: int = 0
    withheld: int = 0  # windows the privacy rules did not release
    filtered: int = 0  # windows the filters held back
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    disk_error: str | None = None  # the outbox cannot be written now (queueing or sending): in /health


@dataclass
class Subscription:
    id: str
    organization_id: str
    endpoint: str
    interval_s: float
    window: str
    tag: str | None
    filter: Json | None
    secrets: list[Json]  # [{"secret": "whsec_...", "until": None | unix time}]
    created_at: float
    state: str = "active"  # or "disabled"
    disabled_reason: str | None = None
    # producer state, in memory only: after a restart the next window is sent whatever the filters say
    next_due: float = field(default=0.0, compare=False)
    last_window: int | None = field(default=None, compare=False)
    last_sent: Json | None = field(default=None, compare=False)
    last_sent_at: float | None = field(default=None, compare=False)
    # windows decided but not queued (the outbox refused the write): [count, first start, last end], made a gap
    unqueued: list[float] | None = field(default=None, compare=False)

    def record(self) -> Json:
        return {k: getattr(self, k) for k in ("id", "organization_id", "endpoint", "interval_s", "window", "tag",
                                              "filter", "secrets", "created_at", "state", "disabled_reason")}

    def signing_secrets(self, now: float) -> list[str]:
        return [s["secret"] for s in self.secrets if s["until"] is None or s["until"] > now]


@dataclass(frozen=True)
class DeliveryNeeds:
    """What delivery uses of the rest of the agent (agent/ports.py)."""

    clock: Clock
    releases: Decided
    registry: Organizations
    audit: PushTrail
    levels: Mapping[str, Level]  # the configuration's (a fleet document changes them in place)
    tags: tuple[str, ...]  # the channel tags' vocabulary


class Delivery:
    def __init__(self, needs: DeliveryNeeds, directory: str | Path, config: DeliveryConfig):
        self.needs = needs
        self.config = config
        self.directory = Path(directory)
        ensure_dir(self.directory / "outbox")
        self.data_directory = DataDirectory(self.directory.parent)  # watched: each write below it checks it
        # Twice: a damaged record must not make a subscription vanish (and orphan its outbox).
        self.db = SegmentDB(str(self.directory / "subscriptions.seg"), kind="subscriptions", copies=2)
        # subscriptions.seg: a step at a time (a worker thread's, or one in place), the event loop's changes in order
        self.writes = Durable("delivery", self.db.storage.path, log, what="the subscription change")
        # the outboxes' appends, in place on the event loop (made, numbered, acknowledged, noted)
        self.outbox_writes = Durable("delivery outbox", self.directory / "outbox", log, what="the webhook message")
        self._deleting: set[str] = set()
        self.subscriptions: dict[str, Subscription] = {}
        self.outboxes: dict[str, Outbox] = {}
        self.stats: dict[str, DeliveryStats] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._producer: asyncio.Task[None] | None = None
        self._started_at = -math.inf  # the agent's clock at start: windows before it closed while it was down
        self._session: aiohttp.ClientSession | None = None
        self._connections: asyncio.Semaphore | None = None
        self._ratelog = RateLimitedLog(log)
        for doc in self.db.table("subscriptions").all():
            self._adopt(Subscription(**doc))
        self.damaged = self._check_damage()

    def _adopt(self, sub: Subscription) -> None:
        self.subscriptions[sub.id] = sub
        outbox = self.outboxes[sub.id] = Outbox(self.directory / "outbox" / f"{sub.id}.seg", self.config.max_queue)
        self.stats[sub.id] = DeliveryStats()
        resume = max(filter(None, [outbox.last_window_end, outbox.decided_until]), default=None)
        if resume is not None:  # the windows after it, until the first one decided now, become a gap
            sub.last_window = int(unix_seconds(resume)) - WINDOW_SECONDS[sub.window]

    def _check_damage(self) -> str | None:
        """subscriptions.seg lost records beyond repair: which subscriptions they held is unknown. Their outboxes
        are kept (never deleted as orphans) and /health says so until the operator looks."""
        lost = self.db.storage.lost_records
        if not lost:
            return None
        known = {f"{sub_id}.seg" for sub_id in self.subscriptions}
        orphans = sorted(p.name for p in (self.directory / "outbox").glob("*.seg") if p.name not in known)
        problem = (f"subscriptions.seg: {lost} damaged record(s) could not be recovered; outboxes without a "
                   f"subscription kept: {', '.join(orphans) or 'none'}")
        log.error("%s", problem)
        return problem

    def health(self) -> tuple[bool, Json]:
        """Whether every subscription can queue and send, and which cannot (for /health)."""
        failing = {sub_id: stats.disk_error for sub_id, stats in self.stats.items() if stats.disk_error}
        unqueued = {sub.id: sub.unqueued[0] for sub in self.subscriptions.values() if sub.unqueued}
        ok = not failing and not unqueued and self.damaged is None
        return ok, {"outbox_errors": failing, "windows_not_queued": unqueued, "damaged": self.damaged}

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(self.config.allow_private_endpoints),
                                         limit=self.config.max_connections, ttl_dns_cache=None, use_dns_cache=False)
        # no cookie jar: every organization's subscriptions share this session (red team 9, R9b-5)
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                              timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        self._connections = asyncio.Semaphore(self.config.max_connections)
        self._started_at = self.needs.clock()
        for sub_id in self.subscriptions:
            self._start_sender(sub_id)
        self._producer = asyncio.create_task(self._produce_forever(), name="delivery-producer")
        self.needs.releases.listen(lambda window, start: self.produce_due())  # as soon as a window is decided

    async def stop(self) -> None:
        tasks = [t for t in [self._producer, *self._senders.values()] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session:
            await self._session.close()
        async with self.writes:  # a change whose request was cancelled may still be being written (shielded)
            await asyncio.to_thread(self._note_stop)
            for outbox in self.outboxes.values():
                outbox.close()
            with self.writes.lock:
                self.db.close()

    def _note_stop(self) -> None:
        """Each outbox learns the last window decided, so the next start's `gap` is only the time it was down."""
        for sub_id, sub in self.subscriptions.items():
            if sub.last_window is None or sub.unqueued:  # windows not queued: the next start's gap covers them
                continue
            end = iso(sub.last_window + WINDOW_SECONDS[sub.window])
            try:
                with self.outbox_writes.disk():
                    self.outboxes[sub_id].note_stop(end)
            except OSError as exc:
                log.warning("subscription %s: cannot note the last window decided: %s", sub_id, exc)

    def _start_sender(self, sub_id: str) -> None:
        self._wake[sub_id] = asyncio.Event()
        self._senders[sub_id] = asyncio.create_task(self._send_forever(sub_id), name=f"sender-{sub_id}")

    # --- subscriptions -----------------------------------------------------------------------
    # Each change has a disk step (`_insert`, `_update`, `_remove`: run through `writes`, in a worker thread by the
    # *_async methods, in place by the others) and a memory step, taken only once the disk step is durable.
    def _insert(self, record: Json) -> None:
        self.db.table("subscriptions").insert(record)

    def _update(self, sub_id: str, record: Json) -> None:
        self.db.table("subscriptions").update(record, where("id") == sub_id)

    def _remove(self, sub_id: str) -> None:
        self.db.table("subscriptions").remove(where("id") == sub_id)

    def _new(self, org_id: str, endpoint: str, interval_s: float, window: str, tag: str | None,
             filter_spec: Json | None) -> tuple[Subscription, str]:
        secret = signing.new_secret()
        sub = Subscription(id="sub_" + secrets.token_hex(6), organization_id=org_id, endpoint=endpoint,
                           interval_s=interval_s, window=window, tag=tag, filter=filter_spec,
                           secrets=[{"secret": secret, "until": None}], created_at=self.needs.clock())
        return sub, secret

    def _took_effect(self, sub: Subscription) -> None:
        self._adopt(sub)
        if self._session is not None:
            self._start_sender(sub.id)

    def subscribe(self, org_id: str, endpoint: str, interval_s: float, window: str, tag: str | None,
                  filter_spec: Json | None) -> tuple[Subscription, str]:
        sub, secret = self._new(org_id, endpoint, interval_s, window, tag, filter_spec)
        self.writes.step(lambda: self._insert(sub.record()))
        self._took_effect(sub)
        return sub, secret

    async def subscribe_async(self, org_id: str, endpoint: str, interval_s: float, window: str, tag: str | None,
                              filter_spec: Json | None) -> tuple[Subscription, str]:
        """POST /data/subscribe: the subscription exists (is produced for, listed) only once it is on disk."""
        sub, secret = self._new(org_id, endpoint, interval_s, window, tag, filter_spec)
        # The organization must still exist once the changes before this one have landed: its deletion drops
        # its subscriptions under the same lock, and one written after that would be an orphan.
        await self.writes.write(self._insert, sub.record(), then=lambda: self._took_effect(sub),
                                check=lambda: self.needs.registry.organization(org_id))
        return sub, secret

    async def _save_async(self, sub: Subscription, changes_of: Callable[[Subscription], Json]) -> Json:
        """Change `sub`'s recorded fields to `changes_of(sub)`: on disk first, then in memory (unless it was
        deleted meanwhile). `changes_of` runs once the changes asked for before this one have landed (in the
        worker thread, under `writes`: nothing else changes those fields then), so two quick changes, such as
        two rotations, build on each other. Returns the changes."""
        changes: Json = {}

        def write() -> None:
            changes.update(changes_of(sub))
            self._update(sub.id, {**sub.record(), **changes})

        def took_effect() -> None:
            if self.subscriptions.get(sub.id) is sub:
                for name, value in changes.items():
                    setattr(sub, name, value)
        await self.writes.write(write, then=took_effect)
        return changes

    async def rotate_secret_async(self, sub_id: str) -> tuple[str, float]:
        """A new secret; the ones still valid keep signing for SECRET_OVERLAP_S at most. (new secret, until)"""
        overlap: list[float] = []

        def rotated(sub: Subscription) -> Json:
            now = self.needs.clock()
            overlap.append(now + SECRET_OVERLAP_S)
            kept = [{"secret": s["secret"], "until": min(s["until"] or overlap[0], overlap[0])}
                    for s in sub.secrets if s["until"] is None or s["until"] > now]
            return {"secrets": [{"secret": signing.new_secret(), "until": None}, *kept]}
        changes = await self._save_async(self.subscriptions[sub_id], rotated)
        return changes["secrets"][0]["secret"], overlap[0]

    async def enable_async(self, sub_id: str) -> None:
        await self._save_async(self.subscriptions[sub_id], lambda sub: {"state": "active", "disabled_reason": None})
        wake = self._wake.get(sub_id)
        if wake:
            wake.set()

    def _forget(self, sub_id: str) -> Outbox | None:
        """Out of memory: nothing is produced or sent for it any more. Returns its outbox, to be destroyed."""
        task = self._senders.pop(sub_id, None)
        if task:
            task.cancel()
        self._wake.pop(sub_id, None)
        self.subscriptions.pop(sub_id, None)
        self.stats.pop(sub_id, None)
        return self.outboxes.pop(sub_id, None)

    def delete(self, sub_id: str) -> None:
        self.writes.step(lambda: self._remove(sub_id))
        outbox = self._forget(sub_id)
        if outbox:
            outbox.destroy()

    async def delete_async(self, sub_id: str) -> bool:
        """DELETE /data/subscriptions/{id}: gone from disk, then from memory, then its outbox file. False if it
        was gone already or another request is deleting it."""
        if sub_id not in self.subscriptions or sub_id in self._deleting:
            return False
        self._deleting.add(sub_id)
        forgotten: list[Outbox | None] = []
        try:
            await self.writes.write(self._remove, sub_id, then=lambda: forgotten.append(self._forget(sub_id)))
        finally:
            self._deleting.discard(sub_id)
        if forgotten and forgotten[0] is not None:
            await asyncio.to_thread(forgotten[0].destroy)  # nobody uses it any more: only its file is left
        return True

    def _remove_all(self, sub_ids: list[str]) -> None:
        self.db.table("subscriptions").remove(where("id").one_of(sub_ids))

    async def drop_organization_async(self, org_id: str) -> int:
        """An organization was deleted (call after the registry has forgotten it): all its subscriptions go, from
        disk in one rewrite in a worker thread, then from memory, then their outbox files. Under `writes`, after
        every change asked for before it: a subscribe in flight lands first and goes too, and one asked for
        later is refused (subscribe_async checks that the organization exists). Returns how many went."""
        def drop() -> Change[list[Outbox | None]]:
            sub_ids = [s.id for s in self.subscriptions.values() if s.organization_id == org_id]
            if sub_ids:
                yield lambda: self._remove_all(sub_ids)
            return [self._forget(sub_id) for sub_id in sub_ids]
        outboxes = await self.writes.run(drop())
        for outbox in outboxes:
            if outbox is not None:
                await asyncio.to_thread(outbox.destroy)  # nobody uses it any more: only its file is left
        return len(outboxes)

    def describe(self, sub: Subscription) -> Json:
        stats = self.stats[sub.id]
        outbox = self.outboxes[sub.id]
        head = outbox.head()
        now = self.needs.clock()
        lag = None
        if head is not None and head.window_end:
            lag = round(max(0.0, now - unix_seconds(head.window_end)), 3)
        return {
            "id": sub.id, "endpoint": sub.endpoint, "interval": sub.interval_s, "window": sub.window, "tag": sub.tag,
            "filter": sub.filter, "state": sub.state, "disabled_reason": sub.disabled_reason,
            "created_at": sub.created_at,
            "delivery": {"queued": outbox.depth, "lag_s": lag, "last_success_at": stats.last_success_at,
                         "last_error": stats.last_error, "last_error_at": stats.last_error_at,
                         "messages_sent": stats.messages_sent, "bytes_sent": stats.bytes_sent,
                         "failures": stats.failures, "retries": stats.retries, "withheld": stats.withheld,
                         "filtered": stats.filtered, "dropped": outbox.dropped_total,
                         "next_sequence": outbox.next_seq},
        }

    # --- producing ---------------------------------------------------------------------------
    async def _produce_forever(self) -> None:
        while True:
            try:
                self._retry_gaps()
                self.produce_due()
            except Exception as exc:  # the producer must survive anything one subscription does
                self._ratelog.warning("producer", "delivery producer failed: %r", exc)
            await asyncio.sleep(PRODUCE_EVERY_S)

    def produce_due(self) -> None:
        now = self.needs.clock()
        for sub in list(self.subscriptions.values()):
            if sub.state != "active" or now < sub.next_due:
                continue
            start = self.needs.releases.last_settled(sub.window)
            if start is None or (sub.last_window is not None and start <= sub.last_window):
                continue  # nothing new decided yet
            width = WINDOW_SECONDS[sub.window]
            if sub.last_window is not None:
                self._catch_up(sub, sub.last_window + sub.interval_s, start, now)
            # On the windows' grid, not on the moment we happened to run: the next one is the window
            # that closes `interval` after this one did.
            sub.next_due = start + width + sub.interval_s
            sub.last_window = start
            self._produce(sub, start, now)
            self._note_decided(sub)

    def _note_decided(self, sub: Subscription) -> None:
        """Windows filtered or withheld write nothing: now and then (NOTE_DECIDED_S), the last one decided is noted
        in the outbox, so that after a kill -9 the gap for the time the agent was down starts at most that long
        before the crash, not at the last window queued (a clean stop notes it too: `_note_stop`)."""
        if sub.unqueued or sub.last_window is None:  # windows not queued: their gap must start before them
            return
        outbox = self.outboxes[sub.id]
        end = sub.last_window + WINDOW_SECONDS[sub.window]
        known = max(filter(None, [outbox.last_window_end, outbox.decided_until]), default=None)
        if known is not None and unix_seconds(known) >= end - NOTE_DECIDED_S:
            return
        try:
            with self.outbox_writes.disk():
                outbox.note_stop(iso(end))
        except OSError as exc:  # only the next start's gap is longer: the next enqueue says the disk is failing
            self._ratelog.warning(f"note:{sub.id}", "subscription %s: cannot note the last window decided: %s",
                                  sub.id, exc)

    def _catch_up(self, sub: Subscription, expected: float, start: int, now: float) -> None:
        """Windows due before `start` that were not produced: those that closed before this process started (the
        agent was down) are a gap; those since (the producer fell behind) are decided now, in order, up to
        CATCH_UP_MAX (more would hold the event loop: the rest is a gap too)."""
        missed = []
        while start - expected >= WINDOW_SECONDS[sub.window] / 2:
            missed.append(int(expected))
            expected += sub.interval_s
        if not missed:
            return
        lost = [w for w in missed if w < self._started_at]
        late = [w for w in missed if w >= self._started_at]
        if len(late) > CATCH_UP_MAX:
            lost, late = lost + late[:-CATCH_UP_MAX], late[-CATCH_UP_MAX:]
        if lost:
            self._unqueued(sub, len(lost), lost[0], lost[-1] + WINDOW_SECONDS[sub.window])
        for window in late:
            self._produce(sub, window, now)

    def _access_refusal(self, sub: Subscription) -> str | None:
        """Why the organization may no longer have this subscription's window: the operator changed its level or
        narrowed it since it subscribed."""
        org = self.needs.registry.organizations.get(sub.organization_id)
        level = self.needs.levels.get(org.level) if org else None
        if org is None or level is None:
            return "the organization or its level no longer exists"
        refusal = denied(level, org, sub.window, sub.tag, self.needs.tags)
        return refusal.detail if refusal else None

    def _produce(self, sub: Subscription, start: int, now: float) -> None:
        """Decide window `start` for `sub` and queue what goes out. The caller has already counted the window as
        decided (`last_window`): whatever fails here (a bug, a bad record, an error that is no OSError) puts the
        window in the next `gap` rather than losing it silently."""
        try:
            self._decide_window(sub, start, now)
        except Exception as exc:
            self._unqueued(sub, 1, start, start + WINDOW_SECONDS[sub.window])
            self._ratelog.log(logging.ERROR, f"produce:{sub.id}", "subscription %s: window %s not produced (%r); "
                              "it goes out inside a gap event", sub.id, iso(start), exc)

    def _decide_window(self, sub: Subscription, start: int, now: float) -> None:
        stats = self.stats[sub.id]
        refusal = self._access_refusal(sub)
        if refusal:
            stats.withheld += 1
            stats.last_error, stats.last_error_at = refusal, time.time()
            return
        filters = FilterSet.parse(sub.filter)
        result = self.needs.releases.answer(sub.organization_id, sub.window, start, sub.tag)
        silent_too_long = (filters.max_silence_s is not None and sub.last_sent_at is not None
                           and now - sub.last_sent_at >= filters.max_silence_s)
        if isinstance(result, Refusal):
            stats.withheld += 1
            self._audit_push(sub, start, released=False)
            if silent_too_long:
                self._enqueue(sub, "heartbeat", {"type": "heartbeat", "released": False, "reason": result.error},
                              None, None, now)
            return
        if not filters.decide(result, sub.last_sent, now, sub.last_sent_at):
            stats.filtered += 1
            self._audit_push(sub, start, released=True, filtered=True)
            return
        payload = {"type": "aggregate", "subscription_id": sub.id, "window": sub.window,
                   "window_start": result["window_start"], "window_end": result["window_end"],
                   "aggregate": filters.project(result)}
        self._enqueue(sub, "aggregate", payload, result["window_start"], result["window_end"], now)
        sub.last_sent = result
        self._audit_push(sub, start, released=True, households=result["households"])

    def _audit_push(self, sub: Subscription, start: int, **details: object) -> None:
        """Every window a subscription decided, whatever came of it (withheld, filtered, sent): whether it went
        out depends on other households (the release, the filter on their sums), and the households' access pages
        list these entries (kept as runs: agent/audit.py `record_push`)."""
        self.needs.audit.record_push(sub.organization_id, sub.id, sub.window, start, **details)

    def _enqueue(self, sub: Subscription, kind: str, payload: Json, window_start: str | None, window_end: str | None,
                 now: float) -> None:
        outbox, stats = self.outboxes[sub.id], self.stats[sub.id]
        try:
            with self.outbox_writes.disk():
                self._queue_gap(sub)  # windows lost before this one go out first, in order
                outbox.enqueue(kind, payload, window_start, window_end)
        except OSError as exc:
            if window_start and window_end:
                self._unqueued(sub, 1, unix_seconds(window_start), unix_seconds(window_end))
            self._disk_failed(sub, stats, f"cannot queue a {kind}: {exc.strerror or exc}")
            return
        stats.disk_error = None
        sub.last_sent_at = now
        wake = self._wake.get(sub.id)
        if wake:
            wake.set()

    def _unqueued(self, sub: Subscription, count: int, start: float, end: float) -> None:
        """Windows [start, end) were decided but not queued: counted for the next `gap` message."""
        if sub.unqueued is None:
            sub.unqueued = [0, start, end]
        sub.unqueued = [sub.unqueued[0] + count, min(sub.unqueued[1], start), max(sub.unqueued[2], end)]

    def _queue_gap(self, sub: Subscription) -> None:
        """The windows not queued, as one `gap` message (raises like enqueue; they stay counted then)."""
        if not sub.unqueued:
            return
        count, start, end = sub.unqueued
        self.outboxes[sub.id].gap(int(count), iso(start), iso(end),
                                  f"{count} window(s) could not be queued (the agent was down or its storage "
                                  f"refused the write); {FETCH_HINT}")
        sub.unqueued = None
        log.warning("subscription %s: %d window(s) from %s to %s were not queued; sent as a gap event", sub.id,
                    count, iso(start), iso(end))
        wake = self._wake.get(sub.id)
        if wake:
            wake.set()

    def _retry_gaps(self) -> None:
        """Queue the gaps still owed as soon as the disk takes them, even if no new window goes out."""
        for sub in list(self.subscriptions.values()):
            if sub.unqueued and sub.state == "active":
                try:
                    with self.outbox_writes.disk():
                        self._queue_gap(sub)
                    self.stats[sub.id].disk_error = None
                except OSError as exc:
                    self._disk_failed(sub, self.stats[sub.id], f"cannot queue a gap: {exc.strerror or exc}")

    def _disk_failed(self, sub: Subscription, stats: DeliveryStats, error: str) -> None:
        stats.disk_error = stats.last_error = error
        stats.last_error_at = time.time()
        self._ratelog.warning(f"disk:{sub.id}", "subscription %s: %s", sub.id, error)

    # --- sending -----------------------------------------------------------------------------
    async def _send_forever(self, sub_id: str) -> None:
        """Send, and keep sending: a disk write that fails (a sequence number, an acknowledgement) is logged and
        retried with backoff, never the end of the sender (the message is sent again, with its webhook-id)."""
        sub, stats = self.subscriptions[sub_id], self.stats[sub_id]
        failures = 0
        while True:
            try:
                await self._send_queue(sub_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._disk_failed(sub, stats, f"sending stopped: {exc.__class__.__name__}: {exc}"[:200])
                await asyncio.sleep(SENDER_BACKOFF_S[min(failures, len(SENDER_BACKOFF_S) - 1)])
                failures += 1
            else:
                return

    async def _send_queue(self, sub_id: str) -> None:
        sub, outbox, stats = self.subscriptions[sub_id], self.outboxes[sub_id], self.stats[sub_id]
        wake = self._wake[sub_id]
        schedule = self.config.retry_schedule
        while True:
            message = outbox.head()
            if message is None or sub.state != "active":
                wake.clear()
                await wake.wait()
                continue
            delay = schedule[min(message.attempts, len(schedule) - 1)] if message.attempts else 0.0
            delay = max(delay, message.retry_after)
            if delay:
                stats.retries += 1
                await asyncio.sleep(delay)
            outcome = await self._send(sub, outbox, message, stats)
            if outcome == "gone":
                await self._save_async(sub, lambda _: {"state": "disabled",
                                                        "disabled_reason": "the endpoint answered 410 Gone"})
                log.warning("subscription %s disabled: %s answered 410 Gone", sub.id, sub.endpoint)

    async def _send(self, sub: Subscription, outbox: Outbox, message: Message, stats: DeliveryStats) -> str:
        try:  # IP literals never reach the resolver: the policy may have changed since subscribing
            check_literal_host(sub.endpoint, self.config.allow_private_endpoints)
        except TargetError as err:
            self._failed(sub, message, stats, str(err))
            return "retry"
        with self.outbox_writes.disk():
            seq = outbox.assign(message)
        body = json.dumps({**message.payload, "sequence": seq}, separators=(",", ":")).encode()
        now = time.time()
        headers = signing.headers(sub.signing_secrets(self.needs.clock()), message.id, int(now), body)
        message.retry_after = 0.0
        assert self._session is not None and self._connections is not None  # started
        try:
            async with self._connections:
                async with self._session.post(sub.endpoint, data=body, headers=headers,
                                              allow_redirects=False) as resp:
                    await resp.read()
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as err:
            self._failed(sub, message, stats, f"{err.__class__.__name__}: {err}"[:200])
            return "retry"
        if 200 <= status < 300:
            with self.outbox_writes.disk():
                outbox.ack(message)  # a refused write: sent again later (same webhook-id), never lost
            stats.disk_error = None
            stats.messages_sent += 1
            stats.bytes_sent += len(body)
            stats.last_success_at = time.time()
            return "ok"
        if status == 410:
            self._failed(sub, message, stats, "HTTP 410 Gone")
            return "gone"
        self._failed(sub, message, stats, f"HTTP {status}")
        if retry_after:
            message.retry_after = _retry_after_seconds(retry_after)
        return "retry"

    def _failed(self, sub: Subscription, message: Message, stats: DeliveryStats, error: str) -> None:
        message.attempts += 1
        stats.failures += 1
        stats.last_error, stats.last_error_at = error, time.time()
        self._ratelog.warning(f"send:{sub.id}", "subscription %s: delivery to %s failed: %s", sub.id,
                              sub.endpoint, error)


def _retry_after_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 0.0
    if not math.isfinite(seconds):
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
