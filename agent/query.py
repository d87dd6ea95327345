"""The same aggregate-by-tag question to several Edge devices, answers combined (MISSION.md's second
reference: an energy company averaging an appliance across homes to set a tariff).

Each device answers `GET /data?window=1h&tag=TAG&since=&until=` from its release log (agent/release/): per
window, the sum of its cohort's mean appliance power (`consumption_w`) and how many households that is, or a
refusal (fewer than `k_min` households, a window not released...). TAG must be a word of each device's tag
vocabulary (`[privacy] tags`); a device refuses others with 400 unknown_tag. Sums and counts compose: the mean
over all devices is sum(consumption_w) / sum(households). An exact level's sums are exact; a noisy level's are
noised once per window (only for the tags its level releases) and stay unbiased, so they compose the same way,
with the noise of each window added. No device ever sends one home's value, and neither does this client.

The tariff example: four readings a day, 6 h apart. The day is cut into four 6-hour slots
(00-06, 06-12, 12-18, 18-24 UTC); each slot's mean is combined from every hourly window released in
it, on every device, and `tariff = mean * 0.5 + 5`.

    edge-agent query --device http://edge-a:8080 --device http://edge-b:8080 --key KEY_A --key KEY_B \\
        --tag fridge --date 2026-01-15

In a fleet (hub/), the hub has already summed the devices of an area (each part released by its device), so one
question to the hub replaces the fan-out, with the organization's one key:

    edge-agent query --hub http://hub:8090 --area north --key KEY --tag fridge --date 2026-01-15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where a query runs (the CLI starts without it)
    import aiohttp

SLOT_HOURS = 6
SLOTS = 24 // SLOT_HOURS


def tariff(mean_w: float) -> float:
    return mean_w * 0.5 + 5


@dataclass
class DeviceAnswer:
    device: str
    windows: list[dict[str, Any]] = field(default_factory=list)  # released windows
    refused: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    noisy: bool = False  # the device's level is noisy: its sums carry differential-privacy noise


@dataclass
class Slot:
    start: datetime
    end: datetime
    sum_w: float = 0.0
    households: int = 0  # household-windows
    windows: int = 0

    @property
    def mean_w(self) -> float | None:
        return self.sum_w / self.households if self.households else None

    def public(self) -> dict[str, Any]:
        mean = self.mean_w
        return {"start": self.start.isoformat().replace("+00:00", "Z"),
                "end": self.end.isoformat().replace("+00:00", "Z"), "windows": self.windows,
                "household_windows": self.households,
                "mean_w": None if mean is None else round(mean, 3),
                "tariff": None if mean is None else round(tariff(mean), 4)}


def combine(answers: list[DeviceAnswer], day: date) -> dict[str, Any]:
    """Sums and counts of every device's released windows, per 6-hour slot and for the whole day."""
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    slots = [Slot(start + timedelta(hours=i * SLOT_HOURS), start + timedelta(hours=(i + 1) * SLOT_HOURS))
             for i in range(SLOTS)]
    total_sum, total_n = 0.0, 0
    for answer in answers:
        for window in answer.windows:
            moment = datetime.fromisoformat(window["window_start"])
            index = int((moment - start).total_seconds() // (SLOT_HOURS * 3600))
            if not 0 <= index < SLOTS:
                continue
            slot = slots[index]
            slot.sum_w += window["consumption_w"]
            slot.households += window["households"]
            slot.windows += 1
            total_sum += window["consumption_w"]
            total_n += window["households"]
    mean = total_sum / total_n if total_n else None
    return {
        "date": day.isoformat(),
        "devices": [{"device": a.device, "released": len(a.windows), "refused": len(a.refused),
                     "error": a.error, "noisy": a.noisy} for a in answers],
        "slots": [s.public() for s in slots],
        "mean_w": None if mean is None else round(mean, 3),
        "tariff": None if mean is None else round(tariff(mean), 4),
    }


async def ask_device(http: aiohttp.ClientSession, device: str, key: str, tag: str, since: float, until: float,
                     window: str = "1h") -> DeviceAnswer:
    url = device.rstrip("/") + "/data"
    params = {"window": window, "tag": tag, "since": str(since), "until": str(until)}
    answer = DeviceAnswer(device)
    try:
        async with http.get(url, params=params, headers={"Authorization": f"Bearer {key}"}) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                answer.error = f"{resp.status} {body.get('error', '')}: {body.get('detail', '')}".strip()
                return answer
    except Exception as err:  # one device down must not stop the others
        answer.error = f"unreachable: {err.__class__.__name__}: {err}"
        return answer
    answer.windows = [w for w in body.get("released", []) if w.get("households")]
    answer.refused = body.get("refused", [])
    answer.noisy = any(w.get("privacy", {}).get("kind") == "noisy" for w in answer.windows)
    return answer


async def query_devices(devices: list[str], keys: list[str], tag: str, day: date,
                        window: str = "1h", timeout: float = 30.0) -> dict[str, Any]:
    """Ask every device (keys: one per device, or one for all) and combine the answers."""
    import aiohttp

    if len(keys) not in (1, len(devices)):
        raise ValueError("give one --key for all devices or one per --device, in the same order")
    keys = keys * len(devices) if len(keys) == 1 else keys
    since = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
    until = since + 86400
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        answers = await asyncio.gather(*(ask_device(http, d, k, tag, since, until, window)
                                         for d, k in zip(devices, keys)))
    result = combine(list(answers), day)
    result["tag"] = tag
    return result


async def query_hub(hub: str, areas: list[str], key: str, tag: str, day: date, window: str = "1h",
                    timeout: float = 30.0) -> dict[str, Any]:
    """The same question to a hub, per area: each area's windows are already the sum over its devices."""
    import aiohttp

    since = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        answers = await asyncio.gather(*(ask_device(http, f"{hub.rstrip('/')}/areas/{area}", key, tag, since,
                                                    since + 86400, window) for area in areas))
    result = combine(list(answers), day)
    result["tag"] = tag
    return result


def format_result(result: dict[str, Any]) -> str:
    lines = [f"tag {result['tag']!r} on {result['date']} (UTC), 6-hour slots:"]
    for d in result["devices"]:
        state = f"error: {d['error']}" if d["error"] else \
            f"{d['released']} window(s) released, {d['refused']} refused" + (" (DP noise)" if d["noisy"] else "")
        lines.append(f"  device {d['device']}: {state}")
    for s in result["slots"]:
        label = f"{s['start'][11:16]}-{s['end'][11:16] if s['end'][11:16] != '00:00' else '24:00'}"
        if s["mean_w"] is None:
            lines.append(f"  {label}  no released window")
        else:
            lines.append(f"  {label}  mean {s['mean_w']:.1f} W over {s['household_windows']} household-hours  "
                         f"tariff = {s['mean_w']:.1f} * 0.5 + 5 = {s['tariff']:.2f}")
    if result["mean_w"] is None:
        lines.append("combined: nothing released")
    else:
        lines.append(f"combined mean {result['mean_w']:.1f} W; tariff = mean * 0.5 + 5 = {result['tariff']:.2f}")
    return "\n".join(lines)


def cmd_query(args: argparse.Namespace) -> int:
    try:
        day = date.fromisoformat(args.date) if args.date else (datetime.now(timezone.utc) - timedelta(days=1)).date()
    except ValueError:
        print(f"edge-agent: --date must be YYYY-MM-DD, got {args.date!r}", file=sys.stderr)
        return 2
    if bool(args.device) == bool(args.hub) or bool(args.hub) != bool(args.area):
        print("edge-agent: ask devices (--device ...) or a hub (--hub URL --area AREA ...), not both",
              file=sys.stderr)
        return 2
    try:
        if args.hub:
            if len(args.key) != 1:
                raise ValueError("a hub takes the organization's one --key")
            result = asyncio.run(query_hub(args.hub, args.area, args.key[0], args.tag, day, args.window))
        else:
            result = asyncio.run(query_devices(args.device, args.key, args.tag, day, args.window))
    except ValueError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    if all(d["error"] for d in result["devices"]):
        print("edge-agent: no device answered", file=sys.stderr)
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", action="append", help="an Edge device's base URL (repeat)")
    parser.add_argument("--hub", help="a fleet hub's base URL (edge-hub serve), instead of --device")
    parser.add_argument("--area", action="append", help="with --hub: an area to ask (repeat)")
    parser.add_argument("--key", action="append", required=True,
                        help="the organization's API key: one for all devices, or one per --device in order")
    parser.add_argument("--tag", required=True, help="the channel tag, a word of the devices' vocabulary, e.g. fridge")
    parser.add_argument("--date", help="the UTC day, YYYY-MM-DD (default: yesterday)")
    parser.add_argument("--window", default="1h", choices=["15m", "1h"], help="the devices' window (default 1h)")
    parser.add_argument("--json", action="store_true", help="print the combined result as JSON")
