"""Differentially private sums through OpenDP, and nothing home-made.

A release is OpenDP's own pipeline: the households' values as integer watts, `then_clamp((0, U))`,
`then_sum()`, then `then_laplace(scale)` (discrete Laplace, pure epsilon-DP) or `then_gaussian(scale)`
(discrete Gaussian, zero-concentrated DP, reported as (epsilon, delta)). The scale is calibrated by
OpenDP's `binary_search_param` so that the measurement's own privacy map gives at most the epsilon asked.

The privacy unit: one household's readings in one window, added or removed (OpenDP's symmetric distance,
d_in = 1); the clamp U bounds what one household can move a sum (the Laplace scale is U / epsilon). Replacing one
household's value by another is two such steps: at most twice the stated epsilon (group privacy).

OpenDP ships wheels for x86_64 and 64-bit ARM (aarch64, 64-bit Raspberry Pi OS); on a platform without
one (32-bit armv7) it is not installed, `available()` is False and every DP release is refused with a
message saying why. There is no fallback: no noise is ever drawn anywhere but in OpenDP.
"""

from __future__ import annotations

import functools
import math
import platform
from dataclasses import dataclass

try:  # pragma: no cover - depends on the platform
    import opendp.prelude as _dp

    _dp.enable_features("contrib")
    OPENDP_VERSION = getattr(_dp, "__version__", "unknown")
    _IMPORT_ERROR: str | None = None
except ImportError as err:  # pragma: no cover
    _dp = None
    OPENDP_VERSION = None
    _IMPORT_ERROR = str(err)

D_IN = 1  # add or remove one household's value in one window
NOISES = ("laplace", "gaussian")
MECHANISM_NAMES = {"laplace": "discrete_laplace", "gaussian": "discrete_gaussian"}
UNIT = "one household's readings in one window (added or removed)"

_forced_unavailable = False  # tests: behave as on a platform without OpenDP


class DPUnavailable(Exception):
    pass


def available() -> bool:
    return _dp is not None and not _forced_unavailable


def unavailable_reason() -> str:
    return (f"differential privacy is unavailable on this device: OpenDP is not installed for "
            f"{platform.machine() or 'this platform'} ({_IMPORT_ERROR or 'disabled'}); OpenDP has wheels for "
            "x86_64 and 64-bit ARM only. DP levels never fall back to other noise.")


def set_unavailable(flag: bool) -> None:
    """For tests: act as a platform without OpenDP wheels."""
    global _forced_unavailable
    _forced_unavailable = flag


def _require() -> None:
    if not available():
        raise DPUnavailable(unavailable_reason())


def _space():
    return _dp.vector_domain(_dp.atom_domain(T="i64")), _dp.symmetric_distance()


def _chain(noise: str, clamp_w: int, scale: float):
    chain = _space() >> _dp.t.then_clamp((0, clamp_w)) >> _dp.t.then_sum()
    return chain >> (_dp.m.then_laplace(scale) if noise == "laplace" else _dp.m.then_gaussian(scale))


def _approx(measurement, delta: float):
    """A zCDP measurement as (epsilon, delta)-DP at a fixed delta, by OpenDP's conversion."""
    return _dp.c.make_fix_delta(_dp.c.make_zCDP_to_approxDP(measurement), delta)


@dataclass(frozen=True)
class Mechanism:
    """One noisy sum: what it adds and how much noise. Persisted (to_json) so that the budget's
    accountant can be replayed after a restart."""

    noise: str  # "laplace" or "gaussian"
    clamp_w: int
    scale: float

    @property
    def measure(self) -> str:
        return "pure" if self.noise == "laplace" else "zcdp"

    def measurement(self):
        _require()
        return _measurement(self.noise, self.clamp_w, self.scale)

    def loss(self) -> float:
        """epsilon (laplace) or rho (gaussian) for one household in one window, by OpenDP's map."""
        return float(self.measurement().map(D_IN))

    def epsilon(self, delta: float) -> float:
        if self.noise == "laplace":
            return self.loss()
        return float(_approx(self.measurement(), delta).map(D_IN)[0])

    def release(self, values_w: list[float]) -> int:
        """The noisy sum of the values (rounded to whole watts first)."""
        return int(self.measurement()([int(round(v)) for v in values_w]))

    def public(self, delta: float) -> dict:
        out = {"mechanism": MECHANISM_NAMES[self.noise], "clamp_w": [0, self.clamp_w], "scale": self.scale,
               "epsilon": round(self.epsilon(delta), 6)}
        if self.noise == "gaussian":
            out["delta"] = delta
            out["rho"] = round(self.loss(), 9)
        return out

    def to_json(self) -> dict:
        return {"noise": self.noise, "clamp_w": self.clamp_w, "scale": self.scale}

    @classmethod
    def from_json(cls, doc: dict) -> Mechanism:
        return cls(doc["noise"], int(doc["clamp_w"]), float(doc["scale"]))


