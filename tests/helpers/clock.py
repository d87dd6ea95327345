"""Test time: the usual start instant and a clock the test steps."""

from __future__ import annotations

import math

HOUR = math.floor(1_790_000_000 / 3600) * 3600.0  # a whole hour (2026-09-21T14:00Z)
T0 = HOUR + 10.0  # a little after a whole hour: where most tests' clocks start


class StepClock:
    """The agent's clock, stepped by the test: windows close when the test says so."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds
