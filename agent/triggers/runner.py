"""Triggers in motion: evaluate conditions once a window is settled, hold the results, act at a fixed moment.

Timing (nothing observable about evaluation time):
- A window [start, start + width) is evaluated once the release module has settled it
  (``releases.last_settled`` / ``releases.listen``). Its actions leave at its *release moment*,
  ``start + width + release_delay_s`` on the agent's clock, whatever the time its evaluation took: the
  results are held until then (`Outcome`), and the runner wakes at that moment to dispatch them. A window
  whose evaluation is not done by its release moment is dropped whole (counted `late`, operator only),
  never sent later. Webhook bodies and inbox entries carry the release moment, not the evaluation's.
- Its statistics leave ``statistics_delay_s`` after the release moment: the window's counts (households
  evaluated, fired, errors, actions delivered or failed; an action still under way then is cancelled
  and failed) go to ``releases.counts``, which releases them (thresholded at k_min or noised) or
  withholds them; `TriggerStats` sums what was released.

What an organization observes:
- Neighbourhood inputs come from ``releases.answer`` only (the released aggregate); a refusal means
  the condition does not run for that window.
- Notifications of household conditions go to the household's side only: its inbox and own endpoint.
  A ``webhook`` of a household condition, and an ``appliance`` switch of one (the organization may supply or
  monitor the appliance: its state is the condition, red team 7 R7-3), happen only for households that
  consented to that trigger's events (service ``trigger_events:<trigger_id>``), at most
  ``max_events_per_household_per_day`` per organization (all its triggers, webhooks and switches alike) per
  UTC day, and each is in the household's disclosure log (the audit entry ``trigger.action`` with its
  household id and ``disclosed``), sent or tried. A ``webhook`` of a neighbourhood condition is one event per
  window naming no household; an appliance switch of one depends on released values only.

Fair sharing (see lanes.py): each organization's webhooks and appliance switches have a lane of their
own (slots, a bounded queue, their own HTTP connections); each household's own notifications have a lane
per household, apart from every organization's. Retries wait outside the slot.

Conditions run in the sandbox's locked workers, off the event loop (at most EVALUATIONS_PER_ORGANIZATION
of one organization at a time); the event loop never waits on the disk (writes run in worker threads, the
stores' ``*_async`` changes one at a time and in order).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp

from agent.clock import Clock
from agent.config import WINDOW_SECONDS, DeliveryConfig, Level, TriggersConfig
from agent.delivery import signing
from agent.parameters import HOUSEHOLD, TIME_OF_DAY, Parameter, permitted
from agent.ports import Consents, Readings, Trail, TriggerReleases
from agent.registry import Household, Organization
from agent.release.records import TRIGGER_COUNTS, Json, RefusalCode
from agent.triggers import actions
from agent.triggers.lanes import Lane, Lanes
from agent.triggers.model import Trigger, TriggerStats, disclosure_bits, pseudonym, sample_rows
from agent.triggers.store import HouseholdStore, TriggerStore
from drivers import notify
from drivers.appliances import ApplianceDriver, ApplianceError, driver
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
from sandbox.supervisor import CLOSED_LANGUAGE, PROCESS_PER_ROW

log = logging.getLogger("edge.triggers")

POLL_S = 0.5  # the longest the loop sleeps without a release moment or a settled window waking it
STATS_EVERY_S = 30.0  # how often changed counters are written
EVALUATION_THREADS = 8
EVALUATIONS_PER_ORGANIZATION = 2  # one organization's slow conditions hold at most this many threads
ACTION_ATTEMPTS = 3
APPLIANCE_TIMEOUT_S = 5.0
HOUSEHOLD_QUEUE = 32  # a household's own notifications waiting, beyond its slots
MIN_READING_AGE_S = 60.0  # a household's reading is used while younger than max(this, two windows)
RELEASE_MARGIN_S = 0.25  # an evaluation's deadline ends this long before its release moment (debounce log write)
PURGE_EVERY_S = 300.0  # forget endpoints, appliances and inboxes of households the operator removed
CREATION_WINDOW_S = 86400.0  # uploads accepted per organization per rolling day: 3 x max_per_organization
REFUSAL_WINDOW_S = 3600.0  # refused uploads per organization per rolling hour: [triggers] max_refusals_per_hour
REFUSAL_LOG_EVERY_S = 60.0  # refusals are summed into at most one audit entry per organization per minute
TRIALS = 2  # trials at once, across organizations; each organization has at most one of them
TRIALS_WAITING_PER_ORGANIZATION = 2  # an organization's uploads waiting for its trial slot, beyond: 429
DAILY = RefusalCode.RELEASED_DAILY  # the release module's answer for noisy levels: per UTC day, after it
EVENTS_SERVICE = "trigger_events:"  # + trigger id: a household's consent to that trigger's events


def events_service(trigger_id: str) -> str:
    return EVENTS_SERVICE + trigger_id


class TooManyUploads(Exception):
    """An organization's uploads beyond its limits (refusals per hour, uploads waiting): a 429."""

    def __init__(self, retry_after_s: float, detail: str):
        super().__init__(detail)
        self.retry_after_s, self.detail = retry_after_s, detail


@dataclass(frozen=True)
class Availability:
    ok: bool
    detail: str




