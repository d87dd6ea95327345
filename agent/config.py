"""The agent's configuration: one TOML file, checked whole at start.

A bad file stops the agent with one line that names the key and says what is wrong with it.
Unknown keys are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.ingest import TAG  # the pattern a posted channel tag is checked against
from drivers.p1_reader import MeterSpec
from drivers.profiles import PROFILES

MIN_TOKEN_LENGTH = 16
_METER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    def __init__(self, key: str, reason: str, source: str = "config"):
        super().__init__(f"{source}: {key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class StorageConfig:
    path: Path = Path("/var/lib/edge")
    flush_seconds: float = 5.0
    retention_raw_s: float = 24 * 3600
    retention_rollup_s: float = 30 * 86400


WINDOWS = ("1s", "1m", "15m", "1h")
WINDOW_SECONDS = {"1s": 1, "1m": 60, "15m": 900, "1h": 3600}


# The default reference for t: household mean consumption per period, log-normal with median 400 W and sigma 0.8
# (typical of European standard load profiles over a year). An operator should declare the one of its own grid.
REFERENCE_CDF = ((0.0, 0.0), (100.0, 0.042), (200.0, 0.193), (300.0, 0.36), (400.0, 0.5), (500.0, 0.61),
                 (750.0, 0.784), (1000.0, 0.874), (1500.0, 0.951), (2000.0, 0.978), (3000.0, 0.994),
                 (4000.0, 0.998), (10000.0, 1.0))


@dataclass(frozen=True)
class Anonymization:
    """GET /data/anonymized for one level ([levels.NAME.anonymized]); k = 0: not offered."""

    k: int = 0  # every released equivalence class holds at least k records
    l: int = 1  # ...with at least l distinct sensitive values (l-diversity)
    t: float = 1.0  # ...whose distribution is within t of the reference's (t-closeness, EMD)
    resolution: str = "1h"  # the release grid: periods of "15m" or "1h" in whole UTC days
    value_bin_w: int = 500  # width of the consumption bins, in watts
    max_suppression: float = 0.2  # share of rows a release may suppress before it is refused
    min_cell: int = 2  # ...and every bin of a class holds at least this many rows (1: no such rule)
    # One pseudonym per household per day release: a linked series. Only for the custodian (dso), which holds the
    # readings anyway; every other level gets rows that nothing links across periods.
    linkable: bool = False
    # t is measured against this fixed distribution of a period's mean consumption (cumulative share of
    # households at or below each wattage, from [0, 0] to share 1), never against the release's own rows.
    reference_cdf: tuple[tuple[float, float], ...] = REFERENCE_CDF


@dataclass(frozen=True)
class DifferentialPrivacy:
    """How a noisy level's releases are noised ([levels.NAME.dp]); see agent/release/ and agent/privacy/dp.py.

    One noisy answer per released window, shared by every organization of the level with the same cohort; each
    charges every household of its cohort `rho` (or `epsilon`) on the per-household ledger ([privacy])."""

    noise: str = "gaussian"  # "gaussian" (zCDP: discrete Gaussian) or "laplace" (pure DP: discrete Laplace)
    rho: float = 5e-4  # gaussian: zCDP loss per released window, split evenly over its quantities
    epsilon: float = 0.03  # laplace: pure-DP loss per released window, split likewise (charged as epsilon^2/2)
    clamp_w: int = 3000  # a household's mean power in a window is clamped to [0, clamp_w]: fixed, never asked
    tag_clamp_w: int = 1000  # the same for tagged appliance channels
    tags: tuple[str, ...] = ()  # channel tags released at this level (each one charges its cohort per window)
    delta: float = 1e-7  # the delta at which zCDP losses are also stated as (epsilon, delta)
    # Grid quantities (agent/release/grid.py) this noisy level releases, off by default: each window that carries
    # them charges its cohort grid_rho more (exact levels release them whenever their parameters permit).
    grid: tuple[str, ...] = ()
    grid_rho: float = 5e-4

    def loss(self) -> float:
        """The zCDP loss of one released window (all its quantities)."""
        return self.rho if self.noise == "gaussian" else self.epsilon * self.epsilon / 2


@dataclass(frozen=True)
class Level:
    """What organizations of one permission level may use."""

    name: str
    parameters: tuple[str, ...]  # fnmatch patterns over parameter names
    windows: tuple[str, ...]  # aggregate windows of /data
    anonymized: Anonymization = Anonymization()
    dp: DifferentialPrivacy = DifferentialPrivacy()
    kind: str = "exact"  # "exact": audited exact sums (the custodian); "noisy": OpenDP noise and the ledger

    @property
    def noisy(self) -> bool:
        return self.kind == "noisy"

    @property
    def finest(self) -> str:
        """The one width this level's releases are computed at; its wider windows are sums of these."""
        return min(self.windows, key=WINDOW_SECONDS.__getitem__)


