"""What the release module records and what webhooks carry, as typed schemas (msgspec Structs): one window's
release (`Aggregate`, its `Privacy`), a refusal, the history of decided windows, the anonymized release's rows and
report, and the webhook payloads (a subscription's message, a trigger's event, a household's notification). The
OpenAPI document's component schemas of them are generated from these (agent/api/openapi.py); the records are built
as dicts by agent/release/records.py, agent/privacy/ and the delivery, and tests/test_openapi.py converts real ones
into these Structs, strictly where the document says no other field is allowed.

Only the shape is here: what a release means (which windows, which households) is the release module's.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from agent.api.bodies import Window
from agent.release.records import RefusalCode

Time = Annotated[datetime, Meta(tz=True)]  # ISO 8601 with an offset (the records write UTC, "Z")
Why = Annotated[str, Meta(extra_json_schema={"enum": [code.value for code in RefusalCode]})]  # the release module's
DerivedFrom = Annotated[str, Meta(pattern="^[0-9]+ x (1s|1m|15m)$", description=(
    "wider windows only: the released finer windows this one is derived from (their sum)"))]


class Record(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ExactPrivacy(Record, tag_field="kind", tag="exact"):
    """an exact level's audited exact sums"""

    derived_from: DerivedFrom | UnsetType = UNSET


class NoisyPrivacy(Record, tag_field="kind", tag="noisy"):
    """a noisy level's release: one OpenDP draw per window, shared, charged to the per-household ledger ([privacy]
    horizon_days, cap_rho)"""

    mechanism: Literal["discrete_gaussian", "discrete_laplace"]
    clamp_w: Annotated[list[Annotated[int, Meta(ge=0)]], Meta(min_length=2, max_length=2, description=(
        "[0, U]: the level's fixed clamp of one household's mean power, in watts (never the caller's choice)"))]
    scale: float
    noise_sd_w: Annotated[float, Meta(description="of each released number")]
    rho: Annotated[float, Meta(description="zCDP loss each household of the cohort bears for this window")]
    guarantee: str
    households: str
    quantities: Annotated[int, Meta(ge=1, le=2)]
    derived_from: DerivedFrom | UnsetType = UNSET
    ledger_lost_until: Annotated[Time, Meta(description=(
        "only while a day of the device's release log lost beyond repair is in the ledger's horizon: every "
        "household counts as having spent its whole cap, so nobody is in the sums (pure noise) until this moment"
        ))] | UnsetType = UNSET


Privacy = ExactPrivacy | NoisyPrivacy
Households = Annotated[int, Meta(ge=1, description=(
    "exact: consenting households with data (a household silent a few seconds is held at its last values); noisy: "
    "every consenting household (one that sent nothing, or whose ledger cannot bear the release, counts 0); wider "
    "windows: the fewest of their finer windows"))]
Consumption = Annotated[float, Meta(description="sum of the households' mean power (noisy: may be negative)")]
MeanW = Annotated[float | None, Meta(description="tags only: consumption_w over households")]
HouseholdsMax = Annotated[int, Meta(ge=1, description=(
    "wider windows only: the most households in any of their finer windows"))]
PeakMonthW = Annotated[float, Meta(description=(
    "15m and 1h windows: the highest consumption_w released to this organization at this width since the UTC month "
    "began"))]
PeakMonthAt = Annotated[Time, Meta(description="the window_start of that window")]
Grid = Annotated[dict[str, Any], Meta(description=(
    "grid quantities (PRIVACY.md, Grid quantities): per quantity (voltage_l1..l3: counts per band, min_v, max_v, "
    "mean_v; long_power_failures: meters) its part or {refused: {error, detail}}; noisy levels: privacy. The bands: "
    "GET /parameters, privacy.grid_band_edges_v"))]


class Aggregate(Record):
    """One window's release, as recorded once when the window settled: every answer for it (live, history, GET
    /data/dp, a webhook) is this record"""

    window: Window
    window_start: Time
    window_end: Time
    households: Households
    tag: str | None
    consumption_w: Consumption
    production_w: float | None
    net_w: float | None
    energy_import_wh: float
    energy_export_wh: float | None
    privacy: Privacy
    mean_w: MeanW | UnsetType = UNSET
    households_max: HouseholdsMax | UnsetType = UNSET
    peak_month_w: PeakMonthW | UnsetType = UNSET
    peak_month_at: PeakMonthAt | UnsetType = UNSET
    grid: Grid | UnsetType = UNSET


# What a subscription's filter keeps of an Aggregate: these always, any other of its fields as the filter says.
ALWAYS_KEPT = ("window", "window_start", "window_end", "tag", "privacy")
ProjectedAggregate = msgspec.defstruct(
    "ProjectedAggregate",
    [(f.name, f.type) if f.name in ALWAYS_KEPT else (f.name, f.type | UnsetType, UNSET)
     for f in msgspec.structs.fields(Aggregate)],
    bases=(Record,), kw_only=True, module=__name__)
