"""The hub's arithmetic, no I/O: what one device's release contributes, and an area's window from them.

A device's record for (organization, window, tag) is already a release that organization may see (the device's
release module decided it: k_min households, its audit or its noise). The hub keeps of it only the numbers it
sums (never a household anything: a device sends none) and serves their sum over the devices of an area, with
how many devices and households are behind it, once at least `min_devices` devices released the window.
Households are disjoint across devices (each meter is read by one device), so the counts add up and the
guarantee of each part holds for the sum: exact parts are each over >= k_min households; noisy parts' noise adds
(its standard deviation is the root of the sum of the squares), and a household's privacy loss is the one its
own device charged.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import msgspec
from msgspec import UNSET

from hub.answers import AreaPrivacy, AreaRefusal, RefusedAreaWindow, ReleasedAreaWindow

SUMMED = ("consumption_w", "production_w", "energy_import_wh", "energy_export_wh")


def contribution(record: dict) -> dict:
    """What the hub keeps of one device's record: the sums and counts, or the refusal's code."""
    if "refused" in record:
        return {"refused": str(record["refused"])[:64]}
    body = record["body"]
    privacy = body.get("privacy") or {}
    out = {"households": int(body.get("households") or 0), "kind": str(privacy.get("kind", "exact"))}
    for key in SUMMED:
        value = body.get(key)
        out[key] = None if value is None else float(value)
    if privacy.get("noise_sd_w") is not None:
        out["noise_sd_w"] = float(privacy["noise_sd_w"])
    return out


def stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat().replace("+00:00", "Z")


def area_window(area: str, window: str, width: int, start: int, tag: str | None, devices: dict[str, dict],
                expected: tuple[str, ...], min_devices: int) -> dict:
    """The area's answer for one window: {"released": body} or {"refused": {...}}, built as its Struct
    (hub/answers.py: the fields are named there once). Only the area's devices count (`expected`: the operator's
    list of them)."""
    members = {d: c for d, c in devices.items() if d in expected}
    released = {d: c for d, c in members.items() if "refused" not in c}
    part = {"area": area, "window": window, "window_start": _moment(start), "window_end": _moment(start + width),
            "tag": tag, "devices": len(released), "devices_refused": len(members) - len(released),
            "devices_expected": len(expected), "complete": len(members) >= len(expected)}
    if len(released) < min_devices:
        return {"refused": msgspec.to_builtins(RefusedAreaWindow(
            **part, error=AreaRefusal.TOO_FEW_DEVICES,
            detail=f"{len(released)} device(s) of the area released this window; the hub releases an area's window "
                   f"only when at least {min_devices} did"))}
    parts = list(released.values())
    households = sum(p["households"] for p in parts)
    sums = {}
    for key in SUMMED:
        values = [p.get(key) for p in parts]
        sums[key] = None if any(v is None for v in values) else round(sum(values), 3)
    net = None if sums["production_w"] is None else round(sums["consumption_w"] - sums["production_w"], 3)
    mean = UNSET if tag is None else round(sums["consumption_w"] / households, 3) if households else None
    kinds = sorted({p["kind"] for p in parts})
    noisy = [p["noise_sd_w"] for p in parts if p.get("noise_sd_w") is not None]
    privacy = AreaPrivacy(kind=kinds[0] if len(kinds) == 1 else "mixed",
                          combined="a sum of the devices' own releases over disjoint households; each part was "
                                   "released by its device (k_min, audit or noise there)",
                          noise_sd_w=round(math.sqrt(sum(sd * sd for sd in noisy)), 3) if noisy else UNSET)
    return {"released": msgspec.to_builtins(ReleasedAreaWindow(**part, households=households, **sums, net_w=net,
                                                               mean_w=mean, privacy=privacy))}


def _moment(at: float) -> datetime:
    return datetime.fromtimestamp(at, timezone.utc)
