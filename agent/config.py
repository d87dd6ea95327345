"""The agent's configuration: one TOML file, checked whole at start.

A bad file stops the agent with one line that names the key and says what is wrong with it.
Unknown keys are errors too: a typo must not silently fall back to a default.

Each table of edge.toml is declared once, as a typed schema: the dataclasses below are both what the agent uses and
what a table may hold (each key's type, bounds and default; `Annotated[..., Meta(...)]` is msgspec's), and the few
tables whose shape differs from what the agent uses ([device], [api], [auth], [storage], [logging], [[meters]],
[levels.NAME]) have a schema of their own whose defaults are the agent's. `msgspec.convert` checks types and bounds;
what a key means beyond its type (a known profile, a tag of the vocabulary, a window a level has) is checked after,
with its own words. Either way the error names the key.
"""

from __future__ import annotations

import functools
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from agent.ingest import TAG  # the pattern a posted channel tag is checked against
from drivers.p1_reader import MeterSpec
from drivers.profiles import PROFILES

MIN_TOKEN_LENGTH = 16
_METER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LEVEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SERVER = re.compile(r"^(nats|tls)://[^\s/]+$")
SECRETS = frozenset({"operator_token", "decryption_key", "authentication_key", "token"})  # never quoted in an error


class ConfigError(ValueError):
    def __init__(self, key: str, reason: str, source: str = "config"):
        super().__init__(f"{source}: {key}: {reason}")
        self.key = key
        self.reason = reason


def between(low: float, high: float) -> Meta:
    """A key's bounds (both inclusive), for its `Annotated` type."""
    return Meta(ge=low, le=high)


@dataclass(frozen=True)
class StorageConfig:
    path: Path = Path("/var/lib/edge")
    flush_seconds: Annotated[float, between(0.1, 300)] = 5.0  # a power cut loses at most this much
    retention_raw_s: float = 24 * 3600
    retention_rollup_s: float = 30 * 86400


WINDOW_SECONDS = {"1s": 1, "1m": 60, "15m": 900, "1h": 3600}
WINDOWS = tuple(WINDOW_SECONDS)  # their names, finest first


# The default reference for t: household mean consumption per period, log-normal with median 400 W and sigma 0.8
# (typical of European standard load profiles over a year). An operator should declare the one of its own grid.
REFERENCE_CDF = ((0.0, 0.0), (100.0, 0.042), (200.0, 0.193), (300.0, 0.36), (400.0, 0.5), (500.0, 0.61),
                 (750.0, 0.784), (1000.0, 0.874), (1500.0, 0.951), (2000.0, 0.978), (3000.0, 0.994),
                 (4000.0, 0.998), (10000.0, 1.0))


@dataclass(frozen=True)
class Anonymization:
    """GET /data/anonymized for one level ([levels.NAME.anonymized]); k = 0: not offered."""

    k: int = 0  # every released equivalence class holds at least k records (0, or 2 to 10000)
    l: Annotated[int, between(1, 100)] = 1  # ...with at least l distinct sensitive values (l-diversity)
    t: Annotated[float, between(0, 1)] = 1.0  # ...whose distribution is within t of the reference's (t-closeness)
    resolution: Literal["15m", "1h"] = "1h"  # the release grid: periods of "15m" or "1h" in whole UTC days
    value_bin_w: Annotated[int, between(10, 100_000)] = 500  # width of the consumption bins, in watts
    max_suppression: Annotated[float, between(0, 1)] = 0.2  # share of rows a release may suppress, else refused
    min_cell: Annotated[int, between(1, 100)] = 2  # ...and every bin of a class holds this many rows (1: no rule)
    # One pseudonym per household per day release: a linked series. Only for the custodian (dso), which holds the
    # readings anyway; every other level gets rows that nothing links across periods.
    linkable: bool = False
    # t is measured against this fixed distribution of a period's mean consumption (cumulative share of
    # households at or below each wattage, from [0, 0] to share 1), never against the release's own rows.
    reference_cdf: tuple[tuple[float, float], ...] = REFERENCE_CDF


