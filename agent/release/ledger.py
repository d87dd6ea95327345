"""The per-household privacy-loss ledger, shared by every organization: no I/O.

Every noisy release charges each household of its cohort the release's zCDP loss rho (a Laplace release of pure
epsilon counts as rho = epsilon^2 / 2, its zCDP bound). zCDP composes by addition, so a household's loss over the
rolling horizon is the sum of its charges for releases whose window started in the horizon; a release that would
take a household over the cap leaves that household out (decided from the ledger and consent alone, never from
readings). The ledger is not stored on its own: it is rebuilt from the release log, whose noisy records are
durable before anyone sees them (one fact, written once).

Charges are kept per household per UTC day. Any `horizon_days` of real time touch `horizon_days + 1` UTC days
(a part of the first and of the last), so a charge is checked against the current day and the `horizon_days`
before it: then no span of `horizon_days` holds more than the cap, wherever in a day it starts. (Checking only
`horizon_days` whole days let a charge late on day d and another early on day d + 30 both fit: two caps in a
little over 29 days.)

A day of the release log damaged beyond repair (`log.LOST`) is charged to EVERYONE: which households its lost
records charged, and how much, is unknown, so every household counts as having spent its whole cap while that
day is in the horizon. The ledger may over-count (nothing noisy is released for anyone until the day leaves the
horizon), never under-count. A release made meanwhile says so (`lost_until`): device-wide, about no household.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

DAY = 86400
EVERYONE = "*"  # a charge to every household, of an unknown amount up to the cap (a lost day of the log)


def day_of(moment: float) -> int:
    return int(moment // DAY)


def rho_of_epsilon(epsilon: float) -> float:
    """Pure epsilon-DP implies (epsilon^2 / 2)-zCDP (Bun & Steinke 2016, Prop. 1.4)."""
    return epsilon * epsilon / 2


def epsilon_of_rho(rho: float, delta: float) -> float:
    """(epsilon, delta) of a rho-zCDP total: rho + 2 sqrt(rho ln(1/delta)) (Bun & Steinke 2016, Prop. 1.3)."""
    if rho <= 0:
        return 0.0
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


class Ledger:
    def __init__(self, horizon_days: int, cap_rho: float):
        self.horizon_days = horizon_days
        self.cap_rho = cap_rho
        self._days: dict[str, dict[int, float]] = {}  # household -> {day: rho}
        self._unknown: set[int] = set()  # days charged to EVERYONE
        # (household or EVERYONE, day) -> its charge before the first one since `begin` (None: there was none)
        self._journal: dict[tuple[str, int], float | None] | None = None

    def _unknown_in_horizon(self, moment: float) -> list[int]:
        first = self.first_day(moment)
        return sorted(day for day in self._unknown if day >= first)

    def first_day(self, moment: float) -> int:
        """The first UTC day (a day number) whose charges count at `moment`."""
        return day_of(moment) - self.horizon_days

    def lost_until(self, moment: float) -> float | None:
        """When the last lost day in the horizon at `moment` leaves it (every household counts as its cap until
        then), or None."""
        unknown = self._unknown_in_horizon(moment)
        return (unknown[-1] + self.horizon_days + 1) * DAY if unknown else None

    def spent(self, household: str, moment: float) -> float:
        first = self.first_day(moment)
        known = sum(rho for day, rho in self._days.get(household, {}).items() if day >= first)
        return max(known, self.cap_rho) if self._unknown_in_horizon(moment) else known

    def affords(self, household: str, rho: float, moment: float) -> bool:
        # a hair of slack for float sums: a cap met exactly is met
        return self.spent(household, moment) + rho <= self.cap_rho * (1 + 1e-9)

    def charge(self, households: Iterable[str], rho: float, moment: float) -> None:
        day = day_of(moment)
        journal = self._journal
        for household in households:
            if household == EVERYONE:
                if journal is not None and (EVERYONE, day) not in journal:
                    journal[(EVERYONE, day)] = 0.0 if day in self._unknown else None
                self._unknown.add(day)
                continue
            days = self._days.setdefault(household, {})
            if journal is not None and (household, day) not in journal:
                journal[(household, day)] = days.get(day)
            days[day] = days.get(day, 0.0) + rho

    # A pass's charges are made as it decides (a later window of the pass must see them), before its records are
    # written; if the write is refused nothing was released, and the charges are undone exactly (restored, not
    # subtracted), so memory holds what the log rebuilds at the next start (red team 9a, R9a-6).
    def begin(self) -> None:
        self._journal = {}

    def keep(self) -> None:
        self._journal = None

    def undo(self) -> None:
        journal, self._journal = self._journal or {}, None
        for (household, day), before in journal.items():
            if household == EVERYONE:
                if before is None:
                    self._unknown.discard(day)
                continue
            days = self._days.get(household, {})
            if before is None:
                days.pop(day, None)
                if not days:
                    self._days.pop(household, None)
            else:
                days[day] = before

    def forget_before(self, moment: float) -> None:
        first = self.first_day(moment)
        self._unknown = {day for day in self._unknown if day >= first}
        for household in list(self._days):
            days = {d: r for d, r in self._days[household].items() if d >= first}
            if days:
                self._days[household] = days
            else:
                del self._days[household]

    def of(self, household: str, moment: float, delta: float) -> dict[str, Any]:
        """The household's own view: what it has spent in the horizon, of what cap, day by day."""
        first = self.first_day(moment)
        days = {d: r for d, r in sorted(self._days.get(household, {}).items()) if d >= first}
        unknown = self._unknown_in_horizon(moment)
        for day in unknown:  # what makes the total the cap (the known charges of the other days stay as they are)
            days[day] = max(days.get(day, 0.0), self.cap_rho - sum(r for d, r in days.items() if d != day))
        days = dict(sorted(days.items()))
        spent = self.spent(household, moment)
        return {"horizon_days": self.horizon_days, "cap_rho": self.cap_rho, "spent_rho": round(spent, 9),
                "remaining_rho": round(max(0.0, self.cap_rho - spent), 9), "delta": delta,
                "spent_epsilon": round(epsilon_of_rho(spent, delta), 6),
                "cap_epsilon": round(epsilon_of_rho(self.cap_rho, delta), 6),
                "days": [{"day": d * DAY, "rho": round(r, 9), **({"lost_records": True} if d in unknown else {})}
                         for d, r in days.items()]}
