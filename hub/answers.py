"""The hub's answers as typed schemas (msgspec Structs, as the device's agent/api/answers.py): each field's type and
description stated once; the OpenAPI document's response schemas are generated from them (hub/openapi.py).

An area's window is built as its Struct (hub/aggregate.py); the other handlers answer the service's own dicts
(hub/push.py's subscriptions, the hub's health and devices). tests/test_fleet_hub.py converts real answers of a
running hub into these Structs, strictly (a field not declared here, a missing one or a wrong type fails)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from agent.api.bodies import Window
from agent.api.errors import StatusCode

Time = Annotated[datetime, Meta(tz=True)]
Seconds = Annotated[float, Meta(description="UNIX seconds")]


class Answer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class HubCode(StatusCode):
    """Every code the hub answers (an Error's `error`), with its status: hub/api.py raises them."""

    BAD_REQUEST = "bad_request", 400
    BAD_ENDPOINT = "bad_endpoint", 400
    TOO_MANY_WINDOWS = "too_many_windows", 400
    UNAUTHORIZED = "unauthorized", 401
    FORBIDDEN = "forbidden", 403
    NOT_FOUND = "not_found", 404
    METHOD_NOT_ALLOWED = "method_not_allowed", 405  # aiohttp's router
    UNAVAILABLE = "unavailable", 503


class Error(msgspec.Struct, kw_only=True):
    """Every error: {error, detail}"""

    error: HubCode
    detail: str


class FleetRefused(Answer):
    at: Seconds
    error: str
    detail: str


class Health(Answer):
    """The hub's state: its JetStream link and what it applied of the devices' messages"""

    status: Literal["ok", "degraded"]
    uptime_s: float
    fleet_version: int | None
    fleet_refused: Annotated[FleetRefused | None, Meta(description="the last fleet document refused, until one "
                                                                   "is taken")]
    applied: int
    writes: int
    redelivered: int
    duplicates: int
    held: Annotated[int, Meta(description="messages after a hole in a device's sequence, delivered again later")]
    unassigned: int
    impersonations: Annotated[int, Meta(description="messages naming a device other than their subject's")]
    last_applied_at: Seconds | None
    last_error: str | None


class Area(Answer):
    area: str
    devices: list[str]


class Areas(Answer):
    """Areas the caller may read"""

    areas: list[Area]


class AreaRefusal(StrEnum):
    """Why an area's window is not released (its `error`)."""

    TOO_FEW_DEVICES = "too_few_devices"  # fewer than min_devices of the area released it
    NO_DATA = "no_data"  # no device of the area reported it (a subscription's push, after its grace time)


class AreaWindowPart(Answer):
    area: str
    window: Window
    window_start: Time
    window_end: Time
    tag: str | None
    devices: Annotated[int, Meta(ge=0, description="devices of the area that released this window")]
    devices_refused: Annotated[int, Meta(ge=0)]
    devices_expected: Annotated[int, Meta(ge=0)]
    complete: Annotated[bool, Meta(description="every device of the area has reported this window")]


class AreaPrivacy(Answer):
    kind: Literal["exact", "noisy", "mixed"]
    combined: str
    noise_sd_w: Annotated[float, Meta(description="of the sum: the root of the sum of the parts' squares")] \
        | UnsetType = UNSET


class ReleasedAreaWindow(AreaWindowPart):
    """An area's window: the sum of its devices' releases"""

    households: Annotated[int, Meta(ge=0, description="households behind the sum, over all devices (disjoint "
                                                      "across devices)")]
    consumption_w: float
    production_w: float | None
    net_w: float | None
    energy_import_wh: float
    energy_export_wh: float | None
    privacy: AreaPrivacy
    mean_w: Annotated[float | None, Meta(description="tags only: consumption_w over households")] | UnsetType = UNSET


class RefusedAreaWindow(AreaWindowPart):
    """An area's window not released: too few of its devices released it"""

    error: AreaRefusal
    detail: str


class AreaData(Answer):
    """An area's windows from since to until: released sums and refusals; windows no device reported are left
    out"""

    area: str
    window: Window
    tag: str | None
    released: list[ReleasedAreaWindow]
    refused: list[RefusedAreaWindow]


class LastRelease(Answer):
    window: Window
    start: Seconds


class Device(Answer):
    device: str
    area: str | None
    applied_version: Annotated[int | None, Meta(description="the desired-state version its last heartbeat applied")]
    last_seq: Annotated[int | None, Meta(description="the last of its messages applied in order")]
    gaps: int
    out_of_order: int
    last_release: LastRelease | None
    health: Annotated[dict[str, Any] | None, Meta(description="its last heartbeat, as it sent it")]


class Devices(Answer):
    """Devices: area, applied desired-state version, last release, last heartbeat (operator)"""

    devices: list[Device]


class Subscription(Answer):
    id: str
    org: str
    area: str
    window: Window
    tag: str | None
    endpoint: str
    created_at: Seconds
    cursor: Annotated[int, Meta(description="the start of the last window pushed (UNIX seconds)")]
    failures: Annotated[int, Meta(ge=0, description="failed tries of the next window")]
    retry_at: Seconds


class SubscriptionCreated(Subscription):
    secret: Annotated[str, Meta(description="shown once, at creation: verify the Standard Webhooks signature with "
                                            "it")]


class Subscriptions(Answer):
    """The organization's subscriptions"""

    subscriptions: list[Subscription]


class Deleted(Answer):
    deleted: str


# what a route answers (the parts, e.g. Subscription, come with them)
ANSWERS = (Error, Health, Areas, AreaData, Devices, SubscriptionCreated, Subscriptions, Deleted)
