"""Triggers without I/O: the record, the checks of an uploaded body, the trial's sample inputs, the
per-household debounce and the stable per-organization pseudonym of a household.

The boolean stream of a condition is a side channel (DESIGN.md): a condition can leak one bit of a
household's data per evaluation. What leaves the device is therefore bounded here:
- an action for a household happens at most once per `interval` per trigger (`Debouncer`), and a
  trigger deleted and created again inherits its predecessor's wait (the organization's cooldown, for
  triggers of the same action type);
- notifications of household conditions go to the household's side only (its inbox, its endpoint);
  an action of a household condition the organization can observe (`Trigger.discloses`: a webhook to it, or
  a switch of an appliance it may supply or monitor, red team 7 R7-3) happens only if that household
  consented to that trigger's events, and at most `max_events_per_household_per_day` of them per
  organization and UTC day, one budget for both (`Debouncer.event_allowed`); `disclosure_bits` is what that
  bound means;
- the organization's statistics are per-window counts released by the release module (thresholded or
  noised), summed in `TriggerStats`, never a per-household result.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from agent.errors import DomainError
from agent.ingest import TAG
from agent.parameters import HOUSEHOLD, Parameter, lookup

# the actions the runner carries out; their shapes are agent/api/bodies.py's (tests/test_api_bodies.py: the same)
KINDS = ("notification", "appliance", "webhook")
# Actions the organization can observe: its own webhook, and an appliance it may switch (and may supply or monitor:
# nothing on the device can tell). Of a household condition, each one is a disclosure about that household.
OBSERVABLE = ("webhook", "appliance")
MAX_PARAMETERS = 16
MAX_CONTENT_CHARS = 1000
MAX_TITLE_CHARS = 100
MAX_INTERVAL_S = 30 * 86400
APPLIANCE_REF = re.compile(r"^[^\x00-\x1f]{1,64}$")

# Fixed reasons of a refused upload (the sandbox's own: syntax error, does not define condition(...),
# too slow: exceeded N ms, did not return a bool, rejected by sandbox).
UNKNOWN_PARAMETER = "unknown parameter"
PARAMETER_NOT_PERMITTED = "parameter not permitted"


class TriggerCode(Enum):
    INVALID = "invalid"
    UNKNOWN_PARAMETER = "unknown_parameter"
    PARAMETER_NOT_PERMITTED = "parameter_not_permitted"
    ENDPOINT_REFUSED = "endpoint_refused"


class Refused(DomainError[TriggerCode], ValueError):
    """An upload that cannot be accepted: its code, detail, and the fixed reason if it has one (also an answer's
    field, like the rest of `extra`)."""

    def __init__(self, code: TriggerCode, detail: str, reason: str | None = None, **extra: object) -> None:
        super().__init__(code, detail, retry_after=None, **extra, **({"reason": reason} if reason else {}))
        self.reason = reason


@dataclass
class Trigger:
    id: str
    organization_id: str
    parameters: list[str]
    source: str
    interval_s: float
    window: str
    action: dict[str, Any]
    secret: str | None  # the webhook action's signing secret
    created_at: float
    quarantined: bool = False
    rejected: str | None = None  # a fixed reason, if the source stopped loading
    description: str = ""  # what households are shown before they consent to its events
    # In the closed language (its upload's trial said so; its rows run in an evaluator): the view's `isolation`
    # comes from this, never from a worker having loaded it, which would say someone was evaluated. None:
    # uploaded before this was recorded.
    closed: bool | None = None
    # in memory only
    last_window: int | None = field(default=None, compare=False, repr=False)
    suspended: bool = field(default=False, compare=False, repr=False)

    RECORD = ("id", "organization_id", "parameters", "source", "interval_s", "window", "action", "secret",
              "created_at", "quarantined", "rejected", "description", "closed")

    def record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.RECORD}

    def catalogue(self) -> list[Parameter]:
        out = []
        for name in self.parameters:
            param = lookup(name)
            if param is None:  # checked at upload (check_parameters); a catalogue that lost one since is this
                raise LookupError(f"trigger {self.id}: parameter {name!r} is no longer in the catalogue")
            out.append(param)
        return out

    @property
    def kind(self) -> str:
        """"household": runs per consenting household; "neighborhood": once per window."""
        return "household" if any(p.level == HOUSEHOLD for p in self.catalogue()) else "neighborhood"

    @property
    def discloses(self) -> bool:
        """Its actions tell the organization a household's condition: each needs that household's consent to this
        trigger's events and is one of the household's events of the day to the organization."""
        return self.kind == "household" and self.action["type"] in OBSERVABLE

    def public_action(self) -> dict[str, Any]:
        return dict(self.action)  # the secret is kept beside it, never in it


@dataclass
class TriggerStats:
    """What the organization may know of a trigger in motion: sums of the per-window counts the release module
    released (each window's counts were released whole or not at all), and how many windows were not."""

    evaluations: int | float = 0  # households evaluated (neighbourhood conditions: windows evaluated)
    fired: int | float = 0  # of those, how many the condition was true for
    delivered: int | float = 0  # actions that reached their target by the window's statistics time
    failed: int | float = 0  # actions that did not (or were dropped, or were still under way)
    errors: int | float = 0  # evaluations that failed (raised, not a bool, killed)
    windows_released: int = 0  # windows whose counts were released
    windows_withheld: int = 0  # windows whose counts the release module withheld (cohort too small, budget)
    windows_daily: int = 0  # windows of a noisy level: their counts are released per UTC day, noised
    inputs_withheld: int = 0  # windows not evaluated: their neighbourhood aggregate was not released
    late: int = 0  # windows not evaluated by their release moment (operator's view only)

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, released: dict[str, Any]) -> None:
        for name in ("evaluations", "fired", "delivered", "failed", "errors"):
            value = released.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(self, name, getattr(self, name) + value)
        self.windows_released += 1