GridQuantity = Literal["voltage", "long_power_failures"]  # [levels.NAME.dp] grid
GRID_QUANTITIES: tuple[GridQuantity, ...] = typing.get_args(GridQuantity)


@dataclass(frozen=True)
class DifferentialPrivacy:
    """How a noisy level's releases are noised ([levels.NAME.dp]); see agent/release/ and agent/privacy/dp.py.

    One noisy answer per released window, shared by every organization of the level with the same cohort; each
    charges every household of its cohort `rho` (or `epsilon`) on the per-household ledger ([privacy])."""

    noise: Literal["gaussian", "laplace"] = "gaussian"  # zCDP: discrete Gaussian; pure DP: discrete Laplace
    rho: Annotated[float, between(1e-9, 10)] = 5e-4  # gaussian: zCDP loss per released window, split evenly
    epsilon: Annotated[float, between(1e-6, 10)] = 0.03  # laplace: pure-DP loss per window (charged epsilon^2/2)
    clamp_w: Annotated[int, between(1, 1_000_000)] = 3000  # a household's mean power is clamped to [0, clamp_w]
    tag_clamp_w: Annotated[int, between(1, 1_000_000)] = 1000  # the same for tagged appliance channels
    tags: tuple[str, ...] = ()  # channel tags released at this level (each one charges its cohort per window)
    delta: Annotated[float, between(1e-15, 1e-3)] = 1e-7  # the delta at which zCDP losses are also stated
    # Grid quantities (agent/release/grid.py) this noisy level releases, off by default: each window that carries
    # them charges its cohort grid_rho more (exact levels release them whenever their parameters permit).
    grid: tuple[GridQuantity, ...] = ()
    grid_rho: Annotated[float, between(1e-9, 10)] = 5e-4

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
    kind: Literal["exact", "noisy"] = "exact"  # "exact": audited exact sums (the custodian); "noisy": OpenDP, ledger

    @property
    def noisy(self) -> bool:
        return self.kind == "noisy"

    @property
    def finest(self) -> str:
        """The one width this level's releases are computed at; its wider windows are sums of these."""
        return min(self.windows, key=WINDOW_SECONDS.__getitem__)


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
TAG_RULE = "a tag is 1-32 lowercase letters, digits, '_' or '-'"
Tag = Annotated[str, Meta(description=TAG_RULE)]  # its pattern: agent/ingest.py's TAG, checked in _check_tags


@dataclass(frozen=True)
class PrivacyConfig:
    k_min: Annotated[int, between(2, 10_000)] = 10  # households in a cohort (not related to the organization)
    audit_period_s: Annotated[int, between(1, 86400)] = 900  # exact sums are audited with those this long before
    horizon_days: Annotated[int, between(1, 3660)] = 30  # the per-household privacy-loss ledger's rolling horizon
    cap_rho: Annotated[float, between(1e-6, 1000)] = 2.0  # zCDP loss a household may bear over it, in all
    tags: tuple[Tag, ...] = DEFAULT_TAGS  # the only channel tags that exist on this device


@dataclass(frozen=True)
class DeliveryConfig:
    allow_http: bool = False  # plain http:// endpoints
    allow_private_endpoints: bool = False  # private, loopback and link-local addresses
    max_queue: Annotated[int, between(10, 10_000_000)] = 10_000  # messages per outbox before the oldest are a gap
    # seconds; the last one repeats
    retry_schedule: Annotated[tuple[Annotated[float, between(0, 86400)], ...], Meta(min_length=1)] = \
        (0, 5, 30, 120, 600, 1800)
    timeout_s: Annotated[float, between(1, 300)] = 15.0
    max_connections: Annotated[int, between(1, 1024)] = 32