GRID_QUANTITIES = ("voltage", "long_power_failures")  # [levels.NAME.dp] grid

DEFAULT_LEVELS = {
    "dso": Level("dso", ("*",), WINDOWS, Anonymization(k=5, resolution="15m", value_bin_w=100,
                                                   min_cell=1, linkable=True)),
    "supplier": Level("supplier", ("neighborhood_*", "household_power_*", "household_net_power",
                                   "household_gas_*", "household_energy_*", "household_tariff",
                                   "household_channel_*"), ("15m", "1h"),
                      Anonymization(k=10, l=3, t=0.3, resolution="1h", value_bin_w=250), kind="noisy"),
    "service": Level("service", ("neighborhood_*",), ("1h",), Anonymization(k=0), kind="noisy"),
}


# The appliance channels a household may post ([privacy] tags). The operator defines the vocabulary, so the tag
# catalogue (GET /parameters) is a fact of the configuration, never of which tags households happen to carry.
DEFAULT_TAGS = ("ev", "heat_pump", "fridge", "freezer", "washing_machine", "dryer", "dishwasher", "boiler",
                "air_conditioning", "cooking", "lighting", "battery", "pv_inverter", "pool_pump", "other")
MAX_TAGS = 64


@dataclass(frozen=True)
class PrivacyConfig:
    k_min: int = 10  # households in a cohort (not related to the organization) before anything is released
    audit_period_s: int = 900  # exact sums are audited with every exact sum released this long before them
    horizon_days: int = 30  # the per-household privacy-loss ledger's rolling horizon
    cap_rho: float = 2.0  # zCDP loss a household may bear over the horizon, across all organizations
    tags: tuple[str, ...] = DEFAULT_TAGS  # the only channel tags that exist on this device


@dataclass(frozen=True)
class DeliveryConfig:
    allow_http: bool = False  # plain http:// endpoints
    allow_private_endpoints: bool = False  # private, loopback and link-local addresses
    max_queue: int = 10_000  # messages per subscription's outbox before the oldest become a gap
    retry_schedule: tuple[float, ...] = (0, 5, 30, 120, 600, 1800)  # seconds; the last one repeats
    timeout_s: float = 15.0
    max_connections: int = 32


@dataclass(frozen=True)
class TriggersConfig:
    """Organizations' conditions ([triggers]); see agent/triggers/."""

    timeout_ms: int = 50  # a condition's deadline, at upload (trial run) and per evaluation
    min_interval_s: float = 60.0  # the smallest `interval` (debounce) an organization may ask for
    max_per_organization: int = 10  # live triggers per organization
    # Timing: a window's actions leave release_delay_s after it closes (never when its evaluation happens to
    # end), its statistics statistics_delay_s after that (actions not done by then count as failed).
    release_delay_s: float = 20.0  # room for a 1,000-row batch on a Pi (about 10 ms per row there)
    statistics_delay_s: float = 60.0
    # What an organization may learn of one household: webhook events of household conditions (each one
    # consented to per trigger), across all its triggers, per UTC day.
    max_events_per_household_per_day: int = 24
    # Fair sharing: actions in flight and queued per organization (beyond: dropped and counted), in flight per
    # household for its own notifications (a lane of their own); refused uploads per organization per hour.
    organization_action_slots: int = 4
    organization_action_queue: int = 256
    household_action_slots: int = 2
    max_refusals_per_hour: int = 20
    # Refuse conditions outside the closed language (sandbox/closed.py): no enforcement event (throttle,
    # quarantine) can then depend on households' values (PRIVACY.md, Triggers).
    closed_language_only: bool = False


