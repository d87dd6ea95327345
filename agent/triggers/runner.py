"""Triggers in motion: evaluate conditions as windows close, debounce, act.

- One task per agent wakes just after a window closes (on the agent's clock, like the delivery
  producer) and starts one evaluation per due trigger; ingestion never waits for any of it (the only
  thing on the readings' path is a dict assignment: the latest live reading per meter).
- A trigger with household parameters runs per household that consents to ``triggers`` for its
  organization and has a fresh reading: one batched request to the sandbox with every such household's
  row (one round trip). Neighbourhood values come from the window's released aggregate under the
  rules of GET /data (cohort, k_min, dominance): when it is not released, the condition does not run.
  With neighbourhood parameters only, the condition runs once per window and acts for every consenting
  household. Mixed: per household, with the neighbourhood values repeated in each row.
- Conditions run in the sandbox's locked workers, off the event loop, each trigger on its own worker:
  a condition that hangs or crashes costs its own deadline, is killed, backs off and is quarantined
  after repeated violations, and holds up no other trigger.
- An action is written to the debounce log before it is taken, then runs as its own task (webhook,
  household endpoint, appliance), a few attempts, never blocking the next window.
- The event loop never waits on the disk: every write (a trigger created, quarantined, rejected or deleted,
  the purge of removed households, the counters, the debounce log, the inbox) runs in a worker thread; the
  stores' ``*_async`` changes one at a time and in order, each awaited until durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from agent.aggregates import Refusal
from agent.config import WINDOW_SECONDS
from agent.delivery import signing
from agent.parameters import HOUSEHOLD, permitted
from agent.triggers import actions
from agent.triggers.model import Debouncer, Trigger, TriggerStats, pseudonym, sample_rows
from agent.triggers.store import HouseholdStore, TriggerStore
from drivers import notify
from drivers.appliances import ApplianceError, driver
from drivers.ratelog import RateLimitedLog
from drivers.reading import Reading, iso
from sandbox import (
    BackingOff,
    CheckResult,
    ConditionQuarantined,
    ConditionRejected,
    EvaluationFailed,
    Limits,
    SandboxUnavailable,
    Status,
    Supervisor,
    check_condition,
    sandbox_available,
)

log = logging.getLogger("edge.triggers")

CLOSE_GRACE_S = 0.02  # readings whose request is still being handled at a window's end
STATS_EVERY_S = 30.0  # how often changed counters are written
EVALUATION_THREADS = 4
MAX_ACTIONS_IN_FLIGHT = 64
ACTION_ATTEMPTS = 3
APPLIANCE_TIMEOUT_S = 5.0
MIN_READING_AGE_S = 60.0  # a household's reading is used while younger than max(this, two windows)
PURGE_EVERY_S = 300.0  # forget endpoints, appliances and inboxes of households the operator removed
CREATION_WINDOW_S = 86400.0  # uploads accepted per organization per rolling day: 3 x max_per_organization


@dataclass(frozen=True)
class Availability:
    ok: bool
    detail: str


class TriggerRunner:
    def __init__(self, agent, directory: Path):
        self.agent = agent
        self.config = agent.config.triggers
        self.limits = Limits(timeout_s=self.config.timeout_ms / 1000)
        self.store = TriggerStore(Path(directory))
        self.households = HouseholdStore(Path(directory) / "households.seg")
        self.triggers, self.stats, self.debounce = self.store.load()
        self.availability = Availability(False, "not started")
        self.supervisor: Supervisor | None = None
        self.latest: dict[str, Reading] = {}
        agent.pipeline.subscribe(self._on_reading)
        self._executor = ThreadPoolExecutor(EVALUATION_THREADS, thread_name_prefix="triggers")
        self._inflight: dict[str, asyncio.Task] = {}
        self._actions: set[asyncio.Task] = set()
        self._action_slots = asyncio.Semaphore(MAX_ACTIONS_IN_FLIGHT)
        self._trials = asyncio.Semaphore(2)
        self._task: asyncio.Task | None = None
        self._web: aiohttp.ClientSession | None = None
        self._lan: aiohttp.ClientSession | None = None
        self._ratelog = RateLimitedLog(log)
        self._stats_dirty = False
        self._stats_saved_at = time.monotonic()
        self._purged_at = float("-inf")
        self._creations: dict[str, list[float]] = {}
        self._deleting: dict[str, asyncio.Future] = {}  # triggers whose removal is being written

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        ok, detail = await asyncio.to_thread(sandbox_available)
        self.availability = Availability(ok, detail)
        if ok:
            self.supervisor = Supervisor(self.limits)
            for trig in self.triggers.values():
                if not trig.quarantined and trig.rejected is None:
                    self.supervisor.register(trig.organization_id, trig.id, trig.source, trig.parameters)
            log.info("triggers: sandbox ready (%s), %d trigger(s)", detail, len(self.triggers))
        else:
            log.error("triggers disabled: %s; conditions never run unsandboxed (POST /triggers/create answers 503"
                      ", %d stored trigger(s) wait)", detail, len(self.triggers))
        delivery = self.agent.config.delivery
        self._web = actions.web_session(delivery.allow_private_endpoints, delivery.timeout_s, delivery.max_connections)
        self._lan = actions.lan_session(delivery.allow_private_endpoints, APPLIANCE_TIMEOUT_S, 16)
        self._task = asyncio.create_task(self._run_forever(), name="triggers")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._inflight.values(), *self._actions] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in (self._web, self._lan):
            if session:
                await session.close()
        if self.supervisor:
            await asyncio.to_thread(self.supervisor.close)  # kills the workers: evaluations end at once
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
        # A change whose request was cancelled is still being written (shielded): after it, the last counters
        # and the files closed, in a worker thread too (the API has stopped answering, but not the event loop).
        async with self.store.writes, self.households.writes:
            await asyncio.to_thread(self._save_and_close, dict(self.stats))

    def _save_and_close(self, stats: dict[str, TriggerStats]) -> None:
        try:
            self.store.save_stats(stats)
        finally:
            self.store.close()
            self.households.close()

    def health(self) -> dict:
        return {"sandbox": "enforced" if self.availability.ok else "unavailable",
                "detail": self.availability.detail if self.availability.ok else
                f"triggers are disabled: {self.availability.detail}; conditions never run unsandboxed",
                "triggers": len(self.triggers),
                "quarantined": sum(1 for t in self.triggers.values() if t.quarantined)}

    # --- readings in: the one thing on the ingestion path ------------------------------------------
    def _on_reading(self, reading: Reading) -> None:
        self.latest[reading.meter_id] = reading

    # --- organizations' triggers ---------------------------------------------------------------------
    async def trial(self, source: str, params) -> CheckResult:
        """The upload's trial run in a fresh locked worker. Raises SandboxUnavailable."""
        if not self.availability.ok:
            raise SandboxUnavailable(self.availability.detail)
        async with self._trials:
            return await asyncio.to_thread(check_condition, source, [p.name for p in params], sample_rows(params),
                                           self.config.timeout_ms / 1000, limits=self.limits)

    def creation_wait(self, org_id: str) -> float:
        """Seconds until this organization may upload again (0: now). Each trigger can tell its organization
        a little (a quarantine, errors once per interval); deleting and uploading again must not multiply
        that without bound."""
        cutoff = time.monotonic() - CREATION_WINDOW_S
        recent = [t for t in self._creations.get(org_id, []) if t > cutoff]
        self._creations[org_id] = recent
        if len(recent) < 3 * self.config.max_per_organization:
            return 0.0
        return recent[0] - cutoff

    async def create(self, org_id: str, parameters: list[str], source: str, interval_s: float, window: str,
                     action: dict) -> tuple[Trigger, str | None]:
        """Returns once the trigger is on disk (written in a worker thread, after every change before it); it
        runs from then on. The caller checks the organization's limits and calls this under one lock per
        organization, so that two uploads cannot both pass the check during the write."""
        secret = signing.new_secret() if action["type"] == "webhook" else None
        trig = Trigger(id="trg_" + secrets.token_hex(6), organization_id=org_id, parameters=list(parameters),
                       source=source, interval_s=float(interval_s), window=window, action=action, secret=secret,
                       created_at=self.agent.clock())

        def stored():  # on the event loop, even if the request was cancelled meanwhile
            self.triggers[trig.id] = trig
            self.stats[trig.id] = TriggerStats()
            self._stats_dirty = True
            self.supervisor.register(org_id, trig.id, source, trig.parameters)
            self._creations.setdefault(org_id, []).append(time.monotonic())
        await self.store.add_async(trig, then=stored)
        return trig, secret

    async def delete(self, trigger_id: str) -> None:
        """Gone from disk, then from memory and the sandbox. While the removal is written the trigger neither
        starts an evaluation nor acts, so the cooldowns written with it are all it leaves behind; should the
        write fail (OSError), nothing changed: the trigger is still there and runs on, and a retry deletes it.
        A second request meanwhile waits for the same removal."""
        removal = self._deleting.get(trigger_id)
        if removal is None:
            trig = self.triggers.get(trigger_id)
            if trig is None:
                return
            removal = asyncio.ensure_future(self._remove(trig))
            self._deleting[trigger_id] = removal  # from now on, no evaluation starts and none acts

            def settled(task: asyncio.Future) -> None:
                self._deleting.pop(trigger_id, None)
                if not task.cancelled():
                    task.exception()  # retrieved here too, should every request have been cancelled
            removal.add_done_callback(settled)
        await asyncio.shield(removal)

    async def _remove(self, trig: Trigger) -> None:
        now = self.agent.clock()
        cooldowns = [(trig.organization_id, household, at + trig.interval_s)
                     for (tid, household), at in self.debounce.last.items()
                     if tid == trig.id and at + trig.interval_s > now]  # what `retire` leaves, below
        unregistered: list[asyncio.Future] = []

        def removed():  # on the event loop, once the removal is durable
            self.triggers.pop(trig.id, None)
            self.stats.pop(trig.id, None)
            self._stats_dirty = True
            self.debounce.retire(trig, now)
            if self.supervisor:
                # may wait for an evaluation in progress (at most its deadline): off the loop
                unregistered.append(asyncio.get_running_loop().run_in_executor(
                    None, self.supervisor.unregister, trig.organization_id, trig.id))
        await self.store.remove_async(trig.id, cooldowns, then=removed)
        if unregistered:
            await unregistered[0]

    def of_organization(self, org_id: str) -> list[Trigger]:
        return [t for t in self.triggers.values() if t.organization_id == org_id]

    def state(self, trig: Trigger) -> str:
        if not self.availability.ok:
            return "sandbox_unavailable"
        if trig.quarantined:
            return "quarantined"
        if trig.rejected:
            return "rejected"
        org = self.agent.registry.organizations.get(trig.organization_id)
        if org is None or not self._permitted(trig, org):
            return "suspended"
        return "active"

    def describe(self, trig: Trigger) -> dict:
        """The organization's view: counts, never which household."""
        s = self.stats.get(trig.id) or TriggerStats()
        return {"id": trig.id, "parameters": trig.parameters, "interval": trig.interval_s, "window": trig.window,
                "kind": trig.kind, "action": trig.public_action(), "created_at": trig.created_at,
                "state": self.state(trig), "quarantined": trig.quarantined,
                "evaluations": s.evaluations, "withheld": s.withheld, "firings": s.firings, "errors": s.errors,
                "deliveries": {"delivered": s.delivered, "failed": s.failed}}

    def _permitted(self, trig: Trigger, org) -> bool:
        """The operator may narrow an organization or change its level after the upload: checked each run."""
        level = self.agent.config.levels.get(org.level)
        if level is None or trig.window not in level.windows:
            return False
        return all(permitted(p.name, level, org.parameters) and not (level.dp.only and p.level != HOUSEHOLD)
                   for p in trig.catalogue())

    # --- the loop ------------------------------------------------------------------------------------
    async def _run_forever(self) -> None:
        while True:
            try:
                await self.run_due(wait=False)
            except Exception:  # the loop must survive anything one trigger does
                log.exception("trigger runner failed")
            await asyncio.sleep(self._until_next_close())

    def _until_next_close(self) -> float:
        now = self.agent.clock()
        wake = now + 0.5
        for width in {WINDOW_SECONDS[t.window] for t in self.triggers.values()}:
            wake = min(wake, (now // width + 1) * width + CLOSE_GRACE_S)
        return min(max(wake - now, 0.01), 0.5)

    async def run_due(self, wait: bool = True) -> None:
        """Start an evaluation for every trigger whose window closed since its last one. With `wait`, return
        when every evaluation in progress is done (tests call this after stepping the clock)."""
        if self.supervisor is not None:
            now = self.agent.clock()
            for trig in list(self.triggers.values()):
                if trig.id in self._inflight or trig.id in self._deleting:
                    continue
                start = self.agent.books[trig.window].last_closed(now)
                if trig.last_window == start:
                    continue
                trig.last_window = start
                task = asyncio.create_task(self._run_window(trig, start, now), name=f"trigger-{trig.id}")
                self._inflight[trig.id] = task
                task.add_done_callback(lambda _, tid=trig.id: self._inflight.pop(tid, None))
        if wait:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)
        if time.monotonic() - self._purged_at >= PURGE_EVERY_S:
            self._purged_at = time.monotonic()
            gone = await self.households.purge_async(set(self.agent.registry.households))
            if gone:
                log.info("triggers: forgot the endpoints, appliances and inboxes of %d removed household(s)", gone)
        if self._stats_dirty and time.monotonic() - self._stats_saved_at >= STATS_EVERY_S:
            self._stats_dirty = False
            self._stats_saved_at = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(self._executor, self.store.save_stats, dict(self.stats))

    async def drain(self) -> None:
        """Wait until every action in flight is done (for tests and for an orderly stop)."""
        while self._actions:
            await asyncio.gather(*list(self._actions), return_exceptions=True)

    async def _run_window(self, trig: Trigger, start: int, now: float) -> None:
        try:
            await self._evaluate_window(trig, start, now)
        except Exception:
            log.exception("trigger %s: window %d failed", trig.id, start)

    async def _evaluate_window(self, trig: Trigger, start: int, now: float) -> None:
        registry = self.agent.registry
        org = registry.organizations.get(trig.organization_id)
        if org is None:
            log.info("trigger %s: its organization is gone; deleting it", trig.id)
            await self.delete(trig.id)
            return
        trig.suspended = not self._permitted(trig, org)
        if trig.suspended or trig.quarantined or trig.rejected:
            return
        stats = self.stats[trig.id]
        params = trig.catalogue()

        # Neighbourhood values: the window's release for this organization, or nothing at all.
        neighbourhood: dict[str, object] = {}
        releases: dict[str | None, dict] = {}
        book = self.agent.books[trig.window]
        for param in params:
            if param.level == HOUSEHOLD:
                continue
            tag = param.name.removeprefix("neighborhood_channel_") if param.name.startswith(
                "neighborhood_channel_") else None
            if tag not in releases:
                result = self.agent.release_window(org.id, trig.window, start, book.contributions(start), tag)
                if isinstance(result, Refusal):
                    stats.withheld += 1
                    self._stats_dirty = True
                    return
                releases[tag] = result
            value = param.extract(releases[tag])
            if value is None:
                stats.withheld += 1
                self._stats_dirty = True
                return
            neighbourhood[param.name] = value

        # Who it may act for: consent now (a revocation is effective at once), and for appliance actions
        # only households with a matching appliance they let this organization switch.
        recipients = [h for h in list(registry.households.values())
                      if registry.consent_state(h.id, org.id, "triggers")]
        if trig.action["type"] == "appliance":
            recipients = [h for h in recipients if self.households.targets(h.id, org.id, trig.action["appliance"])]
        if not recipients:
            return

        if trig.kind == "household":
            max_age = max(MIN_READING_AGE_S, 2 * book.width_s)
            rows, who = [], []
            for household in recipients:
                reading = self.latest.get(household.meter_id)
                if reading is None or now - reading.received_at.timestamp() > max_age:
                    continue
                row = tuple(p.extract(reading) if p.level == HOUSEHOLD else neighbourhood[p.name] for p in params)
                if any(v is None for v in row):
                    continue  # the meter does not report this value
                rows.append(row)
                who.append(household)
        else:
            rows, who = [tuple(neighbourhood[p.name] for p in params)], None
        if not rows:
            return

        statuses, failed = await self._evaluate(trig, rows)
        if statuses is None and not failed:
            return  # quarantined, backing off, or deleted meanwhile
        stats.evaluations += 1
        self._stats_dirty = True
        if failed or any(s is Status.ERROR or s is Status.NOT_BOOL for s in statuses):
            if stats.last_error_at is None or not 0 <= now - stats.last_error_at < trig.interval_s:
                stats.errors += 1  # at most one per interval: errors are a side channel too
                stats.last_error_at = now
        await self._check_quarantine(trig)
        if failed or trig.id not in self.triggers or trig.id in self._deleting:
            return

        if who is None:
            fired = recipients if statuses[0] is Status.TRUE else []
        else:
            fired = [h for h, s in zip(who, statuses) if s is Status.TRUE]
        acting = [h for h in fired if registry.consent_state(h.id, org.id, "triggers") and h.id in registry.households
                  and self.debounce.allowed(trig, h.id, now)]
        if not acting:
            return
        for household in acting:
            self.debounce.record(trig.id, household.id, now)
        # The debounce log first: a crash after an action must not let it happen again within the interval.
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self.store.record_firings, trig.id, [h.id for h in acting], now)
        if self.store.compaction_due():
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self.store.compact_firings, dict(self.debounce.last), dict(self.debounce.cooldown))
        stats.firings += len(acting)
        for household in acting:
            task = asyncio.create_task(self._act(trig, org, household, now), name=f"action-{trig.id}")
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)

    async def _evaluate(self, trig: Trigger, rows: list[tuple]) -> tuple[list[Status] | None, bool]:
        """(statuses, False), or (None, True) when the request failed, or (None, False) when it did not run."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self.supervisor.evaluate, trig.organization_id,
                                              trig.id, rows), False
        except ConditionQuarantined:
            await self._check_quarantine(trig, force=True)
        except ConditionRejected as err:
            trig.rejected = err.reason
            await self.store.update_async(trig.id, rejected=err.reason)
            log.warning("trigger %s no longer loads: %s", trig.id, err.reason)
        except BackingOff:
            pass
        except KeyError:
            pass  # deleted while it was due
        except (EvaluationFailed, SandboxUnavailable, TypeError) as err:
            # fixed strings only: nothing a condition prints or raises is ever logged or shown
            reason = err.reason if isinstance(err, (EvaluationFailed, SandboxUnavailable)) else "bad row"
            self._ratelog.warning(f"eval:{trig.id}", "trigger %s: evaluation failed: %s", trig.id, reason)
            return None, True
        return None, False

    async def _check_quarantine(self, trig: Trigger, force: bool = False) -> None:
        if trig.quarantined:
            return
        if not force:
            try:
                force = self.supervisor.state(trig.organization_id, trig.id).quarantined
            except KeyError:
                return
        if force and trig.id in self.triggers:
            trig.quarantined = True
            await self.store.update_async(trig.id, quarantined=True)
            log.warning("trigger %s of %s quarantined after repeated violations", trig.id, trig.organization_id)

    # --- actions -------------------------------------------------------------------------------------
    async def _act(self, trig: Trigger, org, household, now: float) -> None:
        kind = trig.action["type"]
        async with self._action_slots:
            try:
                if kind == "notification":
                    ok = await self._notify(trig, org, household, now)
                elif kind == "appliance":
                    ok = await self._switch(trig, org, household)
                else:
                    ok = await self._webhook(trig, org, household, now)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("trigger %s: action failed", trig.id)
                ok = False
        stats = self.stats.get(trig.id)
        if stats is not None:
            if ok:
                stats.delivered += 1
            else:
                stats.failed += 1
            self._stats_dirty = True
        self.agent.audit.record(org.id, "organization", "trigger.action", trigger_id=trig.id, action_type=kind,
                                household_id=household.id, delivered=ok)

    async def _attempts(self, key: str, send) -> bool:
        """`send()` up to ACTION_ATTEMPTS times on the delivery retry schedule; True once it succeeds."""
        schedule = self.agent.config.delivery.retry_schedule
        for attempt in range(ACTION_ATTEMPTS):
            if attempt:
                await asyncio.sleep(min(schedule[min(attempt, len(schedule) - 1)], 30.0))
            try:
                await send()
                return True
            except (notify.NotifyError, ApplianceError, aiohttp.ClientError, asyncio.TimeoutError, OSError,
                    ValueError) as err:
                self._ratelog.warning(f"send:{key}", "trigger %s: action not delivered: %s", key,
                                      f"{err.__class__.__name__}: {err}"[:200])
        return False

    async def _notify(self, trig: Trigger, org, household, now: float) -> bool:
        entry = {"id": "ntf_" + secrets.token_hex(8), "household_id": household.id, "organization_id": org.id,
                 "organization_name": org.name, "trigger_id": trig.id, "title": trig.action.get("title") or org.name,
                 "content": trig.action["content"], "at": now}
        await asyncio.get_running_loop().run_in_executor(self._executor, self.households.deliver, entry)
        endpoint = self.households.endpoints.get(household.id)
        if endpoint is None:
            return True  # the inbox is the delivery
        private = self.agent.config.delivery.allow_private_endpoints
        if not actions.literal_allowed(endpoint["url"], private, lan=False):
            return False
        message = {"type": "notification", **{k: entry[k] for k in ("id", "organization_id", "organization_name",
                                                                     "trigger_id", "title", "content")},
                   "at": _iso(now)}
        body = json.dumps(message, separators=(",", ":")).encode()

        async def send():
            headers = (signing.headers([endpoint["secret"]], entry["id"], int(time.time()), body)
                       if endpoint.get("secret") else {})
            await notify.send(self._web, endpoint["url"], endpoint["kind"], title=entry["title"],
                              message=entry["content"], body=body, headers=headers)
        return await self._attempts(trig.id, send)

    async def _switch(self, trig: Trigger, org, household) -> bool:
        targets = self.households.targets(household.id, org.id, trig.action["appliance"])
        private = self.agent.config.delivery.allow_private_endpoints
        ok = bool(targets)
        for appliance in targets:
            device = driver(appliance["driver"])
            if device is None or not actions.literal_allowed(appliance["address"], private, lan=True):
                ok = False
                continue

            async def send(device=device, appliance=appliance):
                await device.command(self._lan, appliance["address"], appliance.get("channel"),
                                     trig.action["command"])
            ok = await self._attempts(trig.id, send) and ok
        return ok

    async def _webhook(self, trig: Trigger, org, household, now: float) -> bool:
        endpoint = trig.action["endpoint"]
        private = self.agent.config.delivery.allow_private_endpoints
        if not actions.literal_allowed(endpoint, private, lan=False):
            return False
        body = json.dumps({"type": "trigger.fired", "trigger_id": trig.id,
                           "household": pseudonym(self.store.key, org.id, household.id), "at": _iso(now)},
                          separators=(",", ":")).encode()
        msg_id = "msg_" + secrets.token_hex(12)  # the same on every attempt: receivers deduplicate on it

        async def send():
            headers = signing.headers([trig.secret], msg_id, int(time.time()), body)
            async with self._web.post(endpoint, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(64 * 1024)
                if not 200 <= resp.status < 300:
                    raise ValueError(f"HTTP {resp.status}")
        return await self._attempts(trig.id, send)


def _iso(moment: float) -> str:
    return iso(datetime.fromtimestamp(moment, timezone.utc))
