"""Request bodies as typed schemas (msgspec Structs): each field's type, bounds and description is stated once,
and both the decoding (with precise errors) and the OpenAPI document's component schemas come from it.

What a body means (a known level, a reachable endpoint, an organization that exists) is the domain's to check;
here is only its shape. Unknown fields are refused: a misspelt optional field is an error, never ignored.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from agent.api.common import ApiError, Http
from agent.config import WINDOW_SECONDS
from agent.ingest import MAX_BATCH, ReadingInput
from agent.triggers.model import MAX_CONTENT_CHARS, MAX_PARAMETERS, MAX_TITLE_CHARS
from agent.triggers.model import MAX_INTERVAL_S as MAX_TRIGGER_INTERVAL_S
from drivers import appliances, notify

MIN_INTERVAL_S, MAX_INTERVAL_S = 1, 86400  # a subscription's push interval
# checked by agent/access.py against the level (which says what it may have)
Window = Annotated[str, Meta(extra_json_schema={"enum": list(WINDOW_SECONDS)})]
OrgName = Annotated[str, Meta(min_length=1, max_length=100)]
OrgIds = Annotated[list[str], Meta(max_length=100, extra_json_schema={"uniqueItems": True}, description=(
    "a list of organization ids this household is related to (an employee's home, a test meter): it never counts "
    "toward their k_min"))]
# agent/delivery/filters.py checks a filter's content (and says which part is wrong)
Filter = Annotated[dict[str, Any], Meta(extra_json_schema={"properties": {
    "deadband": {"type": "object"}, "threshold": {"type": "object"}, "fields": {"type": "array"},
    "min_interval": {"type": "number"}, "max_silence": {"type": "number"}}})]


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    def given(self) -> dict[str, Any]:
        """The fields the caller sent or that have a default (not the UNSET ones)."""
        return {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not UNSET}


class OrganizationIn(Body):
    name: OrgName
    level: str


class OrganizationPatch(Body):
    name: OrgName | UnsetType = UNSET
    level: str | UnsetType = UNSET
    parameters: list[str] | None | UnsetType = UNSET


class HouseholdIn(Body):
    meter_id: str | None = None
    related_organizations: OrgIds = []


class HouseholdPatch(Body):
    related_organizations: OrgIds


class SubscribeIn(Body):
    endpoint: Annotated[str, Meta(description="https:// URL")]
    interval: Annotated[float, Meta(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)]
    window: Window | UnsetType = UNSET
    tag: str | None = None
    filter: Filter | None = None


# --- triggers (agent/api/triggers.py): the shape here, what it means (parameters the level permits, an endpoint
# that may be reached, the operator's least interval) in agent/triggers/model.py and the handler --------------
MAX_FUNCTION_CHARS = 32 * 1024  # base64 of the sandbox's 16 KiB of source, with room
MAX_DESCRIPTION_CHARS = 500


class NotificationAction(Body, tag_field="type", tag="notification"):
    """Delivered to each household it fires for (its inbox and its own endpoint), never to the organization"""

    content: Annotated[str, Meta(min_length=1, max_length=MAX_CONTENT_CHARS)]
    title: Annotated[str, Meta(min_length=1, max_length=MAX_TITLE_CHARS)] | UnsetType = UNSET


class ApplianceAction(Body, tag_field="type", tag="appliance"):
    """Switches the household's appliances of this name or kind that it lets the organization control. A condition on
    household parameters: only for households that consented to this trigger's events (trigger_events:<trigger_id>),
    each switch one of the day's [triggers] max_events_per_household_per_day events about the household (the
    organization may see the appliance)"""

    appliance: Annotated[str, Meta(min_length=1, max_length=64, description="an appliance's name or kind")]
    command: Literal["on", "off"]


class WebhookAction(Body, tag_field="type", tag="webhook"):
    """A signed call to the organization's endpoint. A condition on neighbourhood parameters only: one event per
    window naming no household. A condition on household parameters: one event per household that consented to
    this trigger's events (trigger_events:<trigger_id>), with its per-organization pseudonym, at most [triggers]
    max_events_per_household_per_day per organization and day; needs a description"""

    endpoint: Annotated[str, Meta(description="https:// URL")]


class TriggerIn(Body):
    # the count, the names and their order are agent/triggers/model.py's check_parameters' (with its reasons)
    parameters: Annotated[list[str], Meta(extra_json_schema={"minItems": 1, "maxItems": MAX_PARAMETERS}, description=(
        "names from GET /parameters, in the order of condition()'s arguments"))]
    # not base64 or too long: refused as a syntax error, and counted as a refusal (the handler's)
    function: Annotated[str, Meta(extra_json_schema={"contentEncoding": "base64"}, description=(
        "base64 of UTF-8 Python source defining condition(<parameters>) -> bool"))]
    interval: Annotated[float, Meta(extra_json_schema={"minimum": 1, "maximum": MAX_TRIGGER_INTERVAL_S}, description=(
        "seconds: the least time between two actions for one household (the operator sets the minimum, 60 s by "
        "default)"))]
    action: NotificationAction | ApplianceAction | WebhookAction
    window: Annotated[Window, Meta(description="evaluation cadence; default 1m (or the level's finest)")] | \
        UnsetType = UNSET
    description: Annotated[str, Meta(extra_json_schema={"maxLength": MAX_DESCRIPTION_CHARS}, description=(
        "what households read before they consent to its events (required for a webhook of a condition on "
        "household parameters)"))] = ""


# --- a household's notifications and appliances (agent/api/household_actions.py) ----------------------------
class NotifyIn(Body):
    url: Annotated[str, Meta(description="https:// URL")]
    kind: Annotated[str, Meta(extra_json_schema={"enum": list(notify.KINDS)})] = "webhook"


APPLIANCE_NAME = re.compile(r"^[^\x00-\x1f]{1,64}$")
APPLIANCE_KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
DRIVERS = appliances.names()
MAX_CHANNEL = max(d.max_channel for d in map(appliances.driver, DRIVERS) if d)  # each driver's own: the handler's


class ApplianceIn(Body, kw_only=True):
    # the name's and kind's rules and the driver's channels are the handler's to check (the web pages' form too)
    name: Annotated[str, Meta(extra_json_schema={"minLength": 1, "maxLength": 64})]
    kind: Annotated[str, Meta(extra_json_schema={"pattern": APPLIANCE_KIND.pattern})] | None = None
    driver: Annotated[str, Meta(extra_json_schema={"enum": DRIVERS})]
    address: Annotated[str, Meta(description="http://<LAN address>")]
    channel: Annotated[int, Meta(extra_json_schema={"minimum": 0, "maximum": MAX_CHANNEL})] | None = None
    allowed_organizations: Annotated[list[str], Meta(max_length=64)] = []


# POST /readings' JSON body, as the document states it: one reading, a list of them or {"readings": [...]}, each
# reading ingest's own ReadingInput. agent/ingest.py decodes the three with a type of its own (msgspec decodes no
# union of untagged Structs) and checks a batch's size itself (413 batch_too_large).
ReadingsBatch = Annotated[list[ReadingInput], Meta(min_length=1, max_length=MAX_BATCH)]  # type: ignore[valid-type]


class Readings(Body):
    readings: ReadingsBatch


READINGS_IN = (ReadingInput, ReadingsBatch, Readings)

BODIES = (OrganizationIn, OrganizationPatch, HouseholdIn, HouseholdPatch, SubscribeIn, TriggerIn, NotifyIn,
          ApplianceIn)
B = TypeVar("B", bound=Body)


def decode(raw: bytes, kind: type[B]) -> B:
    """The body as `kind`: 400 malformed_json if it is not JSON, 422 invalid (saying which field and why) if
    it does not have the schema's shape."""
    if not raw:
        raise ApiError(Http.MALFORMED_JSON, "the request needs a JSON body")
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as err:
        well_formed(raw)  # msgspec checks the shape while it parses: malformed JSON can fail as a field first
        raise ApiError(Http.INVALID, _in_words(str(err), kind)) from None
    except msgspec.DecodeError as err:
        raise ApiError(Http.MALFORMED_JSON, f"the body is not valid JSON: {err}") from None