@dataclass(frozen=True)
class FleetConfig:
    """The device in a fleet ([fleet]; off by default): releases up to NATS JetStream, desired state down
    (agent/fleet/)."""

    enabled: bool = False
    device_id: str = ""  # its subject token and its key in the desired-state bucket; default: [device] name
    servers: tuple[str, ...] = ()  # the NATS cluster, e.g. ("nats://nats1:4222", "nats://nats2:4222")
    operator_public_key: str = ""  # Ed25519, base64 of the raw 32 bytes: signs the desired state
    windows: tuple[str, ...] = ("1m", "15m", "1h")  # the widths whose releases go up
    heartbeat_s: float = 30.0
    outbox_max: int = 100_000  # messages kept on disk while the cluster is out of reach (then: the release log)
    nkey_seed_file: str = ""  # the device's NATS nkey seed (edge-hub device-key): its identity and permissions


@dataclass(frozen=True)
class Config:
    operator_token: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    device_name: str = "edge"
    storage: StorageConfig = field(default_factory=StorageConfig)
    meters: tuple[MeterSpec, ...] = ()
    log_level: str = "INFO"
    levels: dict[str, Level] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    triggers: TriggersConfig = field(default_factory=TriggersConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)


# --- small checkers, each raising ConfigError with the key it was given -----------------------
class _Table:
    """A TOML table being read: remembers which keys were used, so leftovers are reported."""

    def __init__(self, data, key: str):
        if not isinstance(data, dict):
            raise ConfigError(key, f"must be a table, got {type(data).__name__}")
        self.data = data
        self.key = key
        self.used: set[str] = set()

    def _name(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def get(self, name: str, kind, default=None, required: bool = False):
        self.used.add(name)
        if name not in self.data:
            if required:
                raise ConfigError(self._name(name), "is required")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a number key given `true` is still a mistake.
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            wanted = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(self._name(name), f"must be {wanted}, got {type(value).__name__} {value!r}")
        return value

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = self.get(name, (int, float), default)
        if not minimum <= value <= maximum:
            raise ConfigError(self._name(name), f"must be between {minimum:g} and {maximum:g}, got {value!r}")
        return float(value)

    def table(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.data.get(name, {}), self._name(name))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self._name(unknown[0]), "unknown key")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("api.listen", f"must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_SERIAL_KEYS = {"baudrate": int, "bytesize": int, "parity": str, "stopbits": int, "xonxoff": bool, "rtscts": bool}


def _count(t: _Table, name: str, default: int, minimum: int, maximum: int) -> int:
    value = t.get(name, int, default)
    if not minimum <= value <= maximum:
        raise ConfigError(f"triggers.{name}", f"must be between {minimum} and {maximum}, got {value}")
    return value


def _meter(data, index: int, seen: set[str]) -> MeterSpec:
    t = _Table(data, f"meters[{index}]")
    meter_id = t.get("id", str, required=True)
    if not _METER_ID.match(meter_id):
        raise ConfigError(f"{t.key}.id", "use 1-64 letters, digits, '_', '-' or '.'")
    if meter_id in seen:
        raise ConfigError(f"{t.key}.id", f"{meter_id!r} is used by another meter")
    seen.add(meter_id)
    port = t.get("port", str, required=True)
    if port.startswith(("http://", "https://")):  # a HomeWizard P1 meter's local API (v1 http, v2 https)
        from drivers.homewizard import base_url

        try:
            base_url(port)
        except ValueError as err:
            raise ConfigError(f"{t.key}.port", str(err)) from None
    homewizard_v2 = _homewizard_v2(t, port)
    profile = t.get("profile", str, "dsmr5")
    if profile != "auto" and profile not in PROFILES:
        raise ConfigError(f"{t.key}.profile", f"unknown profile {profile!r}; known: auto, {', '.join(PROFILES)}")
    overrides = {}
    for name, kind in _SERIAL_KEYS.items():
        value = t.get(name, kind)
        if value is not None:
            overrides[name] = value
    if overrides.get("parity", "N") not in ("N", "E", "O"):
        raise ConfigError(f"{t.key}.parity", f"must be \"N\", \"E\" or \"O\", got {overrides['parity']!r}")
    if overrides.get("bytesize", 8) not in (7, 8):
        raise ConfigError(f"{t.key}.bytesize", "must be 7 or 8")
    if overrides.get("stopbits", 1) not in (1, 2):
        raise ConfigError(f"{t.key}.stopbits", "must be 1 or 2")
    gas = t.get("gas_channel", (int, str), "auto")
    if gas == "auto":
        gas_channel = None
    elif isinstance(gas, int) and 1 <= gas <= 4:
        gas_channel = gas
    else:
        raise ConfigError(f"{t.key}.gas_channel", f"must be 1 to 4 or \"auto\", got {gas!r}")
    stall = t.number("stall_seconds", 30, 2, 3600)
    # Encrypted P1. Keys are secrets: read without _Table.get, whose messages quote the value.
    from drivers.dlms import parse_key

    keys: dict[str, bytes | None] = {}
    for name in ("decryption_key", "authentication_key"):
        t.used.add(name)
        value = t.data.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise ConfigError(f"{t.key}.{name}", f"must be a string of 32 hex digits, got {type(value).__name__}")
            try:
                value = parse_key(value)
            except ValueError as err:
                raise ConfigError(f"{t.key}.{name}", str(err)) from None
        keys[name] = value
    if keys["authentication_key"] is not None and keys["decryption_key"] is None:
        raise ConfigError(f"{t.key}.authentication_key", "needs decryption_key")
    if keys["decryption_key"] is not None and (profile == "auto" or not PROFILES[profile].takes_key):
        takers = ", ".join(name for name, p in PROFILES.items() if p.takes_key)
        raise ConfigError(f"{t.key}.decryption_key",
                          f"profile {profile!r} is never encrypted; set profile to one of: {takers}")
    t.finish()
    return MeterSpec(meter_id=meter_id, port=port, profile=profile, serial_overrides=overrides or None,
                     gas_channel=gas_channel, stall_seconds=stall, **keys, **homewizard_v2)


def _homewizard_v2(t: _Table, port: str) -> dict:
    """An https:// port's token (a secret: never quoted) and pinned certificate, both required; refused elsewhere."""
    from drivers.homewizard_https import parse_pin, parse_token

    given = {name: t.data.get(name) for name in ("token", "certificate_sha256")}
    t.used.update(given)
    if not port.startswith("https://"):
        for name, value in given.items():
            if value is not None:
                raise ConfigError(f"{t.key}.{name}", "only for a HomeWizard P1 meter's API v2 (an https:// port)")
        return {}
    if all(value is None for value in given.values()):
        raise ConfigError(f"{t.key}.port", "an https:// port is a HomeWizard P1 meter's API v2: it needs token and "
                                           "certificate_sha256; get both with edge-agent homewizard-pair " + port)
    out = {}
    for name, parse in (("token", parse_token), ("certificate_sha256", parse_pin)):
        value = given[name]
        if value is None:
            raise ConfigError(f"{t.key}.{name}", f"required for an https:// port (edge-agent homewizard-pair {port})")
        if not isinstance(value, str):
            raise ConfigError(f"{t.key}.{name}", f"must be a string, got {type(value).__name__}")
        try:
            out[name] = parse(value)
        except ValueError as err:
            raise ConfigError(f"{t.key}.{name}", str(err)) from None
    return out


def _tags(tags: list) -> tuple[str, ...]:
    if len(tags) > MAX_TAGS:
        raise ConfigError("privacy.tags", f"at most {MAX_TAGS} tags, got {len(tags)}")
    for tag in tags:
        if not isinstance(tag, str) or not TAG.fullmatch(tag):
            raise ConfigError("privacy.tags", f"{tag!r}: a tag is 1-32 lowercase letters, digits, '_' or '-'")
    duplicate = next((tag for i, tag in enumerate(tags) if tag in tags[:i]), None)
    if duplicate is not None:
        raise ConfigError("privacy.tags", f"{duplicate!r} is listed twice")
    return tuple(tags)


def _level(t: _Table, name: str, tags: tuple[str, ...]) -> Level:
    if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", name):
        raise ConfigError(t.key, "a level name is 1-32 lowercase letters, digits, '_' or '-'")
    default = DEFAULT_LEVELS.get(name, Level(name, (), ("15m", "1h")))
    parameters = t.get("parameters", list, list(default.parameters))
    if not all(isinstance(p, str) and p for p in parameters):
        raise ConfigError(f"{t.key}.parameters", "must be a list of parameter names or patterns")
    windows = t.get("windows", list, list(default.windows))
    if not windows:
        raise ConfigError(f"{t.key}.windows", "must name at least one window")
    bad = [w for w in windows if w not in WINDOWS]
    if bad:
        raise ConfigError(f"{t.key}.windows", f"unknown window {bad[0]!r}; windows: {', '.join(WINDOWS)}")
    anonymized = _anonymization(t.table("anonymized"), default.anonymized)
    kind = t.get("kind", str, default.kind)
    if kind not in ("exact", "noisy"):
        raise ConfigError(f"{t.key}.kind", f"must be \"exact\" or \"noisy\", got {kind!r}")
    dp = _differential_privacy(t.table("dp"), default.dp, tags)
    t.finish()
    return Level(name, tuple(parameters), tuple(windows), anonymized, dp, kind)


def parse_levels(data, tags: tuple[str, ...]) -> dict[str, Level]:
    """[levels.NAME] tables, checked as at start: edge.toml's and the fleet's desired state's (agent/fleet/)."""
    table = _Table(data, "levels")
    levels = {name: _level(table.table(name), name, tags) for name in list(table.data)}
    table.finish()
    return levels


def _anonymization(t: _Table, default: Anonymization) -> Anonymization:
    k = t.get("k", int, default.k)
    l_div = t.get("l", int, default.l)
    if not (k == 0 or 2 <= k <= 10_000):
        raise ConfigError(f"{t.key}.k", f"must be 0 (not offered) or between 2 and 10000, got {k}")
    if not 1 <= l_div <= 100:
        raise ConfigError(f"{t.key}.l", f"must be between 1 and 100, got {l_div}")
    resolution = t.get("resolution", str, default.resolution)
    if resolution not in ("15m", "1h"):
        raise ConfigError(f"{t.key}.resolution", f"must be \"15m\" or \"1h\", got {resolution!r}")
    bin_w = t.get("value_bin_w", int, default.value_bin_w)
    if not 10 <= bin_w <= 100_000:
        raise ConfigError(f"{t.key}.value_bin_w", f"must be between 10 and 100000, got {bin_w}")
    out = Anonymization(k=k, l=l_div, t=t.number("t", default.t, 0.0, 1.0), resolution=resolution,
                        value_bin_w=bin_w, max_suppression=t.number("max_suppression", default.max_suppression, 0, 1),
                        linkable=t.get("linkable", bool, default.linkable), min_cell=_min_cell(t, default),
                        reference_cdf=_reference_cdf(t, default.reference_cdf))
    t.finish()
    return out


def _min_cell(t: _Table, default: Anonymization) -> int:
    value = t.get("min_cell", int, default.min_cell)
    if not 1 <= value <= 100:
        raise ConfigError(f"{t.key}.min_cell", f"must be between 1 and 100, got {value}")
    return value


def _reference_cdf(t: _Table, default: tuple) -> tuple[tuple[float, float], ...]:
    points = t.get("reference_cdf", list, None)
    if points is None:
        return default
    key = f"{t.key}.reference_cdf"
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in p) for p in points) or len(points) < 2:
        raise ConfigError(key, "must be a list of at least two [watts, cumulative share] pairs")
    watts, shares = [float(p[0]) for p in points], [float(p[1]) for p in points]
    if watts[0] != 0 or shares[0] != 0 or shares[-1] != 1:
        raise ConfigError(key, "must start at [0, 0] and end at share 1")
    if any(b <= a for a, b in zip(watts, watts[1:])) or any(b < a for a, b in zip(shares, shares[1:])):
        raise ConfigError(key, "watts must increase and shares must not decrease")
    return tuple(zip(watts, shares))


