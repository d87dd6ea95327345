"""Who is who: organizations, households and the consents between them.

Persisted in one TinyDB database over the store's crash-safe segment log (`registry.seg`):
inserts append, the rare updates (a level change, a token rotation) rewrite the file atomically.
Both fsync, so the API uses the `*_async` methods: the write runs in a worker thread, one change at
a time, and the method returns once it is durable (the event loop never waits on the SD card).
Consent is kept only as its append-only history; the current state and the state at any past
moment are derived from it, so a window's cohort can be fixed at the window's own times.

A consent change is stamped with its time `at`, written, and only then applied in memory: what the registry
answers is always the durable history. While it is being written it is *pending* (`pending_since()`), and
no window that ends after `at` may be closed or released (see `agent.release.door.Releases.settle_limit`):
such a window's cohort depends on whether the write lands. Once it settles, the change is applied (or,
if the disk refused it, dropped: nothing was released under it) and the windows go out.

Secrets (organization API keys, household tokens, datalogger tokens) are random, shown once, and stored only as
SHA-256 hashes; a presented token is hashed and looked up, then compared in constant time. A household's datalogger
token posts its readings and nothing else (an organization may control the datalogger: red team 7); a household
created before there were datalogger tokens has none until the operator makes one.

The operator can mark a household as related to organizations (an employee's home, a test meter): such a
household never counts toward that organization's k_min (`related`), since the organization knows its data.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable

from tinydb import where

from agent.errors import DomainError
from agent.store.disk import DataDirectory
from agent.store.durable import Durable
from agent.store.segment import SegmentDB, ensure_dir

log = logging.getLogger("edge.registry")

SERVICES = ("aggregates", "triggers", "anonymized_data")
# Consent to one trigger's per-household events: "trigger_events:trg_0123456789ab" (see is_service).
TRIGGER_EVENTS_PREFIX = "trigger_events:"
_TRIGGER_EVENTS = re.compile(r"trigger_events:trg_[0-9a-f]{12}")
MAX_RELATED = 100
_NAME = re.compile(r"^[^\x00-\x1f]{1,100}$")


def is_service(service: str) -> bool:
    """One of SERVICES, or `trigger_events:<trigger id>` (a trigger id is `trg_` and 12 hex digits)."""
    return service in SERVICES or bool(_TRIGGER_EVENTS.fullmatch(service))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


@dataclass
class Organization:
    id: str
    name: str
    level: str
    key_hash: str
    created_at: float
    parameters: list[str] | None = None  # an operator's narrowing of what the level allows

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "level": self.level, "created_at": self.created_at,
                "parameters": self.parameters}


@dataclass
class Household:
    id: str
    meter_id: str
    source: str  # "p1": wired to one of the device's ports; "http": posts its own readings
    token_hash: str
    created_at: float
    deleted_at: float | None = None  # kept as a tombstone: past windows' cohorts must not change
    # Organizations the operator marked it as related to (employees, test meters): never in their k_min.
    related_organizations: list[str] = field(default_factory=list)
    datalogger_hash: str | None = None  # its datalogger's token, which only posts readings (None: none made yet)

    def owns(self, received_at: float) -> bool:
        """Whether a reading of its meter received then (the device's clock) is its own. A meter that changes hands
        keeps the previous household's readings under its id (red team 6b, R6b-4): none before its creation."""
        return received_at >= self.created_at

    def data_since(self, since: float, width_s: int = 0) -> float:
        """`since`, or later: its meter's data from its creation on; of windows `width_s` wide, the first wholly
        after it (a window across its creation mixes the previous household's readings with its own)."""
        first = math.ceil(self.created_at / width_s) * width_s if width_s else self.created_at
        return max(since, first)

    def public(self) -> dict:
        return {"id": self.id, "meter_id": self.meter_id, "source": self.source, "created_at": self.created_at,
                "related_organizations": list(self.related_organizations),
                "has_datalogger_token": self.datalogger_hash is not None}


@dataclass
class ConsentChange:
    household_id: str
    organization_id: str
    service: str
    granted: bool
    at: float

    def public(self) -> dict:
        return {"organization_id": self.organization_id, "service": self.service,
                "action": "grant" if self.granted else "revoke", "at": self.at}


@dataclass
class ConsentLine:
    """One (household, organization, service): its changes in time order."""

    times: list[float] = field(default_factory=list)
    granted: list[bool] = field(default_factory=list)

    def state_at(self, moment: float) -> bool:
        i = bisect.bisect_right(self.times, moment)
        return self.granted[i - 1] if i else False

    def held_throughout(self, start: float, end: float) -> bool:
        """Granted at `start` and never revoked before `end` (a change at `end` is the next window's)."""
        if not self.state_at(start):
            return False
        first = bisect.bisect_right(self.times, start)
        last = bisect.bisect_left(self.times, end)
        return all(self.granted[first:last])


class RegistryCode(Enum):
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID = "invalid"


class RegistryError(DomainError[RegistryCode], ValueError):
    """A change or a lookup the registry refuses (nothing changed)."""


class Registry:
    def __init__(self, path: str | Path, clock=time.time):
        self.clock = clock
        self.path = Path(path)
        ensure_dir(self.path.parent)
        self.data_directory = DataDirectory(self.path.parent)
        # Every record twice: one damaged record is recovered from its twin, never read as another state.
        self.db = SegmentDB(str(path), kind="registry", copies=2)
        self.damage: dict | None = None  # what a damaged registry.seg cost, once found (see _fail_closed)
        self.organizations: dict[str, Organization] = {}
        self.households: dict[str, Household] = {}
        self._org_by_key: dict[str, Organization] = {}
        self._household_by_token: dict[str, Household] = {}
        self._household_by_datalogger: dict[str, Household] = {}
        self._household_by_meter: dict[str, Household] = {}
        self._consents: dict[tuple[str, str, str], ConsentLine] = {}
        self._history: dict[str, list[ConsentChange]] = {}
        # for the release module's cohort cache: how many consent changes, and the newest one's time
        self.consent_changes = 0
        self.last_consent_at = float("-inf")
        self._deleted: dict[str, Household] = {}
        # Called with a household's id once its new token or its deletion is durable and in force (where the change
        # ran: the event loop for the async ones): what its old token opened elsewhere ends then (the web pages'
        # sessions, links and live pages: agent/web/__init__.py).
        self.token_ended: list[Callable[[str], None]] = []
        # The TinyDB object is shared: one step at a time, whoever calls; one change at a time from the event loop.
        self._durable = Durable("registry", self.path, log)
        self._pending: list[ConsentChange] = []  # consent changes being written (see pending_since)
        self._load()

    def _load(self) -> None:
        for doc in self.db.table("organizations").all():
            self._index_org(Organization(**doc))
        for doc in self.db.table("households").all():
            household = Household(**doc)
            if household.deleted_at is None:
                self._index_household(household)
            else:
                self._deleted[household.id] = household
        for doc in self.db.table("consent_history").all():
            self._apply_consent(ConsentChange(**doc))
        for doc in self.db.table("integrity").all():
            self.damage = doc  # the last one: what an earlier start found
        if self.db.storage.lost_records:
            self._fail_closed(self.db.storage.lost_records)

    def _fail_closed(self, lost: int) -> None:
        """Records of registry.seg were damaged beyond repair: which consent changes they held is unknown (a lost
        revocation would bring a consent back as granted). Fail closed: every consent granted now is revoked,
        durably, in the history (households see it and can grant again), and the file is rewritten without the
        damage, with a record of what happened (shown in /health)."""
        revoked = [key for key, line in self._consents.items() if line.granted[-1]]
        at = self.clock()
        changes = [ConsentChange(hh, org, svc, False, max(at, self._consents[(hh, org, svc)].times[-1] + 1e-6))
                   for hh, org, svc in revoked]
        self.damage = {"found_at": at, "lost_records": lost, "consents_revoked": len(changes)}
        log.error("registry %s: %d damaged record(s) could not be recovered; failing closed: %d consent(s) "
                  "revoked (the households must grant them again)", self.path, lost, len(changes))
        for change in changes:
            self._apply_consent(change)
        tables = {name: dict(rows) for name, rows in (self.db.storage.read() or {}).items()}
        history = tables.setdefault("consent_history", {})
        next_id = max((int(i) for i in history), default=0) + 1
        for offset, change in enumerate(changes):
            history[next_id + offset] = dict(change.__dict__)
        integrity = tables.setdefault("integrity", {})
        integrity[max((int(i) for i in integrity), default=0) + 1] = dict(self.damage)
        try:
            # the damage is gone from the file, the revocations are in it
            self._durable.step(lambda: self.db.storage.write(tables))
        except OSError as exc:
            # Still closed in memory; the next start finds the same damage and fails closed again.
            log.error("registry %s: cannot write the fail-closed revocations: %s", self.path, exc)

    def close(self) -> None:
        with self._durable.lock:
            self.db.close()

    async def aclose(self) -> None:
        """`close` from the event loop, once every change asked for (a cancelled request's too: they are
        shielded) has been written and applied."""
        async with self._durable:
            await asyncio.to_thread(self.close)

    # --- writing: each change is planned here and its disk steps run in order ------------------
    # A change is a generator (agent/store/durable.py): it checks and computes on the caller's thread (the event
    # loop), yields each disk step, gets the step's result or exception back, and changes the in-memory state.
    # `_now` runs the steps in place (start-up, tests); `_off_loop` in a worker thread, one change at a time (so
    # two quick changes land in order and a change's checks see every change before it), and returns only once
    # they are durable.
    def _now(self, change):
        return self._durable.now(change)

    async def _off_loop(self, change):
        return await self._durable.run(change)

    # --- organizations -------------------------------------------------------------------------
    def _index_org(self, org: Organization) -> None:
        self.organizations[org.id] = org
        self._org_by_key[org.key_hash] = org

    def create_organization(self, name: str, level: str) -> tuple[Organization, str]:
        return self._now(self._create_organization(name, level))

    async def create_organization_async(self, name: str, level: str) -> tuple[Organization, str]:
        return await self._off_loop(self._create_organization(name, level))

    def _create_organization(self, name: str, level: str):
        _check_name(name)
        api_key = new_secret("edge_org")
        org = Organization(id="org_" + secrets.token_hex(6), name=name, level=level,
                           key_hash=token_hash(api_key), created_at=self.clock())
        doc = dict(org.__dict__)
        yield lambda: self.db.table("organizations").insert(doc)
        self._index_org(org)
        return org, api_key

    def update_organization(self, org_id: str, **changes) -> Organization:
        return self._now(self._update_organization(org_id, changes))

    async def update_organization_async(self, org_id: str, **changes) -> Organization:
        return await self._off_loop(self._update_organization(org_id, changes))

    def _update_organization(self, org_id: str, changes: dict):
        org = self.organization(org_id)
        if "name" in changes:
            _check_name(changes["name"])
        changes = dict(changes)
        yield lambda: self.db.table("organizations").update(changes, where("id") == org_id)
        for key, value in changes.items():
            setattr(org, key, value)
        return org

    def rotate_organization_key(self, org_id: str) -> str:
        return self._now(self._rotate_organization_key(org_id))

    async def rotate_organization_key_async(self, org_id: str) -> str:
        return await self._off_loop(self._rotate_organization_key(org_id))

    def _rotate_organization_key(self, org_id: str):
        org = self.organization(org_id)
        api_key = new_secret("edge_org")
        old_hash = org.key_hash
        yield from self._update_organization(org_id, {"key_hash": token_hash(api_key)})
        del self._org_by_key[old_hash]
        self._org_by_key[org.key_hash] = org
        return api_key

    def delete_organization(self, org_id: str) -> None:
        return self._now(self._delete_organization(org_id))

    async def delete_organization_async(self, org_id: str) -> None:
        return await self._off_loop(self._delete_organization(org_id))

    def _delete_organization(self, org_id: str):
        org = self.organization(org_id)
        # Its consents end now, in the history too, so past windows stay as they were.
        for household_id, service in self._held(org_id=org_id):
            if household_id in self.households and self.consent_state(household_id, org_id, service):
                yield from self._set_consent(household_id, org_id, service, False)
        yield lambda: self.db.table("organizations").remove(where("id") == org_id)
        del self.organizations[org_id]
        del self._org_by_key[org.key_hash]

    def replace_organizations(self, previous, organizations) -> None:
        """Organizations an outside source delivers whole (the fleet's signed desired state, agent/fleet/link.py):
        those of `previous` not given again go, the given ones take their place, in one step (no await: a key
        changed or removed stops working at once, nothing sees half of it). Not written to registry.seg: the
        source keeps its signed document durably and applies it again at start, so there is one copy of them."""
        wanted = {org.id: org for org in organizations}
        for org_id in set(previous) - set(wanted):
            gone = self.organizations.pop(org_id, None)
            if gone is not None:
                self._org_by_key.pop(gone.key_hash, None)
        for org in wanted.values():
            old = self.organizations.get(org.id)
            if old is not None:
                self._org_by_key.pop(old.key_hash, None)
            self._index_org(org)

    def organization(self, org_id: str) -> Organization:
        try:
            return self.organizations[org_id]
        except KeyError:
            raise RegistryError(RegistryCode.NOT_FOUND, f"no organization {org_id!r}") from None

    def organization_by_key(self, api_key: str) -> Organization | None:
        presented = token_hash(api_key)
        org = self._org_by_key.get(presented)
        return org if org and hmac.compare_digest(org.key_hash, presented) else None

    # --- households ----------------------------------------------------------------------------
    def _index_household(self, household: Household) -> None:
        self.households[household.id] = household
        self._household_by_token[household.token_hash] = household
        if household.datalogger_hash is not None:
            self._household_by_datalogger[household.datalogger_hash] = household
        self._household_by_meter[household.meter_id] = household

    def create_household(self, meter_id: str | None, source: str,
                         related_organizations=()) -> tuple[Household, str, str | None]:
        return self._now(self._create_household(meter_id, source, related_organizations))

    async def create_household_async(self, meter_id: str | None, source: str,
                                     related_organizations=()) -> tuple[Household, str, str | None]:
        return await self._off_loop(self._create_household(meter_id, source, related_organizations))

    def _create_household(self, meter_id: str | None, source: str, related_organizations=()):
        """(household, its token, its datalogger's token: made for a household that posts its own readings)."""
        related = self._check_related(related_organizations)
        household_id = "hh_" + secrets.token_hex(6)
        meter_id = meter_id or household_id
        if meter_id in self._household_by_meter:
            raise RegistryError(RegistryCode.CONFLICT, f"meter {meter_id!r} already belongs to a household")
        token = new_secret("edge_hh")
        datalogger = new_secret("edge_dl") if source == "http" else None
        household = Household(id=household_id, meter_id=meter_id, source=source, token_hash=token_hash(token),
                              created_at=self.clock(), related_organizations=related,
                              datalogger_hash=token_hash(datalogger) if datalogger else None)
        doc = dict(household.__dict__)
        yield lambda: self.db.table("households").insert(doc)
        self._index_household(household)
        return household, token, datalogger

    def _check_related(self, org_ids) -> list[str]:
        """A list of existing organization ids, each once; sorted (the order means nothing)."""
        if isinstance(org_ids, (str, bytes)) or not all(isinstance(o, str) for o in org_ids):
            raise RegistryError(RegistryCode.INVALID, "related_organizations must be a list of organization ids")
        org_ids = list(org_ids)
        if len(org_ids) > MAX_RELATED:
            raise RegistryError(RegistryCode.INVALID, f"at most {MAX_RELATED} related organizations")
        if len(set(org_ids)) != len(org_ids):
            raise RegistryError(RegistryCode.INVALID, "related_organizations lists an organization twice")
        unknown = [o for o in org_ids if o not in self.organizations]
        if unknown:
            raise RegistryError(RegistryCode.INVALID, f"related_organizations: no organization {unknown[0][:40]!r}")
        return sorted(org_ids)

    def set_related(self, household_id: str, org_ids) -> Household:
        return self._now(self._set_related(household_id, org_ids))

    async def set_related_async(self, household_id: str, org_ids) -> Household:
        return await self._off_loop(self._set_related(household_id, org_ids))

    def _set_related(self, household_id: str, org_ids):
        household = self.household(household_id)
        related = self._check_related(org_ids)
        yield lambda: self.db.table("households").update({"related_organizations": related},
                                                         where("id") == household_id)
        household.related_organizations = related
        return household

    def related(self, org_id: str) -> set[str]:
        """The households (live and deleted: past windows' cohorts hold deleted ones) the operator marked as
        related to this organization; they never count toward its k_min."""
        return {h.id for h in self.all_households() if org_id in h.related_organizations}

    def rotate_household_token(self, household_id: str) -> str:
        return self._now(self._rotate_household_token(household_id))

    async def rotate_household_token_async(self, household_id: str) -> str:
        return await self._off_loop(self._rotate_household_token(household_id))

    def _rotate_household_token(self, household_id: str):
        household = self.household(household_id)
        token = new_secret("edge_hh")
        new_hash = token_hash(token)
        yield lambda: self.db.table("households").update({"token_hash": new_hash}, where("id") == household_id)
        del self._household_by_token[household.token_hash]
        household.token_hash = new_hash
        self._household_by_token[new_hash] = household
        self._end_token(household_id)
        return token

    def rotate_datalogger_token(self, household_id: str) -> str:
        return self._now(self._rotate_datalogger_token(household_id))

    async def rotate_datalogger_token_async(self, household_id: str) -> str:
        return await self._off_loop(self._rotate_datalogger_token(household_id))

    def _rotate_datalogger_token(self, household_id: str):
        """A new datalogger token (the first, for a household made before there were any); the old one stops. It
        opened nothing but its own requests, so the household's token and sessions are left as they are."""
        household = self.household(household_id)
        token = new_secret("edge_dl")
        new_hash = token_hash(token)
        yield lambda: self.db.table("households").update({"datalogger_hash": new_hash}, where("id") == household_id)
        if household.datalogger_hash is not None:
            del self._household_by_datalogger[household.datalogger_hash]
        household.datalogger_hash = new_hash
        self._household_by_datalogger[new_hash] = household
        return token

    def delete_household(self, household_id: str) -> None:
        return self._now(self._delete_household(household_id))

    async def delete_household_async(self, household_id: str) -> None:
        return await self._off_loop(self._delete_household(household_id))

    def _delete_household(self, household_id: str):
        household = self.household(household_id)
        for org_id, service in self._held(household_id=household_id):
            if org_id in self.organizations and self.consent_state(household_id, org_id, service):
                yield from self._set_consent(household_id, org_id, service, False)
        # A tombstone, not a removal: a closed window asked for again must give the same answer, or the
        # difference would be this household's consumption.
        deleted_at = self.clock()
        yield lambda: self.db.table("households").update({"deleted_at": deleted_at}, where("id") == household_id)
        household.deleted_at = deleted_at
        del self.households[household_id]
        del self._household_by_token[household.token_hash]
        if household.datalogger_hash is not None:
            del self._household_by_datalogger[household.datalogger_hash]
        del self._household_by_meter[household.meter_id]
        self._deleted[household_id] = household
        self._end_token(household_id)

    def _end_token(self, household_id: str) -> None:
        for listener in self.token_ended:
            listener(household_id)

    def all_households(self) -> list[Household]:
        """Live and deleted households (deleted ones only matter to windows before their deletion)."""
        return [*self.households.values(), *self._deleted.values()]

    def meter_of(self, household_id: str) -> str:
        household = self.households.get(household_id) or self._deleted[household_id]
        return household.meter_id

    def household(self, household_id: str) -> Household:
        try:
            return self.households[household_id]
        except KeyError:
            raise RegistryError(RegistryCode.NOT_FOUND, f"no household {household_id!r}") from None

    def household_by_token(self, token: str) -> Household | None:
        presented = token_hash(token)
        household = self._household_by_token.get(presented)
        return household if household and hmac.compare_digest(household.token_hash, presented) else None

    def household_by_datalogger_token(self, token: str) -> Household | None:
        presented = token_hash(token)
        household = self._household_by_datalogger.get(presented)
        return household if household and hmac.compare_digest(household.datalogger_hash or "", presented) else None

    def household_by_meter(self, meter_id: str) -> Household | None:
        return self._household_by_meter.get(meter_id)

    # --- consent -------------------------------------------------------------------------------
    def _apply_consent(self, change: ConsentChange) -> None:
        line = self._consents.setdefault((change.household_id, change.organization_id, change.service),
                                         ConsentLine())
        line.times.append(change.at)
        line.granted.append(change.granted)
        self.consent_changes += 1
        self.last_consent_at = max(self.last_consent_at, change.at)
        self._history.setdefault(change.household_id, []).append(change)

    def _held(self, household_id: str | None = None, org_id: str | None = None) -> list[tuple[str, str]]:
        """The consents granted now of one household ((org, service) pairs) or of one organization ((household,
        service) pairs): every service, the per-trigger ones too. A list: revoking changes what it iterates."""
        if household_id is not None:
            return sorted((org, svc) for (hh, org, svc), line in self._consents.items()
                          if hh == household_id and line.granted[-1])
        return sorted((hh, svc) for (hh, org, svc), line in self._consents.items()
                      if org == org_id and line.granted[-1])

    def changes_since(self, moment: float) -> list[ConsentChange]:
        """Every consent change at or after `moment`, in time order."""
        out = [ConsentChange(hh, org, svc, granted, at) for (hh, org, svc), line in self._consents.items()
               for at, granted in zip(line.times, line.granted) if at >= moment]
        return sorted(out, key=lambda c: c.at)

    def set_consent(self, household_id: str, org_id: str, service: str, granted: bool) -> ConsentChange:
        return self._now(self._set_consent(household_id, org_id, service, granted))

    async def set_consent_async(self, household_id: str, org_id: str, service: str, granted: bool) -> ConsentChange:
        return await self._off_loop(self._set_consent(household_id, org_id, service, granted))

    def _set_consent(self, household_id: str, org_id: str, service: str, granted: bool):
        self.household(household_id)
        if not is_service(service):
            raise RegistryError(RegistryCode.NOT_FOUND, f"no service {service[:80]!r}; services: "
                                f"{', '.join(SERVICES)}, or {TRIGGER_EVENTS_PREFIX}<trigger id>")
        line = self._consents.get((household_id, org_id, service))
        if granted:
            self.organization(org_id)  # a revocation of a deleted organization's consent is still fine
        elif line is None:
            raise RegistryError(RegistryCode.NOT_FOUND, f"no consent for {org_id!r} to revoke")
        # Never two changes at the same instant: the history must order them.
        at = max(self.clock(), line.times[-1] + 1e-6) if line and line.times else self.clock()
        change = ConsentChange(household_id, org_id, service, granted, at)
        # Durable first, then in memory: the registry answers only what is on disk. While the line is being
        # written the change is pending, and no window ending after `at` is closed (pending_since), so no
        # answer is released that either outcome of the write would contradict.
        doc = dict(change.__dict__)
        self._pending.append(change)
        try:
            yield lambda: self.db.table("consent_history").insert(doc)
        finally:
            self._pending.remove(change)
        self._apply_consent(change)
        return change

    def pending_since(self) -> float | None:
        """The time of the earliest consent change still being written, or None. A window that ends after it
        must not be closed or released until it has settled."""
        return min((change.at for change in self._pending), default=None)

    def consent_state(self, household_id: str, org_id: str, service: str, at: float | None = None) -> bool:
        if at is None and any(not p.granted and (p.household_id, p.organization_id, p.service)
                              == (household_id, org_id, service) for p in self._pending):
            return False  # a revocation being written is already obeyed (triggers: effective at once)
        line = self._consents.get((household_id, org_id, service))
        if line is None:
            return False
        return line.granted[-1] if at is None else line.state_at(at)

    def consents_of(self, household_id: str) -> list[dict]:
        """The household's current grants."""
        out = []
        for (hh, org_id, service), line in sorted(self._consents.items()):
            if hh == household_id and line.granted[-1]:
                org = self.organizations.get(org_id)
                out.append({"organization_id": org_id, "organization_name": org.name if org else None,
                            "service": service, "since": line.times[-1]})
        return out

    def history_of(self, household_id: str) -> list[dict]:
        return [change.public() for change in self._history.get(household_id, [])]

    def cohort(self, org_id: str, service: str, start: float, end: float) -> set[str]:
        """Households whose consent held for the whole window [start, end): revoking at any time takes
        the household out of the window in progress, and a closed window's cohort never changes."""
        return {hh for (hh, org, svc), line in self._consents.items()
                if org == org_id and svc == service and line.held_throughout(start, end)
                and (hh in self.households or hh in self._deleted)}

    def consent_timeline(self, household_id: str, org_id: str, service: str) -> ConsentLine:
        """A copy of one consent's changes, for use off the event loop."""
        line = self._consents.get((household_id, org_id, service))
        return ConsentLine(list(line.times), list(line.granted)) if line else ConsentLine()

    def ever_consented(self, household_id: str, org_id: str, service: str) -> bool:
        line = self._consents.get((household_id, org_id, service))
        return bool(line and any(line.granted))

    def ever_consented_to(self, household_id: str) -> set[tuple[str, str]]:
        """(organization, service) pairs this household ever granted (deleted organizations too)."""
        return {(org, svc) for (hh, org, svc), line in self._consents.items()
                if hh == household_id and any(line.granted)}

    def all_consents(self, household_id: str | None = None, org_id: str | None = None) -> list[dict]:
        out = []
        for (hh, org, service), line in sorted(self._consents.items()):
            if (household_id and hh != household_id) or (org_id and org != org_id):
                continue
            out.append({"household_id": hh, "organization_id": org, "service": service,
                        "granted": line.granted[-1], "since": line.times[-1]})
        return out


def _check_name(name) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or not name.strip():  # match: "x\n" passes
        raise RegistryError(RegistryCode.INVALID, "name must be 1 to 100 printable characters")
