"""Which households each release included: an index on the device only, for the household's own access log.

Nothing an organization can ask reads it (the API answers from the release log's bodies); only a household's own
page asks it about that household. It lives beside the release log (`<releases>/members/YYYYMMDD.seg`, the
store's segment format) and is kept as long.

A stream is one organization's fine releases of one tag, (organization, tag); every wider window is derived from
them. A stream's cohort rarely changes (a consent, a meter silent past the hold, a ledger at its cap), so the index
records changes, not windows: from window start `s` on, windows of width `w` were released (`r`) or refused, over
the cohort so far plus `+` minus `-`, each charging its members `p` if released (rho; 0 at exact levels). A refused
window records its cohort too (the households it would have been over): whether a window was released depends on
other households (an exact level's audit, k_min), whether a household was in its cohort only on that household's
own consent and data, and the page says only the latter (`Inclusion`). `Releases.settle`
awaits `commit()` before a pass's records can be answered or pushed, so after a kill -9 every release an
organization may have had is covered (a change lost with the crash was never seen); a torn tail is cut as in every
segment. Each day file begins with the full state of every stream (`"t": "f"`), so the oldest files can go.

Documents: {"t": "f"|"i", "o": org, "g": tag or "", "s": start, "w": width, "r": 0|1, "p": rho,
            "m": [every member] (f) | "+": [added], "-": [removed] (i)}
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.store.durable import Durable
from agent.store.segment import SegmentDB, SegmentStream, day_file_name, day_of_file_name, ensure_dir

log = logging.getLogger("edge.release")
KIND = "release-members"  # in integrity(): /health, /metrics

TABLE = "m"
DAY = 86400
Key = tuple[str, str]  # (organization, tag or "")


def _windows(first: float, end: float, width: int) -> int:
    """How many windows of `width` (starting on its grid) start in [first, end)."""
    return max(0, math.ceil(end / width) - math.ceil(first / width)) if end > first else 0


def _since(changes: list, cutoff: float) -> list:
    """The changes from `cutoff` on, and the last one before it (the state at `cutoff`)."""
    first = next((i for i, change in enumerate(changes) if change[0] >= cutoff), len(changes))
    return changes[max(0, first - 1):]


@dataclass
class Stream:
    flags: list[tuple[int, int, bool, float]] = field(default_factory=list)  # (from start, width, released, rho)
    members: set[str] = field(default_factory=set)
    toggles: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)  # household -> (from start, member)

    def flag(self) -> tuple[int, bool, float] | None:
        if not self.flags:
            return None
        _, width, released, rho = self.flags[-1]
        return width, released, rho

    def apply(self, start: int, width: int, released: bool, rho: float, added: Iterable[str],
              removed: Iterable[str]) -> None:
        if self.flag() != (width, released, rho):
            self.flags.append((start, width, released, rho))
        for household in added:
            self.members.add(household)
            self.toggles.setdefault(household, []).append((start, True))
        for household in removed:
            self.members.discard(household)
            self.toggles.setdefault(household, []).append((start, False))


@dataclass(frozen=True)
class RunInclusion:
    """One household in a run of a subscription's consecutive windows: how many of them had it in the cohort of
    every fine window they are made of (`in_all`), of some (`in_some`), of how many the index knows (`known`), the
    rho they charged it and whether they were noisy."""

    in_all: int
    in_some: int
    known: int
    rho: float
    noisy: bool = False


@dataclass(frozen=True)
class Inclusion:
    """One household in one span of one stream: the decided windows (released or refused) whose cohort it was in,
    of how many decided, the rho the released ones charged it, and whether the stream was at a noisy level there.
    No count of released windows: that depends on other households."""

    included: int
    windows: int
    rho: float
    noisy: bool = False


class Members:
    def __init__(self, directory: str | Path, keep_days: int, clock: Callable[[], float],
                 decided_until: Mapping[Key, int] | None = None):
        """`decided_until`: given on a start of the release module (`Releases`), the end of the last window of each
        stream its log has a record of; None to read the index as it is (a copy, a test)."""
        self.directory = Path(directory)
        self.keep_days = keep_days
        self.clock = clock
        self._streams: dict[Key, Stream] = {}
        self._pending: list[dict[str, Any]] = []  # changes noted, not yet on disk
        self._files: set[str] = set()  # day files that begin with every stream's state
        self._db: tuple[str, SegmentDB] | None = None
        self._writes = Durable("release members index", self.directory, log, what="the members index")
        ensure_dir(self.directory)
        self._load()
        if decided_until is not None:
            self._restarted(decided_until)

    # --- start-up ------------------------------------------------------------------------------
    def _load(self) -> None:
        now = self.clock()
        for path in sorted(self.directory.glob("*.seg")):
            day = day_of_file_name(path.stem)
            if day is None:
                continue
            if day + (self.keep_days + 1) * DAY < now:
                continue  # deleted when the next file begins
            self._files.add(path.stem)
            # A record at a time: a whole day file decoded at once was the start's peak (as the first write's was)
            for doc in SegmentStream(path, kind=KIND).docs(TABLE):
                self._replay(doc)

    def _restarted(self, decided_until: Mapping[Key, int]) -> None:
        """Nothing was decided while the device was down: every stream is refused over nobody from where it
        stopped until a pass says otherwise (written with the first change, which the first release after a start
        always is). Where it stopped: the end of the stream's last window on record in the release log, or of the
        window of its last change here if later (the index is on disk before a record is, red team 8 R8-3: marked
        from the restart, the downtime's windows counted as decided over the cohort before the stop)."""
        for key, stream in self._streams.items():
            state = stream.flag()
            if state is None or not (state[1] or stream.members):
                continue
            last = max([stream.flags[-1][0], *(t[-1][0] for t in stream.toggles.values() if t)])
            stopped = max(decided_until.get(key, 0), last + state[0])
            self._change(key, stream, stopped, state[0], False, state[2], (), set(stream.members))

    def _replay(self, doc: dict[str, Any]) -> None:
        stream = self._streams.setdefault((doc["o"], doc["g"]), Stream())
        if doc["t"] == "f":
            members = set(doc["m"])
            added, removed = members - stream.members, stream.members - members
        else:
            added, removed = doc.get("+", ()), doc.get("-", ())
        stream.apply(doc["s"], doc["w"], bool(doc["r"]), doc["p"], added, removed)

    # --- what the release module tells it, as it decides ----------------------------------------
    def note(self, org_id: str, tag: str | None, width: int, start: int, members: frozenset[str], released: bool,
             rho: float = 0.0) -> None:
        """A fine window decided over `members` (its cohort, or the one it would have had): released (charging
        each `rho`) or refused. `rho` is the level's charge either way (0 at exact levels): it marks noisy."""
        key = (org_id, tag or "")
        stream = self._streams.setdefault(key, Stream())  # also when nobody was in it: that is the page's "no"
        added, removed = members - stream.members, stream.members - members
        if stream.flag() != (width, released, rho) or added or removed:
            self._change(key, stream, start, width, released, rho, added, removed)

    def refused(self, org_id: str, tag: str | None, width: int, start: int, rho: float) -> None:
        """The stream's windows from `start` on, noted released, were refused after all (their record could not be
        written): a flag change only, so the cohorts noted for them stay (a refused window records its cohort)."""
        key = (org_id, tag or "")
        stream = self._streams.get(key)
        if stream is not None and stream.flag() != (width, False, rho):
            self._change(key, stream, start, width, False, rho, (), ())

    def _change(self, key: Key, stream: Stream, start: int, width: int, released: bool, rho: float,
                added: Iterable[str], removed: Iterable[str]) -> None:
        name = day_file_name(start)
        if name not in self._files:  # a new day file begins with every stream as it stands
            self._files.add(name)
            self._forget(start - (self.keep_days + 1) * DAY)
            self._pending.extend({"t": "f", "o": o, "g": g, "s": start, "w": s.flag()[0], "r": int(s.flag()[1]),
                                  "p": s.flag()[2], "m": sorted(s.members)}
                                 for (o, g), s in self._streams.items() if s.flag() is not None)
        added, removed = sorted(added), sorted(removed)
        doc: dict[str, Any] = {"t": "i", "o": key[0], "g": key[1], "s": start, "w": width, "r": int(released),
                               "p": rho}
        if added:
            doc["+"] = added
        if removed:
            doc["-"] = removed
        self._pending.append(doc)
        stream.apply(start, width, released, rho, added, removed)

    async def commit(self) -> None:
        """The changes noted so far, fsync'd (in a worker thread). A refused write is logged and its changes go
        first in the next one: the pages still see them, a crash before then loses them."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            await self._writes.write(self._write, pending)
        except OSError as err:
            self._writes.refused("not written (%s); will retry", err)
            self._pending[:0] = pending

    def _write(self, docs: list[dict[str, Any]]) -> None:
        """Append and fsync, one record per day file (in a worker thread); a new file deletes the expired ones."""
        by_file: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            by_file.setdefault(day_file_name(doc["s"]), []).append(doc)
        for name, batch in by_file.items():
            if self._db is None or self._db[0] != name:
                if self._db is not None:
                    self._db[1].close()
                self._db = (name, SegmentDB(str(self.directory / f"{name}.seg"), kind=KIND))
                self._expire(name)
            self._db[1].table(TABLE).insert_multiple(batch)

    def _expire(self, newest: str) -> None:
        cutoff = self.clock() - (self.keep_days + 1) * DAY
        for path in self.directory.glob("*.seg"):
            if path.stem < newest and path.stem < day_file_name(cutoff):
                path.unlink(missing_ok=True)

    def _forget(self, cutoff: float) -> None:
        """Memory: what came before `cutoff`, but the state at it."""
        for stream in self._streams.values():
            stream.flags[:] = _since(stream.flags, cutoff)
            for household in list(stream.toggles):
                kept = _since(stream.toggles[household], cutoff)
                if len(kept) == 1 and not kept[0][1] and kept[0][0] < cutoff:
                    del stream.toggles[household]
                else:
                    stream.toggles[household] = kept

    def close(self) -> None:
        if self._pending:  # a clean stop writes what it noted (a start's refusal marks)
            pending, self._pending = self._pending, []
            self._write(pending)
        if self._db is not None:
            self._db[1].close()
            self._db = None

    # --- what the household's page asks ---------------------------------------------------------
    def inclusion(self, household_id: str, org_id: str, tag: str | None, first: float, end: float) -> Inclusion | None:
        """The decided windows of [first, end) in this organization's stream whose cohort had the household (a
        wider window is derived from exactly these), or None if the index has nothing of the stream then."""
        stream = self._streams.get((org_id, tag or ""))
        if stream is None or not stream.flags or stream.flags[0][0] >= end:
            return None
        toggles = stream.toggles.get(household_id, [])
        cuts = sorted({first, *(s for s, *_ in stream.flags if first < s < end),
                       *(s for s, _ in toggles if first < s < end)})
        included = windows = 0
        rho, noisy = 0.0, False
        for a, b in zip(cuts, [*cuts[1:], end]):
            flag = stream.flags[max(0, bisect.bisect_right(stream.flags, (a, math.inf)) - 1)]
            if flag[0] > a:
                continue
            n = _windows(a, b, flag[1])
            windows += n
            noisy = noisy or (n > 0 and flag[3] > 0)
            at = bisect.bisect_right(toggles, (a, True)) - 1
            if at >= 0 and toggles[at][1]:
                included += n
                if flag[2]:
                    rho += n * flag[3]
        return Inclusion(included, windows, rho, noisy)

    def run_inclusion(self, household_id: str, org_id: str, tag: str | None, first: int, width: int,
                      count: int) -> RunInclusion | None:
        """`inclusion` of each of the windows [first + i * width, first + (i + 1) * width), i < count, counted:
        the stream changes (for this household: its toggles, and the stream's flags) only at a few cuts, so the
        windows between two cuts are asked about at once and only those a cut falls inside one by one (work in
        the number of cuts, not windows). None if the index has nothing of the stream then."""
        end = first + count * width
        stream = self._streams.get((org_id, tag or ""))
        if stream is None or not stream.flags or stream.flags[0][0] >= end:
            return None
        cuts = sorted({*(s for s, *_ in stream.flags if first < s < end),
                       *(s for s, _ in stream.toggles.get(household_id, ()) if first < s < end)})
        in_all = in_some = known = 0
        rho, noisy = 0.0, False
        done = 0  # windows counted

        def add(upto: int) -> None:
            """Windows done..upto, no cut inside any of them but the last: the household is in all or none."""
            nonlocal in_all, in_some, known, rho, noisy, done
            if upto <= done:
                return
            got = self.inclusion(household_id, org_id, tag, first + done * width, first + upto * width)
            n, done = upto - done, upto
            if got is None or not got.windows:
                return
            known += n
            rho, noisy = rho + got.rho, noisy or got.noisy
            if got.included == got.windows:
                in_all += n
            elif got.included:
                in_some += n
        for cut in cuts:
            inside, on_edge = divmod(cut - first, width)
            add(inside)  # the windows that end by the cut
            if on_edge:
                add(inside + 1)  # the one the cut falls in
        add(count)
        return RunInclusion(in_all, in_some, known, rho, noisy)