def _differential_privacy(t: _Table, default: DifferentialPrivacy, tags: tuple[str, ...]) -> DifferentialPrivacy:
    noise = t.get("noise", str, default.noise)
    if noise not in ("laplace", "gaussian"):
        raise ConfigError(f"{t.key}.noise", f"must be \"laplace\" or \"gaussian\", got {noise!r}")
    clamps = {}
    for key in ("clamp_w", "tag_clamp_w"):
        clamps[key] = t.get(key, int, getattr(default, key))
        if not 1 <= clamps[key] <= 1_000_000:
            raise ConfigError(f"{t.key}.{key}", f"must be between 1 and 1000000, got {clamps[key]}")
    released_tags = t.get("tags", list, list(default.tags))
    unknown = [tag for tag in released_tags if tag not in tags]
    if unknown:
        raise ConfigError(f"{t.key}.tags", f"{unknown[0]!r} is not in privacy.tags")
    grid = t.get("grid", list, list(default.grid))
    unknown = [q for q in grid if q not in GRID_QUANTITIES]
    if unknown:
        raise ConfigError(f"{t.key}.grid", f"{unknown[0]!r} is not a grid quantity ({', '.join(GRID_QUANTITIES)})")
    out = DifferentialPrivacy(noise=noise, rho=t.number("rho", default.rho, 1e-9, 10),
                              epsilon=t.number("epsilon", default.epsilon, 1e-6, 10),
                              tags=tuple(dict.fromkeys(released_tags)), grid=tuple(dict.fromkeys(grid)),
                              grid_rho=t.number("grid_rho", default.grid_rho, 1e-9, 10),
                              delta=t.number("delta", default.delta, 1e-15, 1e-3), **clamps)
    t.finish()
    return out


