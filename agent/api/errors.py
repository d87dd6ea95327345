"""Every error the API answers: JSON `{"error", "detail", ...}` with its status. Domain modules refuse with codes
(agent/errors.py), never statuses: `STATUS` below is the one table from a domain code to its HTTP status; what the
HTTP layer itself refuses is `Http`'s, each code with its status; a release refusal (agent/release/records.py) is a
409. `codes()` is every code the API answers: the document's Error schema lists them (agent/api/answers.py)."""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any

from aiohttp import web

from agent.access import AccessCode
from agent.errors import DomainError
from agent.ingest import IngestCode
from agent.registry import RegistryCode
from agent.release.door import ReleaseCode
from agent.release.records import RefusalCode
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


class StatusCode(StrEnum):
    """A code with its HTTP status: each member is ("code", status). The hub's codes are ones too (hub/answers.py)."""

    status: int

    def __new__(cls, code: str, status: int) -> StatusCode:
        member = str.__new__(cls, code)
        member._value_, member.status = code, status
        return member


class Http(StatusCode):
    """What the HTTP layer refuses: a malformed request, who is calling, what a handler checks itself; raised as
    ApiError(Http.X, detail)."""

    BAD_PARAMETER = "bad_parameter", 400
    BAD_REQUEST = "bad_request", 400
    MALFORMED_JSON = "malformed_json", 400
    UNAUTHORIZED = "unauthorized", 401
    FORBIDDEN = "forbidden", 403
    NOT_NOISY = "not_noisy", 403
    NOT_PERMITTED = "not_permitted", 403
    RESOLUTION_NOT_PERMITTED = "resolution_not_permitted", 403
    NOT_FOUND = "not_found", 404
    NO_READING = "no_reading", 404
    METHOD_NOT_ALLOWED = "method_not_allowed", 405  # aiohttp's router
    REQUEST_TIMEOUT = "request_timeout", 408
    ADDRESS_TAKEN = "address_taken", 409
    CONFLICT = "conflict", 409
    TOO_MANY_TRIGGERS = "too_many_triggers", 409
    WIRED_METER = "wired_meter", 409
    # the anonymized release's requirement (agent/privacy/anonymize.py's k, l or t) that could not be met
    K_NOT_MET = "k_not_met", 409
    L_NOT_MET = "l_not_met", 409
    T_NOT_MET = "t_not_met", 409
    REQUEST_ENTITY_TOO_LARGE = "request_entity_too_large", 413  # aiohttp's body limit
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type", 415
    ADDRESS_REFUSED = "address_refused", 422
    CONDITION_REJECTED = "condition_rejected", 422
    ENDPOINT_REFUSED = "endpoint_refused", 422
    INVALID = "invalid", 422
    INVALID_FILTER = "invalid_filter", 422
    WINDOW_NOT_PERMITTED = "window_not_permitted", 422  # a trigger's window (AccessCode's, for data, is a 403)
    BUSY = "busy", 429
    TOO_MANY_FAILURES = "too_many_failures", 429
    TOO_MANY_UPLOADS = "too_many_uploads", 429
    INTERNAL_ERROR = "internal_error", 500
    APPLIANCE_UNREACHABLE = "appliance_unreachable", 502
    NOT_DELIVERED = "not_delivered", 502
    DP_UNAVAILABLE = "dp_unavailable", 503
    SANDBOX_UNAVAILABLE = "sandbox_unavailable", 503


Code = Enum  # an Http code, a domain's (STATUS) or a release refusal's


def status_of(code: Code) -> int:
    if isinstance(code, StatusCode):
        return code.status
    if isinstance(code, RefusalCode):
        return 409
    return STATUS[code]


def codes() -> list[str]:
    """Every `error` the API answers, once each (a domain's code may be spelt as one of Http's)."""
    kinds: tuple[type[Enum], ...] = (Http, RefusalCode, *CODES)
    return sorted({str(code.value) for kind in kinds for code in kind})


def json_error(status: int, error: str, detail: str, headers: dict[str, str] | None = None,
               **extra: object) -> web.Response:
    return web.json_response({"error": error, "detail": detail, **extra}, status=status, headers=headers)


class ApiError(Exception):
    """An answer of the HTTP layer itself (a malformed request, who is calling: an Http code), of a release
    refusal or of a domain code (`of`); its status is the code's."""

    def __init__(self, code: Code, detail: str, headers: dict[str, str] | None = None, **extra: object) -> None:
        super().__init__(detail)
        self.code, self.status, self.error = code, status_of(code), str(code.value)
        self.detail, self.headers, self.extra = detail, headers, extra

    @classmethod
    def of(cls, err: DomainError[Any]) -> ApiError:
        headers = None if err.retry_after is None else {"Retry-After": str(err.retry_after)}
        return cls(err.code, err.detail, headers, **err.extra)

    def response(self) -> web.Response:
        return json_error(self.status, self.error, self.detail, self.headers, **self.extra)
