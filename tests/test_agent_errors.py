"""What the domain refuses (agent/errors.py) on data: a code of the refusing module's own, its value as the API's
`error`, a detail in words, extra fields and when to retry; never a status (tests/test_api_errors.py maps them)."""

from __future__ import annotations

from enum import Enum

import pytest

from agent.errors import DomainError


class Code(Enum):  # used with DomainError itself: tests/test_api_errors.py checks every subclass's code is mapped
    FULL = "storage_full"
    NUMBERED = 7


def test_a_refusal_carries_its_code_detail_extra_fields_and_retry():
    err = DomainError(Code.FULL, "the disk is full", retry_after=30, parameter="x", reason="full")
    assert (err.code, err.error, err.detail, str(err)) == (Code.FULL, "storage_full", "the disk is full",
                                                          "the disk is full")
    assert err.retry_after == 30 and err.extra == {"parameter": "x", "reason": "full"}
    plain = DomainError(Code.NUMBERED, "no")
    assert (plain.error, plain.retry_after, plain.extra) == ("7", None, {})  # the API spells every code as text
    with pytest.raises(DomainError) as raised:
        raise err
    assert raised.value is err


def test_the_retry_and_the_extra_fields_are_keywords_only():
    with pytest.raises(TypeError):
        DomainError(Code.FULL, "the disk is full", 30)  # type: ignore[misc]