def _fleet(t: _Table, device_name: str) -> FleetConfig:
    enabled = t.get("enabled", bool, False)
    device_id = t.get("device_id", str, "")
    servers = t.get("servers", list, [])
    if not all(isinstance(s, str) and re.match(r"^(nats|tls)://[^\s/]+$", s) for s in servers):
        raise ConfigError(f"{t.key}.servers", "must be a list of nats://HOST:PORT or tls://HOST:PORT")
    key = t.get("operator_public_key", str, "")
    windows = t.get("windows", list, list(FleetConfig.windows))
    bad = [w for w in windows if w not in WINDOWS]
    if bad or not windows:
        raise ConfigError(f"{t.key}.windows", f"must name windows of {', '.join(WINDOWS)}")
    if enabled:
        from agent.fleet.document import NAME, public_key_from_text

        if not NAME.match(device_id or device_name):
            raise ConfigError(f"{t.key}.device_id", "1-64 letters, digits, '_' or '-' (a NATS subject token; "
                              "set it when [device] name is not one)")
        if not servers:
            raise ConfigError(f"{t.key}.servers", "is required when the fleet is enabled")
        try:
            public_key_from_text(key)
        except ValueError as err:
            raise ConfigError(f"{t.key}.operator_public_key", f"an Ed25519 public key in base64: {err}") from None
    out = FleetConfig(enabled=enabled, device_id=device_id, servers=tuple(servers), operator_public_key=key,
                      windows=tuple(dict.fromkeys(windows)),
                      heartbeat_s=t.number("heartbeat_s", FleetConfig.heartbeat_s, 1, 3600),
                      outbox_max=int(t.number("outbox_max", FleetConfig.outbox_max, 10, 10_000_000)),
                      nkey_seed_file=t.get("nkey_seed_file", str, ""))
    t.finish()
    return out


