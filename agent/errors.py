"""What the domain refuses, and why: a code of the refusing module's own (an Enum; its value is the API's `error`)
and a detail in words, never an HTTP status. agent/api/errors.py maps every code to its status and writes the
body; a code missing from its table fails tests/test_api_errors.py."""

from __future__ import annotations

from enum import Enum
from typing import Generic, TypeVar

C = TypeVar("C", bound=Enum)


class DomainError(Exception, Generic[C]):
    """`extra`: more fields of the answer (a parameter's name, a fixed reason); `retry_after`: seconds after which
    the same request may succeed (a full disk), or None."""

    def __init__(self, code: C, detail: str, *, retry_after: int | None = None, **extra: object) -> None:
        super().__init__(detail)
        self.code, self.detail, self.retry_after, self.extra = code, detail, retry_after, extra

    @property
    def error(self) -> str:
        """The code as the API and the logs spell it."""
        return str(self.code.value)