@functools.lru_cache(maxsize=256)
def _measurement(noise: str, clamp_w: int, scale: float):
    return _chain(noise, clamp_w, scale)


@functools.lru_cache(maxsize=256)
def calibrate(noise: str, clamp_w: int, epsilon: float, delta: float = 1e-7) -> Mechanism:
    """The least noise whose OpenDP privacy map gives at most `epsilon` (at `delta`, for gaussian)."""
    _require()
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}")
    if noise == "laplace":
        scale = _dp.binary_search_param(lambda s: _chain(noise, clamp_w, s), d_in=D_IN, d_out=epsilon)
    else:
        # bounded below: far too little noise overflows OpenDP's conversion instead of failing the check
        bounds = (clamp_w / 14, clamp_w * (1 + 1000 / epsilon))
        scale = _dp.binary_search_param(lambda s: _approx(_chain(noise, clamp_w, s), delta), d_in=D_IN,
                                        d_out=(epsilon, delta), bounds=bounds)
    return Mechanism(noise, clamp_w, float(scale))


@functools.lru_cache(maxsize=256)
def calibrate_rho(clamp_w: int, rho: float) -> Mechanism:
    """The least discrete-Gaussian noise whose OpenDP zCDP map gives at most `rho` for one household."""
    _require()
    scale = _dp.binary_search_param(lambda s: _chain("gaussian", clamp_w, s), d_in=D_IN, d_out=rho,
                                    bounds=(clamp_w / 1000, clamp_w * (10 + 100 / math.sqrt(rho))))
    return Mechanism("gaussian", clamp_w, float(scale))


@dataclass(frozen=True)
class Histogram:
    """Noisy counts of how many values fall in each of `bins` categories (0..bins-1; others are dropped), as
    one OpenDP measurement: `then_count_by_categories` (L2 distance: adding or removing one household moves one
    count by one, whatever the number of bins) and the discrete Gaussian on the vector."""

    bins: int
    scale: float

    def measurement(self):
        _require()
        return _histogram(self.bins, self.scale)

    def loss(self) -> float:
        return float(self.measurement().map(D_IN))

    def release(self, categories: list[int]) -> list[int]:
        return [int(v) for v in self.measurement()(categories)]


@functools.lru_cache(maxsize=64)
def _histogram(bins: int, scale: float):
    counts = _space() >> _dp.t.then_count_by_categories(categories=list(range(bins)), null_category=False,
                                                        MO="L2Distance<int>")
    return counts >> _dp.m.then_gaussian(scale)


@functools.lru_cache(maxsize=64)
def calibrate_histogram(bins: int, rho: float) -> Histogram:
    """The least discrete-Gaussian noise on a histogram whose OpenDP zCDP map gives at most `rho` per household."""
    _require()
    scale = _dp.binary_search_param(lambda s: _histogram(bins, s), d_in=D_IN, d_out=rho,
                                    bounds=(1e-3, 10 + 100 / math.sqrt(rho)))
    return Histogram(bins, float(scale))


def standard_deviation(mechanism: Mechanism) -> float:
    """Of the noise: sqrt(2)*scale for Laplace, scale for Gaussian (the discrete ones are within a hair)."""
    return math.sqrt(2) * mechanism.scale if mechanism.noise == "laplace" else mechanism.scale