ProjectedAggregate.__doc__ = ("the Aggregate record, projected to the filter's fields (window, window_start, "
                              "window_end, tag and privacy always kept)")


class Refusal(Record):
    error: Why
    detail: str
    households: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    missing: Annotated[int, Meta(ge=1)] | UnsetType = UNSET


Refusal.__doc__ = ("A window not released, and why: " + "; ".join(f"{c}: {c.meaning}" for c in RefusalCode)
                   + ". households and missing only for cohort_too_small without a tag")


class RefusedWindow(Refusal, kw_only=True):
    window_start: Time


class AggregateHistory(Record):
    """Every decided window from since to until, from the release log; windows not yet decided are left out"""

    window: Window
    tag: str | None
    released: list[Aggregate]
    refused: list[RefusedWindow]


class WebhookMessage(msgspec.Struct, kw_only=True):
    """What a subscription's endpoint receives: an aggregate (released or not), a heartbeat, or a gap"""

    type: Literal["aggregate", "heartbeat", "gap"]
    sequence: Annotated[int, Meta(ge=1)]
    subscription_id: str | UnsetType = UNSET
    window: str | UnsetType = UNSET
    window_start: Time | UnsetType = UNSET
    window_end: Time | UnsetType = UNSET
    aggregate: ProjectedAggregate | UnsetType = UNSET  # type: ignore[valid-type]
    released: bool | UnsetType = UNSET
    reason: RefusalCode | UnsetType = UNSET
    lost_windows: int | UnsetType = UNSET
    from_: str | None | UnsetType = msgspec.field(default=UNSET, name="from")
    to: str | None | UnsetType = UNSET
    detail: str | UnsetType = UNSET


# --- the anonymized release (GET /data/anonymized; agent/privacy/) ----------------------------------------------
Either = Literal["yes", "no", "*"]  # "*": generalized away


class AnonymizedRecord(msgspec.Struct, kw_only=True):
    period_start: Time
    period_end: Time
    has_pv: Either
    has_gas: Either
    phases: Literal["1", "3", "*"]
    connection: str
    consumption_w_from: Annotated[int, Meta(ge=0)]
    consumption_w_to: int | None
    pseudonym: str | UnsetType = UNSET  # the dso level's only


class PrivacyReport(msgspec.Struct, kw_only=True):
    quasi_identifiers: list[str]
    sensitive_attribute: str
    k: int
    l: int  # noqa: E741 (l-diversity's l)
    t: float
    epsilon: float | None
    rows: int
    epsilon_spent: float
    linkable: bool
    days: list[dict[str, Any]]
    level: str | UnsetType = UNSET
    required: dict[str, Any] | UnsetType = UNSET
    resolution: Literal["15m", "1h"] | UnsetType = UNSET
    generalization: dict[str, Any] | UnsetType = UNSET
    bins: str | UnsetType = UNSET
    households: int | UnsetType = UNSET
    households_suppressed: int | UnsetType = UNSET
    from_: Time | UnsetType = msgspec.field(default=UNSET, name="from")
    to: Time | UnsetType = UNSET
    pseudonyms: str | UnsetType = UNSET
    t_against: str | UnsetType = UNSET
    grid: str | UnsetType = UNSET


class AnonymizedRelease(msgspec.Struct, kw_only=True):
    records: list[AnonymizedRecord]
    report: PrivacyReport


# --- the triggers' webhooks (agent/triggers/) ---------------------------------------------------------------------
class TriggerWebhook(msgspec.Struct, kw_only=True):
    """What a webhook action's endpoint receives for one event"""

    type: Literal["trigger.fired"]
    trigger_id: str
    window: str
    window_start: Time
    at: Annotated[Time, Meta(description="the release moment: the window's end plus a fixed delay")]
    household: Annotated[str, Meta(description=(
        "household conditions only, for a household that consented: stable per organization"))] | UnsetType = UNSET


class HouseholdNotification(msgspec.Struct, kw_only=True):
    """What a household's webhook endpoint receives for a notification action"""

    type: Literal["notification"]
    id: str
    content: str
    at: Time
    organization_id: str | UnsetType = UNSET
    organization_name: str | UnsetType = UNSET
    trigger_id: str | UnsetType = UNSET
    title: str | UnsetType = UNSET


RECORDS = (Aggregate, Refusal, AggregateHistory, WebhookMessage, AnonymizedRecord, PrivacyReport, AnonymizedRelease,
           TriggerWebhook, HouseholdNotification)


@functools.cache
def schemas() -> dict[str, Any]:
    """The component schemas of every record and payload, for the OpenAPI document."""
    _, components = msgspec.json.schema_components(RECORDS, ref_template="#/components/schemas/{name}")
    return components
