"""The doors, with the real process: a valid token is never locked out by another client's bad tokens at the same
address, an Authorization header of any bytes is a 401 (never a 500), a body with NaN or Infinity is refused
(what the API emits stays valid JSON), and a readings query at its maximum is streamed whole."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tests.helpers.agent import OPERATOR_TOKEN
from tests.helpers.process import OP, agent_on, town


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_the_doors(tmp_path):
    async with agent_on(tmp_path / "edge", tmp_path) as running:
        org, households, _ = await town(running, None)
        hh, auth = households[0]
        # Bad tokens from this address: throttled (429) after ten; valid tokens from the same address still pass.
        for _ in range(10):
            assert (await running.call("GET", "/meters", {"Authorization": "Bearer edge_hh_guess"}))[0] == 401
        status, body, headers = await running.call("GET", "/meters", {"Authorization": "Bearer edge_hh_guess"})
        assert status == 429 and body["error"] == "too_many_failures" and "Retry-After" in headers
        status, _, _ = await running.call("POST", "/readings", auth, {"timestamp": time.time(), "power_import_w": 5})
        assert status == 201
        assert (await running.call("GET", "/meters", OP))[0] == 200
        assert (await running.call("GET", "/households/me", auth))[0] == 200

        # A reading ahead of the clock (allowed up to 300 s) does not refuse the household's real readings after it;
        # a retry of a reading is still a duplicate.
        ahead = time.time() + 290
        assert (await running.call("POST", "/readings", auth, {"timestamp": ahead, "power_import_w": 5}))[0] == 201
        real = time.time()
        assert (await running.call("POST", "/readings", auth, {"timestamp": real, "power_import_w": 5}))[0] == 201
        status, body, _ = await running.call("POST", "/readings", auth, {"timestamp": real, "power_import_w": 5})
        assert status == 409 and body["error"] == "duplicate"
        status, _, _ = await running.call("POST", "/readings", auth, {"timestamp": time.time(), "power_import_w": 5})
        assert status == 201

        # Bytes that are not UTF-8 in Authorization: 401 (or the throttle's 429), JSON, never a 500.
        for token in (b"Bearer \xff\xfe\xfd", b"Bearer edge_hh_\xc3\x28", b"\xff"):
            status, body = await asyncio.to_thread(
                raw_request, running.port,
                b"GET /meters HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + token + b"\r\n\r\n")
            assert status in (401, 429) and json.loads(body)["error"] in ("unauthorized", "too_many_failures")

        # NaN and Infinity are not JSON: a filter of them is refused (the subscription would be emitted as
        # invalid JSON ever after), and what the API emits parses as strict JSON. The body is decoded strictly
        # (agent/api/bodies.py): not JSON at all, 400 malformed_json (a lenient parser's NaN reached the filter: 422).
        key = {"Authorization": f"Bearer {org['api_key']}"}
        for levels in (b"[NaN]", b"[1, Infinity]", b"[-1e999]"):
            body = b'{"endpoint": "http://127.0.0.1:9/h", "interval": 1, "filter": {"threshold": {"levels": %s}}}'
            async with running.http.post(f"http://127.0.0.1:{running.port}/data/subscribe", data=body % levels,
                                         headers={**key, "Content-Type": "application/json"}) as resp:
                assert resp.status in (400, 422), await resp.text()
        async with running.http.get(f"http://127.0.0.1:{running.port}/data/subscriptions", headers=key) as resp:
            json.loads(await resp.text(), parse_constant=lambda name: pytest.fail(f"{name} emitted"))

        # A readings query at its maximum is streamed: valid JSON, every row, the count after them.
        other_hh, auth = households[1]
        for power in range(1, 31):
            status, _, _ = await running.call("POST", "/readings", auth, {"timestamp": time.time(),
                                                                          "power_import_w": power})
            assert status == 201
        status, body, _ = await running.call("GET", f"/meters/{other_hh['meter_id']}/readings?limit=100000", OP)
        assert status == 200 and body["count"] == len(body["readings"]) == 30
        status, body, _ = await running.call("GET", f"/meters/{other_hh['meter_id']}/readings?limit=2", OP)
        assert body["count"] == 2 and [r["power_import_w"] for r in body["readings"]] == [1, 2]
        status, body, _ = await running.call("GET", f"/meters/{other_hh['meter_id']}/readings?resolution=1m", OP)
        assert status == 200 and body["count"] == len(body["readings"])


async def test_slow_headers_and_slow_bodies_do_not_hold_connections(tmp_path, start_agent, monkeypatch):
    """A slowloris (a request head that never ends, a body that trickles) is cut off, with real sockets; the
    timeouts are shortened here so the test does not wait 15 s (IDLE_CONNECTION_S) or 30 s (BODY_TIMEOUT_S)."""
    from agent import service
    from agent.api import common
    from tests.helpers.agent import make_config

    monkeypatch.setattr(service, "IDLE_CONNECTION_S", 0.5)
    monkeypatch.setattr(common, "BODY_TIMEOUT_S", 0.5)
    running = await start_agent(make_config(tmp_path))
    port = running.agent.port
    def slow_head() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            return sock.recv(1024)  # b"" once the agent closes it; a timeout (10 s) fails the test

    heads = await asyncio.gather(*(asyncio.to_thread(slow_head) for _ in range(20)))
    assert heads == [b""] * 20

    def slow_body() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /organizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + OPERATOR_TOKEN.encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na")
            data = b""
            while b"}" not in data and (chunk := sock.recv(65536)):  # the answer, not the close (aiohttp lingers)
                data += chunk
            return data

    answer = await asyncio.to_thread(slow_body)
    assert answer.split()[1] == b"408" and b'"request_timeout"' in answer


async def test_connections_over_the_cap_are_closed_and_the_others_keep_their_place(tmp_path, start_agent,
                                                                                  monkeypatch):
    from agent import service
    from tests.helpers.agent import make_config

    monkeypatch.setattr(service, "MAX_CONNECTIONS", 5)
    running = await start_agent(make_config(tmp_path))
    port = running.agent.port
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
    try:
        await running.wait_for(lambda: len(running.agent._runner.server.connections) == 5)

        def one_more() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                return sock.recv(1024)
        assert await asyncio.to_thread(one_more) == b""  # closed at once
        held[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # those already in still get answers
        answer = await asyncio.to_thread(held[0].recv, 1024)
        assert answer.split()[1] == b"200"
    finally:
        for sock in held:
            sock.close()
