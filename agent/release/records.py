"""What a release says, as data: the bodies of fine releases and of the coarse windows derived from them.

No I/O. A fine release is one window of a level's finest width over one cohort; every wider window is derived
from the released fine windows it covers and from nothing else (its energy is their sum, its mean power their
mean), so no two widths can disagree about any household. A wider window is released only when every fine
window in it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from drivers.reading import iso

Json = dict[str, Any]  # a release's body, as it is written and served
# What a trigger's statistics count, per household and window (0 or 1 each): every release of them states each.
TRIGGER_COUNTS = ("evaluations", "fired", "errors", "delivered", "failed")


class RefusalCode(StrEnum):
    """Why a window is not released (a Refusal's `error`), and what it means to the organization: the one
    declaration the release module refuses with, the document's Refusal schema lists (agent/api/records.py) and an
    answer's status comes from (agent/api/errors.py). A str: records written before keep theirs."""

    meaning: str

    def __new__(cls, code: str, meaning: str) -> RefusalCode:
        member = str.__new__(cls, code)
        member._value_, member.meaning = code, meaning
        return member

    COHORT_TOO_SMALL = ("cohort_too_small",
                        "fewer than k_min households (not related to the organization) in the cohort")
    ISOLATING = ("isolating", "with sums already released for the same period, this one would single out a "
                              "household (the audit of exact sums)")
    AUDIT_RESUMING = "audit_resuming", "exact windows wait one audit period after a restart"
    NOT_SETTLED = ("not_settled",
                   "the window has not ended, or a consent change it depends on is still being written")
    NOT_RELEASED = ("not_released",
                    "the window was never decided (before the device started, while it was down, or too old)")
    INCOMPLETE = "incomplete", "a shorter window inside this one was not released"
    STORAGE_ERROR = "storage_error", "the release could not be written durably"
    DP_UNAVAILABLE = "dp_unavailable", "a noisy level on a device without OpenDP"
    # a trigger's statistics only
    NOT_PERMITTED = "not_permitted", "a trigger's statistics: the organization or its level no longer exists"
    DAY_DECIDED = "day_decided", "a trigger's statistics: the window came after its UTC day was decided"
    RELEASED_DAILY = "released_daily", "a trigger's statistics: a noisy level's are released once a UTC day"


@dataclass(frozen=True)
class Refusal:
    """A window not released, and why. Counts only where they are facts the organization may know anyway."""

    error: str
    detail: str
    households: int | None = None
    missing: int | None = None

    def public(self) -> Json:
        out: Json = {"error": self.error, "detail": self.detail}
        if self.households is not None:
            out["households"] = self.households
        if self.missing is not None:
            out["missing"] = self.missing
        return out

    def to_json(self) -> Json:
        return {"refused": self.public()}

    @classmethod
    def from_json(cls, doc: Json) -> Refusal:
        r = doc["refused"]
        return cls(r["error"], r["detail"], r.get("households"), r.get("missing"))


NOT_RELEASED = Refusal(RefusalCode.NOT_RELEASED, "this window was not released: it ended before the device started "
                       "deciding windows, while it was down, or is older than the release log keeps")


def fine_body(window: str, start: int, width: int, tag: str | None, households: int, consumption: float,
              production: float | None, privacy: Json) -> Json:
    body: Json = {
        "window": window,
        "window_start": iso(start),
        "window_end": iso(start + width),
        "households": households,
        "tag": tag,
        "consumption_w": round(consumption, 3),
        "production_w": None if production is None else round(production, 3),
        "net_w": None if production is None else round(consumption - production, 3),
        # from mean power: windows are short and meters' registers tick in whole Wh
        "energy_import_wh": round(consumption * width / 3600, 3),
        "energy_export_wh": None if production is None else round(production * width / 3600, 3),
        "privacy": privacy,
    }
    if tag is not None:
        body["mean_w"] = round(consumption / households, 3) if households else None
    return body


def derive(window: str, start: int, width: int, fine: list[Json], privacy: Json) -> Json:
    """A wider window from the fine releases that cover it (all released, in order)."""
    m = len(fine)
    consumption = sum(f["consumption_w"] for f in fine) / m
    productions = [f["production_w"] for f in fine]
    production = None if any(p is None for p in productions) else sum(productions) / m
    households = [f["households"] for f in fine]
    body: Json = {
        "window": window,
        "window_start": iso(start),
        "window_end": iso(start + width),
        "households": min(households),
        "households_max": max(households),
        "tag": fine[0]["tag"],
        "consumption_w": round(consumption, 3),
        "production_w": None if production is None else round(production, 3),
        "net_w": None if production is None else round(consumption - production, 3),
        "energy_import_wh": round(sum(f["energy_import_wh"] for f in fine), 3),
        "energy_export_wh": None if production is None else round(sum(f["energy_export_wh"] for f in fine), 3),
        "privacy": privacy,
    }
    if fine[0]["tag"] is not None:
        means = [f.get("mean_w") for f in fine]
        body["mean_w"] = None if any(v is None for v in means) else round(sum(v for v in means if v is not None) / m, 3)
    return body
