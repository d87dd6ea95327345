"""Decoding a request body: the typed schemas (agent/api/bodies.py, msgspec) beside what they replaced (json.loads and
the hand-written json_object check of types, required and unknown fields, kept here as the baseline), in the same
run, same bodies. Then reading edge.toml's tables (agent/config.py's parse_config, msgspec.convert into the typed
schemas) beside the hand-written parser it replaced, taken from the repository's history (HAND_PARSER; skipped
where git or that commit is not there).

Then POST /readings' bodies (one reading; a batch of 100): agent/ingest.py's msgspec schema of the Reading table
beside the hand-written checks it replaced (HAND_INGEST's agent/ingest.py, from git), both from the raw bytes as
the handler has them. With --instructions: those instructions per body under valgrind's callgrind (user space, which
a shared machine does not disturb), each side in a process of its own at N and 2N bodies, the difference.

Prints microseconds per body (best of 5 runs) and the ratio; asserts nothing. A Pi 4 core is about 4x slower.
Usage: python bench/bodies.py [iterations] | --instructions [bodies, default 2000]
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import subprocess
import sys
import timeit
import tomllib
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402

from agent.api.bodies import ApplianceIn, NotifyIn, SubscribeIn, TriggerIn, decode  # noqa: E402
from agent.api.common import ApiError  # noqa: E402
from agent.config import parse_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HAND_PARSER = "45af7e0"  # the last commit with the hand-written parse_config
HAND_INGEST = "809862c"  # the last commit with the hand-written checks of a posted reading


def json_object(payload, allowed: dict[str, type | tuple], required: tuple[str, ...] = ()) -> dict:
    """The hand-written check the schemas replaced (agent/api/common.py until session 6), as it was."""
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    unknown = sorted(set(payload) - set(allowed))
    if unknown:
        raise ApiError(422, "invalid", f"unknown field {unknown[0]!r}")
    for name in required:
        if name not in payload:
            raise ApiError(422, "invalid", f"{name} is required")
    for name, value in payload.items():
        kinds = allowed[name] if isinstance(allowed[name], tuple) else (allowed[name],)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise ApiError(422, "invalid", f"{name} has the wrong type")
    return payload


def _raw(body: dict) -> bytes:
    return json.dumps(body).encode()


SOURCE = base64.b64encode(b"def condition(household_power_consumption):\n"
                          b"    return household_power_consumption > 3000\n")
# (name, schema, valid body, refused body, the hand-written check's fields and required ones)
CASES = (
    ("subscription", SubscribeIn,
     {"endpoint": "https://example.com/hook", "interval": 60, "window": "15m", "tag": None,
      "filter": {"deadband": {"fields": ["consumption_w"], "absolute": 50}}},
     {"endpoint": "https://example.com/hook", "interval": 60, "windw": "15m"},
     {"endpoint": str, "interval": (int, float), "window": str, "tag": (str, type(None)), "filter": (dict, type(None))},
     ("endpoint", "interval")),
    ("trigger", TriggerIn,
     {"parameters": ["household_power_consumption"], "function": SOURCE.decode(), "interval": 600, "window": "1m",
      "action": {"type": "notification", "title": "Power", "content": "You use more than 3 kW"}},
     {"parameters": ["household_power_consumption"], "function": SOURCE.decode(), "interval": "600",
      "action": {"type": "notification", "content": "x"}},
     {"parameters": list, "function": str, "interval": (int, float), "action": dict, "window": str,
      "description": str}, ("parameters", "function", "interval", "action")),
    ("notify", NotifyIn, {"url": "https://ntfy.sh/my-topic", "kind": "ntfy"}, {"url": 5},
     {"url": str, "kind": str}, ("url",)),
    ("appliance", ApplianceIn,
     {"name": "EV charger", "kind": "ev_charger", "driver": "shelly", "address": "http://192.168.1.50",
      "channel": 0, "allowed_organizations": ["org_0123456789ab"]},
     {"name": "EV charger", "driver": "shelly", "address": "http://192.168.1.50", "chanel": 0},
     {"name": str, "kind": (str, type(None)), "driver": str, "address": str, "channel": (int, type(None)),
      "allowed_organizations": list}, ("name", "driver", "address")),
)


def refused(check, raw: bytes) -> None:
    try:
        check(raw)
    except ApiError:
        return
    raise AssertionError("accepted a bad body")


def per_body_us(fn, n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def from_git(commit: str, path: str, name: str):
    """The module at `path` as it was at `commit`, as a module of its own (None without git or that commit)."""
    try:
        source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True,
                                check=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)
    return module


def hand_parser():
    """The hand-written agent/config.py of HAND_PARSER."""
    return from_git(HAND_PARSER, "agent/config.py", "hand_config")


def config_files() -> list[tuple[str, dict]]:
    example = tomllib.loads((REPO / "image/boot/edge.toml.example").read_text())
    example.pop("network")
    levels = {"supplier": {"kind": "noisy", "anonymized": {"k": 20}, "dp": {"rho": 0.001, "tags": ["ev"]}},
              "research": {"parameters": ["neighborhood_*"], "windows": ["1h"], "kind": "noisy"}}
    meters = [{"id": f"house-{i}", "port": f"/dev/ttyUSB{i}", "profile": "dsmr5"} for i in range(4)]
    return [("the image's example", example), ("+ 2 levels and 4 meters", {**example, "levels": levels,
                                                                          "meters": meters})]


def bench_config(n: int) -> None:
    hand = hand_parser()
    for label, data in config_files():
        ours = per_body_us(lambda: parse_config(data), n)
        if hand is None:
            print(f"edge.toml, {label}: typed schemas {ours:.1f} µs (no baseline: git or {HAND_PARSER} missing)")
            continue
        same = [msgspec.to_builtins(parse(data), enc_hook=str) for parse in (hand.parse_config, parse_config)]
        assert same[0] == same[1], "the typed schemas read it differently"
        baseline = per_body_us(lambda: hand.parse_config(data), n)
        print(f"edge.toml, {label}: typed schemas {ours:.1f} µs, hand-written parse_config {baseline:.1f} µs "
              f"(baseline), {ours / baseline:.2f}x")


# --- POST /readings ---------------------------------------------------------------------------------------------
NOW = datetime(2026, 12, 2, 12, tzinfo=timezone.utc)
TAGS = ("fridge", "ev")


def reading(i: int) -> dict:
    """What a household's datalogger posts: a few powers, a voltage, the registers and a tagged channel."""
    return {"timestamp": f"2026-12-02T11:{i // 60 % 60:02d}:{i % 60:02d}Z", "power_import_w": 420.5 + i,
            "power_export_w": 0, "voltage_l1_v": 231.2, "energy_import_wh": 12_345_678 + i, "tariff": 2,
            "channels": {"fridge": 80.5}}


