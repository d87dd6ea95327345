"""The privacy budget: per organization, per UTC day, persisted, composed by OpenDP's accountant.

Every DP release spends: its mechanisms (one noisy sum each) are written, fsync'd, to the day's
segment log before the answer leaves the device. To decide whether a new release fits, the day's
spends so far and the new ones are submitted, in order, to a fresh OpenDP privacy filter
(`make_privacy_filter` over `make_fully_adaptive_composition`, budget = the level's `epsilon_per_day`);
the filter composes them and refuses the first one that would exceed the budget. The filter only
accounts: it runs each measurement on an empty dataset and the outputs are thrown away; the real
release is the same measurement run afterwards on the window's data. Replaying from the log is what
makes a restart keep the budget: the accountant after a restart is the accountant before it.

A window already released to an organization is answered again from the log at no cost (it is
the same noisy answer: asking twice gives nothing to average away).

From the event loop, `record_async` writes in a worker thread (one write at a time, in the order asked) and
returns once the spend is durable; the caller holds one lock per organization from `cached`/`spend` to the end
of `record_async`, so two requests cannot both spend the last of a budget nor both pay for one window.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from agent.config import DifferentialPrivacy
from agent.offloop import serially
from agent.privacy import dp
from agent.store.segment import SegmentDB, ensure_dir
from drivers.reading import iso

log = logging.getLogger("edge.privacy")

RETENTION_DAYS = 35


def day_of(moment: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(moment))


def renews_at(moment: float) -> float:
    return (int(moment) // 86400 + 1) * 86400.0


class BudgetExceeded(Exception):
    def __init__(self, detail: str, renews: float, status: dict):
        super().__init__(detail)
        self.detail, self.renews_at, self.status = detail, renews, status
        self.windows = 0  # how many windows the refused request would have released (for the audit log)


@dataclass(frozen=True)
class _Budget:
    measure: str  # "pure" (epsilon) or "zcdp" (rho)
    limit: float  # epsilon_per_day, or the rho whose (epsilon, delta) is (epsilon_per_day, delta)


def _budget_of(cfg: DifferentialPrivacy) -> _Budget:
    if cfg.noise == "laplace":
        return _Budget("pure", cfg.epsilon_per_day)
    return _Budget("zcdp", _rho_for(cfg.epsilon_per_day, cfg.delta))


def _rho_for(epsilon: float, delta: float) -> float:
    """The largest rho that OpenDP's zCDP -> (epsilon, delta) conversion keeps within (epsilon, delta)."""
    mechanism = dp.calibrate("gaussian", 1, epsilon, delta)
    return mechanism.loss()


def _epsilon_of_rho(rho: float, delta: float) -> float:
    if rho <= 0:
        return 0.0
    pd = dp._dp
    sigma = 1 / (2 * rho) ** 0.5  # a sensitivity-1 Gaussian with exactly this rho
    measurement = dp._measurement("gaussian", 1, sigma)
    return float(pd.c.make_fix_delta(pd.c.make_zCDP_to_approxDP(measurement), delta).map(1)[0])