def parse_config(data: dict, source: str = "config") -> Config:
    try:
        root = _Table(data, "")
        device = root.table("device")
        device_name = device.get("name", str, "edge")
        device.finish()

        api = root.table("api")
        host, port = _listen(api.get("listen", str, "127.0.0.1:8080"))
        api.finish()

        auth = root.table("auth")
        token = auth.get("operator_token", str, required=True)
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError("auth.operator_token", f"must be at least {MIN_TOKEN_LENGTH} characters")
        auth.finish()

        st = root.table("storage")
        path = Path(st.get("path", str, "/var/lib/edge"))
        flush = st.number("flush_seconds", 5, 0.1, 300)
        retention = st.table("retention")
        raw_hours = retention.number("raw_hours", 24, 1, 24 * 366)
        rollup_days = retention.number("rollup_days", 30, 1, 3660)
        retention.finish()
        st.finish()

        logging_t = root.table("logging")
        level = logging_t.get("level", str, "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("logging.level", f"must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        logging_t.finish()

        privacy_t = root.table("privacy")
        k_min = privacy_t.get("k_min", int, 10)
        if not 2 <= k_min <= 10_000:
            raise ConfigError("privacy.k_min", f"must be between 2 and 10000, got {k_min}")
        horizon = privacy_t.get("horizon_days", int, PrivacyConfig.horizon_days)
        if not 1 <= horizon <= 3660:
            raise ConfigError("privacy.horizon_days", f"must be between 1 and 3660, got {horizon}")
        audit_period = privacy_t.get("audit_period_s", int, PrivacyConfig.audit_period_s)
        if not 1 <= audit_period <= 86400:
            raise ConfigError("privacy.audit_period_s", f"must be between 1 and 86400, got {audit_period}")
        privacy = PrivacyConfig(k_min=k_min, horizon_days=horizon, audit_period_s=audit_period,
                                cap_rho=privacy_t.number("cap_rho", PrivacyConfig.cap_rho, 1e-6, 1000),
                                tags=_tags(privacy_t.get("tags", list, list(DEFAULT_TAGS))))
        privacy_t.finish()

        delivery_t = root.table("delivery")
        schedule = delivery_t.get("retry_schedule", list, list(DeliveryConfig.retry_schedule))
        if not schedule or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 86400
                                   for v in schedule):
            raise ConfigError("delivery.retry_schedule", "must be a non-empty list of seconds (0 to 86400)")
        max_queue = delivery_t.get("max_queue", int, 10_000)
        if not 10 <= max_queue <= 10_000_000:
            raise ConfigError("delivery.max_queue", "must be between 10 and 10000000")
        delivery = DeliveryConfig(
            allow_http=delivery_t.get("allow_http", bool, False),
            allow_private_endpoints=delivery_t.get("allow_private_endpoints", bool, False),
            max_queue=max_queue, retry_schedule=tuple(float(v) for v in schedule),
            timeout_s=delivery_t.number("timeout_s", 15, 1, 300),
            max_connections=int(delivery_t.number("max_connections", 32, 1, 1024)))
        delivery_t.finish()

        triggers_t = root.table("triggers")
        timeout_ms = triggers_t.get("timeout_ms", int, 50)
        if not 5 <= timeout_ms <= 2000:
            raise ConfigError("triggers.timeout_ms", f"must be between 5 and 2000, got {timeout_ms}")
        max_per_org = triggers_t.get("max_per_organization", int, 10)
        if not 1 <= max_per_org <= 1000:
            raise ConfigError("triggers.max_per_organization", f"must be between 1 and 1000, got {max_per_org}")
        triggers = TriggersConfig(timeout_ms=timeout_ms,
                                  min_interval_s=triggers_t.number("min_interval_s", 60, 1, 86400),
                                  max_per_organization=max_per_org,
                                  release_delay_s=triggers_t.number("release_delay_s",
                                                                    TriggersConfig.release_delay_s, 0.1, 60),
                                  statistics_delay_s=triggers_t.number("statistics_delay_s", 60.0, 1, 3600),
                                  max_events_per_household_per_day=_count(
                                      triggers_t, "max_events_per_household_per_day", 24, 0, 1440),
                                  organization_action_slots=_count(triggers_t, "organization_action_slots", 4, 1, 64),
                                  organization_action_queue=_count(triggers_t, "organization_action_queue", 256, 1,
                                                                   100_000),
                                  household_action_slots=_count(triggers_t, "household_action_slots", 2, 1, 16),
                                  max_refusals_per_hour=_count(triggers_t, "max_refusals_per_hour", 20, 1, 10_000),
                                  closed_language_only=triggers_t.get("closed_language_only", bool, False))
        if triggers.release_delay_s * 1000 < 2 * timeout_ms:
            raise ConfigError("triggers.release_delay_s", f"must leave room for an evaluation: at least twice "
                              f"triggers.timeout_ms ({2 * timeout_ms / 1000:g} s)")
        triggers_t.finish()

        root.used.add("levels")
        levels = {**DEFAULT_LEVELS, **parse_levels(data.get("levels", {}), privacy.tags)}

        fleet = _fleet(root.table("fleet"), device_name)

        root.used.add("meters")
        meters_data = data.get("meters", [])
        if not isinstance(meters_data, list):
            raise ConfigError("meters", "must be an array of tables: [[meters]]")
        seen: set[str] = set()
        meters = tuple(_meter(m, i, seen) for i, m in enumerate(meters_data))
        root.finish()
    except ConfigError as err:
        raise ConfigError(err.key, err.reason, source) from None
    return Config(
        operator_token=token,
        listen_host=host,
        listen_port=port,
        device_name=device_name,
        storage=StorageConfig(path=path, flush_seconds=flush, retention_raw_s=raw_hours * 3600,
                              retention_rollup_s=rollup_days * 86400),
        meters=meters,
        log_level=level,
        levels=levels,
        privacy=privacy,
        delivery=delivery,
        triggers=triggers,
        fleet=fleet,
    )


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError("file", f"cannot read: {err.strerror or err}", str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("file", "is not UTF-8 text", str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("syntax", str(err), str(path)) from None
    return parse_config(data, str(path))