@dataclass(frozen=True)
class TriggersConfig:
    """Organizations' conditions ([triggers]); see agent/triggers/."""

    timeout_ms: Annotated[int, between(5, 2000)] = 50  # a condition's deadline, at upload (trial) and per evaluation
    min_interval_s: Annotated[float, between(1, 86400)] = 60.0  # the least `interval` an organization may ask for
    max_per_organization: Annotated[int, between(1, 1000)] = 10  # live triggers per organization
    # Timing: a window's actions leave release_delay_s after it closes (never when its evaluation happens to
    # end), its statistics statistics_delay_s after that (actions not done by then count as failed).
    release_delay_s: Annotated[float, between(0.1, 60)] = 20.0  # room for 1,000 rows on a Pi (~10 ms per row there)
    statistics_delay_s: Annotated[float, between(1, 3600)] = 60.0
    # What an organization may learn of one household: webhook events of household conditions (each one
    # consented to per trigger), across all its triggers, per UTC day.
    max_events_per_household_per_day: Annotated[int, between(0, 1440)] = 24
    # Fair sharing: actions in flight and queued per organization (beyond: dropped and counted), in flight per
    # household for its own notifications (a lane of their own); refused uploads per organization per hour.
    organization_action_slots: Annotated[int, between(1, 64)] = 4
    organization_action_queue: Annotated[int, between(1, 100_000)] = 256
    household_action_slots: Annotated[int, between(1, 16)] = 2
    max_refusals_per_hour: Annotated[int, between(1, 10_000)] = 20
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
    heartbeat_s: Annotated[float, between(1, 3600)] = 30.0
    # messages kept on disk while the cluster is out of reach (then: the release log)
    outbox_max: Annotated[int, between(10, 10_000_000)] = 100_000
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


# --- the tables whose shape is not the agent's: their schemas, with the agent's defaults ---------------------------
@dataclass(frozen=True)
class DeviceTable:
    name: str = Config.device_name  # shown in /health


@dataclass(frozen=True)
class ApiTable:
    listen: str = f"{Config.listen_host}:{Config.listen_port}"  # HOST:PORT


@dataclass(frozen=True)
class AuthTable:
    operator_token: str  # at least MIN_TOKEN_LENGTH characters


@dataclass(frozen=True)
class RetentionTable:
    raw_hours: Annotated[float, between(1, 24 * 366)] = StorageConfig.retention_raw_s / 3600
    rollup_days: Annotated[float, between(1, 3660)] = StorageConfig.retention_rollup_s / 86400


@dataclass(frozen=True)
class StorageTable:
    path: str = str(StorageConfig.path)
    flush_seconds: Annotated[float, between(0.1, 300)] = StorageConfig.flush_seconds
    retention: RetentionTable = RetentionTable()


@dataclass(frozen=True)
class LoggingTable:
    level: str = Config.log_level  # DEBUG, INFO, WARNING or ERROR, in any case


@dataclass(frozen=True)
class MeterTable:
    id: str
    port: str
    profile: str = MeterSpec.profile
    # these override the profile's serial settings
    baudrate: int | None = None
    bytesize: Literal[7, 8] | None = None
    parity: str | None = None  # "N", "E" or "O"
    stopbits: Literal[1, 2] | None = None
    xonxoff: bool | None = None
    rtscts: bool | None = None
    gas_channel: int | str = "auto"  # or the M-Bus channel 1-4
    stall_seconds: Annotated[float, between(2, 3600)] = MeterSpec.stall_seconds
    decryption_key: str | None = None  # encrypted P1: 32 hex digits
    authentication_key: str | None = None
    token: str | None = None  # HomeWizard API v2 (https://): what edge-agent homewizard-pair prints
    certificate_sha256: str | None = None


@dataclass(frozen=True)
class LevelTable:
    """[levels.NAME]: its keys replace those of the level of that name (DEFAULT_LEVELS), or of a new level."""

    parameters: tuple[str, ...]
    windows: tuple[str, ...]
    anonymized: Anonymization
    dp: DifferentialPrivacy
    kind: Literal["exact", "noisy"]


@dataclass(frozen=True)
class EdgeToml:
    """edge.toml, whole. [levels.NAME] tables are read by parse_levels (each over its level's defaults)."""

    auth: AuthTable
    device: DeviceTable = DeviceTable()
    api: ApiTable = ApiTable()
    storage: StorageTable = StorageTable()
    logging: LoggingTable = LoggingTable()
    privacy: PrivacyConfig = PrivacyConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    triggers: TriggersConfig = TriggersConfig()
    fleet: FleetConfig = FleetConfig()
    levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    meters: tuple[MeterTable, ...] = ()


