"""What a release says, as data: the bodies of fine releases and of the coarse windows derived from them.

No I/O. A fine release is one window of a level's finest width over one cohort; every wider window is derived
from the released fine windows it covers and from nothing else (its energy is their sum, its mean power their
mean), so no two widths can disagree about any household. A wider window is released only when every fine
window in it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.reading import iso

Json = dict[str, Any]  # a release's body, as it is written and served
# What a trigger's statistics count, per household and window (0 or 1 each): every release of them states each.
TRIGGER_COUNTS = ("evaluations", "fired", "errors", "delivered", "failed")


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


NOT_RELEASED = Refusal("not_released", "this window was not released: it ended before the device started "
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
