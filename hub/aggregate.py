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
from enum import StrEnum



class AreaRefusal(StrEnum):
    """Why an area's window is not released (its `error`)."""

    TOO_FEW_DEVICES = "too_few_devices"  # fewer than min_devices of the area released it
    NO_DATA = "no_data"  # no device of the area reported it (a subscription's push, after its grace time)


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
    """The area's answer for one window: {"released": body} or {"refused": {...}}. Only the area's devices
    count (`expected`: the operator's list of them)."""
    members = {d: c for d, c in devices.items() if d in expected}
    released = {d: c for d, c in members.items() if "refused" not in c}
    base = {"area": area, "window": window, "window_start": stamp(start), "window_end": stamp(start + width),
            "tag": tag, "devices": len(released), "devices_refused": len(members) - len(released),
            "devices_expected": len(expected), "complete": len(members) >= len(expected)}
    if len(released) < min_devices:
        return {"refused": {**base, "error": AreaRefusal.TOO_FEW_DEVICES,
                            "detail": f"{len(released)} device(s) of the area released this window; the hub "
                                      f"releases an area's window only when at least {min_devices} did"}}
    parts = list(released.values())
    body = dict(base)
    body["households"] = sum(p["households"] for p in parts)
    for key in SUMMED:
        values = [p.get(key) for p in parts]
        body[key] = None if any(v is None for v in values) else round(sum(values), 3)
    body["net_w"] = (None if body["production_w"] is None
                     else round(body["consumption_w"] - body["production_w"], 3))
    if tag is not None:
        body["mean_w"] = round(body["consumption_w"] / body["households"], 3) if body["households"] else None
    kinds = sorted({p["kind"] for p in parts})
    privacy = {"kind": kinds[0] if len(kinds) == 1 else "mixed",
               "combined": "a sum of the devices' own releases over disjoint households; each part was released "
                           "by its device (k_min, audit or noise there)"}
    noisy = [p["noise_sd_w"] for p in parts if p.get("noise_sd_w") is not None]
    if noisy:
        privacy["noise_sd_w"] = round(math.sqrt(sum(sd * sd for sd in noisy)), 3)
    body["privacy"] = privacy
    return {"released": body}
