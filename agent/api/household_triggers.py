"""What a household may consent to of organizations' triggers: ``GET /households/me/triggers``.

A webhook of a condition on household parameters reaches its organization, and an appliance switch of one
happens (the organization may supply or monitor the appliance: red team 7, R7-3), only for households that
consented to that trigger's events (service ``trigger_events:<trigger_id>``, granted with
``PUT /households/me/consents/{org_id}/trigger_events:<trigger_id>``). Before it does, the household sees here
what it would agree to: the trigger's description, the parameters the condition reads, its window, the most
often an event can go (once per interval, and at most ``max_events_per_household_per_day`` events per
organization per UTC day across all its triggers, webhooks and switches together), and exactly what the
organization receives, or can see, per event. Every event sent or tried is in the household's disclosure log (the
audit entry ``trigger.action`` with its id).
"""

from __future__ import annotations

from aiohttp import web

from agent.api.common import ApiError, Http, agent_of, caller
from agent.api.spec import HH, NOT_FOUND, Route, ok_json
from agent.services import Services
from agent.triggers.runner import events_service

EVENT_FIELDS = {
    "type": "trigger.fired",
    "trigger_id": "this trigger's id",
    "household": "your pseudonym for this organization (the same for all its triggers, different for every "
                 "other organization)",
    "window": "the window the condition was true in",
    "window_start": "when that window began (UTC)",
    "at": "the fixed moment the event was sent (the window's end plus a delay the same for every trigger)",
}
SWITCH_FIELDS = {
    "appliance": "your appliances of this name or kind that you let this organization switch: {appliance}",
    "command": "switched {command} at the fixed moment after the window the condition was true for you in (the "
               "window's end plus a delay the same for every trigger)",
    "observed": "an organization that supplies or monitors the appliance sees the switch, so it learns that the "
                "condition was true for you in that window; whether it does, this device cannot tell",
}


def event_fields(trig) -> dict[str, str]:
    """What the organization receives, or can see, per event of this trigger."""
    if trig.action["type"] != "appliance":
        return EVENT_FIELDS
    return {k: v.format(**trig.action) for k, v in SWITCH_FIELDS.items()}


def _describe(agent: Services, trig, household_id: str) -> dict:
    registry = agent.registry
    org = registry.organizations.get(trig.organization_id)
    config = agent.config.triggers
    service = events_service(trig.id)
    return {
        "trigger_id": trig.id,
        "organization_id": trig.organization_id,
        "organization_name": org.name if org else None,
        "description": trig.description,
        "parameters": [p.public() for p in trig.catalogue()],
        "window": trig.window,
        "action_type": trig.action["type"],
        "service": service,
        "consented": registry.consent_state(household_id, trig.organization_id, service),
        "requires": ["triggers", service],
        "max_rate": {"one_event_per_s": trig.interval_s,
                     "events_per_organization_per_day": config.max_events_per_household_per_day},
        "event": event_fields(trig),
        "created_at": trig.created_at,
    }


async def list_triggers(request: web.Request) -> web.Response:
    household = caller(request).household
    agent = agent_of(request)
    triggers = sorted(agent.triggers.consentable(), key=lambda t: (t.organization_id, t.created_at))
    return web.json_response({"triggers": [_describe(agent, t, household.id) for t in triggers],
                              "disclosure": agent.triggers.disclosure()})


async def get_trigger(request: web.Request) -> web.Response:
    household = caller(request).household
    agent = agent_of(request)
    trig = next((t for t in agent.triggers.consentable() if t.id == request.match_info["trigger_id"]), None)
    if trig is None:
        raise ApiError(Http.NOT_FOUND, "no trigger whose events you may consent to has this id")
    return web.json_response(_describe(agent, trig, household.id))


ROUTES = (
    Route("GET", "/households/me/triggers", list_triggers, HH,
          "Triggers whose events (webhooks, appliance switches) the household may consent to: description, "
          "parameters, maximum rate, what the organization receives or sees", "household", {"200": ok_json("ConsentableTriggers")}),
    Route("GET", "/households/me/triggers/{trigger_id}", get_trigger, HH, "One of them", "household",
          {"200": ok_json("ConsentableTrigger")}, errors=NOT_FOUND),
)
