"""Where triggers and the households' side of them live on disk (TinyDB over the store's crash-safe
segment logs, like the registry):

- ``triggers.seg``: the triggers (inserted once; the rare quarantine or delete rewrites it atomically);
- ``stats.seg``: the organization-visible counters, rewritten at most every STATS_EVERY_S and at stop;
- ``firings.seg``: the debounce log, one appended line per action *before* the action is taken, so a
  restart (or a crash) never lets a trigger act twice within its interval; beside it, one line per
  household event disclosed to an organization (the per-day bound survives a restart too); compacted at
  start and now and then while running;
- ``households.seg``: each household's notification endpoint, its appliances, and its inbox (the last
  INBOX_MAX notifications per household; older ones are cut out in one atomic rewrite now and then);
- ``pseudonym.key``: the device's secret for the households' per-organization pseudonyms, twice, each copy with
  its checksum (0600); its checksum also in ``triggers.seg`` (table ``key``, written when the key is made). A key
  that is damaged beyond repair (neither copy checks out), deleted, or replaced (its checksum is not the one on
  record) is never made again: new pseudonyms would be a second identity for every household, linkable to the
  first by time. The store says so (`key_problem`: a fatal /health error) and no event under a pseudonym goes out
  until the operator restores the file.

Every record is written twice (``copies=2``, as the registry's): one damaged copy is recovered from its twin. A
record lost beyond repair is counted (`faults.damage.<kind>.lost`, /health 503); it never brings back a state
(a trigger, an endpoint or an appliance removed is a rewrite without it, never a record of its removal). The
firings log fails closed: its lost lines may have been actions or disclosed events, so every trigger waits one
interval for every household, a deleted trigger's wait (its longest, kept in ``triggers.seg`` too) holds its
organization's triggers of its action type for every household, and every organization's events are spent for
the day (rewritten so at once).

Writes come from the event loop (the API, the runner) and from the runner's threads (the debounce log, the
inbox, the periodic counters): each store serializes them with a lock, since a rewrite replaces the file under
an appender. The event loop never writes itself: its changes (a trigger added, quarantined or deleted; a
household's endpoint or appliances; the purge of removed households) use the ``*_async`` methods, which write in
a worker thread, one change at a time per store and in the order they were asked (agent/store/durable.py), and change
memory (what the agent acts on) only once the write is durable: a failed write leaves memory as the file is, so
a retry finds the item again and a restart brings back nothing that was answered as gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tinydb import where

from agent.store.durable import Durable, replace_file
from agent.store.segment import SegmentDB, ensure_dir
from agent.triggers.model import EVERYONE, Debouncer, Trigger, TriggerStats

log = logging.getLogger("edge.triggers")
T = TypeVar("T")

INBOX_MAX = 100
INBOX_COMPACT_AFTER = 500  # stale inbox lines before a rewrite
FIRINGS_COMPACT_AFTER = 1000
SPENT = 1 << 30  # a day's events for EVERYONE: above any per-day bound


class TriggerStore:
    def __init__(self, directory: Path):
        ensure_dir(directory)
        self.directory = directory
        self.db = SegmentDB(str(directory / "triggers.seg"), kind="triggers", copies=2)
        self.stats_db = SegmentDB(str(directory / "stats.seg"), kind="trigger_stats", copies=2)
        self.firings_db = SegmentDB(str(directory / "firings.seg"), kind="trigger_firings", copies=2)
        self.key, self.key_problem = _device_key(directory / "pseudonym.key", self.db)
        self.lock = threading.RLock()  # reentrant: a change's step calls the locked methods
        self.writes = Durable("triggers", directory / "triggers.seg", log, what="the trigger change", lock=self.lock)
        self._appended = 0  # firing lines since the last compaction

    def close(self) -> None:
        with self.lock:
            for db in (self.db, self.stats_db, self.firings_db):
                db.close()

    # --- triggers
    def load(self) -> tuple[dict[str, Trigger], dict[str, TriggerStats], Debouncer]:
        triggers = {doc["id"]: Trigger(**doc) for doc in self.db.table("triggers").all()}
        stats = {tid: TriggerStats() for tid in triggers}
        for doc in self.stats_db.table("stats").all():
            counts = dict(doc)
            tid = counts.pop("id", None)
            if tid in stats:
                stats[tid] = TriggerStats(**{k: v for k, v in counts.items() if k in TriggerStats.__dataclass_fields__})
        debounce = Debouncer()
        lines = self.firings_db.table("last").all()
        for doc in lines:
            if doc["t"] in triggers:
                key = (doc["t"], doc["h"])
                debounce.last[key] = max(doc["at"], debounce.last.get(key, float("-inf")))
        cools = self.firings_db.table("cooldown").all()
        for doc in cools:
            debounce.cool(doc["o"], doc["h"], doc["until"], doc.get("a"))  # no "a": an old record, every kind
        events = sorted(self.firings_db.table("events").all(), key=lambda doc: doc["d"])
        for doc in events:
            debounce.spend_event(doc["o"], doc["h"], doc["d"] * 86400.0, doc.get("n", 1))
        self._forget_retired(max([time.time(), *(doc.get("at", 0) for doc in lines)]))
        lost = self.firings_db.storage.lost_records
        if lost:
            self._fail_closed(lost, triggers, [*lines, *events], debounce)
        elif (len(lines) + len(cools) + len(events) > len(debounce.last) + sum(map(len, debounce.cooldown.values()))
              + len(debounce.events) + FIRINGS_COMPACT_AFTER):
            self._compact_firings(debounce)
        return triggers, stats, debounce

    def _fail_closed(self, lost: int, triggers: dict[str, Trigger], lines: Sequence[Mapping[str, Any]],
                     debounce: Debouncer) -> None:
        """firings.seg lost lines beyond repair: actions and disclosed events of unknown households. As if every
        trigger had just acted for everyone, and every organization had had its events of the day; the file is
        rewritten without the damage, with those lines (a later start does not wait again)."""
        at = max([time.time(), *(doc.get("at", 0) for doc in lines)])
        for trigger in triggers.values():
            debounce.record(trigger.id, EVERYONE, at)
        for retired in self.db.table("retired").all():  # a deleted trigger's cooldown may have been lost too
            debounce.cool(retired["o"], EVERYONE, retired["until"], retired.get("a"))
        for org_id in {t.organization_id for t in triggers.values()} | {doc["o"] for doc in lines if "o" in doc}:
            debounce.spend_event(org_id, EVERYONE, at, SPENT)
        log.error("triggers %s: %d damaged record(s) of the firings log could not be recovered; failing closed: "
                  "every trigger waits one interval, a deleted trigger's wait holds its organization for everyone, "
                  "every organization's events are spent for today", self.directory, lost)
        try:
            self._compact_firings(debounce)
        except OSError as exc:  # still closed in memory; the next start finds the same damage
            log.error("triggers %s: cannot rewrite the firings log: %s", self.directory, exc)

    def _forget_retired(self, now: float) -> None:
        """Deleted triggers' waits that are over are of no use to a fail-closed start: dropped (one rewrite)."""
        if any(doc["until"] <= now for doc in self.db.table("retired").all()):
            try:
                self.db.table("retired").remove(where("until") <= now)
            except OSError as exc:  # kept: the next start tries again
                log.warning("triggers %s: cannot drop the deleted triggers' past waits: %s", self.directory, exc)

    def add(self, trigger: Trigger) -> None:
        with self.writes.disk():
            self.db.table("triggers").insert(trigger.record())

    def update(self, trigger_id: str, **fields: Any) -> None:
        with self.writes.disk():
            self.db.table("triggers").update(fields, where("id") == trigger_id)

    def remove(self, trigger_id: str, cooldowns: list[tuple[str, str, float, str]]) -> None:
        """`cooldowns`: (organization, household, until, the deleted trigger's action type)."""
        with self.writes.disk():
            if cooldowns:
                self.firings_db.table("cooldown").insert_multiple(
                    _cooldown_doc(org, household, until, kind) for org, household, until, kind in cooldowns)
                # and the organization's longest wait beside the triggers: what a lost cooldown line is redone from
                org, _, _, kind = cooldowns[0]
                self.db.table("retired").insert(_cooldown_doc(org, EVERYONE, max(c[2] for c in cooldowns), kind))
            self.db.table("triggers").remove(where("id") == trigger_id)

    # --- the same changes from the event loop (the API, the runner's loop): written in a worker thread, in order
    async def add_async(self, trigger: Trigger, then: Callable[[], object] | None = None) -> None:
        """`then()` (the trigger into memory) runs once the trigger is on disk, even if the request is cancelled."""
        await self.writes.write(self.add, trigger, then=then)

    async def update_async(self, trigger_id: str, **fields: Any) -> None:
        await self.writes.write(self.update, trigger_id, **fields)

    async def remove_async(self, trigger_id: str, cooldowns: list[tuple[str, str, float, str]],
                           then: Callable[[], object] | None = None) -> None:
        """`then()` (the trigger out of memory) runs once the removal is on disk, even if the request is
        cancelled; never when the write fails (the trigger is still there, and still runs)."""
        await self.writes.write(self.remove, trigger_id, cooldowns, then=then)

    def save_stats(self, stats: dict[str, TriggerStats]) -> None:
        """All counters in one atomic rewrite of stats.seg."""
        records = {str(i): {"id": tid, **s.record()} for i, (tid, s) in enumerate(sorted(stats.items()), 1)}
        with self.writes.disk():
            self.stats_db.storage.write({"stats": records})

    # --- debounce
    def record_firings(self, trigger_id: str, household_ids: list[str], at: float,
                       events: tuple[str, list[str]] | None = None) -> None:
        """`events`: (organization id, household ids) whose events go to that organization (one line each)."""
        with self.writes.disk():
            self.firings_db.table("last").insert_multiple({"t": trigger_id, "h": h, "at": at}
                                                          for h in household_ids)
            self._appended += len(household_ids)
            if events and events[1]:
                org_id, disclosed = events
                self.firings_db.table("events").insert_multiple(
                    {"o": org_id, "h": h, "d": int(at // 86400), "n": 1} for h in disclosed)
                self._appended += len(disclosed)

    def compaction_due(self) -> bool:
        """The log only needs the last firing per (trigger, household): rewrite it now and then, so it stays
        bounded while the agent runs (a neighbourhood trigger appends a line per household per interval)."""
        return self._appended > FIRINGS_COMPACT_AFTER

    def compact_firings(self, last: dict[tuple[str, str], float],
                        cooldown: dict[tuple[str, str], dict[str | None, float]],
                        events: dict[tuple[str, str], tuple[int, int]] | None = None) -> None:
        """`last`, `cooldown` and `events` are copies taken on the event loop."""
        with self.writes.disk():
            snapshot = Debouncer()
            snapshot.last, snapshot.cooldown, snapshot.events = last, cooldown, events or {}
            self._compact_firings(snapshot)
            self._appended = 0

    def _compact_firings(self, debounce: Debouncer) -> None:
        self.firings_db.storage.write({
            "last": {str(i): {"t": t, "h": h, "at": at} for i, ((t, h), at) in enumerate(debounce.last.items(), 1)},
            "cooldown": {str(i): doc for i, doc in enumerate(
                (_cooldown_doc(o, h, until, kind) for (o, h), waits in debounce.cooldown.items()
                 for kind, until in waits.items()), 1)},
            "events": {str(i): {"o": o, "h": h, "d": day, "n": n}
                       for i, ((o, h), (day, n)) in enumerate(debounce.events.items(), 1)},
        })


def _cooldown_doc(org_id: str, household_id: str, until: float, kind: str | None) -> dict[str, Any]:
    """A deleted trigger's wait on the firings log; `a`, its action type, is the kinds it holds (absent: all)."""
    return {"o": org_id, "h": household_id, "until": until, **({"a": kind} if kind is not None else {})}


class HouseholdStore:
    """Notification endpoints, appliances and inboxes, by household id."""

    def __init__(self, path: Path):
        self.db = SegmentDB(str(path), kind="trigger_households", copies=2)
        self.lock = threading.RLock()  # reentrant: a change's step calls the locked methods
        self.writes = Durable("trigger settings", path, log, what="the setting", lock=self.lock)
        self.endpoints: dict[str, dict[str, Any]] = {doc["household_id"]: dict(doc)
                                                     for doc in self.db.table("notify").all()}
        self.appliances: dict[str, dict[str, Any]] = {doc["id"]: dict(doc) for doc in self.db.table("appliances").all()}
        self._inbox: dict[str, deque[tuple[int, dict[str, Any]]]] = {}
        self._stale: list[int] = []
        for doc in self.db.table("inbox").all():
            self._keep(doc["household_id"], doc.doc_id, dict(doc))
        if self._stale:
            self._compact()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # --- notification endpoint
    def set_endpoint(self, household_id: str, doc: dict[str, Any]) -> None:
        doc = {"household_id": household_id, **doc}
        self._write_endpoint(doc)
        self.endpoints[household_id] = doc

    def remove_endpoint(self, household_id: str) -> bool:
        if household_id not in self.endpoints:
            return False
        self._remove_endpoint(household_id)  # the disk first: a failed write leaves memory as the file is
        self.endpoints.pop(household_id, None)
        return True

    def _write_endpoint(self, doc: dict[str, Any]) -> None:
        with self.writes.disk():
            self.db.table("notify").upsert(doc, where("household_id") == doc["household_id"])

    def _remove_endpoint(self, household_id: str) -> None:
        with self.writes.disk():
            self.db.table("notify").remove(where("household_id") == household_id)

    # --- appliances
    def add_appliance(self, doc: dict[str, Any]) -> None:
        self._write_appliance(doc)
        self.appliances[doc["id"]] = doc

    def remove_appliance(self, appliance_id: str) -> None:
        self._remove_appliance(appliance_id)
        self.appliances.pop(appliance_id, None)

    def _write_appliance(self, doc: dict[str, Any]) -> None:
        with self.writes.disk():
            self.db.table("appliances").insert(doc)

    def _rewrite_appliance(self, doc: dict[str, Any]) -> None:
        with self.writes.disk():  # an update, not an upsert: one removed meanwhile stays removed
            self.db.table("appliances").update({"device": doc["device"]}, where("id") == doc["id"])

    def _remove_appliance(self, appliance_id: str) -> None:
        with self.writes.disk():
            self.db.table("appliances").remove(where("id") == appliance_id)

    # --- the same changes from the event loop (the API): the disk write (an fsync'd append or an atomic
    # rewrite) in a worker thread, one change at a time so that two quick changes land in order, and memory
    # changed only once the write is durable (in that same order; a failed write changes nothing, so a retry
    # finds the item again). The API holds the household's lock around each (for the endpoint, passed as
    # `lock`), so that a check (is there an endpoint, such an appliance?) and the change stay one step.
    async def set_endpoint_async(self, household_id: str, doc: dict[str, Any],
                                 lock: asyncio.Lock | None = None) -> None:
        """`lock`: the API's lock for this household, held until the endpoint is in memory too."""
        doc = {"household_id": household_id, **doc}
        async with lock or contextlib.nullcontext():
            await self._off_loop(self._write_endpoint, doc,
                                 then=lambda: self.endpoints.__setitem__(household_id, doc))

    async def remove_endpoint_async(self, household_id: str, lock: asyncio.Lock | None = None) -> bool:
        """False if there is no endpoint. `lock`: the API's lock for this household, held from that check until
        the endpoint is out of memory too (after a change asked for before, such as a PUT still being written)."""
        async with lock or contextlib.nullcontext():
            if household_id not in self.endpoints:
                return False
            await self._off_loop(self._remove_endpoint, household_id,
                                 then=lambda: self.endpoints.pop(household_id, None))
            return True

    async def add_appliance_async(self, doc: dict[str, Any]) -> None:
        await self._off_loop(self._write_appliance, doc, then=lambda: self.appliances.__setitem__(doc["id"], doc))

    async def bind_device_async(self, appliance_id: str, mac: str) -> None:
        """The relay's identity (R8-1) with the appliance's record; nothing if it was removed meanwhile."""
        doc = self.appliances.get(appliance_id)
        if doc is None:
            return
        doc = {**doc, "device": mac}
        await self._off_loop(self._rewrite_appliance, doc, then=lambda: self._rebound(doc))

    def _rebound(self, doc: dict[str, Any]) -> None:
        if doc["id"] in self.appliances:
            self.appliances[doc["id"]] = doc

    async def remove_appliance_async(self, appliance_id: str) -> None:
        await self._off_loop(self._remove_appliance, appliance_id,
                             then=lambda: self.appliances.pop(appliance_id, None))

    async def _off_loop(self, write: Callable[..., T], *args: Any, then: Callable[[], object] | None = None) -> T:
        return await self.writes.write(write, *args, then=then)

    # --- households the operator removed: their endpoint, appliances and inbox are forgotten
    def purge(self, known_households: set[str]) -> int:
        settings = self._forget_settings(known_households)
        count = self._forget(known_households, *settings)
        self._forgotten(*settings)
        return count

    async def purge_async(self, known_households: set[str]) -> int:
        """The same from the event loop (the runner, every PURGE_EVERY_S): the disk in a worker thread (the
        inbox too: its lock may be held by a delivery's fsync), then memory."""
        settings = self._forget_settings(known_households)
        return await self._off_loop(self._forget, known_households, *settings, then=lambda: self._forgotten(*settings))

    def _forget_settings(self, known_households: set[str]) -> tuple[set[str], list[str], list[str]]:
        """The removed households' settings: (their ids, endpoints to remove, appliances to remove)."""
        gone = (set(self.endpoints) | {a["household_id"] for a in self.appliances.values()}) - known_households
        endpoints = [h for h in gone if h in self.endpoints]
        appliances = [a["id"] for a in self.appliances.values() if a["household_id"] in gone]
        return gone, endpoints, appliances

    def _forgotten(self, gone: set[str], endpoints: list[str], appliances: list[str]) -> None:
        """Once they are off the disk: out of memory too."""
        for household_id in endpoints:
            self.endpoints.pop(household_id, None)
        for appliance_id in appliances:
            self.appliances.pop(appliance_id, None)

    def _forget(self, known_households: set[str], gone: set[str], endpoints: list[str], appliances: list[str]) -> int:
        for household_id in endpoints:
            self._remove_endpoint(household_id)
        for appliance_id in appliances:
            self._remove_appliance(appliance_id)
        with self.writes.disk():
            boxes = set(self._inbox) - known_households
            for household_id in boxes:
                self._stale.extend(doc_id for doc_id, _ in self._inbox.pop(household_id, ()))
            if boxes and self._stale:
                self._compact()
        return len(gone | boxes)

    def appliances_of(self, household_id: str) -> list[dict[str, Any]]:
        return [a for a in self.appliances.values() if a["household_id"] == household_id]

    def targets(self, household_id: str, org_id: str, ref: str) -> list[dict[str, Any]]:
        """The household's appliances named (or of the kind) `ref` that it lets this organization switch."""
        ref = ref.casefold()
        return [a for a in self.appliances_of(household_id) if org_id in a["allowed_organizations"]
                and (a["name"].casefold() == ref or (a.get("kind") or "").casefold() == ref)]

    # --- inbox
    def deliver(self, entry: dict[str, Any]) -> None:
        self.deliver_many([entry])

    def deliver_many(self, entries: list[dict[str, Any]]) -> None:
        """One write (one fsync) for a window's notifications of one trigger, however many households."""
        if not entries:
            return
        with self.writes.disk():
            doc_ids = self.db.table("inbox").insert_multiple(entries)
            for doc_id, entry in zip(doc_ids, entries):
                self._keep(entry["household_id"], doc_id, entry)
            if len(self._stale) >= INBOX_COMPACT_AFTER:
                self._compact()

    def inbox(self, household_id: str) -> list[dict[str, Any]]:
        """Newest first."""
        with self.lock:
            box = list(self._inbox.get(household_id, ()))
        return [entry for _, entry in reversed(box)]

    def _keep(self, household_id: str, doc_id: int, entry: dict[str, Any]) -> None:
        box = self._inbox.setdefault(household_id, deque())
        box.append((doc_id, entry))
        while len(box) > INBOX_MAX:
            self._stale.append(box.popleft()[0])

    def _compact(self) -> None:
        self.db.table("inbox").remove(doc_ids=self._stale)
        self._stale = []


def _device_key(path: Path, db: SegmentDB) -> tuple[bytes | None, str | None]:
    """The device's pseudonym key, made on first start; (None, why) if it was lost (see the module's doc)."""
    recorded = {doc["sha"] for doc in db.table("key").all()}
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        if recorded:
            return _key_lost(f"{path} was deleted")
        key = secrets.token_bytes(32)
        _write_key(path, key)
        db.table("key").insert({"sha": _key_sum(key)})
        return key, None
    copies = [_key_of(line) for line in text.split()] if "," in text else [_legacy_key(text)]
    good = [key for key in copies if key is not None]
    if not good:
        return _key_lost(f"{path} is damaged beyond repair")
    key = good[0]
    if recorded and _key_sum(key) not in recorded:
        return _key_lost(f"{path} is not the key this device made (replaced)")
    if not recorded:  # made before its checksum was recorded
        db.table("key").insert({"sha": _key_sum(key)})
    if len(good) < 2 or len(set(good)) > 1:  # a damaged copy, or the legacy format: both copies again
        log.warning("triggers: %s had a damaged or missing copy; written again from the good one", path)
        _write_key(path, key)
    return key, None


def _key_lost(why: str) -> tuple[None, str]:
    problem = (f"the pseudonym key is lost: {why}. A new one would give every household new pseudonyms, so none is "
               "made: no event under a pseudonym goes out until the file is restored from a backup")
    log.error("triggers: %s", problem)
    return None, problem


def _key_sum(key: bytes) -> str:
    return hashlib.sha256(b"edge pseudonym key\x00" + key).hexdigest()[:16]


def _key_of(copy: str) -> bytes | None:
    """One copy, `<key hex>,<checksum>`: the key if its checksum holds."""
    key_hex, _, checksum = copy.partition(",")
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        return None
    return key if len(key) == 32 and _key_sum(key) == checksum else None


def _legacy_key(text: str) -> bytes | None:
    """A key file from before the checksums: its hex, if it is 32 bytes of it."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        return None
    return key if len(key) == 32 else None


def _write_key(path: Path, key: bytes) -> None:
    copy = f"{key.hex()},{_key_sum(key)}\n"
    replace_file(path, (copy * 2).encode(), mode=0o600)
