"""Every error the API answers: JSON `{"error", "detail", ...}` with its status. Domain modules refuse with codes
(agent/errors.py), never statuses: `STATUS` below is the one table from a domain code to its HTTP status."""

from __future__ import annotations

from enum import Enum
from typing import Any

from aiohttp import web

from agent.access import AccessCode
from agent.errors import DomainError
from agent.ingest import IngestCode
from agent.registry import RegistryCode
from agent.release.door import ReleaseCode
from agent.store.disk import StorageCode
from agent.triggers.model import TriggerCode

# Every module's codes (tests/test_api_errors.py checks that each has a status).
CODES: tuple[type[Enum], ...] = (RegistryCode, IngestCode, AccessCode, TriggerCode, StorageCode, ReleaseCode)

STATUS: dict[Enum, int] = {
    RegistryCode.NOT_FOUND: 404, RegistryCode.CONFLICT: 409, RegistryCode.INVALID: 422,
    IngestCode.INVALID_READING: 422, IngestCode.UNKNOWN_TAG: 422, IngestCode.BATCH_TOO_LARGE: 413,
    IngestCode.DUPLICATE: 409, IngestCode.BAD_CRC: 422, IngestCode.BAD_TELEGRAM: 422,
    AccessCode.BAD_PARAMETER: 400, AccessCode.UNKNOWN_TAG: 400, AccessCode.WINDOW_NOT_PERMITTED: 403,
    AccessCode.TAG_NOT_RELEASED: 403, AccessCode.PARAMETER_NOT_PERMITTED: 403,
    TriggerCode.INVALID: 422, TriggerCode.UNKNOWN_PARAMETER: 422, TriggerCode.PARAMETER_NOT_PERMITTED: 422,
    TriggerCode.ENDPOINT_REFUSED: 422,
    StorageCode.FULL: 507, StorageCode.FAILED: 503, StorageCode.DIRECTORY_LOST: 503,
    ReleaseCode.LOST: 409,
}


def json_error(status: int, error: str, detail: str, headers: dict[str, str] | None = None,
               **extra: object) -> web.Response:
    return web.json_response({"error": error, "detail": detail, **extra}, status=status, headers=headers)


class ApiError(Exception):
    """An answer of the HTTP layer itself (a malformed request, who is calling) or of a domain code (`of`)."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                 **extra: object) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers, self.extra = status, error, detail, headers, extra

    @classmethod
    def of(cls, err: DomainError[Any]) -> ApiError:
        headers = None if err.retry_after is None else {"Retry-After": str(err.retry_after)}
        return cls(STATUS[err.code], err.error, err.detail, headers, **err.extra)

    def response(self) -> web.Response:
        return json_error(self.status, self.error, self.detail, self.headers, **self.extra)
