"""The running agent: meters, pipeline, store and API wired together, plus the housekeeping
timers (flush, retention) and the systemd handshake (READY, WATCHDOG, STATUS)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timezone
from typing import Any, TypeVar

from aiohttp import web

from agent.aggregates import add_to_books, new_books
from agent.api import create_app
from agent.audit import LEGACY_MATCH_S, AuditLog, consent_action, unaudited
from agent.auth import HOUSEHOLD, FailureThrottle
from agent.clock import Clock
from agent.config import Config
from agent.delivery.engine import Delivery, DeliveryNeeds
from agent.faults import damage_scan_of, storage_faults
from agent.ingest import TelegramIngest, is_live
from agent.pipeline import Pipeline
from agent.registry import ConsentChange, Registry
from agent.release import Releases
from agent.store import ReadingStore
from agent.triggers import TriggerRunner
from agent.triggers.runner import TriggerNeeds
from agent import web as pages
from agent.web.signin import SignIn
from drivers.p1_reader import MeterState, P1Reader
from drivers.ratelog import RateLimitedLog
from drivers.reading import Reading

log = logging.getLogger("edge.agent")

RETENTION_EVERY_S = 600
AUDIT_RECOVERY_S = 86400  # consent changes this recent are checked for their audit entry at start
IDLE_CONNECTION_S = 15.0  # an HTTP connection without a request (or between two) is closed after this
MAX_CONNECTIONS = 512  # open HTTP connections; one more is closed at once (its client retries)
CONFIG_ERROR_FILE = "config-error.txt"  # written by image/'s edge-firstboot, in the state directory
T = TypeVar("T")


class Systemd:
    """sd_notify, when systemd started us with Type=notify; a no-op otherwise."""

    def __init__(self) -> None:
        self._notifier: Any = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify  # type: ignore[import-untyped]

            self._notifier = sdnotify.SystemdNotifier()
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_interval = int(usec) / 2e6 if usec and usec.isdigit() else None

    def notify(self, message: str) -> None:
        if self._notifier:
            self._notifier.notify(message)


class Agent:
    def __init__(self, config: Config, clock: Clock = time.time) -> None:
        self.config = config
        # The device's clock for HTTP ingest, windows and consent times (tests step it by hand): the one every
        # service is given.
        self.clock = clock
        self.started_at = time.time()
        self.store = ReadingStore(
            config.storage.path,
            flush_seconds=config.storage.flush_seconds,
            retention_raw_s=config.storage.retention_raw_s,
            retention_rollup_s=config.storage.retention_rollup_s,
        )
        self.pipeline = Pipeline(self.store)
        self.registry = Registry(config.storage.path / "registry.seg", clock=clock)
        self.audit = AuditLog(config.storage.path / "audit", clock=clock)
        self.throttle = FailureThrottle()
        self.sign_in = SignIn(clock)  # the web pages' one-time links and sessions (agent/web/)
        self.telegram_ingest = TelegramIngest()
        self.books = new_books(self._owner_since)
        self._book_list = tuple(self.books.values())
        # The one door: everything organizations observe that depends on household data (agent/release/).
        self.releases = Releases(config, self.registry, self.books, clock, config.storage.path / "releases")
        # Each service is given what it uses of the others (agent/ports.py), never the whole agent.
        self.delivery = Delivery(DeliveryNeeds(clock, self.releases, self.registry, self.audit, config.levels,
                                               config.privacy.tags), config.storage.path / "delivery", config.delivery)
        self.triggers = TriggerRunner(TriggerNeeds(clock, self.releases, self.registry, self.audit, self.pipeline,
                                                   config.triggers, config.delivery, config.levels),
                                      config.storage.path / "triggers")
        self.damage_scan = damage_scan_of(self)  # the files not opened here, read for damage after start
        # The device in a fleet (agent/fleet/): its desired state is applied here, before anything runs.
        self.fleet: FleetLink | None = None
        if config.fleet.enabled:
            from agent.fleet.link import FleetLink, FleetNeeds

            self.fleet = FleetLink(FleetNeeds(clock, self.releases, self.registry, self.health, config))
        self.pipeline.subscribe(self._into_books)
        self.readers: dict[str, P1Reader] = {}
        self.systemd = Systemd()
        self._tasks: list[asyncio.Task[None]] = []
        self._tails: set[asyncio.Future[Any]] = set()  # see shielded()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        # the consent changes made before this start, taken now: the check reads the audit log off the start path
        unchecked = self.registry.changes_since(self.clock() - AUDIT_RECOVERY_S)
        loop = asyncio.get_running_loop()

        def hand_over(reading: Reading) -> None:  # from a reader's thread
            loop.call_soon_threadsafe(self.pipeline.ingest, reading)

        for spec in self.config.meters:
            # stamped by the agent's clock: what a household's creation is compared with (R6b-4)
            reader = P1Reader(spec, hand_over, wall_clock=self.now)
            self.readers[spec.meter_id] = reader
            reader.start()
        await self.delivery.start()
        await self.triggers.start()  # says at start whether the kernel enforces the sandbox
        if self.fleet:
            await self.fleet.start()
        app = create_app(self)
        pages.add_routes(app, self)  # the device's own pages under /ui: not part of the API (nor of its OpenAPI)
        # A connection that has not sent a whole request head within this is closed (aiohttp's keep-alive timer
        # runs from the connection's start): slow-header clients cannot hold connections for minutes.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_CONNECTION_S)
        await self._runner.setup()
        assert self._runner.server is not None  # made by setup()
        _cap_connections(self._runner.server, MAX_CONNECTIONS)
        site = web.TCPSite(self._runner, self.config.listen_host, self.config.listen_port)
        await site.start()
        self.port = self._runner.addresses[0][1] if self._runner.addresses else self.config.listen_port
        self._tasks = [
            asyncio.create_task(self.releases.run_forever(), name="releases"),
            asyncio.create_task(self._every(self.config.storage.flush_seconds, self._flush), name="flush"),
            asyncio.create_task(self._every(RETENTION_EVERY_S, self._retention), name="retention"),
            asyncio.create_task(self._audit_unaudited_consents(unchecked), name="consent audit check"),
            asyncio.create_task(self.damage_scan.run(), name="damage scan"),
        ]
        if self.systemd.watchdog_interval:
            self._tasks.append(asyncio.create_task(
                self._every(self.systemd.watchdog_interval, self._watchdog), name="watchdog"))
        log.info("edge agent %r: %d meter(s), API on http://%s:%d", self.config.device_name,
                 len(self.readers), self.config.listen_host, self.port)
        self.systemd.notify("READY=1")

    async def _audit_unaudited_consents(self, changes: list[ConsentChange]) -> None:
        """A consent change (of `changes`, the last day's before this start) whose audit entry a crash kept from the
        disk (the change is written first) gets it now, marked recovered: a crash loses at most the entries being
        written. A background task: reading a day of the audit log must not delay reading the meters."""
        if not changes:
            return
        try:
            entries = await asyncio.to_thread(self.audit.entries, changes[0].at - LEGACY_MATCH_S, None, None, 10**9)
        except Exception as exc:  # an unreadable audit log must not keep the agent from reading its meters
            log.error("cannot read the audit log to check the last day's consent changes: %r", exc)
            return
        for change in unaudited(entries, changes):
            log.warning("consent change of %s at %.3f had no audit entry (the agent stopped between the two "
                        "writes): writing it now", change.household_id, change.at)
            try:
                await self.audit.record_durable(change.household_id, HOUSEHOLD, consent_action(change.granted),
                                                organization_id=change.organization_id, service=change.service,
                                                changed_at=change.at, recovered=True)
            except OSError as exc:  # kept in the audit log's queue, written when the disk takes it
                log.error("the recovered audit entry is not on disk yet: %s", exc)

    async def stop(self) -> None:
        self.systemd.notify("STOPPING=1")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(asyncio.to_thread(r.stop) for r in self.readers.values()))
        if self._runner:
            await self._runner.cleanup()
        # What cancelled requests left to finish (a consent change and its audit entry, a DP spend).
        while self._tails:
            await asyncio.gather(*list(self._tails), return_exceptions=True)
        # Every store is closed whatever fails first (a full or failing disk): each says what it could not write.
        failed = []
        for name, close in (("delivery", self.delivery.stop), ("triggers", self.triggers.stop),
                            ("fleet link", self.fleet.stop if self.fleet else _nothing),
                            ("store", self._close_store), ("registry", self.registry.aclose),
                            ("audit log", self.audit.aclose), ("release records", self.releases.flush),
                            ("release log", self._close_releases)):
            try:
                await close()
            except Exception as exc:
                failed.append(name)
                log.error("stopping: the %s could not be closed cleanly: %r", name, exc)
        if failed:
            log.error("stopped; not cleanly closed (see above): %s", ", ".join(failed))

    async def _close_store(self) -> None:
        await asyncio.sleep(0)  # readings the reader threads handed over just before they stopped
        await asyncio.to_thread(self.store.close)

    async def _close_releases(self) -> None:
        async with self.releases.writes:  # a noisy release still being written lands first
            await asyncio.to_thread(self.releases.close)

    def shielded(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run `coro` to its end even if the request awaiting it is cancelled (a client gone, the agent
        stopping): for a change and what must follow it (its audit entry), or a lock held until a write
        settles. `stop` waits for these before closing the files; a failure nobody awaits any more is
        retrieved (and logged by whoever raised it), never left as an unretrieved task exception."""
        task = asyncio.ensure_future(coro)
        self._tails.add(task)
        task.add_done_callback(_retrieved)
        task.add_done_callback(self._tails.discard)
        return asyncio.shield(task)

    # --- housekeeping ------------------------------------------------------------------------
    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        disk_errors = RateLimitedLog(log)  # a full disk fails every flush: one line a minute, not a traceback each
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except OSError as exc:  # /health says so (faults, storage); the job retries next time
                disk_errors.warning(job.__name__, "%s failed: %s", job.__name__, exc)
            except Exception:  # housekeeping must never stop the agent
                log.exception("%s failed", job.__name__)

    async def _flush(self) -> None:
        # fsync on an SD card can take a while: off the event loop. Each part whatever the one before did.
        await asyncio.to_thread(self.store.flush)
        try:
            await asyncio.to_thread(self.audit.flush)
        finally:
            await self.releases.flush()

    async def _retention(self) -> None:
        await asyncio.to_thread(self.store.apply_retention)
        await asyncio.to_thread(self.audit.apply_retention)
        await asyncio.to_thread(self.releases.log.apply_retention, self.clock())

    async def _watchdog(self) -> None:
        # Pinged from the event loop, so a hung loop stops the pings and systemd restarts us.
        self.systemd.notify("WATCHDOG=1")
        ok, body = self.health()
        reading = sum(1 for m in body["meters"].values() if m["state"] == MeterState.READING)
        self.systemd.notify(f"STATUS={reading}/{len(self.readers)} meters reading")

    # --- what /health and /metrics show ------------------------------------------------------
    def health(self, public: bool = False) -> tuple[bool, dict[str, Any]]:
        """`public`: the answer to anyone without the operator's token, about the device alone: a wired meter that
        stopped (a power cut or a pulled cable in one home) is that household's news, not the public's."""
        meters = {meter_id: reader.snapshot() for meter_id, reader in self.readers.items()}
        store = self.store.stats()
        all_reading = all(m["state"] == MeterState.READING for m in meters.values())
        storage_ok = not store.get("last_flush_error")
        config_error = self.config_error()
        faults_ok, faults = storage_faults(self)  # data directory, damaged files, outboxes (agent/faults.py)
        ok = (all_reading or public) and storage_ok and config_error is None and faults_ok
        return ok, {
            "status": "ok" if ok else "degraded",
            "device": self.config.device_name,
            "uptime_s": round(time.time() - self.started_at, 1),
            "meters": meters,
            "storage": store,
            "readings_in": self.pipeline.readings_in,
            # the release module's: counts of a noisy trigger day that came after the day was decided (dropped)
            "triggers": {**self.triggers.health(), "day_counts_dropped": self.releases.trigger_counts_dropped},
            "config_error": config_error,
            "faults": faults,
            **({"fleet": self.fleet.health()} if self.fleet else {}),
        }

    def config_error(self) -> str | None:
        """The image's boot step leaves the error of a rejected edge.toml here (the agent runs on the last good
        one): the installer must see that their edit did not take."""
        try:
            text = (self.config.storage.path / CONFIG_ERROR_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        return text.strip()[:2000] or None

    # --- readings over HTTP and aggregates ---------------------------------------------------
    def _owner_since(self, meter_id: str) -> float:
        """When the meter's current household was created (inf if it has none): the books' failure baselines."""
        household = self.registry.household_by_meter(meter_id)
        return household.created_at if household is not None else math.inf

    def _into_books(self, reading: Reading) -> None:
        add_to_books(self._book_list, reading)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def ingest_http(self, reading: Reading) -> None:
        self.pipeline.ingest(reading, live=is_live(reading))

    def last_timestamp(self, meter_id: str) -> datetime | None:
        reading = self.pipeline.latest.get(meter_id) or self.store.latest(meter_id)
        return reading.timestamp if reading else None


def _cap_connections(server: web.Server, limit: int) -> None:
    """Close a connection over `limit` as soon as it is made: many slow clients cannot take every file descriptor
    and all the memory, and those already connected keep their place."""
    admit = server.connection_made

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        admit(handler, transport)
        if len(server.connections) > limit:
            transport.close()
    setattr(server, "connection_made", connection_made)


async def _nothing() -> None:
    pass


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
