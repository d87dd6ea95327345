"""The one table from domain codes to HTTP statuses (agent/api/errors.py): every code has its status, and an answer
is the code's status, its value as `error`, the detail and the extra fields."""

from __future__ import annotations

import importlib
import json
import pkgutil
from enum import Enum

import agent
from agent.api.errors import CODES, STATUS, ApiError, Http, codes, status_of
from agent.api.openapi import SPEC
from agent.errors import DomainError
from agent.registry import RegistryCode, RegistryError
from agent.release import RefusalCode
from agent.store.disk import StorageCode, StorageUnavailable
from agent.triggers.model import Refused, TriggerCode


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(_subclasses(c) for c in list(found)))


def _code_types() -> set[type[Enum]]:
    """The code Enum of every DomainError subclass in the agent's modules (each module imported first)."""
    for module in pkgutil.walk_packages(agent.__path__, "agent."):
        importlib.import_module(module.name)
    return {base.__args__[0] for cls in _subclasses(DomainError) for base in getattr(cls, "__orig_bases__", ())
            if getattr(base, "__origin__", None) is DomainError}


def test_every_domain_code_has_one_status():
    assert _code_types() == set(CODES)
    assert {code for kind in CODES for code in kind} == set(STATUS)
    assert all(400 <= status < 600 for status in STATUS.values())


def test_an_answer_is_the_codes_status_value_detail_and_extra_fields():
    answer = ApiError.of(Refused(TriggerCode.UNKNOWN_PARAMETER, "unknown parameter: 'x'", "unknown parameter",
                                 parameter="x")).response()
    assert answer.status == 422
    assert json.loads(answer.body) == {"error": "unknown_parameter", "detail": "unknown parameter: 'x'",
                                       "parameter": "x", "reason": "unknown parameter"}
    assert ApiError.of(RegistryError(RegistryCode.NOT_FOUND, "no household")).status == 404


def test_a_refused_write_says_when_to_retry_and_is_still_an_oserror():
    full = StorageUnavailable(StorageCode.FULL, "the device's storage is full", retry_after=30, cause=28)
    assert isinstance(full, OSError) and full.errno == 28 and str(full) == "[Errno 28] the device's storage is full"
    answer = ApiError.of(full)
    assert (answer.status, answer.error, answer.headers) == (507, "storage_full", {"Retry-After": "30"})


def test_the_http_layers_codes_have_their_status_and_a_refusal_is_a_409():
    assert all(400 <= code.status < 600 for code in Http)
    answer = ApiError(Http.NOT_FOUND, "no such subscription").response()
    assert answer.status == 404 and json.loads(answer.body) == {"error": "not_found", "detail": "no such subscription"}
    refused = ApiError(RefusalCode.COHORT_TOO_SMALL, "too few", households=3, missing=7)
    assert (refused.status, refused.error, refused.extra) == (409, "cohort_too_small", {"households": 3, "missing": 7})


def test_a_code_spelt_the_same_in_two_declarations_has_one_status_but_these():
    """A domain's code and the HTTP layer's may share a spelling (not_found, invalid, bad_parameter): one status
    for it; these have two, as before (a refusal in a release is a 409 where the same thing asked of its own endpoint
    is a 403 or a 503; a trigger's body is a 422 where a query parameter is a 400 or a 403)."""
    statuses: dict[str, set[int]] = {}
    for kind in (Http, RefusalCode, *CODES):
        for code in kind:
            statuses.setdefault(code.value, set()).add(status_of(code))
    assert {value: seen for value, seen in statuses.items() if len(seen) > 1} == {
        "not_permitted": {403, 409}, "dp_unavailable": {409, 503}, "storage_error": {409, 503},
        "window_not_permitted": {403, 422}, "parameter_not_permitted": {403, 422}, "unknown_tag": {400, 422}}


def test_the_document_lists_every_code_the_api_answers():
    schemas = SPEC["components"]["schemas"]
    assert schemas["Error"]["properties"]["error"]["enum"] == codes()
    assert schemas["TriggerRefused"]["properties"]["error"]["enum"] == codes()
    assert schemas["Refusal"]["properties"]["error"]["enum"] == [code.value for code in RefusalCode]
    assert set(codes()) >= {"cohort_too_small", "duplicate", "not_found", "method_not_allowed", "internal_error"}