# --- reading a table: unknown keys, then msgspec's types and bounds, its errors in this file's words ----------------
T = typing.TypeVar("T")


def _read(data: object, kind: type[T], key: str = "") -> T:
    """`data` as `kind` (a schema above): every key known, of its type and within its bounds, else ConfigError."""
    _known_keys(data, kind, key)
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as err:
        raise _in_words(str(err), data, kind, key) from None


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind, include_extras=True)


def _unwrap(tp: Any) -> tuple[Any, list[Meta]]:
    """The type without Annotated and None, and the Metas it carried."""
    metas: list[Meta] = []
    while True:
        if typing.get_origin(tp) is Annotated:
            tp, *extra = typing.get_args(tp)
            metas += [m for m in extra if isinstance(m, Meta)]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(options) != 1:
                return tp, metas
            tp = options[0]
        else:
            return tp, metas


def _item(tp: Any) -> Any:
    """A list's, tuple's or table-of-tables' items' type."""
    args = typing.get_args(_unwrap(tp)[0])
    return args[-1] if typing.get_origin(_unwrap(tp)[0]) is dict else args[0] if args else Any


def _is_table(tp: Any) -> bool:
    return is_dataclass(_unwrap(tp)[0])


@functools.cache
def _keys_of(kind: type) -> dict[str, tuple[type | None, type | None]]:
    """A table schema's keys, each with the schema of its table, or of its list's tables (else None)."""
    out: dict[str, tuple[type | None, type | None]] = {}
    for name, tp in _hints(kind).items():
        item = _item(tp)
        out[name] = (_unwrap(tp)[0] if _is_table(tp) else None, _unwrap(item)[0] if _is_table(item) else None)
    return out


def _known_keys(data: object, kind: type, key: str) -> None:
    """Unknown keys are errors (msgspec ignores them in dataclasses): each table's, all the way down."""
    if not isinstance(data, dict):
        return
    keys = _keys_of(kind)
    for name, value in data.items():
        if name not in keys:
            raise ConfigError(_join(key, name), "unknown key")
        table, tables = keys[name]
        if table is not None:
            _known_keys(value, table, _join(key, name))
        elif tables is not None and isinstance(value, list):
            for i, entry in enumerate(value):
                _known_keys(entry, tables, f"{_join(key, name)}[{i}]")


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$")
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")
_WANTED = {"int": "int", "float": "int or float", "str": "a string", "bool": "bool", "array": "list",
           "object": "a table"}
_TOML_NAMES = {"str": "str", "int": "int", "float": "float", "bool": "bool", "list": "list", "dict": "table"}


