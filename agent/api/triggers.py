"""Organizations' triggers: upload a condition and an action, list, inspect (released counts only), delete.

An upload is accepted only if every parameter exists and the organization may use it, the source
(base64 of UTF-8 Python) compiles and defines ``condition`` taking exactly those parameters, and a
trial in a locked worker on sample inputs answers a bool within the operator's deadline. A refusal is a
422 whose ``reason`` is one fixed string; nothing the condition printed or raised is ever shown.
Where the kernel does not enforce the sandbox, every upload is a 503: conditions never run unsandboxed.

Refused uploads count against a per-organization limit ([triggers] max_refusals_per_hour; beyond it a 429
with Retry-After, before anything is parsed or spawned), trials are queued per organization, and a refusal
is summed into the audit log (never an fsync of its own). A webhook action of a condition on household
parameters needs a ``description``: it is what households read before they consent to its events.
"""

from __future__ import annotations

import base64
import binascii
import math

import msgspec
from aiohttp import web
from msgspec import UNSET

from agent.api.bodies import MAX_DESCRIPTION_CHARS, MAX_FUNCTION_CHARS, TriggerIn, decode
from agent.api.common import ApiError, Http, KeyedLocks, agent_of, caller, owned_by_caller, read_body
from agent.api.data import level_of
from agent.api.spec import NOT_FOUND, ORG, Route, error, ok_json, ref
from agent.auth import ORGANIZATION
from agent.config import WINDOWS
from agent.delivery.targets import TargetError
from agent.parameters import HOUSEHOLD, permitted
from agent.triggers import actions
from agent.triggers.model import MAX_INTERVAL_S, Refused, TriggerCode, check_action, check_parameters
from agent.triggers.runner import TooManyUploads
from sandbox import OUTSIDE_CLOSED, SYNTAX_ERROR, CheckResult, SandboxUnavailable

ORGANIZATION_LOCKS = web.AppKey("trigger_organization_locks", KeyedLocks)


def _unavailable(detail: str) -> ApiError:
    return ApiError(Http.SANDBOX_UNAVAILABLE, f"triggers are disabled on this device: {detail}; conditions "
                    "never run unsandboxed")


def _too_many(retry_after_s: float, detail: str) -> ApiError:
    return ApiError(Http.TOO_MANY_UPLOADS, detail, {"Retry-After": str(max(1, math.ceil(retry_after_s)))})


def _owned(request: web.Request):
    runner = agent_of(request).triggers
    org, trig = owned_by_caller(request, runner.triggers, "trigger_id", "trigger")
    return org, runner, trig


def _check_limits(runner, org, config) -> None:
    if len(runner.of_organization(org.id)) >= config.triggers.max_per_organization:
        raise ApiError(Http.TOO_MANY_TRIGGERS, f"at most {config.triggers.max_per_organization} triggers per "
                       "organization; delete one first")
    wait = runner.creation_wait(org.id)
    if wait:
        raise ApiError(Http.TOO_MANY_UPLOADS, f"at most {3 * config.triggers.max_per_organization} triggers "
                       "per organization per day", {"Retry-After": str(math.ceil(wait))})


