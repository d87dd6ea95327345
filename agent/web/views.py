"""What the pages show, computed from what the agent already keeps: no I/O, no HTML (the templates say it in words).

- a household's own consumption: chart series and the table beside it, from the store's 15-minute rollups;
- who may use its data: each organization's level and what each service would give it at that level;
- who used it: the organizations' reads and pushes from the audit log, each marked with whether that release
  included the household and what it charged it (the release module's members index).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.config import WINDOW_SECONDS
from agent.registry import SERVICES, Registry
from agent.release.members import Members
from agent.services import Services
from drivers.reading import unix_seconds

ROLLUP_S = 900
# organization actions in the audit log that hand out a release, and the consent each depends on
RELEASING = {"data.read": "aggregates", "data.push": "aggregates", "data.history": "aggregates",
             "data.anonymized": "anonymized_data"}
Entry = dict[str, Any]  # an audit log entry (agent/audit.py)
Row = dict[str, Any]  # what a template shows of one thing (a rollup's bucket, an organization, an access)


# --- my data -------------------------------------------------------------------------------------


def chart_series(rollups: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """uPlot's columns: times (Unix s), mean consumption and production (W) and gas used (m3) per rollup."""
    gas: list[float | None] = []
    last: float | None = None
    for rollup in rollups:
        value = rollup.get("gas_m3")
        gas.append(None if value is None or last is None else round(max(0.0, value - last), 3))
        last = value if value is not None else last
    return {"t": [unix_seconds(r["start"]) for r in rollups],
            "import_w": [r.get("power_import_w") for r in rollups],
            "export_w": [r.get("power_export_w") for r in rollups],
            "gas_m3": gas}


