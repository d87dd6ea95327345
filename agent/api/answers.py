"""Response bodies as typed schemas (msgspec Structs): each answer's fields, their types and descriptions stated
once; the OpenAPI document's component schemas of these answers are generated from them (agent/api/openapi.py).

The handlers build their answers from the domain's own views (`Organization.public()`, `Delivery.describe()`,
...); tests/test_api_answers.py converts real answers of a running agent into these Structs, strictly (a field
not declared here, a missing one or a wrong type fails), and checks them against the generated document;
schemathesis checks the running server against the document independently.

An answer whose every field is declared forbids others (additionalProperties false in the document); an error
(`Error`, `TriggerRefused`) may carry more. What the release module records (Aggregate, Privacy, Refusal) and the
Reading (its table, drivers/reading.py) have schemas of their own in openapi.py.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from agent.api.bodies import OrgIds
from agent.api.errors import codes

Seconds = Annotated[float, Meta(description="Unix seconds")]
Counts = Annotated[dict[str, Any], Meta(description="what the agent counts of it (the keys may grow)")]


class Answer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# Every code the API answers (agent/api/errors.py: the HTTP layer's, the domain's, the release module's refusals)
Code = Annotated[str, Meta(extra_json_schema={"enum": codes()})]


class Error(msgspec.Struct, kw_only=True):
    """Every error: {error, detail}; some say more (households and missing for cohort_too_small, Retry-After)."""

    error: Code
    detail: str
    households: int | UnsetType = UNSET
    missing: int | UnsetType = UNSET


# --- health and meters ----------------------------------------------------------------------------------------
Status = Literal["ok", "degraded"]


class HealthPublic(Answer):
    """Without the operator token: ok or degraded, nothing else"""

    status: Status


class MeterHealth(Answer):
    state: Literal["connecting", "reading", "stalled", "disconnected", "stopped"]
    port: str
    profile: str
    serial: str | None
    telegrams_ok: int
    crc_errors: int
    parse_errors: int
    decrypt_errors: int
    bytes_discarded: int
    bytes_read: int
    opens: int
    reconnects: int
    stalls: int
    seconds_since_last_telegram: float | None
    last_error: str | None
    hint: Annotated[str | None, Meta(description="what looks wrong while no telegram arrives: 7E1 read as 8N1, "
                                                 "parity errors, no data at all")]


class TriggersHealth(Answer):
    sandbox: Literal["enforced", "unavailable"]
    detail: str
    triggers: int
    quarantined: int
    late_windows: Annotated[int, Meta(description="windows dropped for being late")]
    dropped_actions: Annotated[int, Meta(description="actions dropped beyond an organization's or a household's "
                                                     "lane")]
    day_counts_dropped: Annotated[int, Meta(description=(
        "noisy levels, since start: windows whose counts came after their UTC day was decided, so were dropped "
        "(never a second release of the day; a busy agent)"))]


class Health(Answer):
    status: Status
    device: str
    uptime_s: float
    meters: dict[str, MeterHealth]
    storage: Counts
    readings_in: int
    triggers: TriggersHealth
    config_error: Annotated[str | None, Meta(description="why the last edge.toml was rejected")]
    faults: Annotated[dict[str, Any], Meta(description=(
        "the durable state at risk: data_directory_lost, damage (per file kind: files, skipped_bytes, cut_bytes, "
        "recovered, lost), registry_failed_closed, release_log_error, releases_lost (one-off releases refused for "
        "good: keys, every_new_one_refused_until), delivery (outbox_errors, windows_not_queued, damaged), "
        "damage_scan (the start's scan of every file for damage: state, files, scanned)"))]
    fleet: Annotated[dict[str, Any], Meta(description="[fleet] enabled: the link to the cluster")] | UnsetType = UNSET


class Meter(Answer):
    id: str
    source: Literal["p1", "http"]
    port: str | None
    profile: str | None
    state: str | None
    household_id: str | None
    last_reading_at: str | None


class Meters(Answer):
    meters: list[Meter]


class Accepted(Answer):
    """POST /readings and the DSMR-reader datalogger: the readings stored (all of the request's)"""

    accepted: Annotated[int, Meta(ge=1)]


class ReadingsPage(Answer):
    meter_id: str
    resolution: Literal["raw", "1m", "15m"]
    readings: Annotated[list[dict[str, Any]], Meta(description="raw: Readings; 1m and 15m: the rollups")]
    count: int


# --- organizations and households (the operator's) --------------------------------------------------------------
class Organization(Answer):
    id: str
    name: str
    level: str
    created_at: Seconds
    parameters: Annotated[list[str] | None, Meta(description="the operator's narrowing of the level (null: none)")]


class OrganizationCreated(Organization):
    api_key: Annotated[str, Meta(description="shown once")]


class Organizations(Answer):
    organizations: list[Organization]


class KeyRotated(Answer):
    """A new organization API key (api_key), household token (token) or datalogger token (datalogger_token),
    shown once"""

    id: str
    api_key: str | UnsetType = UNSET
    token: str | UnsetType = UNSET
    datalogger_token: str | UnsetType = UNSET


class Household(Answer):
    id: str
    meter_id: str
    source: Literal["p1", "http"]
    created_at: Seconds
    related_organizations: OrgIds
    has_datalogger_token: Annotated[bool, Meta(description="whether a datalogger token was made (a household made "
                                                           "before they existed has none until the operator makes one)")]


class HouseholdCreated(Household):
    token: Annotated[str, Meta(description="the household's own token, for its pages and consents: shown once")]
    datalogger_token: Annotated[str | None, Meta(description="for a household that posts its own readings (source "
                                                             "http): its datalogger's token, which only posts "
                                                             "readings; shown once (null for a wired meter)")]


class Households(Answer):
    households: list[Household]


# --- consents ---------------------------------------------------------------------------------------------------
class ConsentChange(Answer):
    organization_id: str
    service: str
    action: Literal["grant", "revoke"]
    at: Seconds


class Grant(Answer):
    organization_id: str
    organization_name: str | None
    service: str
    since: Seconds


class MyConsents(Answer):
    consents: list[Grant]
    history: list[ConsentChange]


class ConsentHistory(Answer):
    history: list[ConsentChange]


class ConsentSet(Answer):
    organization_id: str
    service: str
    granted: bool
    at: Seconds


class Consent(Answer):
    household_id: str
    organization_id: str
    service: str
    granted: bool
    since: Seconds


class Consents(Answer):
    consents: list[Consent]


class OrganizationBrief(Answer):
    id: str
    name: str
    level: str


class OrganizationsForHousehold(Answer):
    services: list[str]
    organizations: list[OrganizationBrief]


class Parameter(Answer):
    name: str
    unit: str
    level: Literal["household", "neighborhood"]
    description: str
    permitted: bool


class Parameters(Answer):
    parameters: list[Parameter]
    privacy: Annotated[dict[str, Any], Meta(description="k_min, the ledger's terms, the grid's voltage bands and the "
                                                        "caller's level (its kind, windows and noise)")]
    trigger_disclosure: Annotated[dict[str, Any], Meta(description="the bound on what triggers disclose per "
                                                                   "household")]


class AuditEntry(msgspec.Struct, kw_only=True):  # each action adds its own fields
    at: Seconds
    who: str
    role: str
    action: str
    windows: Annotated[int | None, Meta(description="data.push: a run of this many consecutive windows of the "
                                                    "subscription with the same outcome; window_start is the "
                                                    "first's, at when it was decided (absent: one window, as "
                                                    "written before runs)")] = None
    last_window_start: Annotated[int | None, Meta(description="data.push, a run of more than one window: the "
                                                              "last's start")] = None
    last_at: Annotated[float | None, Meta(description="data.push, a run of more than one window: when the last "
                                                      "was decided (Unix seconds)")] = None


class Audit(Answer):
    entries: list[AuditEntry]


# --- subscriptions ----------------------------------------------------------------------------------------------
class SubscriptionDelivery(Answer):
    queued: int
    lag_s: float | None
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None
    messages_sent: int
    bytes_sent: int
    failures: int
    retries: int
    withheld: int
    filtered: int
    dropped: int
    next_sequence: int


class Subscription(Answer):
    id: str
    endpoint: str
    interval: float
    window: str
    tag: str | None
    filter: dict[str, Any] | None
    state: Literal["active", "disabled"]
    disabled_reason: str | None
    created_at: Seconds
    delivery: SubscriptionDelivery


class SubscriptionCreated(Subscription):
    secret: Annotated[str, Meta(description="whsec_...: shown once")]


class Subscriptions(Answer):
    subscriptions: list[Subscription]


class SecretRotated(Answer):
    id: str
    secret: str
    previous_secret_valid_until: Seconds


# --- triggers (an organization's view: released counts only) ----------------------------------------------------
class TriggerDeliveries(Answer):
    delivered: float
    failed: float


class TriggerWindows(Answer):
    released: Annotated[int, Meta(description="windows whose counts were released")]
    withheld: Annotated[int, Meta(description="windows whose counts were not (too few households)")]
    released_daily: Annotated[int, Meta(description="windows of a noisy level, summed per day")]
    inputs_withheld: Annotated[int, Meta(description="windows not evaluated: their neighbourhood aggregate was "
                                                     "not released")]


class Trigger(Answer):
    """Counts are sums of the per-window statistics the release module released (exact levels: windows of at
    least k_min households; noisy levels: noised per UTC day)"""

    id: str
    parameters: list[str]
    interval: float
    window: str
    kind: Literal["household", "neighborhood"]
    action: dict[str, Any]
    description: str
    created_at: Seconds
    state: Literal["active", "quarantined", "rejected", "suspended", "sandbox_unavailable"]
    quarantined: bool
    evaluations: Annotated[float, Meta(description="households evaluated")]
    firings: Annotated[float, Meta(description="households the condition was true for")]
    errors: Annotated[float, Meta(description="evaluations that failed")]
    deliveries: TriggerDeliveries
    windows: TriggerWindows
    days_released: Annotated[int, Meta(description="noisy levels: days whose counts were released")]
    isolation: Annotated[Literal["closed language", "process per row"] | None, Meta(description=(
        "how the sandbox keeps households' rows apart: a condition in the closed language shares one locked "
        "evaluator (fast), any other gets a process per row; as its upload's trial found, whether anyone was "
        "evaluated since or not (null: uploaded before this was recorded; README, The sandbox)"))]


class TriggerCreated(Trigger):
    secret: Annotated[str, Meta(description="webhook actions: the signing secret, shown once")] | UnsetType = UNSET


class Triggers(Answer):
    triggers: list[Trigger]


class TriggerRefused(msgspec.Struct, kw_only=True):
    error: Code
    detail: str
    parameter: str | UnsetType = UNSET
    reason: Annotated[str, Meta(description=(
        "unknown parameter, parameter not permitted, syntax error, does not define condition(...), too slow: "
        "exceeded N ms, did not return a bool, reads the clock, or rejected by sandbox"))] | UnsetType = UNSET


class MaxRate(Answer):
    one_event_per_s: float
    events_per_organization_per_day: int


class ConsentableTrigger(Answer):
    trigger_id: str
    organization_id: str
    organization_name: str | None
    description: str
    parameters: list[dict[str, Any]]
    window: str
    action_type: Annotated[Literal["webhook", "appliance"], Meta(description=(
        "webhook: an event sent to the organization; appliance: your appliance switched, which the organization "
        "may see"))]
    service: Annotated[str, Meta(description="trigger_events:<trigger_id>: PUT /households/me/consents/{org_id}/"
                                             "{service} to consent")]
    consented: bool
    requires: list[str]
    max_rate: MaxRate
    event: Annotated[dict[str, str], Meta(description="what the organization receives (webhook) or can see "
                                                      "(appliance) per event, field by field")]
    created_at: Seconds


class ConsentableTriggers(Answer):
    triggers: list[ConsentableTrigger]
    disclosure: dict[str, Any]


# --- a household's notifications and appliances ----------------------------------------------------------------
class Notify(Answer):
    url: str
    kind: Literal["webhook", "ntfy"]
    updated_at: Seconds
    secret: Annotated[str, Meta(description="webhook: signing secret, shown once")] | UnsetType = UNSET


class Notification(Answer):
    id: str
    organization_id: str
    organization_name: str
    trigger_id: str
    title: str
    content: str
    at: Seconds


class Notifications(Answer):
    notifications: list[Notification]


class NotifyTest(Answer):
    delivered: Literal[True]
    status: int
    error: None


class Appliance(Answer):
    id: str
    name: str
    kind: str | None
    driver: str
    address: str
    channel: int | None
    allowed_organizations: list[str]
    created_at: Seconds


class Appliances(Answer):
    appliances: list[Appliance]
    drivers: list[str]


class ApplianceStatus(Answer):
    on: bool  # the relay's state; never the power it meters (R6-9)
    error: None


ANSWERS = (Error, HealthPublic, Health, MeterHealth, Meters, Accepted, ReadingsPage, Organization, OrganizationCreated,
           Organizations, KeyRotated, Household, HouseholdCreated, Households, ConsentChange, MyConsents,
           ConsentHistory, ConsentSet, Consents, OrganizationsForHousehold, Parameters, Audit, Subscription,
           SubscriptionCreated, Subscriptions, SecretRotated, Trigger, TriggerCreated, Triggers, TriggerRefused,
           ConsentableTrigger, ConsentableTriggers, Notify, Notifications, NotifyTest, Appliance, Appliances,
           ApplianceStatus)


@functools.cache
def schemas() -> dict[str, Any]:
    """The component schemas of every answer, for the OpenAPI document."""
    _, components = msgspec.json.schema_components(ANSWERS, ref_template="#/components/schemas/{name}")
    return components