READINGS = (("one reading", _raw(reading(0))), ("a batch of 100", _raw({"readings": [reading(i) for i in range(100)]})))


def readings_sides():
    """(label, decode(raw)) for the typed schema and, where git has it, the hand-written checks (HAND_INGEST's)."""
    from agent.ingest import readings_from_json_bytes

    sides = [("msgspec schema", lambda raw: readings_from_json_bytes(raw, "m", NOW, TAGS))]
    hand = from_git(HAND_INGEST, "agent/ingest.py", "hand_ingest")
    if hand is not None:  # the handler then: read_json (msgspec's untyped decode), then the checks
        untyped = msgspec.json.Decoder()
        sides.append(("hand-written checks", lambda raw: hand.readings_from_payload(untyped.decode(raw), "m", NOW,
                                                                                     TAGS)))
    return sides


def bench_readings(n: int) -> None:
    sides = readings_sides()
    for label, raw in READINGS:
        runs = max(1, n // (100 if b"readings" in raw else 1))
        same = [[r.to_json() for r in decode(raw)] for _, decode in sides]
        assert all(s == same[0] for s in same), "the two read the readings differently"
        took = [per_body_us(lambda decode=decode: decode(raw), runs) for _, decode in sides]
        figures = ", ".join(f"{name} {us:.1f} µs" for (name, _), us in zip(sides, took))
        ratio = f" (baseline), {took[0] / took[1]:.2f}x" if len(took) > 1 else f" (no baseline: {HAND_INGEST} missing)"
        print(f"POST /readings, {label} ({len(raw)} bytes): {figures}{ratio}")


def readings_instructions(bodies: int) -> None:
    print(f"POST /readings' body, instructions per body (callgrind, user space; {bodies} and {2 * bodies} bodies "
          "per run, a batch's a fifth of that, the difference)")
    for label, raw in READINGS:
        counted, n = {}, bodies if b"readings" not in raw else max(1, bodies // 5)  # a batch: 100 readings
        for side in range(len(readings_sides())):
            runs = [_instructions(side, label, count) for count in (n, 2 * n)]
            counted[readings_sides()[side][0]] = (runs[1] - runs[0]) / n
        figures = ", ".join(f"{name} {count:,.0f}" for name, count in counted.items())
        values = list(counted.values())
        ratio = f" (baseline), {values[0] / values[1]:.2f}x" if len(values) > 1 else ""
        print(f"  {label} ({len(raw)} bytes): {figures}{ratio}")


def _instructions(side: int, label: str, bodies: int) -> int:
    run = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
                          "--run", str(side), label, str(bodies)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONHASHSEED": "0"})  # the same start-up at N and 2N
    if run.returncode:
        raise RuntimeError(f"callgrind failed: {run.stderr[-2000:]}")
    return int(re.search(r"Collected : (\d+)", run.stderr)[1])


def run_readings(side: int, label: str, bodies: int) -> None:
    """What --instructions counts: `bodies` decodes of one side (its set-up is the same at N and 2N)."""
    decode, raw = readings_sides()[side][1], dict(READINGS)[label]
    for _ in range(bodies):
        decode(raw)


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        run_readings(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return
    if "--instructions" in sys.argv:
        args = [a for a in sys.argv[1:] if not a.startswith("--")]
        readings_instructions(int(args[0]) if args else 2000)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    for name, kind, good, bad, fields, required in CASES:
        def typed(raw: bytes, kind=kind) -> object:
            return decode(raw, kind)

        def by_hand(raw: bytes, fields=fields, required=required) -> object:
            return json_object(json.loads(raw), fields, required)

        ok, wrong = _raw(good), _raw(bad)
        for label, raw, schema, hand in (
                ("valid", ok, lambda: typed(ok), lambda: by_hand(ok)),
                ("refused", wrong, lambda: refused(typed, wrong), lambda: refused(by_hand, wrong))):
            ours, baseline = per_body_us(schema, n), per_body_us(hand, n)
            print(f"{name} body, {label} ({len(raw)} bytes): typed schema {ours:.2f} µs, json.loads + json_object "
                  f"{baseline:.2f} µs (baseline), {ours / baseline:.2f}x")
    bench_readings(max(1, n // 4))
    bench_config(max(1, n // 20))


if __name__ == "__main__":
    main()
