"""The device's clock: Unix seconds. The runtime (agent/service.py) owns the one every service is given; tests pass
one they step by hand."""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
