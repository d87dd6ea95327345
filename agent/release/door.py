"""The one door: everything an organization can observe that depends on household data is decided here, once,
recorded, and answered from the record.

- Windows are decided when they have settled: ended (on the device's clock, by `received_at`, so a reading sent
  late lands in a later window, never in one already decided) and no consent change they depend on still being
  written. Nothing is decided for a window that began before the agent started (its readings are not all here).
- Each level releases at one finest width; its wider windows are derived from the released fine ones
  (`records.derive`), never computed again over another cohort.
- Exact levels (the custodian): the cohort is the households consenting throughout the window that sent data in
  it (a short gap held over); at least k_min of them not related to the organization; and the audit
  (`audit.admissible_if_one_known`) refuses any release that, with the exact sums of the same quantity released
  to any organization for this window or in the audit period before it, would isolate a household, even for an
  attacker who knows any one household's value. No value-dependent rule (dominance was a threshold oracle).
- Noisy levels: the cohort is every household consenting throughout the window (consent only; a silent one, or
  one whose ledger cannot bear the window, counts 0 and is not charged); k_min of them; OpenDP noise with the
  level's fixed clamp; one noisy answer per (level, window, quantity, cohort) shared by every organization it
  applies to; the loss charged to every member's ledger and the record fsync'd before anyone can see it.
- Grid quantities (agent/release/grid.py: voltage bands per phase, long power failures) are a part of a main
  release, each over the members that report it: exact levels audit them with the count audit
  (`audit.admissible_counts`), noisy levels noise them and charge `grid_rho` more, only where the operator
  enabled them. 15-minute and hourly bodies carry the month's peak of what the organization was released.
- The API, delivery and triggers only ask: `answer`, `history`, `last_settled`, `listen`, `counts`, `once`.
"""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import WINDOW_SECONDS, Config, Level
from agent.errors import DomainError
from agent.parameters import permitted
from agent.privacy import dp
from agent.release import audit, records
from agent.release import grid as grid_quantities
from agent.release.ledger import DAY, Ledger, epsilon_of_rho
from agent.release.log import ReleaseLog, day_name
from agent.release.members import Members
from agent.release.records import NOT_RELEASED, TRIGGER_COUNTS, Json, Refusal
from agent.release.records import RefusalCode as Why
from agent.store.durable import Durable as DurableWrites
from drivers.reading import iso

if TYPE_CHECKING:
    from agent.aggregates import Contribution, WindowBook
    from agent.registry import Organization, Registry

RecordKey = tuple[str, int, int, str]  # (organization, width, start, tag or "")
Staged = dict[RecordKey, Json]  # a pass's record docs, in decision order
Durable = dict[str, list[Json]]  # docs to write, per log file
Contributions = dict[str, "Contribution"]  # a window's, per meter

log = logging.getLogger("edge.release")

SETTLE_GRACE_S = 0.05  # a reading whose request is still being handled as its window ends
WIDTH_NAME = {seconds: name for name, seconds in WINDOW_SECONDS.items()}
TAG_GRID_S = 60  # channel tags are never released finer than a minute
HOLD_S = 300  # a household silent this long (or two windows, if longer) leaves the cohort
# Recent records kept in memory per width (older ones are read from the log's day files).
KEEP_S = {1: 3600, 60: 6 * 3600, 900: 2 * 86400, 3600: 2 * 86400}
RESTART_MARGIN_S = 300  # exact records a kill -9 may have lost: released up to this long after the last on disk
TRIGGER_DAY_S = 86400  # noisy levels release trigger statistics per UTC day
# a noisy trigger day is released this long after its end plus the runner's two delays (when its last window's
# counts are due): room for the runner's statistics pass to run
TRIGGER_DAY_MARGIN_S = 60
PEAK_WIDTHS = (900, 3600)  # released bodies of these widths carry the month's peak so far (capacity tariff)
PEAK_PARAMETER = "neighborhood_peak_demand_month"


@dataclass(frozen=True)
class Grid:
    """Releases decided together: one width, one kind, the organizations whose levels release on it."""

    width: int
    noisy: bool
    tags: bool  # the exact tag grid (a minute or the exact grid, whichever is wider)


class ReleaseCode(Enum):
    LOST = "release_lost"


class ReleaseLost(DomainError[ReleaseCode], ValueError):
    """A one-off release whose record was lost: refused for good."""


def cohort_hash(members: frozenset[str]) -> str:
    return hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()[:20]


class Releases:
    def __init__(self, config: Config, registry: Registry, books: dict[str, WindowBook], clock: Callable[[], float],
                 directory: str | Path):
        self.config = config
        self.registry = registry
        self.books = books
        self.clock = clock
        privacy = config.privacy
        # the ledger's horizon_days + 1 days (agent/release/ledger.py), and yesterday's (trigger days are charged
        # to the day before)
        keep_days = max(privacy.horizon_days + 2, int(config.storage.retention_rollup_s // 86400) + 1)
        self.log = ReleaseLog(directory, keep_days)
        self.ledger = Ledger(privacy.horizon_days, privacy.cap_rho)
        self.writes = DurableWrites("release log", self.log.directory, log, what="the release")
        self._settling = asyncio.Lock()
        self._records: dict[RecordKey, Json] = {}
        self._cursor: dict[Grid, int] = {}
        self._decided: dict[int, int] = {}  # width -> start of the newest window of that width decided
        self._listeners: list[Callable[[str, int], None]] = []
        self._once_files: dict[str, str] = {}  # memo key -> its day file (the memos on record; bodies on disk only)
        self._lost_memos: set[str] = set()  # see _note_lost_memos
        self._memos_unknown_until = 0.0
        self._once_running: dict[str, asyncio.Future[Json]] = {}
        self._pending: dict[str, list[Json]] = {}  # exact records not yet on disk (flushed with the store)
        self._cohorts_written: set[tuple[str, str]] = set()  # (day file, cohort digest) on disk
        self._pass = _PassUndo()
        self._trigger_days: dict[tuple[str, str, int], dict[str, dict[str, int]]] = {}
        self._trigger_released: dict[tuple[str, str], list[Json]] = {}
        # the days decided (released or not): counts coming later are dropped, never a second release of the day;
        # the released ones from the release log after a restart
        self._trigger_done: set[tuple[str, str, int]] = set()
        self._trigger_done_from = 0.0  # days before this are dropped too (older than the release log keeps)
        self.trigger_counts_dropped = 0
        self._keep_days = keep_days
        self._forgot_at = float("-inf")
        self._last_seen: dict[Grid, dict[str, tuple[int, Contribution]]] = {}
        # exact cohorts released per tag (or grid quantity) in the last audit period, whatever the width: under the
        # audit's assumption that nobody's power changes within the period, a minute's mean over a cohort and a
        # second's are the same linear form, so two exact grids (levels of different finest widths) are audited
        # against each other: {members: end of the newest window released over them}
        self._audited: dict[str, dict[frozenset[str], int]] = {}
        # per (organization, width): (UTC month start, highest consumption_w released to it, that window's start)
        self._peaks: dict[tuple[str, int], tuple[int, float, int]] = {}
        self._cohort_cache: dict[str, tuple[tuple[Any, ...], int, frozenset[str]]] = {}
        self._meter_cache: tuple[tuple[Any, ...], dict[str, str]] = ((), {})
        self._started_at = clock()
        self._audit_blind_until = float("-inf")  # see _load
        decided_until = self._load()
        # the households' pages only
        self.members = Members(Path(directory) / "members", keep_days, clock, decided_until)

    # --- start-up ------------------------------------------------------------------------------
    def _load(self) -> dict[tuple[str, str], int]:
        """Returns the end of the last window on record of each (organization, tag) stream: where the device stopped
        deciding it (up to the exact records a kill -9 lost before they were flushed)."""
        now = self.clock()
        cohorts: dict[str, frozenset[str]] = {}
        last_exact = None
        decided_until: dict[tuple[str, str], int] = {}
        for doc in self.log.load(now, fine_since=now - KEEP_S[1]):
            kind = doc.get("t")
            if kind == "c":
                cohorts[doc["h"]] = frozenset(doc["m"])
            elif kind in ("r", "n"):
                if kind == "n" and doc.get("w") == TRIGGER_DAY_S and "i" in doc:
                    self._trigger_done.add((doc["o"], doc["i"], doc["s"]))
                if "p" in doc and doc.get("c") in cohorts:
                    self.ledger.charge(cohorts[doc["c"]], doc["p"], doc["s"])
                if kind == "r" and "b" in doc and not doc.get("noisy"):
                    end = doc["s"] + doc["w"]  # the audit compares windows by where they end (_decide_exact)
                    last_exact = end if last_exact is None else max(last_exact, end)
                if kind == "r" and "b" in doc and doc["g"] == "" and doc["w"] in PEAK_WIDTHS:
                    self._note_peak(doc["o"], doc["w"], doc["s"], doc["b"]["consumption_w"], month_of(now))
                if kind == "r":
                    stream = (doc["o"], doc["g"])
                    decided_until[stream] = max(decided_until.get(stream, 0), doc["s"] + doc["w"])
                if kind == "r" and doc["s"] >= now - KEEP_S.get(doc["w"], 0):
                    self._records[(doc["o"], doc["w"], doc["s"], doc["g"])] = doc
            elif kind == "o":
                self._once_files[doc["k"]] = ReleaseLog.file_of(doc)
        self.ledger.forget_before(now - DAY)  # a release may be charged to yesterday (trigger days): keep its horizon
        self._trigger_done_from = now - self._keep_days * DAY
        self._note_lost_memos()
        # The audit's memory of the cohorts released in the last audit period (and the hold-over of silent
        # households) is not on disk, and exact records not yet flushed are lost by a kill -9: after a restart that
        # follows recent exact releases, no exact window is released for one audit period, or the first window
        # after it minus the last one before it would read a household that revoked or went silent meanwhile.
        period = self.config.privacy.audit_period_s
        if last_exact is not None and last_exact >= now - period - RESTART_MARGIN_S:
            self._audit_blind_until = now + period
        return decided_until

    def _note_lost_memos(self) -> None:
        """Memos lost beyond repair (agent/release/log.py, "Memos"): refused for good, never computed again."""
        index = self.log.memo_index()
        self._lost_memos = {k for k, name in index.files.items() if k not in self._once_files and self.log.kept(name)}
        unknown = [name for name in self.log.lost_files
                   if index.damaged or index.since is None or name < index.since]
        self._memos_unknown_until = max((self.log.kept_until(name) for name in unknown), default=0.0)
        if self._lost_memos or unknown:
            log.error("release log: %d one-off release(s) lost beyond repair%s; they are refused, never computed "
                      "again", len(self._lost_memos), f", and those of {', '.join(sorted(unknown))} are unknown: "
                      f"every one not on record is refused until {iso(self._memos_unknown_until)}" if unknown else "")

    def memos_lost(self) -> Json | None:
        """For /health: the one-off releases refused because their record was lost, or None."""
        unknown = self.clock() < self._memos_unknown_until
        if not self._lost_memos and not unknown:
            return None
        return {"keys": sorted(self._lost_memos),
                "every_new_one_refused_until": iso(self._memos_unknown_until) if unknown else None}

    def close(self) -> None:
        self.log.close()
        self.members.close()

    # --- what the others ask -------------------------------------------------------------------
    def listen(self, callback: Callable[[str, int], None]) -> None:
        """`callback(window, start)` on the event loop once that window is decided for every organization."""
        self._listeners.append(callback)

    def last_settled(self, window: str) -> int | None:
        return self._decided.get(WINDOW_SECONDS[window])

    def answer(self, org_id: str, window: str, start: int, tag: str | None = None) -> Json | Refusal:
        """The recorded answer for one organization, from memory (recent windows)."""
        width = WINDOW_SECONDS[window]
        doc = self._records.get((org_id, width, start, tag or ""))
        if doc is None:
            if start < math.ceil(self._started_at / width) * width:
                return NOT_RELEASED  # began before this process: on disk (history) or never decided
            decided = self._decided.get(width)
            if decided is None or start > decided:
                return Refusal(Why.NOT_SETTLED, "this window has not ended or is not decided yet; ask again "
                               "after it has")
            return NOT_RELEASED
        return _from_doc(doc)

    async def history(self, org_id: str, window: str, starts: list[int], tag: str | None) -> dict[int, Json | Refusal]:
        """Recorded answers for many windows: memory first, then the day files (in a worker thread)."""
        width = WINDOW_SECONDS[window]
        out: dict[int, Json | Refusal] = {}
        missing: dict[str, list[int]] = {}
        for start in starts:
            doc = self._records.get((org_id, width, start, tag or ""))
            if doc is not None:
                out[start] = _from_doc(doc)
            else:
                missing.setdefault(ReleaseLog.file_of({"t": "r", "w": width, "s": start}), []).append(start)
        for name, wanted in missing.items():
            starts_wanted = frozenset(wanted)

            def keep(d: Json) -> bool:  # only the asked records are held: a day of 1 s records is ~1 GB decoded
                return (d.get("t") == "r" and d["o"] == org_id and d["w"] == width and d["g"] == (tag or "")
                        and d["s"] in starts_wanted)
            docs = await asyncio.to_thread(self.log.read, name, keep)
            if width == 1:  # a noisy level's 1 s records sit with its charges in the day's main file
                docs += await asyncio.to_thread(self.log.read, day_name(wanted[0]), keep)
            found = {d["s"]: d for d in docs}
            for start in wanted:
                doc = found.get(start)
                if doc is not None:
                    out[start] = _from_doc(doc)
                else:
                    out[start] = self.answer(org_id, window, start, tag)
        return out

    def ledger_of(self, household_id: str) -> Json:
        return self.ledger.of(household_id, self.clock(), self._delta())

    def _delta(self) -> float:
        return min((lv.dp.delta for lv in self.config.levels.values() if lv.noisy), default=1e-7)

    async def once(self, kind: str, key: str, compute: Callable[[], Json]) -> Json:
        """A release computed when first asked (`compute` in a worker thread), recorded durably before it is
        returned; every later call with the same key returns the recorded body, read from the log (bodies are
        not held in memory: every day of anonymized rows asked in the retention would be)."""
        memo = f"{kind}|{key}"
        body = await self._on_record(memo)
        if body is not None:
            return body
        if memo in self._lost_memos or self.clock() < self._memos_unknown_until:
            # computed again, it would be a second draw (or over other households) of what was released once
            raise _lost()
        running = self._once_running.get(memo)
        if running is None:
            running = self._once_running[memo] = asyncio.ensure_future(self._compute_once(memo, compute))
            running.add_done_callback(lambda _: self._once_running.pop(memo, None))
        return await asyncio.shield(running)

    async def recorded(self, kind: str, key: str) -> Json:
        """A one-off release `once` recorded, read back again (an answer written a day at a time after it was
        decided); ReleaseLost if it is no longer on record. Never computes."""
        body = await self._on_record(f"{kind}|{key}")
        if body is None:
            raise _lost()
        return body

    async def _on_record(self, memo: str) -> Json | None:
        """The recorded body of a memo (in a worker thread), or None if there is none to answer from."""
        name = self._once_files.get(memo)
        if name is None or memo in self._lost_memos:
            return None
        body: Json | None = await asyncio.to_thread(self.log.read_memo, memo)
        if body is None:
            if self.log.kept(name):  # damaged beyond repair since the start read it
                log.error("release log: the one-off release %s was lost beyond repair; it is refused, never "
                          "computed again", memo)
                self._lost_memos.add(memo)
            else:  # its day file left the retention: as after a restart (_note_lost_memos), no longer on record
                self._once_files.pop(memo, None)
        return body

    async def _compute_once(self, memo: str, compute: Callable[[], Json]) -> Json:
        body = await asyncio.to_thread(compute)
        doc = {"t": "o", "k": memo, "b": body, "at": self.clock()}
        await self.writes.write(self.log.write_memo, doc, dict(self._once_files),
                                then=lambda: self._once_files.update({memo: ReleaseLog.file_of(doc)}))
        return body

    def trigger_window(self, org_id: str, trigger_id: str, start: int) -> None:
        """A trigger's window began to be evaluated: at a noisy level its UTC day will be released whatever its
        evaluation does (late under load, evaluating nobody), so a day's existence says nothing of anyone."""
        level = self._level_of(org_id)
        if level is not None and level.noisy:
            self._trigger_day(org_id, trigger_id, start)

    def _trigger_day(self, org_id: str, trigger_id: str, start: int) -> dict[str, dict[str, int]] | None:
        """The noisy day bucket of the UTC day `start` is in: {household id: {count: 0 or 1}}; None (and counted,
        logged) once that day was decided: it is released once, never again with what came late."""
        key = (org_id, trigger_id, int(start // TRIGGER_DAY_S) * TRIGGER_DAY_S)
        if key in self._trigger_done or key[2] < self._trigger_done_from:
            self.trigger_counts_dropped += 1
            log.warning("trigger %s: window %d came after its UTC day was decided (busy agent?); its counts are "
                        "dropped", trigger_id, start)
            return None
        return self._trigger_days.setdefault(key, {})

    async def counts(self, org_id: str, trigger_id: str, window: str, start: int,
                     per_household: dict[str, dict[str, int]]) -> Json | Refusal:
        """A trigger's statistics for one window: {household id: {field: 0 or 1}} (e.g. evaluated, fired,
        errors). Exact levels: the sums, released when at least k_min households not related to the organization
        are behind them. Noisy levels: nothing per window; whether each household counted in each field during
        the UTC day (at most 1) is summed, noised and charged once the day has ended and its last window's counts
        have come (`trigger_day_released_at`, `trigger_days`)."""
        level = self._level_of(org_id)
        if level is None:
            return Refusal(Why.NOT_PERMITTED, "the organization or its level no longer exists")
        if level.noisy:
            bucket = self._trigger_day(org_id, trigger_id, start)
            if bucket is None:
                return Refusal(Why.DAY_DECIDED, "this window came after its UTC day's statistics were decided: "
                               "not counted")
            for household, fields in per_household.items():
                seen = bucket.setdefault(household, {})
                for field, value in fields.items():
                    seen[field] = max(seen.get(field, 0), 1 if value else 0)
            return Refusal(Why.RELEASED_DAILY, "at this level a trigger's statistics are released once a day, "
                           "noised, after the UTC day has ended")
        k_min = self.config.privacy.k_min
        if len(set(per_household) - self._related(org_id)) < k_min:
            return Refusal(Why.COHORT_TOO_SMALL, f"a trigger's statistics are released only over at least {k_min} "
                           "households")
        names = sorted({f for values in per_household.values() for f in values})
        body = {"window": window, "window_start": iso(start), "households": len(per_household),
                **{f: sum(int(values.get(f, 0)) for values in per_household.values()) for f in names},
                "privacy": {"kind": "exact"}}
        doc = {"t": "n", "o": org_id, "i": trigger_id, "w": WINDOW_SECONDS[window], "s": start, "b": body}
        self._pending.setdefault(ReleaseLog.file_of(doc), []).append(doc)
        return body

    # --- deciding ------------------------------------------------------------------------------
    async def run_forever(self) -> None:
        while True:
            try:
                await self.settle()
            except Exception:  # the releases must survive anything one window does
                log.exception("release pass failed")
            await asyncio.sleep(self._until_next())

    def _until_next(self) -> float:
        now = self.clock()
        grids = self._grids()
        wake = now + 0.5
        for grid in grids:
            wake = min(wake, (now // grid.width + 1) * grid.width + SETTLE_GRACE_S)
        return min(max(wake - now, 0.01), 0.5)

    def settle_limit(self) -> float:
        now = self.clock()
        held = self.registry.pending_since()
        return now if held is None or held >= now else held

    async def settle(self) -> None:
        """Decide every window that has settled since the last pass. Tests call this after stepping the clock."""
        async with self._settling:
            self._pass = _PassUndo()
            self.ledger.begin()
            try:
                await self._settle()
            finally:
                self.ledger.keep()  # an error other than a refused write: its charges stay (an over-count)

    async def _settle(self) -> None:
        limit = self.settle_limit()
        grids = self._grids()
        staged: Staged = {}  # in decision order
        durable: dict[str, list[Json]] = {}
        newly: list[tuple[int, int]] = []
        decided: dict[int, int] = {}  # applied once the records are in place, never before
        for grid, orgs in grids.items():
            cursor = self._cursor.get(grid)
            if cursor is None:
                cursor = self._cursor[grid] = math.ceil(self._started_at / grid.width) * grid.width
            book = self.books[WIDTH_NAME[grid.width]]
            # a window whose readings are no longer in memory (the agent was busy for long) is skipped
            oldest = book.window_start(limit) - (book.keep - 1) * grid.width
            if cursor < oldest:
                cursor = oldest
            while cursor + grid.width <= limit:
                self._decide(grid, orgs, cursor, staged, durable)
                cursor += grid.width
            self._cursor[grid] = cursor
        for width in WINDOW_SECONDS.values():
            frontier = math.floor(limit / width) * width - width
            if frontier >= math.ceil(self._started_at / width) * width and self._decided.get(width) != frontier:
                previous = self._decided.get(width)
                first = frontier if previous is None else previous + width
                newly.extend((width, s) for s in range(max(first, frontier - 10 * width), frontier + width,
                                                       width))
                decided[width] = frontier
        peaks_before = dict(self._peaks)
        days = self._release_trigger_days(limit, durable)
        await self.members.commit()  # who each release included, on disk before anyone can have it
        if durable:
            try:
                await self.writes.write(self.log.write, durable)
                self._cohorts_written |= self._pass.cohorts
            except OSError as err:
                log.error("release log not written (%s): the noisy windows of this pass are not released",
                          err)
                await self._undo_pass()
                staged = {key: _refused_doc(doc, Why.STORAGE_ERROR, "the release could not be written "
                                            "durably; not released") if _noisy(doc) else doc
                          for key, doc in staged.items()}
                self._restore_peaks(peaks_before, {k[0] for k, d in staged.items()
                                                   if d.get("x", {}).get("error") == Why.STORAGE_ERROR})
                days = []
        for org_id, trigger_id, body in days:
            self._trigger_released.setdefault((org_id, trigger_id), []).append(body)
        for key, doc in staged.items():
            self._records[key] = doc
            if not doc.get("noisy"):  # the noisy fine records are on disk already
                self._pending.setdefault(ReleaseLog.file_of(doc), []).append(doc)
        self._decided.update(decided)
        self._prune(limit)
        for width, start in newly:
            for callback in self._listeners:
                try:
                    callback(WIDTH_NAME[width], start)
                except Exception:
                    log.exception("release listener failed")

    async def flush(self) -> None:
        """Exact records to disk (with the store's flush): they carry no ledger charge, so a crash before this
        loses only their record, never changes one."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            await self.writes.write(self.log.write, pending)
        except OSError as err:
            self.writes.refused("not written (%s); will retry", err)
            for name, docs in pending.items():
                self._pending.setdefault(name, [])[:0] = docs

    def _prune(self, now: float) -> None:
        for key in [k for k in self._records if k[2] < now - KEEP_S.get(k[1], 0) - k[1]]:
            del self._records[key]
        if now - self._forgot_at >= 3600:
            self._forgot_at = now
            self.ledger.forget_before(now - DAY)  # as in _load
            self._trigger_done_from = now - self._keep_days * DAY  # the release log's days (_load)
            self._trigger_done = {k for k in self._trigger_done if k[2] >= self._trigger_done_from}

    def _grids(self) -> dict[Grid, list[Organization]]:
        orgs = sorted(self.registry.organizations.values(), key=lambda o: o.id)
        levels = {o.id: level for o in orgs if (level := self.config.levels.get(o.level)) is not None}
        exact = [o for o in orgs if o.id in levels and not levels[o.id].noisy]
        grids: dict[Grid, list[Organization]] = {}
        if exact:
            width = min(WINDOW_SECONDS[levels[o.id].finest] for o in exact)
            grids[Grid(width, False, False)] = exact
            grids[Grid(max(width, TAG_GRID_S), False, True)] = exact
        for org in orgs:
            level = levels.get(org.id)
            if level is not None and level.noisy:
                grids.setdefault(Grid(WINDOW_SECONDS[level.finest], True, False), []).append(org)
        return grids

    def _level_of(self, org_id: str) -> Level | None:
        org = self.registry.organizations.get(org_id)
        return self.config.levels.get(org.level) if org else None

    def _cohort(self, org_id: str, start: int, end: int) -> frozenset[str]:
        """Households whose `aggregates` consent held throughout [start, end). Reused across windows while no
        consent has changed and every change is older than the window (then it is the current state)."""
        registry = self.registry
        signature = (registry.consent_changes, *self._household_signature())
        cached = self._cohort_cache.get(org_id)
        if cached is not None and cached[0] == signature and start >= cached[1]:
            return cached[2]
        members = frozenset(registry.cohort(org_id, "aggregates", start, end))
        if registry.last_consent_at <= start:
            self._cohort_cache[org_id] = (signature, start, members)
        return members

    def _household_signature(self) -> tuple[int, int]:
        """Changes whenever a household is created or deleted (deleted ones stay as tombstones)."""
        return len(self.registry.households), len(self.registry.all_households())

    def _meters(self) -> dict[str, str]:
        """household id -> meter id, deleted households included (their past windows)."""
        registry = self.registry
        signature = self._household_signature()
        if self._meter_cache[0] != signature:
            self._meter_cache = (signature, {h.id: h.meter_id for h in registry.all_households()})
        return self._meter_cache[1]

    def _related(self, org_id: str) -> set[str]:
        related = getattr(self.registry, "related", None)
        return set(related(org_id)) if related else set()

    def _known(self) -> set[str]:
        """Households the operator marked related to some organization (live and deleted)."""
        households = getattr(self.registry, "all_households", None)
        return {h.id for h in households() if h.related_organizations} if households else set()

    def _decide(self, grid: Grid, orgs: list[Organization], start: int, staged: Staged, durable: Durable) -> None:
        contributions = self._held_over(grid, start, self.books[WIDTH_NAME[grid.width]].contributions(start))
        if grid.noisy:
            self._decide_noisy(grid, orgs, start, contributions, staged, durable)
        elif grid.tags:
            for tag in self.config.privacy.tags:
                takers = [o for o in orgs if self._may(o, f"neighborhood_channel_{tag}")]
                if takers:
                    self._decide_exact(grid, takers, start, contributions, tag, staged)
        else:
            self._decide_exact(grid, orgs, start, contributions, None, staged)
        for org in orgs:
            self._derive(grid, org, start, staged)

    def _held_over(self, grid: Grid, start: int, contributions: Contributions) -> Contributions:
        """The window's contributions, with a household that sent nothing in it held at its last window's values
        for a while (`hold_s`): a datalogger posting every 10 s, or a gap of a few seconds, must not make the
        cohort flicker, since each flicker is a difference that reads one household. Held values are the
        household's that sent them: none of a window that began before the meter's current household was created
        (a meter that changes hands, red team 8 R8-4: the next household is never "in" on the previous one's)."""
        last = self._last_seen.setdefault(grid, {})
        hold = max(HOLD_S, 2 * grid.width)
        out = dict(contributions)
        by_meter = self.registry.household_by_meter
        for meter, (seen_at, contribution) in list(last.items()):
            if meter in out:
                continue
            owner = by_meter(meter)
            if start - seen_at < hold and owner is not None and owner.owns(seen_at):
                out[meter] = _held(contribution)
            else:
                del last[meter]
        for meter, contribution in contributions.items():
            last[meter] = (start, contribution)
        return out

    def _may(self, org: Organization, parameter: str) -> bool:
        level = self.config.levels.get(org.level)
        return level is not None and permitted(parameter, level, org.parameters)

    def _decide_exact(self, grid: Grid, orgs: list[Organization], start: int, contributions: Contributions, tag: str | None,
                      staged: Staged) -> None:
        k_min, end = self.config.privacy.k_min, start + grid.width
        meters = self._meters()
        with_data = {m for m, c in contributions.items() if tag is None or tag in c.channels}
        candidates = []
        for org in orgs:
            members = frozenset(h for h in self._cohort(org.id, start, end) if meters.get(h) in with_data)
            candidates.append((org, members))
        if start < self._audit_blind_until:
            resuming = Refusal(Why.AUDIT_RESUMING, "the device restarted; exact sums resume one audit period "
                               f"({self.config.privacy.audit_period_s:g} s) after it, once the audit again knows "
                               "every cohort released in the period")
            for org, members in candidates:
                staged[(org.id, grid.width, start, tag or "")] = _doc(org.id, grid.width, start, tag, resuming)
                self.members.note(org.id, tag, grid.width, start, members, False)
            return
        # The audit looks back over the audit period as if no household's power changed in it: two windows a few
        # seconds apart whose cohorts differ by one household read that household as surely as two organizations.
        # Every window that ended in the period counts, however wide: adjacent quarter-hours, with a 900 s
        # period, are in each other's audit (by where they start, the one before never was).
        period = self.config.privacy.audit_period_s
        recent = {c: end for c, end in self._audited.get(tag or "", {}).items() if end > start - period}
        # Households related to any organization are known to it (its test meters, its employees' homes): the
        # audit treats their values as known, or A - B = x + r with r known would give x (colluding organizations);
        # also in the sums released before the operator marked them. Known to *that* organization only: each is
        # audited as unknown for its own sake (`_isolates_known`). Cohorts are kept whole, known removed here.
        known = self._known()
        released: list[frozenset[str]] = list(dict.fromkeys(c - known for c in recent))
        what = f"households with a '{tag}' channel" if tag else "consenting households"
        grid_audit = {} if tag else {q: {c: end for c, end in self._audited.get(f"grid:{q}", {}).items()
                                         if end > start - period} for q in grid_quantities.QUANTITIES}
        table = grid_quantities.WindowTable(contributions)
        known_meters = frozenset(meters[h] for h in known if h in meters)
        # the audit's order depends on who is in each cohort, never on what they used
        for org, members in sorted(candidates, key=lambda c: (-len(c[1]), c[0].id)):
            counted = len(members - self._related(org.id))
            if counted < k_min and tag:  # no count at all: who carries an appliance channel is not public (P11)
                result: Json | Refusal = Refusal(
                    Why.COHORT_TOO_SMALL, f"fewer than {k_min} {what} (not related to this organization) have data "
                    "in this window")
            elif counted < k_min:
                result = Refusal(
                    Why.COHORT_TOO_SMALL, f"{counted} {what} (not related to this organization) have data in this "
                    f"window; at least {k_min} are needed ({k_min - counted} missing)", counted, k_min - counted)
            elif not audit.admissible_if_one_known(released, members - known) \
                    or _isolates_known(list(recent), members, known, audit.isolated_if_one_known):
                result = Refusal(Why.ISOLATING, "this window's cohort differs from one released for this window or "
                                 f"in the last {period:g} s by so few households that the sums would single one "
                                 "out; not released")
            else:
                released.append(members - known)
                # one entry per distinct cohort, with its newest window's end
                recent[members] = max(recent.get(members, 0), start + grid.width)
                rows = [contributions[meters[h]] for h in members]
                consumption = sum(c.channels[tag] for c in rows) if tag else sum(c.consumption_w for c in rows)
                production = None if tag else sum(c.production_w for c in rows)
                result = records.fine_body(WIDTH_NAME[grid.width], start, grid.width, tag, len(members),
                                           consumption, production, {"kind": "exact"})
                if tag is None:
                    quantities = self._grid_quantities(org)
                    if quantities:
                        result["grid"] = self._grid_exact(org, quantities, start, grid.width, members, table,
                                                          known_meters, grid_audit)
                    result = self._with_peak(org, grid.width, start, result)
            staged[(org.id, grid.width, start, tag or "")] = _doc(org.id, grid.width, start, tag, result)
            self.members.note(org.id, tag, grid.width, start, members, not isinstance(result, Refusal))
        self._audited[tag or ""] = recent
        for q, cohorts in grid_audit.items():
            self._audited[f"grid:{q}"] = cohorts

    def _grid_quantities(self, org: Organization) -> tuple[str, ...]:
        """The grid quantities this organization gets: its parameters permit them and, at a noisy level, the
        operator enabled them for the level ([levels.X.dp] grid; each costs its cohort grid_rho per window)."""
        level = self.config.levels.get(org.level)
        if level is None:
            return ()
        return tuple(q for q in grid_quantities.QUANTITIES
                     if (not level.noisy or grid_quantities.level_quantity(q) in level.dp.grid)
                     and any(self._may(org, p) for p in grid_quantities.PARAMETERS[q]))

    def _grid_exact(self, org: Organization, quantities: tuple[str, ...], start: int, width: int,
                    members: frozenset[str], table: grid_quantities.WindowTable, known: frozenset[str],
                    audited: dict[str, dict[frozenset[str], int]]) -> Json:
        """Exact grid quantities, each over the members that report it: k_min of them not related to the
        organization, and the audit of counts (`audit.admissible_counts`: no group of fewer than k_min households
        told apart by the cohorts of this quantity released for this window or in the audit period before it).
        Cohorts here are sets of meters (one per household): the window's values are kept by meter."""
        k_min, meters = self.config.privacy.k_min, self._meters()
        period = self.config.privacy.audit_period_s
        mine = frozenset(meters[h] for h in members)
        related = frozenset(meters[h] for h in self._related(org.id) if h in meters)
        out: Json = {}

        def told_apart(cohorts: list[frozenset[str]]) -> set[str]:
            return set().union(*audit.small_groups(cohorts, k_min))

        for q in quantities:
            reporting = mine & table.reporting(q)
            recent = audited[q]
            if len(reporting - related) < k_min:
                out[q] = grid_quantities.refused(Why.COHORT_TOO_SMALL, f"under {k_min} unrelated households report it")
            elif not audit.admissible_counts(list(dict.fromkeys(c - known for c in recent)), reporting - known, k_min) \
                    or _isolates_known(list(recent), reporting, known, told_apart):
                out[q] = grid_quantities.refused(Why.ISOLATING, f"with its counts of the last {period:g} s, a group "
                                                 f"of under {k_min} households would be told apart")
            else:
                recent[reporting] = max(recent.get(reporting, 0), start + width)
                out[q] = table.part(q, reporting)
        return out

    def _with_peak(self, org: Organization, width: int, start: int, body: Json) -> Json:
        """The body with the highest consumption_w this organization was released at this width since the UTC
        month began (this window included): post-processing of its own released records, no further loss."""
        if width not in PEAK_WIDTHS or body.get("tag") is not None or not self._may(org, PEAK_PARAMETER):
            return body
        month, peak, at = self._note_peak(org.id, width, start, body["consumption_w"], month_of(start))
        return {**body, "peak_month_w": peak, "peak_month_at": iso(at)}

    def _note_peak(self, org_id: str, width: int, start: int, watts: float, month: int) -> tuple[int, float, int]:
        key = (org_id, width)
        current = self._peaks.get(key)
        if start >= month and (current is None or current[0] != month or watts > current[1]):
            current = self._peaks[key] = (month, watts, start)
        return current if current is not None else (month, watts, start)

    async def _undo_pass(self) -> None:
        """A pass whose release-log write was refused released nothing noisy: its charges, its members notes
        ("released", with rho) and its trigger days' draws are undone, so the household's page, its budget and
        the log rebuilt at the next start agree (red team 9a, R9a-6). The days' counts are kept for the next pass."""
        self.ledger.undo()
        for org_id, tag, width, start, loss in self._pass.released:
            self.members.refused(org_id, tag, width, start, loss)
        await self.members.commit()
        for key, bucket in self._pass.trigger_days.items():
            self._trigger_days[key] = bucket
            self._trigger_done.discard(key)

    def _restore_peaks(self, before: dict[tuple[str, int], tuple[int, float, int]], org_ids: set[str]) -> None:
        """A pass whose noisy records could not be written: their values never count toward a peak."""
        for key in [k for k in self._peaks if k[0] in org_ids]:
            if key in before:
                self._peaks[key] = before[key]
            else:
                del self._peaks[key]

    def _decide_noisy(self, grid: Grid, orgs: list[Organization], start: int, contributions: Contributions, staged: Staged,
                      durable: Durable) -> None:
        registry, k_min, end = self.registry, self.config.privacy.k_min, start + grid.width
        if not dp.available():  # no OpenDP on this platform: refused (never exact), and the pass goes on
            unavailable = Refusal(Why.DP_UNAVAILABLE, dp.unavailable_reason())
            for org in orgs:
                tags = [t for t in self.config.levels[org.level].dp.tags if self._may(org, f"neighborhood_channel_{t}")]
                for tag in [None, *tags]:
                    staged[(org.id, grid.width, start, tag or "")] = _doc(org.id, grid.width, start, tag, unavailable)
            return
        name = day_name(start)
        for org in orgs:
            level = self.config.levels[org.level]
            consenting = frozenset(h for h in self._cohort(org.id, start, end) if h in registry.households)
            counted = len(consenting - self._related(org.id))
            tags = [t for t in level.dp.tags if self._may(org, f"neighborhood_channel_{t}")]
            for tag in [None, *tags]:
                quantities = () if tag else self._grid_quantities(org)
                loss = level.dp.loss() + (level.dp.grid_rho if quantities else 0.0)
                key = (org.id, grid.width, start, tag or "")
                members = frozenset(h for h in consenting if self.ledger.affords(h, loss, start))
                # The count and the refusal are the consenting cohort's, never the ledger's: those that can bear the
                # window changing by one would say when a household's cap ran out, i.e. how much it spends with
                # other organizations (red team 7, R7-1). One that cannot bear it counts 0, as a silent one does.
                if counted < k_min:
                    refusal = Refusal(Why.COHORT_TOO_SMALL, f"{counted} consenting households (not related to this "
                                      f"organization) in this window; at least {k_min} are needed",
                                      counted, k_min - counted)
                    staged[key] = _doc(org.id, grid.width, start, tag, refusal)
                    self.members.note(org.id, tag, grid.width, start, members, False, loss)
                    continue
                # Each organization's answer is its own draw, charged to its members: what a household spends is
                # then a function of its own consents alone. One answer shared by the organizations of one
                # consenting cohort was charged once, so a household's spending said whether every other
                # household's consents to them agreed (red team 9a, R9a-3), and equal answers that the cohorts
                # were equal.
                body = self._noisy_body(level, grid, start, tag, members, contributions, quantities, loss,
                                        len(consenting))
                self.ledger.charge(members, loss, start)
                digest = cohort_hash(members)
                batch = durable.setdefault(name, [])
                if (name, digest) not in self._cohorts_written and (name, digest) not in self._pass.cohorts:
                    batch.append({"t": "c", "h": digest, "m": sorted(members), "s": start})
                    self._pass.cohorts.add((name, digest))
                doc = _doc(org.id, grid.width, start, tag, self._with_peak(org, grid.width, start, body))
                doc.update(c=digest, p=loss, noisy=True)  # the record the ledger is rebuilt from
                self.members.note(org.id, tag, grid.width, start, members, True, loss)
                self._pass.released.append((org.id, tag, grid.width, start, loss))
                batch.append(doc)
                staged[key] = doc

    def _noisy_body(self, level: Level, grid: Grid, start: int, tag: str | None, members: frozenset[str],
                    contributions: Contributions, quantities: tuple[str, ...], loss: float, households: int) -> Json:
        """The sums over `members` (those of the cohort that can bear `loss`), stated over `households` (the
        consenting cohort's size)."""
        cfg, meters, grid_parts = level.dp, self._meters(), quantities
        quantities_n = 1 if tag else 2
        clamp = cfg.tag_clamp_w if tag else cfg.clamp_w
        mechanism = (dp.calibrate_rho(clamp, cfg.rho / quantities_n) if cfg.noise == "gaussian"
                     else dp.calibrate("laplace", clamp, cfg.epsilon / quantities_n))
        rows = [contributions.get(meters[h]) for h in members]
        if tag:
            consumption = mechanism.release([c.channels.get(tag, 0.0) if c else 0.0 for c in rows])
            production = None
        else:
            consumption = mechanism.release([c.consumption_w if c else 0.0 for c in rows])
            production = mechanism.release([c.production_w if c else 0.0 for c in rows])
        privacy = self._noisy_privacy(level, mechanism, 1 if tag else 2, start, loss)
        body = records.fine_body(WIDTH_NAME[grid.width], start, grid.width, tag, households, consumption,
                                 production, privacy)
        if grid_parts:
            body["grid"] = grid_quantities.noisy_part(grid_parts, rows, cfg.grid_rho)
        return body

    def _noisy_privacy(self, level: Level, mechanism: dp.Mechanism, quantities: int, start: int,
                       loss: float | None = None) -> Json:
        """`loss`: what the window charges each household, grid quantities included (default: the level's).
        `start`: the moment the release is charged at; while a lost day of the release log is in the ledger's
        horizon then, every household counts as its whole cap and nobody is in the sums: said, device-wide."""
        cfg, privacy = level.dp, self.config.privacy
        loss = cfg.loss() if loss is None else loss
        lost_until = self.ledger.lost_until(start)
        return {
            "kind": "noisy",
            "mechanism": dp.MECHANISM_NAMES[mechanism.noise],
            "clamp_w": [0, mechanism.clamp_w],
            "scale": round(mechanism.scale, 3),
            "noise_sd_w": round(dp.standard_deviation(mechanism), 3),
            "rho": loss,
            "guarantee": guarantee(privacy.horizon_days, privacy.cap_rho, cfg.delta, loss),
            "households": "every household consenting throughout the window; one that sent nothing, or whose "
                          "privacy-loss ledger cannot bear the window, counts 0 (and is not charged)",
            "quantities": quantities,
            **({"ledger_lost_until": iso(lost_until)} if lost_until is not None and loss > 0 else {}),
        }

    def _derive(self, grid: Grid, org: Organization, start: int, staged: Staged) -> None:
        level = self.config.levels.get(org.level)
        if level is None:
            return
        widths = [w for w in sorted(WINDOW_SECONDS[n] for n in level.windows) if w > grid.width]
        if grid.noisy:
            tags = [None, *[t for t in level.dp.tags if self._may(org, f"neighborhood_channel_{t}")]]
        elif grid.tags:
            tags = [t for t in self.config.privacy.tags if self._may(org, f"neighborhood_channel_{t}")]
        else:
            tags = [None]
        chain = [grid.width, *widths]
        for tag in tags:
            for finer, wider in zip(chain, chain[1:]):
                if (start + grid.width) % wider:
                    break
                first = start + grid.width - wider
                parts = [staged.get((org.id, finer, s, tag or "")) or self._records.get((org.id, finer, s, tag or ""))
                         for s in range(first, first + wider, finer)]
                present = [p for p in parts if p is not None and "x" not in p]
                if len(present) < len(parts):
                    result: Json | Refusal = Refusal(Why.INCOMPLETE, "a shorter window inside this one was not "
                                                     "released, so neither is this one")
                else:
                    bodies = [p["b"] for p in present]
                    privacy = dict(bodies[0]["privacy"])
                    privacy["derived_from"] = f"{len(bodies)} x {WIDTH_NAME[finer]}"
                    if privacy.get("noise_sd_w") is not None:
                        privacy["noise_sd_w"] = round(privacy["noise_sd_w"] / math.sqrt(len(bodies)), 3)
                    result = records.derive(WIDTH_NAME[wider], first, wider, bodies, privacy)
                    if all("grid" in b for b in bodies):
                        result["grid"] = grid_quantities.derive([b["grid"] for b in bodies])
                    result = self._with_peak(org, wider, first, result)
                doc = _doc(org.id, wider, first, tag, result)
                staged[(org.id, wider, first, tag or "")] = doc

    # --- trigger statistics of noisy levels, per UTC day -------------------------------------------------
    def _release_trigger_days(self, limit: float, durable: Durable) -> list[tuple[str, str, Json]]:
        """Noisy levels' trigger statistics of UTC days that have ended: noised, charged, and added to this
        pass's durable batch; visible (`trigger_days`) only once written."""
        released = []
        for key in [k for k in self._trigger_days if self.trigger_day_released_at(k[2]) <= limit]:
            bucket = self._trigger_days.pop(key)
            self._trigger_done.add(key)
            self._pass.trigger_days[key] = bucket
            org_id, trigger_id, day = key
            level = self._level_of(org_id)
            if level is None:
                continue
            # Over the households whose `triggers` consent held all day, evaluated or not (those not count 0):
            # whether the day is released, who is charged and which fields it has never depend on who sent data
            # or which values a meter reports (red team 6, R6-1).
            loss = level.dp.loss()
            consenting = frozenset(self.registry.cohort(org_id, "triggers", day, day + TRIGGER_DAY_S))
            if len(consenting - self._related(org_id)) < self.config.privacy.k_min:  # consent only (R7-1)
                continue
            members = frozenset(h for h in consenting if self.ledger.affords(h, loss, day))
            fields = TRIGGER_COUNTS
            mechanism = (dp.calibrate_rho(1, level.dp.rho / max(1, len(fields))) if level.dp.noise == "gaussian"
                         else dp.calibrate("laplace", 1, level.dp.epsilon / max(1, len(fields))))
            body = {"window": "1d", "window_start": iso(day),  # no count: it would say who was present
                    **{f: mechanism.release([bucket.get(h, {}).get(f, 0) for h in members]) for f in fields},
                    "privacy": self._noisy_privacy(level, mechanism, len(fields), day)}
            self.ledger.charge(members, loss, day)
            digest = cohort_hash(members)
            durable.setdefault(day_name(day), []).extend([
                {"t": "c", "h": digest, "m": sorted(members), "s": day},
                {"t": "n", "o": org_id, "i": trigger_id, "w": TRIGGER_DAY_S, "s": day, "b": body, "c": digest,
                 "p": loss}])
            released.append((org_id, trigger_id, body))
        return released

    def trigger_day_released_at(self, day: int) -> float:
        """When the UTC day `day` begins is released: once the runner's counts of its last window have come."""
        triggers = self.config.triggers
        return day + TRIGGER_DAY_S + triggers.release_delay_s + triggers.statistics_delay_s + TRIGGER_DAY_MARGIN_S

    def trigger_days(self, org_id: str, trigger_id: str) -> list[Json]:
        """The daily statistics released so far (noisy levels) for one trigger, oldest first (since start)."""
        return list(self._trigger_released.get((org_id, trigger_id), []))


def _lost() -> ReleaseLost:
    return ReleaseLost(ReleaseCode.LOST, "this release was made once and its record was lost beyond repair; it is "
                       "not made again (a second one could be compared with the first)")


def guarantee(horizon_days: int, cap_rho: float, delta: float, loss: float) -> str:
    return (f"each household in this release bears rho = {loss:g} (zero-concentrated DP; adding or removing one "
            f"household's readings in the window). Across every organization and release, a household's total "
            f"over any {horizon_days} days is at most rho = {cap_rho:g}, i.e. epsilon = "
            f"{epsilon_of_rho(cap_rho, delta):.2f} at delta = {delta:g}; replacing its readings by others' costs "
            f"at most 4x rho")


def _held(contribution: Contribution) -> Contribution:
    """A silent household's last contribution, held over: its failure was counted in the window it was seen in."""
    return dataclasses.replace(contribution, long_failure=0) if contribution.long_failure else contribution


def month_of(moment: float) -> int:
    """The start of the UTC month `moment` is in."""
    t = time.gmtime(moment)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))



def _isolates_known(recent: list[frozenset[str]], candidate: frozenset[str], known: frozenset[str] | set[str],
                    exposed: Callable[[list[frozenset[str]]], set[str]]) -> bool:
    """Whether releasing over `candidate` newly exposes a known household (one related to some organization) to
    the others: each is audited with the rest of the known taken as known but itself not, as any other household
    is (red team 9a, R9a-4: known to every organization, its value was left to differencing). `exposed` is the
    audit's rule: the households (or members of groups) some combination of these cohorts tells apart."""
    if not known:  # the usual device: no household is marked, and the union below is not needed
        return False
    for r in known & candidate.union(*recent):
        others = known - {r}
        before = list(dict.fromkeys(c - others for c in recent))
        if r in exposed([*before, candidate - others]) and r not in exposed(before):
            return True
    return False


def _doc(org_id: str, width: int, start: int, tag: str | None, result: Json | Refusal) -> Json:
    doc = {"t": "r", "o": org_id, "w": width, "s": start, "g": tag or ""}
    if isinstance(result, Refusal):
        doc["x"] = result.public()
    else:
        doc["b"] = result
    return doc


def _noisy(doc: Json) -> bool:
    return bool(doc.get("noisy")) or doc.get("b", {}).get("privacy", {}).get("kind") == "noisy"


@dataclass
class _PassUndo:
    """What a settle pass did in memory before its release-log write, to undo if the write is refused."""

    cohorts: set[tuple[str, str]] = field(default_factory=set)  # cohort records in the pass's batch
    released: list[tuple[str, str | None, int, int, float]] = field(default_factory=list)  # noted released
    trigger_days: dict[tuple[str, str, int], dict[str, dict[str, int]]] = field(default_factory=dict)


def _refused_doc(doc: Json, error: str, detail: str) -> Json:
    out = {k: v for k, v in doc.items() if k not in ("b", "c", "p", "noisy")}
    out["x"] = {"error": error, "detail": detail}
    return out


def _from_doc(doc: Json) -> Json | Refusal:
    if "x" in doc:
        x = doc["x"]
        return Refusal(x["error"], x["detail"], x.get("households"), x.get("missing"))
    body: Json = doc["b"]
    return body

