"""What a service is given of the others: small typed interfaces instead of the whole agent. Delivery, the
triggers and the fleet link each take a dataclass of these (their `...Needs`); the runtime (agent/service.py)
fills it with its own registry, release door, audit log and clock, and mypy checks that they conform."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent.registry import Household, Organization
from agent.release.records import Json, Refusal
from drivers.reading import Reading


class Decided(Protocol):
    """The release door (agent/release/) as a consumer of decided windows sees it."""

    def listen(self, callback: Callable[[str, int], None]) -> None: ...
    def last_settled(self, window: str) -> int | None: ...
    def answer(self, org_id: str, window: str, start: int, tag: str | None = None) -> Json | Refusal: ...


class TriggerReleases(Decided, Protocol):
    """The door's part for triggers: their counts and noisy day sums are releases too."""

    def trigger_window(self, org_id: str, trigger_id: str, start: int) -> None: ...
    async def counts(self, org_id: str, trigger_id: str, window: str, start: int,
                     per_household: dict[str, dict[str, int]]) -> Json | Refusal: ...
    def trigger_days(self, org_id: str, trigger_id: str) -> list[Json]: ...


class FleetReleases(Decided, Protocol):
    """The door's part for the fleet link: the recorded windows it catches up with, durable before they go."""

    async def history(self, org_id: str, window: str, starts: list[int],
                      tag: str | None) -> dict[int, Json | Refusal]: ...
    async def flush(self) -> None: ...


class Organizations(Protocol):
    """The registry's organizations (agent/registry.py)."""

    @property
    def organizations(self) -> Mapping[str, Organization]: ...
    def organization(self, org_id: str) -> Organization: ...  # RegistryError NOT_FOUND if there is none


class Consents(Organizations, Protocol):
    """The registry as triggers see it: households and their consents."""

    @property
    def households(self) -> Mapping[str, Household]: ...
    def consent_state(self, household_id: str, org_id: str, service: str, at: float | None = None) -> bool: ...


class FleetRegistry(Organizations, Protocol):
    """The registry as the fleet link sees it: the operator's organizations it replaces, households' relations."""

    @property
    def households(self) -> Mapping[str, Household]: ...
    def all_households(self) -> list[Household]: ...
    def replace_organizations(self, previous: set[str], organizations: list[Organization]) -> None: ...


class Trail(Protocol):
    """The audit log (agent/audit.py): an entry queued, never waiting on the disk."""

    def record(self, who: str, role: str, action: str, durable: bool = True, **details: Any) -> dict[str, Any]: ...


class PushTrail(Trail, Protocol):
    """The audit log, with a subscription's decided windows kept as runs."""

    def record_push(self, who: str, subscription_id: str, window: str, window_start: int, **details: Any) -> None: ...


class Readings(Protocol):
    """The pipeline (agent/pipeline.py): every reading, as it arrives."""

    def subscribe(self, listener: Callable[[Reading], None]) -> None: ...