def _in_words(message: str, data: object, kind: Any, key: str) -> ConfigError:
    """msgspec's error as one line naming the key: `storage.flush_seconds: must be between 0.1 and 300, got 0`."""
    match = _AT.match(message)
    what, path = (match["what"], match["path"] or "") if match else (message, "")
    tp, value, where, item_of = kind, data, key, None  # item_of: the list key an item error is told under
    for name, index in _STEP.findall(path):
        if name:
            tp = _hints(_unwrap(tp)[0]).get(name, Any)
            where, item_of = _join(where, name), None
        else:
            item_of = item_of or where
            tp = _item(tp)
            where = f"{where}[{index}]"
        value = value.get(name) if name and isinstance(value, dict) else \
            value[int(index)] if not name and isinstance(value, list) and int(index) < len(value) else None
    if item_of is not None and not _is_table(tp):
        where = item_of  # a list of values: the list is the key (its item is quoted)
    if m := re.match(r"Object missing required field `(\w+)`", what):
        return ConfigError(_join(where, m[1]), "is required")
    secret = where.rsplit(".", 1)[-1] in SECRETS
    shown = "" if secret else f" {value!r}"
    inner, metas = _unwrap(tp)
    description = next((m.description for m in metas if m.description), None)
    if item_of is not None and description and not _is_table(tp):
        return ConfigError(where, f"{value!r}: {description}")
    if m := re.match(r"Expected `(\w+)[^`]*`, got `(\w+)`", what):
        wanted = _WANTED.get(m[1], m[1])
        return ConfigError(where, f"must be {wanted}, got {_TOML_NAMES.get(type(value).__name__, m[2])}{shown}")
    bounds = next(((b.ge, b.le) for b in metas if b.ge is not None and b.le is not None), None)
    if bounds is not None and re.match(r"Expected `\w+` [<>]=", what):
        prefix = "each must" if item_of is not None else "must"
        return ConfigError(where, f"{prefix} be between {_number(bounds[0])} and {_number(bounds[1])}, got{shown}")
    if what.startswith("Invalid enum value") and typing.get_origin(inner) is Literal:
        choices = ", ".join(repr(c) for c in typing.get_args(inner))
        return ConfigError(where, f"must be one of {choices}, got{shown}")
    return ConfigError(where, what.replace("Expected", "must be").replace("`", ""))  # e.g. a list's length