async def create_trigger(request: web.Request) -> web.Response:
    org = caller(request).organization
    agent = agent_of(request)
    runner = agent.triggers
    if not runner.availability.ok:
        raise _unavailable(runner.availability.detail)
    wait = runner.upload_wait(org.id)
    if wait:
        raise _too_many(*wait)
    body = decode(await read_body(request), TriggerIn)
    level = level_of(agent, org)
    config = agent.config

    def allowed(param):
        if not permitted(param.name, level, org.parameters):
            return False, f" for level {level.name!r}" if not permitted(param.name, level) else \
                " for this organization (the operator narrowed its parameters)"
        return True, ""  # neighbourhood values are the level's own release (exact or noisy): releases.answer

    def endpoint(url):
        try:
            return actions.check_endpoint(url, config.delivery.allow_http, config.delivery.allow_private_endpoints)
        except TargetError as err:
            raise Refused(TriggerCode.ENDPOINT_REFUSED, str(err)) from None

    params = check_parameters(body.parameters, allowed)  # Refused: answered with its code's status
    action = check_action(msgspec.to_builtins(body.action), endpoint)

    interval = body.interval
    low = config.triggers.min_interval_s
    if not low <= interval <= MAX_INTERVAL_S:
        raise ApiError(Http.INVALID, f"interval must be {low:g} to {MAX_INTERVAL_S} seconds: the least time "
                       "between two actions of the trigger for one household")
    window = body.window if body.window is not UNSET else "1m" if "1m" in level.windows else level.windows[0]
    if window not in WINDOWS or window not in level.windows:
        raise ApiError(Http.WINDOW_NOT_PERMITTED, f"window must be one of {', '.join(level.windows)} "
                       f"for level {level.name!r}")
    description = body.description.strip()
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise ApiError(Http.INVALID, f"description must be at most {MAX_DESCRIPTION_CHARS} characters")
    if action["type"] == "webhook" and any(p.level == HOUSEHOLD for p in params) and not description:
        raise ApiError(Http.INVALID, "a webhook of a condition on household parameters needs a description: "
                       "households read it before they consent to its events (trigger_events:<trigger_id>)")
    _check_limits(runner, org, config)

    text = body.function
    try:
        if len(text) > MAX_FUNCTION_CHARS:
            raise ValueError
        source = base64.b64decode(text.encode("ascii"), validate=True).decode("utf-8")
    except (ValueError, UnicodeError, binascii.Error):
        runner.refused(org.id, SYNTAX_ERROR)
        raise ApiError(Http.CONDITION_REJECTED, "function must be the base64 of UTF-8 Python source",
                       reason=SYNTAX_ERROR) from None
    try:
        result = await runner.trial(org.id, source, params)
    except SandboxUnavailable as err:
        raise _unavailable(err.reason) from None
    except TooManyUploads as err:
        raise _too_many(err.retry_after_s, err.detail) from None
    if result.ok and config.triggers.closed_language_only and not result.closed:
        result = CheckResult(False, OUTSIDE_CLOSED)
    if not result.ok:
        runner.refused(org.id, result.reason)  # counted, and summed into the audit log: no fsync per refusal
        raise ApiError(Http.CONDITION_REJECTED, result.reason, reason=result.reason)
    if not runner.availability.ok:
        raise _unavailable(runner.availability.detail)
    # The check again (another upload may have finished meanwhile) and the write as one step per organization:
    # two uploads waiting for the disk at once must not both pass it.
    async with request.app[ORGANIZATION_LOCKS](org.id):
        _check_limits(runner, org, config)
        trig, secret = await runner.create(org.id, [p.name for p in params], source, interval, window, action,
                                           description, closed=result.closed)
    await agent.audit.record_durable(org.id, ORGANIZATION, "trigger.create", trigger_id=trig.id,
                                     parameters=trig.parameters, action_type=action["type"])
    out = runner.describe(trig)
    if secret:
        out["secret"] = secret
    return web.json_response(out, status=201)


async def list_triggers(request: web.Request) -> web.Response:
    org = caller(request).organization
    runner = agent_of(request).triggers
    return web.json_response({"triggers": [runner.describe(t) for t in runner.of_organization(org.id)]})


async def get_trigger(request: web.Request) -> web.Response:
    _, runner, trig = _owned(request)
    return web.json_response(runner.describe(trig))


async def delete_trigger(request: web.Request) -> web.Response:
    org, runner, trig = _owned(request)
    await runner.delete(trig.id)
    await agent_of(request).audit.record_durable(org.id, ORGANIZATION, "trigger.delete", trigger_id=trig.id)
    return web.Response(status=204)


TRIGGER_PATH = "/triggers/{trigger_id}"
ROUTES = (
    Route("POST", "/triggers/create", create_trigger, ORG,
          "Upload a condition (base64 Python) and an action; a trial run in the sandbox decides", "triggers",
          {"201": ok_json("TriggerCreated", "Accepted")}, body="TriggerIn",
          errors={"409": error("Too many triggers"),
                  "429": error("Too many bad tokens, too many uploads today, too many refused uploads this hour, or "
                               "uploads already waiting for their trial (Retry-After)"),
                  "503": error("The kernel does not enforce the sandbox: triggers are disabled"),
                  "422": {"description": "Refused, with a fixed reason",
                          "content": {"application/json": {"schema": ref("TriggerRefused")}}}}),
    Route("GET", "/triggers", list_triggers, ORG, "The organization's triggers, with counts only", "triggers",
          {"200": ok_json("Triggers")}),
    Route("GET", TRIGGER_PATH, get_trigger, ORG, "One trigger: state and counts, never which household", "triggers",
          {"200": ok_json("Trigger")}, errors=NOT_FOUND),
    Route("DELETE", TRIGGER_PATH, delete_trigger, ORG,
          "Delete a trigger; its debounce still holds for the organization", "triggers", {"204": {"description": "Deleted"}}, errors=NOT_FOUND),
)