def well_formed(raw: bytes) -> None:
    try:
        msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise ApiError(Http.MALFORMED_JSON, f"the body is not valid JSON: {err}") from None


@functools.cache
def schemas() -> dict[str, Any]:
    """The component schemas of every body, for the OpenAPI document."""
    forms, components = msgspec.json.schema_components((*BODIES, *READINGS_IN),
                                                       ref_template="#/components/schemas/{name}")
    components["ReadingsIn"] = {"oneOf": list(forms[len(BODIES):])}
    # the posted reading's schema is the table's (openapi.py: ISO times, the tag vocabulary's pattern, the
    # required timestamp), which says more than msgspec's type of it (ingest checks those after decoding)
    del components[ReadingInput.__name__]
    return components


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_TYPE = re.compile(r"^Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`$")


def _in_words(message: str, kind: type[Body]) -> str:
    """msgspec's message in this API's words, with the field's own description where it has one."""
    match = _AT.match(message)
    what, path = (match["what"], match["path"] or "") if match else (message, "")
    prefix = f"{path}." if path else ""
    if m := _MISSING.match(what):
        return f"{prefix}{m['field']} is required"
    if m := _UNKNOWN.match(what):
        return f"unknown field {prefix + m['field']!r}"
    if not path and (m := _TYPE.match(what)):
        return "the body must be a JSON object"
    if m := _TYPE.match(what):
        expected = _description(kind, path) or m["expected"]
        return f"{path} has the wrong type: expected {expected}"
    return f"{path}: {what[0].lower()}{what[1:]}" if path else what


def _description(kind: type[Body], path: str) -> str | None:
    field = re.split(r"[.\[]", path, maxsplit=1)[0]
    description = schemas()[kind.__name__]["properties"].get(field, {}).get("description")
    return str(description) if description else None