class PrivacyBudget:
    def __init__(self, directory: str | Path, clock=time.time, retention_days: int = RETENTION_DAYS):
        self.directory = Path(directory)
        self.clock = clock
        self.retention_days = retention_days
        ensure_dir(self.directory)
        self._spends: dict[tuple[str, str], list[dp.Mechanism]] = {}
        self._cache: dict[tuple[str, str], dict] = {}
        self._filters: dict[str, _Filter] = {}
        self._db: SegmentDB | None = None
        self._db_day: str | None = None
        self._disk_lock = threading.Lock()  # the segment file: a worker thread's write, or close()
        self.writes = asyncio.Lock()  # the event loop's records, one at a time (see record_async)
        self._load()

    # --- persistence ---------------------------------------------------------------------------
    def _load(self) -> None:
        cutoff = self.clock() - self.retention_days * 86400
        for path in sorted(self.directory.glob("*.seg")):
            try:
                day_start = calendar.timegm(time.strptime(path.stem, "%Y%m%d"))
            except ValueError:
                continue
            if day_start + 86400 < cutoff:
                path.unlink(missing_ok=True)
                continue
            db = SegmentDB(str(path))
            try:
                for doc in db.table("spends").all():
                    mechanisms = [dp.Mechanism.from_json(m) for m in doc["mechanisms"]]
                    self._spends.setdefault((doc["org"], doc["day"]), []).extend(mechanisms)
                    for key, body in doc.get("releases", {}).items():
                        self._cache[(doc["org"], key)] = body
            finally:
                db.close()

    def _write(self, doc: dict) -> None:
        with self._disk_lock:
            day = doc["day"]
            if day != self._db_day or self._db is None:
                if self._db:
                    self._db.close()
                self._db, self._db_day = SegmentDB(str(self.directory / f"{day}.seg")), day
            self._db.table("spends").insert(doc)

    def close(self) -> None:
        with self._disk_lock:
            if self._db:
                self._db.close()
                self._db = None

    # --- the accountant ------------------------------------------------------------------------
    def cached(self, org_id: str, key: str) -> dict | None:
        return self._cache.get((org_id, key))

    def _filter(self, org_id: str, cfg: DifferentialPrivacy) -> _Filter:
        """Today's OpenDP filter of this organization: built on first use by replaying the persisted
        spends in order (so a restart changes nothing), rebuilt if the operator changed the budget."""
        day = day_of(self.clock())
        budget = _budget_of(cfg)
        live = self._filters.get(org_id)
        if live is None or live.day != day or live.budget != budget:
            live = _Filter(day, budget)
            for mechanism in self._spends.get((org_id, day), []):
                live.submit(mechanism)
            self._filters[org_id] = live
        return live

    def status(self, org_id: str, cfg: DifferentialPrivacy) -> dict:
        now = self.clock()
        live = self._filter(org_id, cfg)
        spent = live.spent()
        budget = live.budget
        epsilon_spent = spent if budget.measure == "pure" else _epsilon_of_rho(spent, cfg.delta)
        out = {
            "epsilon_per_day": cfg.epsilon_per_day,
            "epsilon_spent": round(min(epsilon_spent, cfg.epsilon_per_day), 6),
            "epsilon_remaining": round(max(0.0, cfg.epsilon_per_day - epsilon_spent), 6),
            "unit": dp.UNIT,
            "composition": "OpenDP privacy filter over fully adaptive composition"
                           + (" (pure DP)" if budget.measure == "pure" else " (zCDP, reported at delta)"),
            "renews_at": iso(datetime.fromtimestamp(renews_at(now), timezone.utc)),
        }
        if budget.measure == "zcdp":
            out.update(delta=cfg.delta, rho_per_day=budget.limit, rho_spent=round(spent, 9))
        return out

    def spend(self, org_id: str, cfg: DifferentialPrivacy, mechanisms: list[dp.Mechanism]) -> None:
        """Charge these spends to today's filter, or raise BudgetExceeded and charge nothing.

        OpenDP's filter refuses a query that would exceed the budget and then stays exhausted, so the
        sum is checked first (composition of these measures adds up epsilons, or rhos) and only a
        request that fits is submitted; the filter's own check is the one that counts."""
        live = self._filter(org_id, cfg)
        losses = [live.loss_of(m) for m in mechanisms]
        fits = not live.exhausted and live.spent() + sum(losses) <= live.budget.limit
        if fits:
            fits = all(live.submit(m) for m in mechanisms)
        if not fits:
            now = self.clock()
            status = self.status(org_id, cfg)
            cost = sum(m.epsilon(cfg.delta) for m in mechanisms)
            raise BudgetExceeded(
                f"this query needs epsilon {cost:g} but {status['epsilon_remaining']:g} of today's "
                f"{cfg.epsilon_per_day:g} is left for this organization; the budget renews at "
                f"{status['renews_at']}", renews_at(now), status)

    def record(self, org_id: str, mechanisms: list[dp.Mechanism], releases: dict[str, dict]) -> None:
        """Persist the spends and the answers (fsync'd) before they are sent. In place: start-up, tests."""
        doc = self._doc(org_id, mechanisms, releases)
        self._write(doc)
        self._remember(org_id, doc["day"], mechanisms, releases)

    async def record_async(self, org_id: str, mechanisms: list[dp.Mechanism], releases: dict[str, dict]) -> None:
        """`record` from the event loop: the append and its fsync in a worker thread, after every record asked
        for before it; returns once durable (the answer may then be sent). If the disk refuses, the charge
        made by `spend` is dropped again (the filter is rebuilt from what is on disk) and the error raised:
        nothing was released. Call it under the organization's lock, as `spend`."""
        doc = self._doc(org_id, mechanisms, releases)
        try:
            await serially(self.writes, self._write, doc,
                           then=lambda: self._remember(org_id, doc["day"], mechanisms, releases))
        except asyncio.CancelledError:
            raise  # the write goes on (shielded) and is remembered when it lands
        except Exception:
            self._filters.pop(org_id, None)
            raise

    def _doc(self, org_id: str, mechanisms: list[dp.Mechanism], releases: dict[str, dict]) -> dict:
        now = self.clock()
        return {"org": org_id, "day": day_of(now), "at": now, "mechanisms": [m.to_json() for m in mechanisms],
                "releases": releases}

    def _remember(self, org_id: str, day: str, mechanisms: list[dp.Mechanism], releases: dict[str, dict]) -> None:
        self._spends.setdefault((org_id, day), []).extend(mechanisms)
        for key, body in releases.items():
            self._cache[(org_id, key)] = body


class _Filter:
    """One organization's OpenDP privacy filter for one day. It accounts only: each measurement is
    run on an empty dataset and its output dropped; the real release runs the same measurement."""

    def __init__(self, day: str, budget: _Budget):
        pd = dp._dp
        self.day, self.budget = day, budget
        self.exhausted = False
        space = pd.vector_domain(pd.atom_domain(T="i64")), pd.symmetric_distance()
        measure = pd.max_divergence() if budget.measure == "pure" else pd.zero_concentrated_divergence()
        odometer = pd.c.make_fully_adaptive_composition(*space, measure)
        self.queryable = pd.c.make_privacy_filter(odometer, d_in=dp.D_IN, d_out=budget.limit)([])

    def _measurement(self, mechanism: dp.Mechanism):
        measurement = mechanism.measurement()
        if mechanism.measure == self.budget.measure:
            return measurement
        if self.budget.measure == "zcdp":
            return dp._dp.c.make_pureDP_to_zCDP(measurement)
        return None  # a zCDP spend cannot be counted in a pure budget: treat the day as spent

    def loss_of(self, mechanism: dp.Mechanism) -> float:
        measurement = self._measurement(mechanism)
        return float(measurement.map(dp.D_IN)) if measurement is not None else float("inf")

    def submit(self, mechanism: dp.Mechanism) -> bool:
        measurement = self._measurement(mechanism)
        if measurement is None or self.exhausted:
            self.exhausted = True
            return False
        try:
            self.queryable(measurement)
        except dp._dp.OpenDPException as err:
            log.warning("privacy filter refused a spend: %s", str(err).strip()[:200])
            self.exhausted = True
            return False
        return True

    def spent(self) -> float:
        if self.exhausted:
            return self.budget.limit
        return float(self.queryable.privacy_loss(dp.D_IN))