# --- checks of an upload -------------------------------------------------------------------------
def check_parameters(names: object, permitted: Callable[[Parameter], tuple[bool, str]]) -> list[Parameter]:
    """Every name exists and `permitted(name)` says yes. Raises Refused with a fixed reason."""
    if not isinstance(names, list) or not names or len(names) > MAX_PARAMETERS:
        raise Refused(TriggerCode.INVALID, f"parameters must be a list of 1 to {MAX_PARAMETERS} names")
    if not all(isinstance(n, str) for n in names):
        raise Refused(TriggerCode.INVALID, "parameters must be a list of names")
    if len(set(names)) != len(names):
        raise Refused(TriggerCode.INVALID, "a parameter is named twice")
    out = []
    for name in names:
        # fullmatch: match() would let "household_tariff\n" through ($ matches before a newline)
        param = lookup(name) if re.fullmatch(r"[a-z0-9_-]{1,80}", name) else None
        if param is None or (name.startswith(("household_channel_", "neighborhood_channel_"))
                             and not TAG.fullmatch(name.split("_channel_", 1)[1])):
            raise Refused(TriggerCode.UNKNOWN_PARAMETER, f"{UNKNOWN_PARAMETER}: {name[:80]!r}; see GET /parameters",
                          UNKNOWN_PARAMETER, parameter=name[:80])
        out.append(param)
    for param in out:
        allowed, why = permitted(param)
        if not allowed:
            raise Refused(TriggerCode.PARAMETER_NOT_PERMITTED, f"{PARAMETER_NOT_PERMITTED}: {param.name!r}{why}",
                          PARAMETER_NOT_PERMITTED, parameter=param.name)
    return out


def check_action(action: dict[str, Any], check_endpoint: Callable[[str], str]) -> dict[str, Any]:
    """The action, normalized: what its shape (agent/api/bodies.py's action Structs: the type, the fields and
    their lengths) does not say. `check_endpoint(url)` vets a webhook endpoint (raises Refused)."""
    kind = action["type"]
    if kind == "notification" and not action["content"].strip():
        raise Refused(TriggerCode.INVALID, f"action.content must be 1 to {MAX_CONTENT_CHARS} characters")
    if kind == "appliance" and (not APPLIANCE_REF.fullmatch(action["appliance"]) or not action["appliance"].strip()):
        raise Refused(TriggerCode.INVALID, "action.appliance must be 1 to 64 printable characters (a name or kind)")
    if kind == "webhook":
        return {"type": "webhook", "endpoint": check_endpoint(action["endpoint"])}
    return dict(action)


# --- the trial's sample inputs ----------------------------------------------------------------------
# Drawn afresh and secretly (the OS's CSPRNG) for every upload, so that a condition cannot recognise the trial
# by its inputs and behave only then (a "sleeper"; the CPU budget in sandbox.supervisor catches one later).
# Most values are plausible for the parameter, about one in four is outside that range but still possible (a
# tiny or a huge value; negative only where the quantity can be negative): an honest condition returns a bool
# for any of them. No zeros (an honest `a / b` must not be refused for a sample); tariffs stay 1 or 2.
TRIAL_ROWS = (6, 10)  # rows per trial, drawn as well
OUTSIDE_SHARE = 0.25


def _plausible(param: Parameter) -> tuple[float, float, bool]:
    """(low, high, whole numbers) of a plausible value; low < 0 where the quantity can be negative."""
    name = param.name
    household = param.level == HOUSEHOLD
    if name.endswith("_net_power"):
        return (-3000.0, 9000.0, False) if household else (-40000.0, 90000.0, False)
    if name == "household_tariff":
        return 1, 2, True
    if name == "neighborhood_household_count":
        return 10, 200, True
    if name.startswith("household_voltage"):
        return 215.0, 245.0, False
    if name.startswith("household_current"):
        return 0.1, 25.0, False
    if name == "household_gas_consumption":
        return 10.0, 10000.0, False
    if name.startswith("household_energy"):
        return 1e5, 1.5e8, False
    return (50.0, 9000.0, False) if household else (1000.0, 150000.0, False)


