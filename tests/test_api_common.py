"""What every handler shares (agent/api/common.py): parameters parsed on data, and the error middleware, tokens and a
streamed list through a real aiohttp server on 127.0.0.1 (handlers of the test's own, no agent behind them)."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.api.common import (
    MAX_LIMIT,
    ApiError,
    KeyedLocks,
    error_middleware,
    json_value,
    parse_limit,
    parse_time,
    stream_json,
    token_from,
)
from agent.api.errors import Http
from agent.registry import RegistryCode, RegistryError


# --- parameters, on data -------------------------------------------------------------------
@pytest.mark.parametrize("value,seconds", [
    (None, None), ("", None), ("0", 0.0), ("1700000000.5", 1_700_000_000.5),
    ("2023-11-14T22:13:20Z", 1_700_000_000.0), ("2023-11-14T22:13:20", 1_700_000_000.0),  # no offset: UTC
    ("2023-11-15T00:13:20+02:00", 1_700_000_000.0),
])
def test_a_time_is_unix_seconds_or_iso_8601(value, seconds):
    assert parse_time(value, "since") == seconds


def test_a_time_without_an_offset_is_utc_whatever_the_devices_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Amsterdam")
    time.tzset()
    try:
        assert parse_time("2023-11-14T22:13:20", "since") == 1_700_000_000.0
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("value", ["-1", "1e11", "nan", "inf", "-inf", "yesterday", "2023-13-01", "x" * 100])
def test_an_implausible_or_unreadable_time_is_a_400_naming_the_parameter(value):
    with pytest.raises(ApiError) as refused:
        parse_time(value, "until")
    assert (refused.value.status, refused.value.error) == (400, "bad_parameter")
    assert refused.value.detail.startswith("until ") and len(refused.value.detail) < 120  # the value cut short


@pytest.mark.parametrize("value,limit", [(None, 10_000), ("1", 1), ("250", 250), (str(MAX_LIMIT), MAX_LIMIT)])
def test_a_limit_is_a_whole_number_in_range(value, limit):
    assert parse_limit(value) == limit
    assert parse_limit(None, default=7) == 7


@pytest.mark.parametrize("value", ["0", str(MAX_LIMIT + 1), "-1", "1.5", " 5", "5 ", "", "²", "١٢", "0x10", "1e3"])
def test_any_other_limit_is_a_400(value):
    with pytest.raises(ApiError) as refused:
        parse_limit(value)
    assert (refused.value.status, refused.value.error) == (400, "bad_parameter")


@pytest.mark.parametrize("body", [b'{"a": [1, 2.5, null, "x"]}', b"[]", b'"text"', b"NaN", b'[1e400]',
                                  '{"ü": "\u00e9"}'.encode("utf-16"), b'"\\ud800"', b' {"a": {"b": {}}} '])
def test_a_json_body_reads_as_json_loads_reads_it(body):
    got, want = json_value(body), json.loads(body)
    assert json.dumps(got) == json.dumps(want)  # NaN and inf compare by their spelling


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b"\xff\xfe\xfa", b"[" * 100_000, b"1 2", b"{}x"])
def test_a_body_that_is_not_json_is_a_400(body):
    with pytest.raises(ApiError) as refused:
        json_value(body)
    assert (refused.value.status, refused.value.error) == (400, "malformed_json")


async def test_keyed_locks_one_per_key_kept_only_while_in_use():
    locks = KeyedLocks()
    assert not locks.held("m1")
    async with locks("m1"):
        assert locks.held("m1") and locks("m1").locked() and not locks("m2").locked()
    gc.collect()
    assert not locks.held("m1") and not locks.held("m2")  # nobody holds or waits: nothing kept


# --- the middleware, tokens and a streamed list on a real server ---------------------------
async def _batches(items: list[list[int]], fail_after: int | None = None) -> AsyncIterator[list[int]]:
    for i, batch in enumerate(items):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("the disk went away")
        yield batch


def _raise(exc: BaseException):
    async def handler(request: web.Request) -> web.Response:
        raise exc
    return handler


@pytest.fixture
async def client():
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/api", _raise(ApiError(Http.CONFLICT, "already there", {"X-Why": "test"}, field="x")))
    app.router.add_get("/domain", _raise(RegistryError(RegistryCode.NOT_FOUND, "no such household")))
    app.router.add_get("/disk", _raise(OSError(28, "No space left on device", "/secret/path")))
    app.router.add_get("/bug", _raise(ValueError("internal detail /secret/path")))
    app.router.add_post("/only-post", _raise(AssertionError("not reached")))
    app.router.add_get("/redirect", _raise(web.HTTPFound("/api")))

    async def token(request: web.Request) -> web.Response:
        return web.json_response(token_from(request, tuple(request.query.get("schemes", "bearer").split(","))))

    async def streamed(request: web.Request) -> web.StreamResponse:
        items = [[1, 2], [], [3], [4, 5, 6]]
        fail = int(request.query["fail"]) if "fail" in request.query else None
        return await stream_json(request, '{"items": [', _batches(items, fail),
                                 lambda n: f'], "count": {n}}}', "test")

    app.router.add_get("/token", token)
    app.router.add_get("/stream", streamed)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def test_the_middleware_answers_every_error_as_json(client):
    async with client.get("/api") as resp:
        assert (resp.status, resp.headers["X-Why"]) == (409, "test")
        assert await resp.json() == {"error": "conflict", "detail": "already there", "field": "x"}
    async with client.get("/domain") as resp:
        assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    async with client.get("/disk") as resp:  # an unmapped disk refusal: its code, not its path
        body = await resp.text()
        assert resp.status == 507 and json.loads(body)["error"] == "storage_full" and "/secret" not in body
    async with client.get("/bug") as resp:
        body = await resp.text()
        assert resp.status == 500 and json.loads(body)["error"] == "internal_error"
        assert "secret" not in body and "Traceback" not in body and "ValueError" not in body
    async with client.get("/only-post") as resp:
        assert (resp.status, resp.headers["Allow"]) == (405, "POST")
        assert (await resp.json())["error"] == "method_not_allowed"
    async with client.get("/nowhere") as resp:
        assert resp.status == 404 and await resp.json() == {"error": "not_found", "detail": "Not Found"}
    async with client.get("/redirect", allow_redirects=False) as resp:
        assert resp.status == 302  # not an error: passed on as it is


@pytest.mark.parametrize("headers,schemes,token", [
    ({"Authorization": "Bearer abc"}, "bearer", "abc"),
    ({"Authorization": "bearer   abc  "}, "bearer", "abc"),
    ({"Authorization": "Token abc"}, "bearer,token", "abc"),  # a datalogger's scheme, where the route takes it
    ({"Authorization": "Token abc"}, "bearer", None),
    ({"X-AUTHKEY": "k1"}, "bearer,token", "k1"),
    ({"X-AUTHKEY": "k1"}, "bearer", None),
    ({"Authorization": "Bearer "}, "bearer", None),
    ({"Authorization": "Basic Zm9vOmJhcg=="}, "bearer", None),
    ({}, "bearer", None),
])
async def test_a_token_is_taken_only_from_the_schemes_the_route_allows(client, headers, schemes, token):
    async with client.get("/token", params={"schemes": schemes}, headers=headers) as resp:
        if token is None:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Bearer realm="edge"'
            assert (await resp.json())["error"] == "unauthorized"
        else:
            assert resp.status == 200 and await resp.json() == token


async def test_a_streamed_list_is_the_whole_answers_bytes(client):
    async with client.get("/stream") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        body = await resp.read()
    assert body == json.dumps({"items": [1, 2, 3, 4, 5, 6], "count": 6}).encode()


async def test_a_stream_that_fails_midway_never_looks_complete(client):
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get("/stream", params={"fail": "2"}) as resp:
            assert resp.status == 200
            await resp.read()
    async with client.get("/stream", params={"fail": "0"}) as resp:  # before the first batch: a plain error
        assert resp.status == 500 and (await resp.json())["error"] == "internal_error"

