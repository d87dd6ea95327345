"""Decoding a request body: the typed schema (agent/api/bodies.py, msgspec) beside what it replaced (json.loads and
the hand-written json_object check of types, required and unknown fields), in the same run, same bodies.

Prints microseconds per body (best of 5 runs) and the ratio; asserts nothing. A Pi 4 core is about 4x slower.
Usage: python bench/bodies.py [iterations]
"""

from __future__ import annotations

import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.api.bodies import SubscribeIn, decode  # noqa: E402
from agent.api.common import ApiError, json_object  # noqa: E402

BODY = json.dumps({"endpoint": "https://example.com/hook", "interval": 60, "window": "15m", "tag": None,
                   "filter": {"deadband": {"fields": ["consumption_w"], "absolute": 50}}}).encode()
BAD = json.dumps({"endpoint": "https://example.com/hook", "interval": 60, "windw": "15m"}).encode()
FIELDS = {"endpoint": str, "interval": (int, float), "window": str, "tag": (str, type(None)),
          "filter": (dict, type(None))}


def by_hand(raw: bytes) -> object:
    return json_object(json.loads(raw), FIELDS, ("endpoint", "interval"))


def refused(check, raw: bytes) -> None:
    try:
        check(raw)
    except ApiError:
        return
    raise AssertionError("accepted a bad body")


def per_body_us(fn, n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    for label, raw, schema, hand in (
            ("valid body", BODY, lambda: decode(BODY, SubscribeIn), lambda: by_hand(BODY)),
            ("refused body", BAD, lambda: refused(lambda r: decode(r, SubscribeIn), BAD),
             lambda: refused(by_hand, BAD))):
        typed, baseline = per_body_us(schema, n), per_body_us(hand, n)
        print(f"{label} ({len(raw)} bytes): typed schema {typed:.2f} µs, json.loads + json_object {baseline:.2f} µs "
              f"(baseline), {typed / baseline:.2f}x")


if __name__ == "__main__":
    main()