@dataclass
class Outcome:
    """One trigger's window: evaluated, held until `release_at`, its counts released at `statistics_at`."""

    trigger_id: str
    org_id: str
    window: str
    start: int
    release_at: float
    statistics_at: float
    # {household id: {count: 0 or 1}}: what the release module sums (or withholds) for the organization
    per_household: dict[str, dict[str, int]] = field(default_factory=dict)
    # households to act for; [None]: the organization's own event
    acting: list[Household | None] = field(default_factory=list)
    dispatched_at: float | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    def cohort(self, household_ids: Iterable[str], evaluated: bool, fired: Collection[str] = (),
               errors: Collection[str] = ()) -> None:
        for household_id in household_ids:
            self.per_household[household_id] = {"evaluations": int(evaluated), "fired": int(household_id in fired),
                                                "errors": int(household_id in errors), "delivered": 0, "failed": 0}

    def delivered(self, household: Household | None, ok: bool) -> None:
        counts = self.per_household.get(household.id) if household is not None else None
        if counts is not None:
            counts["delivered" if ok else "failed"] = 1

    def total(self, name: str) -> int:
        return sum(c[name] for c in self.per_household.values())


@dataclass(frozen=True)
class TriggerNeeds:
    """What the triggers use of the rest of the agent (agent/ports.py)."""

    clock: Clock
    releases: TriggerReleases
    registry: Consents
    audit: Trail
    readings: Readings
    config: TriggersConfig
    delivery: DeliveryConfig  # the endpoint policy, connection limits and retries webhooks share
    levels: Mapping[str, Level]  # the configuration's (a fleet document changes them in place)