def energy_table(rollups: list[dict[str, Any]], start: float, bucket_s: int, buckets: int) -> list[Row]:
    """Per bucket (an hour, a day): energy in and out in kWh (estimated from mean power, as releases are) and gas
    used in m3 (the register's rise; None without a gas meter). Buckets without data are None, never 0."""
    rows: list[Row] = [{"start": start + i * bucket_s, "import_kwh": None, "export_kwh": None, "gas_m3": None}
            for i in range(buckets)]
    last_gas = None
    for rollup in rollups:
        i = int((unix_seconds(rollup["start"]) - start) // bucket_s)
        gas = rollup.get("gas_m3")
        if 0 <= i < buckets:
            row = rows[i]
            for field, name in (("power_import_w", "import_kwh"), ("power_export_w", "export_kwh")):
                if rollup.get(field) is not None:
                    row[name] = (row[name] or 0.0) + rollup[field] * ROLLUP_S / 3.6e6
            if gas is not None and last_gas is not None:
                row["gas_m3"] = (row["gas_m3"] or 0.0) + max(0.0, gas - last_gas)
        if gas is not None:
            last_gas = gas
    return rows


# --- who may use my data -------------------------------------------------------------------------
def offers(agent: Services, household_id: str) -> list[Row]:
    """Every organization that could ask, its level's terms, and per service whether the household consents."""
    registry, config = agent.registry, agent.config
    out: list[Row] = []
    for org in sorted(registry.organizations.values(), key=lambda o: o.name.casefold()):
        level = config.levels.get(org.level)
        services: list[Row] = []
        for service in SERVICES:
            services.append({"service": service,
                             "granted": registry.consent_state(household_id, org.id, service),
                             "offered": level is not None and (service != "anonymized_data" or level.anonymized.k > 0)})
        for trig in agent.triggers.consentable():
            if trig.organization_id == org.id:
                service = f"trigger_events:{trig.id}"
                services.append({"service": service, "trigger": trig, "offered": True,
                                 "granted": registry.consent_state(household_id, org.id, service)})
        out.append({"org": org, "level": level, "services": services})
    return out


# --- who used my data ----------------------------------------------------------------------------
def _window_span(entry: Entry) -> tuple[float, float] | None:
    """The span asked for; of a run of pushes (`windows`: access_index.Run), all its windows'."""
    if entry["action"] in ("data.read", "data.push"):
        if entry.get("window_start") is None or entry.get("window") not in WINDOW_SECONDS:
            return None
        start = float(entry["window_start"])
        return start, start + WINDOW_SECONDS[entry["window"]] * entry.get("windows", 1)
    if entry["action"] == "data.history":  # the windows asked for: those that ended by `until`
        width = WINDOW_SECONDS.get(entry.get("window") or "", 1)
        return float(entry["since"]), float(entry["until"] // width * width)
    return unix_seconds(entry["from"]), unix_seconds(entry["to"])


def _about_this_household(entry: Entry, household_id: str) -> bool:
    """A trigger's event about this household to the organization, sent or tried (whether it was delivered or
    dropped can depend on the other households' events in the organization's lane): a webhook or a switch of its
    appliance by a condition on its data; or its appliance switched by a neighbourhood condition."""
    if entry.get("action") != "trigger.action" or entry.get("household_id") != household_id:
        return False
    return bool(entry.get("disclosed") or (entry.get("action_type") == "appliance" and entry.get("delivered")))


def consented_to(registry: Registry, household_id: str) -> set[tuple[str, str]]:
    """(organization, service) pairs of releases this household ever consented to: the organizations whose
    accesses its page lists (every one of them, whatever came of it)."""
    services = set(RELEASING.values())
    return {(org, service) for org, service in registry.ever_consented_to(household_id) if service in services}


def concerns(entry: Entry, household_id: str, consented: set[tuple[str, str]]) -> bool:
    """Whether `access_row` makes a row of this entry: a function of the entry (an organization's request, never
    its outcome) and this household's own consents and trigger events only. Pure: a worker thread runs it."""
    if _about_this_household(entry, household_id):
        return True
    service = RELEASING.get(entry.get("action") or "")
    return (service is not None and entry.get("role", "organization") == "organization"
            and (entry.get("who"), service) in consented and _window_span(entry) is not None)


def access_row(entry: Entry, registry: Registry, household_id: str, members: Members | None = None,
               tag_of: Callable[[Entry], str | None] | None = None) -> Row:
    """The row of an entry `concerns` accepted. A request of an organization it ever consented to is listed
    whether or not it released anything (that depends on other households) and carries `included`: "yes" (the
    household was in the cohort of every window asked for), "part" (some), "no" (none), by its own consent and
    data only, and `rho`, the privacy loss those windows charged it (None at exact levels: no noise, nothing
    charged). Both come from the release module's members index (`exact`); a request it has nothing of (made
    before the index existed, or anonymized data) is inferred from the consent history: "yes" if its consent held
    throughout."""
    if _about_this_household(entry, household_id):
        org = registry.organizations.get(entry["who"])
        return {"at": entry["at"], "organization": org.name if org else entry["who"],
                # a household condition's switch (disclosed) is an event about it; a neighbourhood one's is not
                "action": "trigger.switch" if entry["action_type"] == "appliance" and entry.get("disclosed")
                else f"trigger.{entry['action_type']}", "window": None, "start": entry.get("window_start"),
                "end": None, "included": "yes", "rho": None, "exact": True}
    service = RELEASING[entry["action"]]
    org_id = entry["who"]
    span = _window_span(entry)
    assert span is not None  # concerns()
    start, end = span
    org = registry.organizations.get(org_id)
    row = {"at": entry["at"], "organization": org.name if org else org_id, "action": entry["action"],
           "window": entry.get("window"), "start": start, "end": end}
    tag = (tag_of(entry) if tag_of else entry.get("tag")) if members is not None and service == "aggregates" else None
    if "windows" in entry:
        return {**row, **_run_inclusion(entry, registry, household_id, members, tag, start, end)}
    inclusion = None
    if members is not None and service == "aggregates":
        inclusion = members.inclusion(household_id, org_id, tag, start, end)
    if inclusion is not None and inclusion.windows:
        included = ("yes" if inclusion.included == inclusion.windows else "part" if inclusion.included else "no")
        rho = inclusion.rho if inclusion.noisy else None
    else:
        included, rho = _inferred(entry, registry, household_id, org_id, service, start, end), None
    return {**row, "included": included, "rho": rho, "exact": inclusion is not None and inclusion.windows > 0}


def _run_inclusion(entry: Entry, registry: Registry, household_id: str, members: Members | None, tag: str | None,
                   start: float, end: float) -> Row:
    """A run of a subscription's windows: how many (`windows`), in how many the household was in the cohort (of
    every fine window: `in_all`; of some: `in_some`), by its own consent and data only; "yes" if in all, "no" if
    in none, "part" otherwise. Inferred from the consent history (no counts) if the index has none of them."""
    count = entry["windows"]
    got = None if members is None else members.run_inclusion(
        household_id, entry["who"], tag, int(start), WINDOW_SECONDS[entry["window"]], count)
    if got is None or not got.known:
        return {"included": _inferred(entry, registry, household_id, entry["who"], "aggregates", start, end),
                "rho": None, "exact": False, "windows": count, "in_all": None, "in_some": None}
    included = "yes" if got.in_all == count else "part" if got.in_all or got.in_some else "no"
    return {"included": included, "rho": got.rho if got.noisy else None, "exact": True, "windows": count,
            "in_all": got.in_all, "in_some": got.in_some}


def _inferred(entry: Entry, registry: Registry, household_id: str, org_id: str, service: str, start: float,
              end: float) -> str:
    if household_id in registry.cohort(org_id, service, start, end):
        return "yes"
    if registry.consent_state(household_id, org_id, service, at=start) or \
            registry.consent_state(household_id, org_id, service, at=end):
        return "part" if entry["action"] in ("data.history", "data.anonymized") else "no"
    return "no"


def access_log(entries: list[Entry], registry: Registry, household_id: str, limit: int = 200,
               members: Members | None = None) -> list[Row]:
    """`access_row` of each entry (oldest first) that concerns the household, newest first, at most `limit`."""
    consented = consented_to(registry, household_id)
    mine = [e for e in entries if concerns(e, household_id, consented)]
    return [access_row(e, registry, household_id, members) for e in reversed(mine[-limit:])]
