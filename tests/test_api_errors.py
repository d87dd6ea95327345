"""The one table from domain codes to HTTP statuses (agent/api/errors.py): every code has its status, and an answer
is the code's status, its value as `error`, the detail and the extra fields."""

from __future__ import annotations

import importlib
import json
import pkgutil
from enum import Enum

import agent
from agent.api.errors import CODES, STATUS, ApiError
from agent.errors import DomainError
from agent.registry import RegistryCode, RegistryError
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