class TriggerRunner:
    def __init__(self, needs: TriggerNeeds, directory: Path):
        self.needs = needs
        self.config = needs.config
        self.limits = Limits(timeout_s=self.config.timeout_ms / 1000)
        self.store = TriggerStore(Path(directory))
        self.households = HouseholdStore(Path(directory) / "households.seg")
        # which household each appliance address (R6-9) and each relay (R8-1) is: checked at registration and at
        # every connection
        self.bindings = actions.ApplianceBindings(self.households.appliances,
                                                  lambda household_id: household_id in needs.registry.households,
                                                  self.households.bind_device_async)
        self.triggers, self.stats, self.debounce = self.store.load()
        self.availability = Availability(False, "not started")
        self.supervisor: Supervisor | None = None
        self.latest: dict[str, Reading] = {}
        needs.readings.subscribe(self._on_reading)
        self._executor = ThreadPoolExecutor(EVALUATION_THREADS, thread_name_prefix="triggers")
        self._disk = ThreadPoolExecutor(2, thread_name_prefix="triggers-disk")  # never behind an evaluation
        self._evaluating: dict[str, asyncio.Semaphore] = {}  # per organization
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self.held: list[Outcome] = []  # evaluated, waiting for their release moment
        self.released: list[Outcome] = []  # dispatched, waiting for their statistics moment
        self._publishing: set[asyncio.Task[None]] = set()
        self.organization_lanes = Lanes(self.config.organization_action_slots, self.config.organization_action_queue)
        self.household_lanes = Lanes(self.config.household_action_slots, HOUSEHOLD_QUEUE)
        # an organization's appliance switches, a lane per (organization, household): whether and when one
        # household's appliance is switched never depends on how many other households' conditions were true
        # (red team 6, R6-6: in the organization's lane, in the order they fired, it did)
        self.appliance_lanes = Lanes(self.config.household_action_slots, HOUSEHOLD_QUEUE)
        self._sessions: dict[tuple[str, str], aiohttp.ClientSession] = {}  # (organization id, "web"|"lan")
        self._households_web: aiohttp.ClientSession | None = None
        self._trials = asyncio.Semaphore(TRIALS)
        self._org_trials: dict[str, asyncio.Lock] = {}
        self._trials_waiting: Counter[str] = Counter()
        self._refusals: dict[str, deque[float]] = {}
        self._refusals_unlogged: dict[str, Counter[str]] = {}
        self._refusals_logged_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._ratelog = RateLimitedLog(log)
        self._stats_dirty = False
        self._stats_saved_at = time.monotonic()
        self._purged_at = float("-inf")
        self._creations: dict[str, list[float]] = {}
        self._deleting: dict[str, asyncio.Future[None]] = {}  # triggers whose removal is being written

    # --- lifecycle -------------------------------------------------------------------------------
    def _sandbox(self) -> Supervisor:
        """The supervisor, there once start() found the sandbox enforced (`availability`): nothing is created or
        evaluated before."""
        if self.supervisor is None:
            raise SandboxUnavailable(self.availability.detail)
        return self.supervisor

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
        delivery = self.needs.delivery
        # Households' own endpoints: no shared connection limit (each household's lane bounds its own).
        self._households_web = actions.web_session(delivery.allow_private_endpoints, delivery.timeout_s, 0)
        self._wake = wake = asyncio.Event()
        self.needs.releases.listen(self._settled)
        # Windows settled before this start were evaluated before it (or are lost with the crash): not again.
        for trig in self.triggers.values():
            trig.last_window = self.needs.releases.last_settled(trig.window)
        self._task = asyncio.create_task(self._run_forever(wake), name="triggers")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._inflight.values(), *self._publishing] if t]
        tasks += [t for outcome in self.released for t in outcome.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in [self._households_web, *self._sessions.values()]:
            if session:
                await session.close()
        if self.supervisor:
            await asyncio.to_thread(self.supervisor.close)  # kills the workers: evaluations end at once
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
        await asyncio.to_thread(self._disk.shutdown, True)
        self._log_refusals(force=True)
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

    def health(self) -> dict[str, Any]:
        return {"sandbox": "enforced" if self.availability.ok else "unavailable",
                "detail": self.availability.detail if self.availability.ok else
                f"triggers are disabled: {self.availability.detail}; conditions never run unsandboxed",
                "triggers": len(self.triggers),
                "quarantined": sum(1 for t in self.triggers.values() if t.quarantined),
                # the operator's (health's detail is not public): windows dropped for being late, actions dropped
                # beyond an organization's or a household's lane
                "late_windows": sum(s.late for s in self.stats.values()),
                "dropped_actions": sum(lane["dropped"] for lanes in self._lanes() for lane in lanes.snapshot().values())}

    def _lanes(self) -> tuple[Lanes, ...]:
        return self.organization_lanes, self.household_lanes, self.appliance_lanes

    def disclosure(self) -> dict[str, Any]:
        """The bound on what an organization can learn of one household through its triggers (GET /parameters)."""
        cfg = self.config
        finest = min((WINDOW_SECONDS[w] for level in self.needs.levels.values() for w in level.windows),
                     default=60)
        slots = cfg.max_per_organization * int(86400 // finest)
        return {
            "max_events_per_household_per_day": cfg.max_events_per_household_per_day,
            "scope": "per organization, across all its triggers, per UTC day",
            "consent": EVENTS_SERVICE + "<trigger_id>",
            "events": ["webhook", "appliance switch"],  # of conditions on household parameters: one budget
            "max_bits_per_household_per_day": round(disclosure_bits(cfg.max_events_per_household_per_day, slots), 1),
            "release_delay_s": cfg.release_delay_s,
            "statistics_delay_s": cfg.statistics_delay_s,
            "detail": (
                "Notifications of conditions on household parameters go to the household only (inbox, its own "
                "endpoint). A webhook to the organization, or a switch of the household's appliance (which the "
                "organization may supply or monitor), of such a condition is an event about the household: it "
                f"happens only if the household consented to that trigger's events ({EVENTS_SERVICE}<trigger_id>), "
                f"at most {cfg.max_events_per_household_per_day} per organization per UTC day, webhooks and "
                "switches together, each in the household's disclosure log; each names one of at most "
                f"{slots} (trigger, window) pairs a day, so a day's events carry at most "
                "max_bits_per_household_per_day bits. Everything else an organization learns of its triggers is "
                "per-window counts released by the release module (at least k_min households, or noised), sent "
                "at a fixed time after the window closes."),
        }

    # --- readings in: the one thing on the ingestion path ------------------------------------------
    def _on_reading(self, reading: Reading) -> None:
        self.latest[reading.meter_id] = reading

    def _settled(self, window: str, start: int) -> None:
        """The release module: every release of this window is durable. Wake the loop."""
        self._wake_up()

    def _wake_up(self) -> None:
        if self._wake is not None:  # started
            self._wake.set()

    # --- organizations' triggers ---------------------------------------------------------------------
    def upload_wait(self, org_id: str, waiting: bool = True) -> tuple[float, str] | None:
        """(seconds, why) until this organization may upload again, or None: its refusals in the last hour, and
        (`waiting`) its uploads already waiting for their trial. Checked before anything is parsed or spawned,
        and again before the trial."""
        now = time.monotonic()
        recent = self._refusals.get(org_id)
        while recent and recent[0] <= now - REFUSAL_WINDOW_S:
            recent.popleft()
        if recent and len(recent) >= self.config.max_refusals_per_hour:
            return recent[0] + REFUSAL_WINDOW_S - now, (f"at most {self.config.max_refusals_per_hour} refused "
                                                        "uploads per organization per hour")
        if waiting and self._trials_waiting[org_id] > TRIALS_WAITING_PER_ORGANIZATION:
            return 1.0, "this organization's uploads are already being tried; send them one at a time"
        return None

    def _check_uploads(self, org_id: str, waiting: bool = True) -> None:
        wait = self.upload_wait(org_id, waiting)
        if wait:
            raise TooManyUploads(*wait)

    def refused(self, org_id: str, reason: str) -> None:
        """An upload refused by its trial: counted against the organization's limit; in the audit log as a sum,
        at most one (unsynced) entry per organization per minute, so a flood of refusals costs no fsync."""
        self._refusals.setdefault(org_id, deque()).append(time.monotonic())
        self._refusals_unlogged.setdefault(org_id, Counter())[reason] += 1
        self._log_refusals()

    def _log_refusals(self, force: bool = False) -> None:
        now = time.monotonic()
        for org_id, reasons in list(self._refusals_unlogged.items()):
            if force or now - self._refusals_logged_at.get(org_id, float("-inf")) >= REFUSAL_LOG_EVERY_S:
                del self._refusals_unlogged[org_id]
                self._refusals_logged_at[org_id] = now
                self.needs.audit.record(org_id, "organization", "trigger.refused", durable=False,
                                        count=sum(reasons.values()), reasons=dict(reasons))

    async def trial(self, org_id: str, source: str, params: list[Parameter]) -> CheckResult:
        """The upload's trial run in a fresh locked worker. Raises SandboxUnavailable. One trial per organization
        at a time, so that an organization's flood waits in its own queue: another organization's upload waits
        for at most one of its trials."""
        if not self.availability.ok:
            raise SandboxUnavailable(self.availability.detail)
        self._check_uploads(org_id)
        lock = self._org_trials.setdefault(org_id, asyncio.Lock())
        self._trials_waiting[org_id] += 1
        try:
            async with lock:
                self._check_uploads(org_id, waiting=False)  # refusals of the uploads it waited behind count
                async with self._trials:
                    return await asyncio.to_thread(check_condition, source, [p.name for p in params],
                                                   sample_rows(params), self.config.timeout_ms / 1000,
                                                   limits=self.limits)
        finally:
            self._trials_waiting[org_id] -= 1
            if not self._trials_waiting[org_id]:
                del self._trials_waiting[org_id]
                if not lock.locked():
                    self._org_trials.pop(org_id, None)

    def creation_wait(self, org_id: str) -> float:
        """Seconds until this organization may upload again (0: now). Each trigger can tell its organization
        a little (a quarantine); deleting and uploading again must not multiply that without bound."""
        cutoff = time.monotonic() - CREATION_WINDOW_S
        recent = [t for t in self._creations.get(org_id, []) if t > cutoff]
        self._creations[org_id] = recent
        if len(recent) < 3 * self.config.max_per_organization:
            return 0.0
        return recent[0] - cutoff

    async def create(self, org_id: str, parameters: list[str], source: str, interval_s: float, window: str,
                     action: dict[str, Any], description: str = "",
                     closed: bool = False) -> tuple[Trigger, str | None]:
        """Returns once the trigger is on disk (written in a worker thread, after every change before it); it
        runs from then on. The caller checks the organization's limits and calls this under one lock per
        organization, so that two uploads cannot both pass the check during the write."""
        supervisor = self._sandbox()
        secret = signing.new_secret() if action["type"] == "webhook" else None
        trig = Trigger(id="trg_" + secrets.token_hex(6), organization_id=org_id, parameters=list(parameters),
                       source=source, interval_s=float(interval_s), window=window, action=action, secret=secret,
                       created_at=self.needs.clock(), description=description, closed=closed)
        # Windows already settled are not its own: it starts with the next one.
        trig.last_window = self.needs.releases.last_settled(window)

        def stored() -> None:  # on the event loop, even if the request was cancelled meanwhile
            self.triggers[trig.id] = trig
            self.stats[trig.id] = TriggerStats()
            self._stats_dirty = True
            supervisor.register(org_id, trig.id, source, trig.parameters)
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

            def settled(task: asyncio.Future[None]) -> None:
                self._deleting.pop(trigger_id, None)
                if not task.cancelled():
                    task.exception()  # retrieved here too, should every request have been cancelled
            removal.add_done_callback(settled)
        await asyncio.shield(removal)

    async def _remove(self, trig: Trigger) -> None:
        now = self.needs.clock()
        cooldowns = [(trig.organization_id, household, at + trig.interval_s, trig.action["type"])
                     for (tid, household), at in self.debounce.last.items()
                     if tid == trig.id and at + trig.interval_s > now]  # what `retire` leaves, below
        unregistered: list[asyncio.Future[None]] = []

        def removed() -> None:  # on the event loop, once the removal is durable
            self.triggers.pop(trig.id, None)
            self.stats.pop(trig.id, None)
            self._stats_dirty = True
            self.debounce.retire(trig, now)
            self.held = [o for o in self.held if o.trigger_id != trig.id]
            if self.supervisor:
                # may wait for an evaluation in progress (at most its deadline): off the loop
                unregistered.append(asyncio.get_running_loop().run_in_executor(
                    None, self.supervisor.unregister, trig.organization_id, trig.id))
        await self.store.remove_async(trig.id, cooldowns, then=removed)
        if unregistered:
            await unregistered[0]

    def of_organization(self, org_id: str) -> list[Trigger]:
        return [t for t in self.triggers.values() if t.organization_id == org_id]

    def consentable(self) -> list[Trigger]:
        """Triggers whose events a household may consent to: household conditions with an action the organization
        can observe (a webhook, an appliance switch)."""
        return [t for t in self.triggers.values() if t.discloses and not t.quarantined and t.rejected is None]

    def state(self, trig: Trigger) -> str:
        if not self.availability.ok:
            return "sandbox_unavailable"
        if trig.quarantined:
            return "quarantined"
        if trig.rejected:
            return "rejected"
        org = self.needs.registry.organizations.get(trig.organization_id)
        if org is None or not self._permitted(trig, org):
            return "suspended"
        return "active"

    def describe(self, trig: Trigger) -> dict[str, Any]:
        """The organization's view: sums of the counts the release module released, never which household."""
        s = self.stats.get(trig.id) or TriggerStats()
        days = self.needs.releases.trigger_days(trig.organization_id, trig.id)  # noisy levels: noised day sums
        total = {name: getattr(s, name) + sum(day.get(name, 0) for day in days) for name in TRIGGER_COUNTS}
        return {"id": trig.id, "parameters": trig.parameters, "interval": trig.interval_s, "window": trig.window,
                "kind": trig.kind, "action": trig.public_action(), "description": trig.description,
                "created_at": trig.created_at, "state": self.state(trig), "quarantined": trig.quarantined,
                "evaluations": total["evaluations"], "firings": total["fired"], "errors": total["errors"],
                "deliveries": {"delivered": total["delivered"], "failed": total["failed"]},
                "windows": {"released": s.windows_released, "withheld": s.windows_withheld,
                            "released_daily": s.windows_daily, "inputs_withheld": s.inputs_withheld},
                "days_released": len(days), "isolation": self.isolation(trig)}

    @staticmethod
    def isolation(trig: Trigger) -> str | None:
        """How its rows are kept apart (sandbox: "closed language" or "process per row"), as its upload's trial
        found: the same whether or not anyone was evaluated since (red team 6, R6-3)."""
        return None if trig.closed is None else CLOSED_LANGUAGE if trig.closed else PROCESS_PER_ROW

    def _permitted(self, trig: Trigger, org: Organization) -> bool:
        """The operator may narrow an organization or change its level after the upload: checked each run."""
        level = self.needs.levels.get(org.level)
        if level is None or trig.window not in level.windows:
            return False
        return all(permitted(p.name, level, org.parameters) for p in trig.catalogue())

    # --- the loop ------------------------------------------------------------------------------------
    async def _run_forever(self, wake: asyncio.Event) -> None:
        while True:
            wake.clear()
            try:
                await self.run_due(wait=False)
            except Exception:  # the loop must survive anything one trigger does
                log.exception("trigger runner failed")
            try:
                await asyncio.wait_for(wake.wait(), self._until_next())
            except asyncio.TimeoutError:
                pass

    def _until_next(self) -> float:
        """Until the next release or statistics moment (on the agent's clock), at most POLL_S."""
        now = self.needs.clock()
        moments = [o.release_at for o in self.held] + [o.statistics_at for o in self.released]
        return min(max(min(moments, default=now + POLL_S) - now, 0.0), POLL_S)

    async def run_due(self, wait: bool = True) -> None:
        """Evaluate every trigger's newest settled window not evaluated yet; dispatch the held windows whose
        release moment has come; release the statistics whose moment has come. With `wait`, return when all of
        it is done (tests call this after stepping the clock)."""
        self._dispatch_due()
        if self.supervisor is not None:
            for trig in list(self.triggers.values()):
                if trig.id in self._inflight or trig.id in self._deleting:
                    continue
                start = self.needs.releases.last_settled(trig.window)
                if start is None or trig.last_window == start:
                    continue
                trig.last_window = start
                task = asyncio.create_task(self._run_window(trig, start), name=f"trigger-{trig.id}")
                self._inflight[trig.id] = task
                task.add_done_callback(functools.partial(self._forget_inflight, trig.id))
        if wait:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)
            self._dispatch_due()
        self._publish_due()
        if wait:
            await asyncio.gather(*list(self._publishing), return_exceptions=True)
        if time.monotonic() - self._purged_at >= PURGE_EVERY_S:
            self._purged_at = time.monotonic()
            for lanes in self._lanes():
                lanes.forget_idle()
            gone = await self.households.purge_async(set(self.needs.registry.households))
            if gone:
                log.info("triggers: forgot the endpoints, appliances and inboxes of %d removed household(s)", gone)
        if self._stats_dirty and time.monotonic() - self._stats_saved_at >= STATS_EVERY_S:
            self._stats_dirty = False
            self._stats_saved_at = time.monotonic()
            self._log_refusals()
            await asyncio.get_running_loop().run_in_executor(self._disk, self.store.save_stats, dict(self.stats))

    def _forget_inflight(self, trigger_id: str, _: asyncio.Task[None]) -> None:
        self._inflight.pop(trigger_id, None)

    async def drain(self) -> None:
        """Wait until every action dispatched is done (for tests)."""
        while tasks := [t for o in self.released for t in o.tasks]:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_window(self, trig: Trigger, start: int) -> None:
        self.needs.releases.trigger_window(trig.organization_id, trig.id, start)
        try:
            outcome = await self._evaluate_window(trig, start)
        except Exception:
            log.exception("trigger %s: window %d failed", trig.id, start)
            return
        if outcome is not None:
            self.held.append(outcome)
            self._wake_up()

    def _late(self, trig: Trigger, outcome: Outcome, force: bool = False) -> bool:
        """Not done by its release moment: dropped whole (sending it later would tell how long it took). Only load
        makes a window late (the evaluation's deadline ends before the moment), never what the condition does."""
        if not force and self.needs.clock() < outcome.release_at:
            return False
        self.stats[trig.id].late += 1
        self._stats_dirty = True
        self._ratelog.warning(f"late:{trig.id}", "trigger %s: window %d not evaluated by its release moment; "
                              "dropped (raise [triggers] release_delay_s?)", trig.id, outcome.start)
        return True

    async def _evaluate_window(self, trig: Trigger, start: int) -> Outcome | None:
        registry = self.needs.registry
        org = registry.organizations.get(trig.organization_id)
        if org is None:
            log.info("trigger %s: its organization is gone; deleting it", trig.id)
            await self.delete(trig.id)
            return None
        trig.suspended = not self._permitted(trig, org)
        if trig.suspended or trig.quarantined or trig.rejected:
            return None
        stats = self.stats[trig.id]
        params = trig.catalogue()
        width = WINDOW_SECONDS[trig.window]
        release_at = start + width + self.config.release_delay_s
        outcome = Outcome(trig.id, org.id, trig.window, start, release_at, release_at + self.config.statistics_delay_s)
        if self._late(trig, outcome):
            return None

        # Neighbourhood values: the window's release for this organization, or nothing at all.
        neighbourhood: dict[str, object] = {}
        answers: dict[str | None, Json] = {}
        for param in params:
            if param.level == HOUSEHOLD:
                continue
            if param.name == TIME_OF_DAY:
                neighbourhood[param.name] = int(start // 3600 % 24)  # the window's, never a clock's
                continue
            tag = param.name.removeprefix("neighborhood_channel_") if param.name.startswith(
                "neighborhood_channel_") else None
            if tag not in answers:
                answer = self.needs.releases.answer(org.id, trig.window, start, tag)
                if not isinstance(answer, dict):  # a Refusal
                    stats.inputs_withheld += 1
                    self._stats_dirty = True
                    return None
                answers[tag] = answer
            value = param.extract(answers[tag])
            if value is None:
                stats.inputs_withheld += 1
                self._stats_dirty = True
                return None
            neighbourhood[param.name] = value

        kind = trig.action["type"]
        organization_event = trig.kind == "neighborhood" and kind == "webhook"
        recipients = [] if organization_event else self._recipients(trig, org)
        rows: list[tuple[object, ...]] = []
        who: list[Household] | None = None  # the rows' households; None: one row, the neighbourhood's
        if trig.kind == "household":
            now = self.needs.clock()
            max_age = max(MIN_READING_AGE_S, 2 * width)
            who = []
            for household in recipients:
                reading = self.latest.get(household.meter_id)
                # not too old, and its own (its meter's readings before its creation are a previous household's)
                if reading is None or now - reading.received_at.timestamp() > max_age \
                        or not household.owns(reading.received_at.timestamp()):
                    continue
                row = tuple(p.extract(reading) if p.level == HOUSEHOLD else neighbourhood[p.name] for p in params)
                if any(v is None for v in row):
                    continue  # the meter does not report this value
                rows.append(row)
                who.append(household)
        else:
            rows = [tuple(neighbourhood[p.name] for p in params)]
        # The households the counts are about: those evaluated (a neighbourhood condition: those it acts for).
        about = [h.id for h in (who if who is not None else recipients)]
        if not rows:
            return outcome  # its (empty) counts still go to the release module at the statistics moment

        # The deadline ends before the release moment: a condition can make its window fail (an error, a
        # violation towards quarantine), never make it late (dropped, which would be a channel of its own).
        statuses, failed = await self._evaluate(trig, rows, outcome.release_at - RELEASE_MARGIN_S)
        if statuses is _LATE:
            self._late(trig, outcome, force=True)
            return None
        if statuses is None and not failed:
            return None  # quarantined, backing off, or deleted meanwhile
        await self._check_quarantine(trig)
        if trig.id not in self.triggers or trig.id in self._deleting or self._late(trig, outcome):
            return None
        if statuses is None:  # failed (a request that did not run returned above)
            outcome.cohort(about, True, errors=set(about))
            return outcome  # its errors are counted; nothing acts

        bad = (Status.ERROR, Status.NOT_BOOL)
        acting: list[Household | None]
        if who is None:
            fired = statuses[0] is Status.TRUE
            acting = ([None] if organization_event else list(recipients)) if fired else []
            outcome.cohort(about, True, fired=set(about) if fired else (),
                           errors=set(about) if statuses[0] in bad else ())
        else:
            true_for = [h for h, s in zip(who, statuses) if s is Status.TRUE]
            acting = list(true_for)
            outcome.cohort(about, True, fired={h.id for h in true_for},
                           errors={h.id for h, s in zip(who, statuses) if s in bad})
        await self._plan(trig, org, outcome, acting)
        return None if self._late(trig, outcome) else outcome

    def _recipients(self, trig: Trigger, org: Organization) -> list[Household]:
        """Who it may act for: consent now (a revocation is effective at once); a household condition's webhook or
        appliance switch only for households that consented to this trigger's events; appliance actions only for
        households with a matching appliance they let this organization switch."""
        registry = self.needs.registry
        out = [h for h in list(registry.households.values()) if registry.consent_state(h.id, org.id, "triggers")]
        if trig.discloses:
            out = [h for h in out if registry.consent_state(h.id, org.id, events_service(trig.id))]
        if trig.action["type"] == "appliance":
            out = [h for h in out if self.households.targets(h.id, org.id, trig.action["appliance"])]
        return out

    async def _plan(self, trig: Trigger, org: Organization, outcome: Outcome, fired: list[Household | None]) -> None:
        """Debounce (and, for a household condition's actions the organization observes, the per-day bound, one for
        webhooks and appliance switches) as of the release moment, written before the window is held: a crash
        after an action must not let it happen again within the interval."""
        at = outcome.release_at

        def key(h: Household | None) -> str:
            return "" if h is None else h.id  # the organization's own event: one per trigger
        acting = [h for h in fired if self.debounce.allowed(trig, key(h), at)]
        disclosed: list[str] = []
        if trig.discloses:  # a household condition's: households only
            per_day = self.config.max_events_per_household_per_day
            acting = [h for h in acting if h is not None and self.debounce.event_allowed(org.id, h.id, at, per_day)]
            disclosed = [h.id for h in acting if h is not None]
        if not acting:
            return
        for household in acting:
            self.debounce.record(trig.id, key(household), at)
        for household_id in disclosed:
            self.debounce.spend_event(org.id, household_id, at)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._disk, self.store.record_firings, trig.id, [key(h) for h in acting], at,
                                   (org.id, disclosed))
        if self.store.compaction_due():
            await loop.run_in_executor(self._disk, self.store.compact_firings, dict(self.debounce.last),
                                       dict(self.debounce.cooldown), dict(self.debounce.events))
        outcome.acting = acting

    async def _evaluate(self, trig: Trigger, rows: list[tuple[object, ...]],
                        end_at: float) -> tuple[list[Status] | Literal[_Late.LATE] | None, bool]:
        """(statuses, False), or (None, True) when the request failed, or (None, False) when it did not run, or
        (_LATE, False) when `end_at` (agent clock) had passed before it could start. The batch's deadline is its
        own or `end_at`, whichever comes first, counted from when it starts in its thread (not when it queued)."""
        loop = asyncio.get_running_loop()
        gate = self._evaluating.setdefault(trig.organization_id, asyncio.Semaphore(EVALUATIONS_PER_ORGANIZATION))
        supervisor = self._sandbox()
        limits, clock = supervisor.limits, self.needs.clock

        def run() -> list[Status] | Literal[_Late.LATE]:  # in the evaluation thread
            budget = end_at - clock()
            if budget <= 0:
                return _LATE
            return supervisor.evaluate(trig.organization_id, trig.id, rows,
                                       min(limits.request_timeout(len(rows)), budget))
        try:
            async with gate:
                return await loop.run_in_executor(self._executor, run), False
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
                force = self._sandbox().state(trig.organization_id, trig.id).quarantined
            except KeyError:
                return
        if force and trig.id in self.triggers:
            trig.quarantined = True
            await self.store.update_async(trig.id, quarantined=True)
            log.warning("trigger %s of %s quarantined after repeated violations", trig.id, trig.organization_id)

    # --- the release moment: dispatch ----------------------------------------------------------------
    def _dispatch_due(self) -> None:
        now = self.needs.clock()
        due = [o for o in self.held if o.release_at <= now]
        if not due:
            return
        self.held = [o for o in self.held if o.release_at > now]
        for outcome in due:
            outcome.dispatched_at = now
            self.released.append(outcome)
            trig = self.triggers.get(outcome.trigger_id)
            org = self.needs.registry.organizations.get(outcome.org_id)
            if trig is None or org is None or trig.id in self._deleting or not outcome.acting:
                continue
            self._dispatch(trig, org, outcome)

    def _dispatch(self, trig: Trigger, org: Organization, outcome: Outcome) -> None:
        registry = self.needs.registry
        kind = trig.action["type"]
        acting = outcome.acting
        if acting != [None]:  # households (`h is not None`); a consent revoked since the evaluation is obeyed
            acting = [h for h in acting if h is not None and h.id in registry.households
                      and registry.consent_state(h.id, org.id, "triggers")
                      and (not trig.discloses or registry.consent_state(h.id, org.id, events_service(trig.id)))]
        if kind == "notification":  # households' only: never the organization's own event
            self._spawn(outcome, self._notify_all(trig, org, [h for h in acting if h is not None], outcome))
            return
        for household in acting:
            # an appliance switch is a household's (never the organization's own event)
            lane = self.appliance_lanes[f"{org.id}/{household.id}"] if kind == "appliance" and household is not None \
                else self.organization_lanes[org.id]
            if not lane.admit():
                outcome.delivered(household, False)  # beyond the organization's queue: dropped, counted
                self._audit_action(org, trig, household, outcome, False, dropped=True)
                continue
            self._spawn(outcome, self._act(trig, org, household, outcome, lane))

    def _spawn(self, outcome: Outcome, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=f"action-{outcome.trigger_id}")
        outcome.tasks.add(task)
        task.add_done_callback(outcome.tasks.discard)

    # --- the statistics moment -----------------------------------------------------------------------
    def _publish_due(self) -> None:
        now = self.needs.clock()
        due = [o for o in self.released if o.statistics_at <= now]
        if not due:
            return
        self.released = [o for o in self.released if o.statistics_at > now]
        task = asyncio.create_task(self._publish(due), name="trigger-statistics")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, due: list[Outcome]) -> None:
        for outcome in due:
            unfinished = [t for t in outcome.tasks if not t.done()]
            for task in unfinished:
                task.cancel()  # counted failed by the action itself
            await asyncio.gather(*unfinished, return_exceptions=True)
            stats = self.stats.get(outcome.trigger_id)
            if stats is None or outcome.trigger_id in self._deleting:
                continue
            try:
                released = await self.needs.releases.counts(outcome.org_id, outcome.trigger_id, outcome.window,
                                                            outcome.start, outcome.per_household)
            except Exception:
                log.exception("trigger %s: statistics of window %d not released", outcome.trigger_id, outcome.start)
                released = None
            if isinstance(released, dict):
                stats.add(released)
            elif getattr(released, "error", None) == DAILY:
                stats.windows_daily += 1  # a noisy level: summed per UTC day, noised, released after it
            else:
                stats.windows_withheld += 1
            self._stats_dirty = True

    # --- actions -------------------------------------------------------------------------------------
    def _session(self, org_id: str, kind: str) -> aiohttp.ClientSession:
        """The organization's own HTTP connections: a tarpit holds no one else's. Its webhooks' are as many as its
        slots; its appliance switches' only by their lanes' slots, per household (a pool bounded for the organization
        would make one household's switch wait for another's)."""
        session = self._sessions.get((org_id, kind))
        if session is None or session.closed:
            delivery = self.needs.delivery
            slots = self.config.organization_action_slots if kind == "web" else 0
            private = delivery.allow_private_endpoints
            session = self._sessions[(org_id, kind)] = (
                actions.lan_session(private, APPLIANCE_TIMEOUT_S, slots, self.bindings) if kind == "lan"
                else actions.web_session(private, delivery.timeout_s, slots))
        return session

    async def _act(self, trig: Trigger, org: Organization, household: Household | None, outcome: Outcome,
                   lane: Lane) -> None:
        """A webhook (in the organization's lane) or an appliance switch (in its (organization, household) lane),
        admitted by the caller."""
        kind = trig.action["type"]
        ok = False
        try:
            if kind == "appliance":
                ok = household is not None and await self._switch(trig, org, household, lane)
            else:
                ok = await self._webhook(trig, org, household, outcome, lane)
        except asyncio.CancelledError:
            pass  # the statistics moment came first: failed
        except Exception:
            log.exception("trigger %s: action failed", trig.id)
        finally:
            lane.done()
        outcome.delivered(household, ok)
        self._audit_action(org, trig, household, outcome, ok)

    def _audit_action(self, org: Organization, trig: Trigger, household: Household | None, outcome: Outcome, ok: bool,
                      **details: Any) -> None:
        """An action, delivered or not, or dropped beyond the organization's queue: a household's access page
        lists its own webhook events all alike, since whether one was dropped depends on how many of the other
        households' conditions held in that window."""
        kind = trig.action["type"]
        if household is not None:
            details["household_id"] = household.id
            if trig.discloses:
                details["disclosed"] = True  # the household's disclosure log: an event about it to the organization
        self.needs.audit.record(org.id, "organization", "trigger.action", trigger_id=trig.id, action_type=kind,
                                window_start=outcome.start, delivered=ok, **details)

    async def _attempts(self, key: str, lane: Lane, send: Callable[[], Awaitable[None]]) -> bool:
        """`send()` up to ACTION_ATTEMPTS times on the delivery retry schedule, each attempt in one of the lane's
        slots and the wait before a retry outside it; True once it succeeds."""
        schedule = self.needs.delivery.retry_schedule
        for attempt in range(ACTION_ATTEMPTS):
            if attempt:
                await asyncio.sleep(min(schedule[min(attempt, len(schedule) - 1)], 30.0))
            try:
                async with lane.slot():
                    await send()
                return True
            except (notify.NotifyError, ApplianceError, aiohttp.ClientError, asyncio.TimeoutError, OSError,
                    ValueError) as err:
                self._ratelog.warning(f"send:{key}", "trigger %s: action not delivered: %s", key,
                                      f"{err.__class__.__name__}: {err}"[:200])
        return False

    async def _notify_all(self, trig: Trigger, org: Organization, households: list[Household],
                          outcome: Outcome) -> None:
        """The window's notifications: every inbox in one write, then each household's own endpoint in that
        household's lane (never behind an organization's webhooks or appliances)."""
        entries = [{"id": "ntf_" + secrets.token_hex(8), "household_id": h.id, "organization_id": org.id,
                    "organization_name": org.name, "trigger_id": trig.id,
                    "title": trig.action.get("title") or org.name, "content": trig.action["content"],
                    "at": outcome.release_at} for h in households]
        try:
            await asyncio.get_running_loop().run_in_executor(self._disk, self.households.deliver_many, entries)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("trigger %s: notifications not written to the inboxes", trig.id)
            for household in households:
                outcome.delivered(household, False)
            return
        sends = []
        for household, entry in zip(households, entries):
            endpoint = self.households.endpoints.get(household.id)
            if endpoint is None:
                outcome.delivered(household, True)  # the inbox is the delivery
                self._audit_notification(org, trig, entry, True)
                continue
            lane = self.household_lanes[household.id]
            if not lane.admit():
                outcome.delivered(household, False)
                self._audit_notification(org, trig, entry, False)
                continue
            sends.append(self._notify_endpoint(trig, org, household, entry, endpoint, outcome, lane))
        await asyncio.gather(*sends)

    async def _notify_endpoint(self, trig: Trigger, org: Organization, household: Household, entry: dict[str, Any],
                               endpoint: dict[str, Any], outcome: Outcome, lane: Lane) -> None:
        ok = False
        try:
            private = self.needs.delivery.allow_private_endpoints
            session = self._households_web
            if session is None:
                raise RuntimeError("not started")  # start() opens it before anything is dispatched
            if actions.literal_allowed(endpoint["url"], private):
                message = {"type": "notification", **{k: entry[k] for k in (
                    "id", "organization_id", "organization_name", "trigger_id", "title", "content")},
                    "at": iso(entry["at"])}
                body = json.dumps(message, separators=(",", ":")).encode()

                async def send() -> None:
                    headers = (signing.headers([endpoint["secret"]], entry["id"], int(time.time()), body)
                               if endpoint.get("secret") else {})
                    await notify.send(session, endpoint["url"], endpoint["kind"], title=entry["title"],
                                      message=entry["content"], body=body, headers=headers)
                ok = await self._attempts(trig.id, lane, send)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("trigger %s: notification failed", trig.id)
        finally:
            lane.done()
        outcome.delivered(household, ok)
        self._audit_notification(org, trig, entry, ok)

    def _audit_notification(self, org: Organization, trig: Trigger, entry: dict[str, Any], ok: bool) -> None:
        self.needs.audit.record(org.id, "organization", "trigger.action", trigger_id=trig.id,
                                action_type="notification", household_id=entry["household_id"], delivered=ok)

    async def _switch(self, trig: Trigger, org: Organization, household: Household, lane: Lane) -> bool:
        targets = self.households.targets(household.id, org.id, trig.action["appliance"])
        private = self.needs.delivery.allow_private_endpoints
        session = self._session(org.id, "lan")
        ok = bool(targets)
        for appliance in targets:
            device = driver(appliance["driver"])
            if device is None:
                ok = False
                continue
            with self.bindings.acting(appliance):  # another household's address is refused (R6-9)
                if not self.bindings.literal_allowed(appliance, private):
                    ok = False
                    continue
            send = functools.partial(self._command, session, device, appliance, trig.action["command"])
            ok = await self._attempts(trig.id, lane, send) and ok
        return ok

    async def _command(self, session: aiohttp.ClientSession, device: ApplianceDriver, appliance: dict[str, Any],
                       command: str) -> None:
        with self.bindings.acting(appliance):  # the relay, at that one address, is this household's (R8-1)
            await self.bindings.reach(session, device, appliance)
            await device.command(session, appliance["address"], appliance.get("channel"), command)

    async def _webhook(self, trig: Trigger, org: Organization, household: Household | None, outcome: Outcome,
                       lane: Lane) -> bool:
        endpoint = trig.action["endpoint"]
        private = self.needs.delivery.allow_private_endpoints
        if not actions.literal_allowed(endpoint, private):
            return False
        message = {"type": "trigger.fired", "trigger_id": trig.id, "window": trig.window,
                   "window_start": iso(outcome.start), "at": iso(outcome.release_at)}
        if household is not None:  # an event the household consented to, under its pseudonym
            if self.store.key is None:  # lost: never a new one (agent/triggers/store.py); /health says so
                return False
            message["household"] = pseudonym(self.store.key, org.id, household.id)
        body = json.dumps(message, separators=(",", ":")).encode()
        msg_id = "msg_" + secrets.token_hex(12)  # the same on every attempt: receivers deduplicate on it
        session = self._session(org.id, "web")

        secret = trig.secret
        if secret is None:  # created with every webhook action: never sent unsigned
            raise ValueError(f"trigger {trig.id}: a webhook action without its secret")

        async def send() -> None:
            headers = signing.headers([secret], msg_id, int(time.time()), body)
            async with session.post(endpoint, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(64 * 1024)
                if not 200 <= resp.status < 300:
                    raise ValueError(f"HTTP {resp.status}")
        return await self._attempts(trig.id, lane, send)


class _Late(Enum):
    LATE = "late"


_LATE: Final = _Late.LATE  # an evaluation whose window's release moment came before it could start