def _draw(rng: random.Random, param: Parameter) -> float:
    low, high, whole = _plausible(param)
    if param.name == "household_tariff":
        return rng.choice((1, 2))
    if rng.random() >= OUTSIDE_SHARE:
        value = rng.uniform(low, high)
    elif rng.random() < 0.5:
        value = rng.uniform(high, 100 * high)  # huge
    elif low < 0:
        value = rng.uniform(100 * low, low)  # far below zero
    else:
        value = rng.uniform(max(low, 1.0) / 1000, low)  # tiny
    if whole:
        value = max(1, round(value))
    return value or (low if low else 1.0)


def sample_rows(params: list[Parameter], rng: random.Random | None = None) -> list[tuple[float, ...]]:
    """Rows of the trial run: 6 to 10, every value drawn secretly (``rng`` only for tests)."""
    rng = rng or random.SystemRandom()
    count = rng.randint(*TRIAL_ROWS)
    return [tuple(_draw(rng, p) for p in params) for _ in range(count)]


# --- debounce ----------------------------------------------------------------------------------------
EVERYONE = "*"  # in the debounce: every household (what a firings log damaged beyond repair leaves, see the store)


class Debouncer:
    """At most one action per (trigger, household) per interval, and per (organization, household) no
    action of a deleted trigger's kind before its wait is over (deleting and creating again is no way around
    it). The wait holds only triggers of the same action type: a notification trigger's firing, which reaches
    nobody but the household, must not switch a consented trigger's events off (red team 6, R6-4); a wait of
    kind None (written before kinds were) holds every kind. An entry for EVERYONE counts for every household (a
    trigger that acted for unknown households, a day's events spent for unknown households)."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], float] = {}  # (trigger id, household id) -> last action
        # (organization id, household id) -> {action type, or None for every type: not before}
        self.cooldown: dict[tuple[str, str], dict[str | None, float]] = {}
        self.events: dict[tuple[str, str], tuple[int, int]] = {}  # (organization id, household id) -> (day, n)

    def event_allowed(self, org_id: str, household_id: str, at: float, per_day: int) -> bool:
        """May one more of this household's events go to this organization on the UTC day of `at`?"""
        today = _day(at)
        return all((used if day == today else 0) < per_day
                   for day, used in (self.events.get((org_id, who), (None, 0)) for who in (household_id, EVERYONE)))

    def spend_event(self, org_id: str, household_id: str, at: float, n: int = 1) -> None:
        day, used = self.events.get((org_id, household_id), (None, 0))
        today = _day(at)
        if day is not None and day > today:
            return  # a clock that went back: the later day's count stands
        self.events[(org_id, household_id)] = (today, (used if day == today else 0) + n)

    def allowed(self, trigger: Trigger, household_id: str, now: float) -> bool:
        for who in (household_id, EVERYONE):
            last = self.last.get((trigger.id, who))
            if last is not None and now - last < trigger.interval_s:
                return False  # (a clock that went back also waits)
            waits = self.cooldown.get((trigger.organization_id, who), {})
            if now < max(waits.get(trigger.action["type"], float("-inf")), waits.get(None, float("-inf"))):
                return False
        return True

    def record(self, trigger_id: str, household_id: str, now: float) -> None:
        self.last[(trigger_id, household_id)] = now

    def cool(self, org_id: str, household_id: str, until: float, kind: str | None = None) -> None:
        waits = self.cooldown.setdefault((org_id, household_id), {})
        waits[kind] = max(until, waits.get(kind, float("-inf")))

    def retire(self, trigger: Trigger, now: float) -> list[tuple[str, str, float, str]]:
        """Forget a deleted trigger; returns the cooldowns it leaves behind (organization, household, until,
        its action type)."""
        out = []
        for key in [k for k in self.last if k[0] == trigger.id]:
            until = self.last.pop(key) + trigger.interval_s
            if until > now:
                self.cool(trigger.organization_id, key[1], until, trigger.action["type"])
                out.append((trigger.organization_id, key[1], until, trigger.action["type"]))
        return out


def pseudonym(key: bytes, org_id: str, household_id: str) -> str:
    """Stable per (device, organization, household); unlinkable across organizations and devices."""
    mac = hmac.new(key, f"{org_id}\x00{household_id}".encode(), hashlib.sha256).hexdigest()
    return "p_" + mac[:32]


def _day(at: float) -> int:
    return int(at // 86400)


def disclosure_bits(events_per_day: int, slots_per_day: int) -> float:
    """What at most `events_per_day` events can tell about one household in a day when each event names one of
    `slots_per_day` (trigger, window) pairs: log2 of the number of such sets of events (their absence included)."""
    ways = sum(math.comb(slots_per_day, i) for i in range(min(events_per_day, slots_per_day) + 1))
    return math.log2(ways)
