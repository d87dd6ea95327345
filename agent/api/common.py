"""What every handler shares: JSON errors, who is calling, and parameter parsing.

Every error is JSON `{"error": ..., "detail": ...}` with the right status; nothing a handler
raises leaks a traceback or an internal message to the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

import msgspec
from aiohttp import web

from agent.api.errors import ApiError as ApiError, Http as Http, json_error  # handlers take them from here
from agent.auth import Principal, credential, identify, still_identified
from agent.errors import DomainError
from agent.registry import Organization
from agent.services import Services
from agent.store.disk import unavailable

log = logging.getLogger("edge.api")

MAX_BODY_BYTES = 1024 * 1024
MAX_LIMIT = 100_000
BODY_TIMEOUT_S = 30.0
AGENT: web.AppKey[Services] = web.AppKey("agent")  # the running agent's services (agent/services.py)
_JSON = msgspec.json.Decoder()


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return err.response()
    except DomainError as err:  # a refusal (a durable write the disk refused: nothing of it happened, retry later)
        return ApiError.of(err).response()
    except OSError as err:  # a disk write below the handler (an audit entry, a trigger) that was not mapped yet
        log.warning("%s %s: refused by the disk: %s", request.method, request.path, err)
        return ApiError.of(unavailable(err, "the request")).response()
    except web.HTTPException as err:
        if err.status < 400:
            raise
        headers = {k: v for k, v in err.headers.items() if k in ("Allow", "Retry-After")}
        return json_error(err.status, err.reason.lower().replace(" ", "_"), err.reason, headers)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(Http.INTERNAL_ERROR, "the agent could not answer this request; see its log").response()


def agent_of(request: web.Request) -> Services:
    return request.app[AGENT]


class KeyedLocks:
    """One asyncio.Lock per key (a meter, a household), kept only while a request holds or waits for it:
    a check and the change it allows, with a disk write awaited in between, stay one step for that key."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def held(self, key: str) -> bool:
        """Whether a request holds or waits for this key's lock now."""
        return key in self._locks

    def __call__(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock


# --- who is calling ------------------------------------------------------------------------
def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def _unauthorized(detail: str) -> ApiError:
    return ApiError(Http.UNAUTHORIZED, detail, {"WWW-Authenticate": 'Bearer realm="edge"'})


def token_from(request: web.Request, schemes: tuple[str, ...] = ("bearer",)) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() in schemes and token.strip():
        return token.strip()
    if "token" in schemes and request.headers.get("X-AUTHKEY", "").strip():
        return request.headers["X-AUTHKEY"].strip()
    raise _unauthorized("send Authorization: Bearer <token>")


def principal(request: web.Request, schemes: tuple[str, ...] = ("bearer",)) -> Principal:
    """The caller of a valid token, always: the throttle refuses only bad tokens (a NAT, a reverse proxy or a
    datalogger gateway puts many clients behind one address, and one of them failing must not lock out the rest;
    every valid token is random and long enough that checking it is no guessing oracle)."""
    agent = agent_of(request)
    client = _client(request)
    token = token_from(request, schemes)
    found = identify(token, agent.config.operator_token, agent.registry)
    if found is not None:
        return found
    wait = agent.throttle.retry_after(client)
    if wait:
        raise ApiError(Http.TOO_MANY_FAILURES,
                       "too many bad tokens from this address (or its network); try again later",
                       {"Retry-After": str(math.ceil(wait))})
    agent.throttle.failed(client)
    raise _unauthorized("unknown or revoked token")


def require(request: web.Request, *roles: str, schemes: tuple[str, ...] = ("bearer",)) -> Principal:
    found = principal(request, schemes)
    if found.role not in roles:
        raise ApiError(Http.FORBIDDEN, f"this endpoint is for: {', '.join(roles)}")
    return found


# The Principal the route's role check found (agent/api/routes.py), for its handler; and the registry's hash of its
# token then (`auth.credential`), which `still_caller` compares after the body instead of hashing the token again.
CALLER = web.RequestKey("caller", Principal)
CREDENTIAL = web.RequestKey("credential", str)


def authenticate(request: web.Request, roles: tuple[str, ...], schemes: tuple[str, ...]) -> None:
    """The route's role check (`require`): its caller and that caller's credential kept on the request."""
    found = request[CALLER] = require(request, *roles, schemes=schemes)
    remembered = credential(found)
    if remembered is not None:
        request[CREDENTIAL] = remembered


def caller(request: web.Request) -> Principal:
    """Who is calling a route that has roles: checked before its handler ran."""
    return request[CALLER]


class Owned(Protocol):
    @property
    def organization_id(self) -> str: ...


OwnedT = TypeVar("OwnedT", bound=Owned)


def owned_by_caller(request: web.Request, items: Mapping[str, OwnedT], key: str,
                    what: str) -> tuple[Organization, OwnedT]:
    """(organization, item) for an organization's own subscription or trigger; another's looks like none."""
    org = caller(request).organization
    item = items.get(request.match_info[key])
    if org is None or item is None or item.organization_id != org.id:
        raise ApiError(Http.NOT_FOUND, f"no such {what}")
    return org, item


# --- parameters and bodies -----------------------------------------------------------------
def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds or ISO 8601 (a time without an offset is taken as UTC)."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds) or not 0 <= seconds < 1e11:
            raise ApiError(Http.BAD_PARAMETER, f"{name} is not a plausible Unix time")
        return seconds
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(Http.BAD_PARAMETER, f"{name} must be Unix seconds or ISO 8601, got {value[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_limit(value: str | None, default: int = 10_000) -> int:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:  # "²".isdigit() is True
        raise ApiError(Http.BAD_PARAMETER, f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


async def read_body(request: web.Request) -> bytes:
    """The request's body, which must arrive within BODY_TIMEOUT_S (a slow body would hold its request open), sent
    by a caller its token still identifies (`still_caller`)."""
    if request.content.is_eof():  # all of it is here already (the usual case): no timer and task to wait with
        body = await request.read()
    else:
        try:
            body = await asyncio.wait_for(request.read(), BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ApiError(Http.REQUEST_TIMEOUT, f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None
    still_caller(request)
    return body


def still_caller(request: web.Request) -> None:
    """After a body arrived: the token the request was let in with still identifies the same caller. A token
    rotated, a key rotated or a household deleted while the body was on its way ends the request as if it had been
    sent afterwards (red team 8, R8-2: a request begun with a leaked token acted after its rotation)."""
    found = request.get(CALLER)
    if found is None:
        return
    agent = agent_of(request)
    remembered = request.get(CREDENTIAL)
    if remembered is not None:  # the token's hash then, compared with its holder's now (no second SHA-256)
        if not still_identified(found, remembered, agent.registry):
            raise _unauthorized("unknown or revoked token")
        return
    again = identify(token_from(request, ("bearer", "token")), agent.config.operator_token, agent.registry)
    if again is None or (again.role, again.id) != (found.role, found.id):
        raise _unauthorized("unknown or revoked token")


async def read_json(request: web.Request) -> Any:
    return json_value(await read_body(request))


def json_value(body: bytes) -> Any:
    """The body as JSON, as json.loads reads it; 400 malformed_json if it is not."""
    if not body:
        raise ApiError(Http.MALFORMED_JSON, "the request needs a JSON body")
    try:
        return _JSON.decode(body)  # json.loads's answer wherever this one decodes (msgspec: ~3x less CPU)
    except (ValueError, RecursionError):
        pass  # what it refuses, json.loads decides, as before (it takes NaN, UTF-16, lone surrogates)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: "[[[[..." 100,000 deep
        raise ApiError(Http.MALFORMED_JSON, f"the body is not valid JSON: {err.__class__.__name__}") from None


async def stream_json(request: web.Request, before: str, batches: AsyncIterator[list[Any]],
                      after: Callable[[int], str], what: str) -> web.StreamResponse:
    """A JSON answer with one long list, written a batch at a time: `before` (up to the list's "["), the items as
    json.dumps writes them (the same bytes as the whole answer at once), then `after(count)`. Memory holds one
    batch, whatever the answer's size. A failure before the first batch is an ordinary JSON error; after the
    status was sent, the body ends unfinished (invalid JSON, the connection closed), never as if complete."""
    batch = await anext(batches, None)
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    await response.prepare(request)
    await response.write(before.encode())
    count = 0
    try:
        while batch is not None:
            if batch:
                await response.write(((", " if count else "") + ", ".join(map(json.dumps, batch))).encode())
                count += len(batch)
            del batch
            batch = await anext(batches, None)
    except Exception:
        log.exception("%s: failed after %d items", what, count)
        response.force_close()
        if request.transport is not None:  # no last chunk: the client sees the body cut short, not complete
            request.transport.abort()
        return response
    await response.write(after(count).encode())
    await response.write_eof()
    return response


async def in_thread(batches: Iterator[list[Any]]) -> AsyncIterator[list[Any]]:
    """A blocking iterator of batches (reading the disk), each taken in a worker thread."""
    while (batch := await asyncio.to_thread(next, batches, None)) is not None:
        yield batch
