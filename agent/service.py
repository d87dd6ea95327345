"""The running agent: meters, pipeline, store and API wired together, plus the housekeeping
timers (flush, retention) and the systemd handshake (READY, WATCHDOG, STATUS)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone

from aiohttp import web

from agent.aggregates import Accumulator, Contribution, Refusal, new_books, release
from agent.api import create_app
from agent.api.common import ApiError
from agent.api.data import check_access
from agent.audit import AuditLog
from agent.auth import FailureThrottle
from agent.config import WINDOW_SECONDS, Config
from agent.delivery.engine import Delivery
from agent.ingest import LIVE_WINDOW_S, TelegramIngest, is_live
from agent.pipeline import Pipeline
from agent.privacy.budget import PrivacyBudget
from agent.registry import Registry
from agent.store import ReadingStore
from agent.triggers import TriggerRunner
from drivers.p1_reader import MeterState, P1Reader
from drivers.reading import Reading

log = logging.getLogger("edge.agent")

RETENTION_EVERY_S = 600
CONFIG_ERROR_FILE = "config-error.txt"  # written by image/'s edge-firstboot, in the state directory


class Systemd:
    """sd_notify, when systemd started us with Type=notify; a no-op otherwise."""

    def __init__(self):
        self._notifier = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_interval = int(usec) / 2e6 if usec and usec.isdigit() else None

    def notify(self, message: str) -> None:
        if self._notifier:
            self._notifier.notify(message)


class Agent:
    def __init__(self, config: Config, clock=time.time):
        self.config = config
        # The device's clock for HTTP ingest, windows and consent times (tests step it by hand).
        self.clock = clock
        self.started_at = time.time()
        self.store = ReadingStore(
            config.storage.path,
            flush_seconds=config.storage.flush_seconds,
            retention_raw_s=config.storage.retention_raw_s,
            retention_rollup_s=config.storage.retention_rollup_s,
        )
        self.pipeline = Pipeline(self.store)
        self.registry = Registry(config.storage.path / "registry.seg", clock=lambda: self.clock())
        self.audit = AuditLog(config.storage.path / "audit", clock=lambda: self.clock())
        self.budget = PrivacyBudget(config.storage.path / "privacy", clock=lambda: self.clock())
        self.throttle = FailureThrottle()
        self.telegram_ingest = TelegramIngest()
        # A window closes only once no consent change it depends on is still being written.
        self.books = new_books(self.registry.pending_since)
        self.delivery = Delivery(self, config.storage.path / "delivery", config.delivery)
        self.triggers = TriggerRunner(self, config.storage.path / "triggers")
        self.pipeline.subscribe(self._into_books)
        self.readers: dict[str, P1Reader] = {}
        self.systemd = Systemd()
        self._tasks: list[asyncio.Task] = []
        self._tails: set[asyncio.Task] = set()  # see shielded()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for spec in self.config.meters:
            reader = P1Reader(spec, lambda r: loop.call_soon_threadsafe(self.pipeline.ingest, r))
            self.readers[spec.meter_id] = reader
            reader.start()
        await self.delivery.start()
        await self.triggers.start()  # says at start whether the kernel enforces the sandbox
        self._runner = web.AppRunner(create_app(self), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen_host, self.config.listen_port)
        await site.start()
        self.port = self._runner.addresses[0][1] if self._runner.addresses else self.config.listen_port
        self._tasks = [
            asyncio.create_task(self._every(self.config.storage.flush_seconds, self._flush), name="flush"),
            asyncio.create_task(self._every(RETENTION_EVERY_S, self._retention), name="retention"),
        ]
        if self.systemd.watchdog_interval:
            self._tasks.append(asyncio.create_task(
                self._every(self.systemd.watchdog_interval, self._watchdog), name="watchdog"))
        log.info("edge agent %r: %d meter(s), API on http://%s:%d", self.config.device_name,
                 len(self.readers), self.config.listen_host, self.port)
        self.systemd.notify("READY=1")

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
        await self.delivery.stop()
        await self.triggers.stop()
        # Readings the reader threads handed over just before they stopped.
        await asyncio.sleep(0)
        await asyncio.to_thread(self.store.close)
        await self.registry.aclose()  # after the writes still running in worker threads
        await self.audit.aclose()  # writes what is still queued (a clean stop loses no entry)
        async with self.budget.writes:  # a spend still being written lands first
            await asyncio.to_thread(self.budget.close)

    def shielded(self, coro) -> asyncio.Future:
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
    async def _every(self, seconds: float, job) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:  # housekeeping must never stop the agent
                log.exception("%s failed", job.__name__)

    async def _flush(self) -> None:
        # fsync on an SD card can take a while: off the event loop.
        await asyncio.to_thread(self.store.flush)
        await asyncio.to_thread(self.audit.flush)

    async def _retention(self) -> None:
        await asyncio.to_thread(self.store.apply_retention)
        await asyncio.to_thread(self.audit.apply_retention)

    async def _watchdog(self) -> None:
        # Pinged from the event loop, so a hung loop stops the pings and systemd restarts us.
        self.systemd.notify("WATCHDOG=1")
        ok, body = self.health()
        reading = sum(1 for m in body["meters"].values() if m["state"] == MeterState.READING)
        self.systemd.notify(f"STATUS={reading}/{len(self.readers)} meters reading")

    # --- what /health and /metrics show ------------------------------------------------------
    def health(self) -> tuple[bool, dict]:
        meters = {meter_id: reader.snapshot() for meter_id, reader in self.readers.items()}
        store = self.store.stats()
        all_reading = all(m["state"] == MeterState.READING for m in meters.values())
        storage_ok = not store.get("last_flush_error")
        config_error = self.config_error()
        ok = all_reading and storage_ok and config_error is None
        return ok, {
            "status": "ok" if ok else "degraded",
            "device": self.config.device_name,
            "uptime_s": round(time.time() - self.started_at, 1),
            "meters": meters,
            "storage": store,
            "readings_in": self.pipeline.readings_in,
            "triggers": self.triggers.health(),
            "config_error": config_error,
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
    def _into_books(self, reading: Reading) -> None:
        for book in self.books.values():
            book.add(reading)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def ingest_http(self, reading: Reading) -> None:
        self.pipeline.ingest(reading, live=is_live(reading))

    def last_timestamp(self, meter_id: str) -> datetime | None:
        reading = self.pipeline.latest.get(meter_id) or self.store.latest(meter_id)
        return reading.timestamp if reading else None

    def known_tags(self) -> set[str]:
        return self.books["1m"].tags() | self.books["15m"].tags()

    def access_refusal(self, org_id: str, window: str, tag: str | None) -> str | None:
        """Why this organization may not (any longer) have this window's exact aggregate, or None."""
        org = self.registry.organizations.get(org_id)
        level = self.config.levels.get(org.level) if org else None
        if level is None:
            return "the organization or its level no longer exists"
        if level.dp.only:
            return f"level {level.name!r} receives only differentially private aggregates"
        try:
            check_access(level, org, window, tag)
        except ApiError as err:
            return err.detail
        return None

    def settled_until(self) -> float:
        """Now, or the time of a consent change still being written if earlier: windows (and periods) that end
        after it are not closed yet (WindowBook.last_closed does the same for the live windows)."""
        now = self.clock()
        held = self.registry.pending_since()
        return now if held is None or held >= now else held

    def release_window(self, org_id: str, window: str, start: int, contributions: dict[str, Contribution],
                       tag: str | None) -> dict | Refusal:
        """One window for one organization: its cohort fixed by consent at the window's start and end."""
        end = start + WINDOW_SECONDS[window]
        held = self.registry.pending_since()
        if held is not None and end > held:
            # Its cohort depends on a consent change still being written (a history query reaching up to now;
            # the live windows are held back by WindowBook.last_closed): not released until it settles.
            return Refusal("consent_pending", "a consent change this window depends on is still being written; "
                           "ask again in a moment", 0)
        cohort = self.registry.cohort(org_id, "aggregates", start, end)
        meters = {self.registry.meter_of(h) for h in cohort}
        privacy = self.config.privacy
        return release(contributions, meters, window=window, start=start, k_min=privacy.k_min,
                       max_share=privacy.max_share, tag=tag)

    def consenting_meters(self, org_id: str, service: str = "aggregates") -> list[tuple[str, bool]]:
        """(meter_id, posts over HTTP) of every household that ever consented, deleted ones included (their
        past windows must keep their answers). Call on the event loop: the registry is not thread-safe."""
        return [(h.meter_id, h.source == "http") for h in self.registry.all_households()
                if self.registry.ever_consented(h.id, org_id, service)]

    def history_contributions(self, meters: list[tuple[str, bool]], window: str, starts: list[int],
                              tag: str | None) -> dict[int, dict[str, Contribution]]:
        """Past windows from the store: raw readings for 1 s windows and tags, rollups otherwise. Runs in a
        worker thread. Raw readings a household posted late are left out, as the live windows left them out."""
        width = WINDOW_SECONDS[window]
        since, until = starts[0], starts[-1] + width
        books: dict[int, dict[str, Accumulator]] = {}
        use_raw = window == "1s" or tag is not None
        resolution = "raw" if use_raw else ("1m" if window == "1m" else "15m")
        for meter, over_http in meters:
            for row in self.store.readings(meter, since=since, until=until, resolution=resolution, limit=10**6):
                if use_raw and over_http and _seconds(row["received_at"]) - _seconds(row["timestamp"]) > LIVE_WINDOW_S:
                    continue
                moment = _seconds(row["received_at"] if use_raw else row["start"])
                acc = books.setdefault(int(moment // width) * width, {}).setdefault(meter, Accumulator())
                acc.add_values(row.get("power_import_w"), row.get("power_export_w"), row.get("channels"),
                               1 if use_raw else row.get("count", 1))
        return {start: {m: c for m, acc in window_accs.items() if (c := acc.result()) is not None}
                for start, window_accs in books.items()}


def _seconds(stamp) -> float:
    if isinstance(stamp, (int, float)):
        return float(stamp)
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _retrieved(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