def _number(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


# --- what a key means beyond its type -------------------------------------------------------------------------------
def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("api.listen", f"must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _log_level(level: str) -> str:
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("logging.level", f"must be DEBUG, INFO, WARNING or ERROR, got {level.upper()!r}")
    return level.upper()


def _check_tags(tags: tuple[str, ...]) -> None:
    if len(tags) > MAX_TAGS:
        raise ConfigError("privacy.tags", f"at most {MAX_TAGS} tags, got {len(tags)}")
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise ConfigError("privacy.tags", f"{tag!r}: {TAG_RULE}")
    duplicate = next((tag for i, tag in enumerate(tags) if tag in tags[:i]), None)
    if duplicate is not None:
        raise ConfigError("privacy.tags", f"{duplicate!r} is listed twice")


def _check_triggers(triggers: TriggersConfig) -> None:
    if triggers.release_delay_s * 1000 < 2 * triggers.timeout_ms:
        raise ConfigError("triggers.release_delay_s", f"must leave room for an evaluation: at least twice "
                          f"triggers.timeout_ms ({2 * triggers.timeout_ms / 1000:g} s)")


def _level(data: object, name: str, tags: tuple[str, ...]) -> Level:
    key = f"levels.{name}"
    if not _LEVEL_NAME.fullmatch(name):  # named as Python writes it: the error stays one line
        raise ConfigError(f"levels.{name!r}", "a level name is 1-32 lowercase letters, digits, '_' or '-'")
    if not isinstance(data, dict):
        raise ConfigError(key, f"must be a table, got {type(data).__name__}")
    default = DEFAULT_LEVELS.get(name, Level(name, (), ("15m", "1h")))
    base = msgspec.to_builtins(default)
    merged = {**base, **data, **{part: {**base[part], **data[part]} for part in ("anonymized", "dp")
                                 if isinstance(data.get(part), dict)}}
    del merged["name"]
    table = _read(merged, LevelTable, key)
    if not all(table.parameters):
        raise ConfigError(f"{key}.parameters", "must be a list of parameter names or patterns")
    if not table.windows:
        raise ConfigError(f"{key}.windows", "must name at least one window")
    bad = [w for w in table.windows if w not in WINDOWS]
    if bad:
        raise ConfigError(f"{key}.windows", f"unknown window {bad[0]!r}; windows: {', '.join(WINDOWS)}")
    anonymized = table.anonymized
    if not (anonymized.k == 0 or 2 <= anonymized.k <= 10_000):
        raise ConfigError(f"{key}.anonymized.k", f"must be 0 (not offered) or between 2 and 10000, got {anonymized.k}")
    _check_reference_cdf(anonymized.reference_cdf, f"{key}.anonymized.reference_cdf")
    unknown = [tag for tag in table.dp.tags if tag not in tags]
    if unknown:
        raise ConfigError(f"{key}.dp.tags", f"{unknown[0]!r} is not in privacy.tags")
    dp = replace(table.dp, tags=tuple(dict.fromkeys(table.dp.tags)), grid=tuple(dict.fromkeys(table.dp.grid)))
    return Level(name, table.parameters, table.windows, anonymized, dp, table.kind)


def _check_reference_cdf(points: tuple[tuple[float, float], ...], key: str) -> None:
    if len(points) < 2:
        raise ConfigError(key, "must be a list of at least two [watts, cumulative share] pairs")
    watts, shares = [p[0] for p in points], [p[1] for p in points]
    if watts[0] != 0 or shares[0] != 0 or shares[-1] != 1:
        raise ConfigError(key, "must start at [0, 0] and end at share 1")
    if any(b <= a for a, b in zip(watts, watts[1:])) or any(b < a for a, b in zip(shares, shares[1:])):
        raise ConfigError(key, "watts must increase and shares must not decrease")


def parse_levels(data: object, tags: tuple[str, ...]) -> dict[str, Level]:
    """[levels.NAME] tables, checked as at start: edge.toml's and the fleet's desired state's (agent/fleet/)."""
    if not isinstance(data, dict):
        raise ConfigError("levels", f"must be a table, got {type(data).__name__}")
    return {name: _level(table, name, tags) for name, table in data.items()}


def _fleet(fleet: FleetConfig, device_name: str) -> FleetConfig:
    if not all(_SERVER.fullmatch(s) for s in fleet.servers):
        raise ConfigError("fleet.servers", "must be a list of nats://HOST:PORT or tls://HOST:PORT")
    if not fleet.windows or any(w not in WINDOWS for w in fleet.windows):
        raise ConfigError("fleet.windows", f"must name windows of {', '.join(WINDOWS)}")
    if fleet.enabled:
        from agent.fleet import NAME, public_key_from_text

        if not NAME.fullmatch(fleet.device_id or device_name):
            raise ConfigError("fleet.device_id", "1-64 letters, digits, '_' or '-' (a NATS subject token; "
                              "set it when [device] name is not one)")
        if not fleet.servers:
            raise ConfigError("fleet.servers", "is required when the fleet is enabled")
        try:
            public_key_from_text(fleet.operator_public_key)
        except ValueError as err:
            raise ConfigError("fleet.operator_public_key", f"an Ed25519 public key in base64: {err}") from None
    return replace(fleet, windows=tuple(dict.fromkeys(fleet.windows)))


_SERIAL_KEYS = ("baudrate", "bytesize", "parity", "stopbits", "xonxoff", "rtscts")


def _meter(m: MeterTable, key: str, seen: set[str]) -> MeterSpec:
    if not _METER_ID.fullmatch(m.id):
        raise ConfigError(f"{key}.id", "use 1-64 letters, digits, '_', '-' or '.'")
    if m.id in seen:
        raise ConfigError(f"{key}.id", f"{m.id!r} is used by another meter")
    seen.add(m.id)
    if m.port.startswith(("http://", "https://")):  # a HomeWizard P1 meter's local API (v1 http, v2 https)
        from drivers.homewizard import base_url

        try:
            base_url(m.port)
        except ValueError as err:
            raise ConfigError(f"{key}.port", str(err)) from None
    homewizard_v2 = _homewizard_v2(m, key)
    if m.profile != "auto" and m.profile not in PROFILES:
        raise ConfigError(f"{key}.profile", f"unknown profile {m.profile!r}; known: auto, {', '.join(PROFILES)}")
    overrides = {name: getattr(m, name) for name in _SERIAL_KEYS if getattr(m, name) is not None}
    if m.parity not in (None, "N", "E", "O"):
        raise ConfigError(f"{key}.parity", f"must be \"N\", \"E\" or \"O\", got {m.parity!r}")
    if m.gas_channel != "auto" and not (isinstance(m.gas_channel, int) and 1 <= m.gas_channel <= 4):
        raise ConfigError(f"{key}.gas_channel", f"must be 1 to 4 or \"auto\", got {m.gas_channel!r}")
    keys = _keys(m, key)
    return MeterSpec(meter_id=m.id, port=m.port, profile=m.profile, serial_overrides=overrides or None,
                     gas_channel=None if m.gas_channel == "auto" else int(m.gas_channel),
                     stall_seconds=m.stall_seconds, decryption_key=keys["decryption_key"],
                     authentication_key=keys["authentication_key"], **homewizard_v2)


def _keys(m: MeterTable, key: str) -> dict[str, bytes | None]:
    """Encrypted P1's keys (secrets: no error quotes them)."""
    from drivers.dlms import parse_key

    keys: dict[str, bytes | None] = {}
    for name in ("decryption_key", "authentication_key"):
        value = getattr(m, name)
        try:
            keys[name] = None if value is None else parse_key(value)
        except ValueError as err:
            raise ConfigError(f"{key}.{name}", str(err)) from None
    if keys["authentication_key"] is not None and keys["decryption_key"] is None:
        raise ConfigError(f"{key}.authentication_key", "needs decryption_key")
    if keys["decryption_key"] is not None and (m.profile == "auto" or not PROFILES[m.profile].takes_key):
        takers = ", ".join(name for name, p in PROFILES.items() if p.takes_key)
        raise ConfigError(f"{key}.decryption_key",
                          f"profile {m.profile!r} is never encrypted; set profile to one of: {takers}")
    return keys


def _homewizard_v2(m: MeterTable, key: str) -> dict[str, Any]:
    """An https:// port's token (a secret: never quoted) and pinned certificate, both required; refused elsewhere."""
    from drivers.homewizard_https import parse_pin, parse_token

    given = {"token": m.token, "certificate_sha256": m.certificate_sha256}
    if not m.port.startswith("https://"):
        for name, value in given.items():
            if value is not None:
                raise ConfigError(f"{key}.{name}", "only for a HomeWizard P1 meter's API v2 (an https:// port)")
        return {}
    if all(value is None for value in given.values()):
        raise ConfigError(f"{key}.port", "an https:// port is a HomeWizard P1 meter's API v2: it needs token and "
                                         "certificate_sha256; get both with edge-agent homewizard-pair " + m.port)
    out: dict[str, Any] = {}
    for name, parse in (("token", parse_token), ("certificate_sha256", parse_pin)):
        value = given[name]
        if value is None:
            raise ConfigError(f"{key}.{name}", f"required for an https:// port (edge-agent homewizard-pair {m.port})")
        try:
            out[name] = parse(value)
        except ValueError as err:
            raise ConfigError(f"{key}.{name}", str(err)) from None
    return out


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    try:
        if not isinstance(data.get("meters", []), list):
            raise ConfigError("meters", "must be an array of tables: [[meters]]")
        toml = _read({"auth": {}, **data}, EdgeToml)
        token = toml.auth.operator_token
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError("auth.operator_token", f"must be at least {MIN_TOKEN_LENGTH} characters")
        host, port = _listen(toml.api.listen)
        _check_tags(toml.privacy.tags)
        _check_triggers(toml.triggers)
        levels = {**DEFAULT_LEVELS, **parse_levels(toml.levels, toml.privacy.tags)}
        seen: set[str] = set()
        meters = tuple(_meter(m, f"meters[{i}]", seen) for i, m in enumerate(toml.meters))
        storage, retention = toml.storage, toml.storage.retention
        return Config(
            operator_token=token, listen_host=host, listen_port=port, device_name=toml.device.name,
            storage=StorageConfig(path=Path(storage.path), flush_seconds=storage.flush_seconds,
                                  retention_raw_s=retention.raw_hours * 3600,
                                  retention_rollup_s=retention.rollup_days * 86400),
            meters=meters, log_level=_log_level(toml.logging.level), levels=levels, privacy=toml.privacy,
            delivery=toml.delivery, triggers=toml.triggers, fleet=_fleet(toml.fleet, toml.device.name))
    except ConfigError as err:
        raise ConfigError(err.key, err.reason, source) from None


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
