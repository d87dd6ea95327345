"""The wire format between the supervisor and a worker (sandbox/protocol.py) on bytes: length-prefixed marshal
frames of plain values, row frames with distinct random tokens, and answer bytes that fit what a worker may say.
tests/test_sandbox.py sends them to real locked workers."""

from __future__ import annotations

import marshal

import pytest

from sandbox import protocol
from sandbox.errors import Status


def frames_of(data: bytes) -> list[object]:
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + protocol.HEADER_SIZE], "little")
        pos += protocol.HEADER_SIZE
        out.append(marshal.loads(data[pos:pos + length]))
        pos += length
    assert pos == len(data)
    return out


def test_a_request_is_a_little_endian_length_and_its_marshal_payload():
    nonce = protocol.new_nonce()
    frame = protocol.encode_request(protocol.LOAD, nonce, ("def condition(x):\n    return x > 0\n", ("x",)))
    assert frames_of(frame) == [(protocol.LOAD, nonce, ("def condition(x):\n    return x > 0\n", ("x",)))]
    assert int.from_bytes(frame[:4], "little") == len(frame) - 4
    assert len(nonce) == protocol.NONCE_SIZE and nonce != protocol.new_nonce()


@pytest.mark.parametrize("body", [object(), (lambda: 0), [len]])
def test_what_marshal_cannot_carry_is_refused_before_sending(body):
    with pytest.raises(ValueError):
        protocol.encode_request(protocol.EVAL, protocol.new_nonce(), body)
    with pytest.raises(ValueError):
        protocol.encode_rows([(1.0,), (body,)])


def test_a_request_past_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(protocol, "MAX_REQUEST_BYTES", 100)
    protocol.encode_request(protocol.PING, b"n" * 16, "x" * 50)
    with pytest.raises(ValueError, match="too large"):
        protocol.encode_request(protocol.PING, b"n" * 16, "x" * 100)
    with pytest.raises(ValueError, match="too large"):
        protocol.encode_rows([(1.0,)] * 20)


def test_each_row_gets_its_own_random_token():
    rows = [(float(i), None, "x") for i in range(protocol.MAX_ROWS_PER_REQUEST)]  # 3-byte tokens: some drawn twice
    data, tokens = protocol.encode_rows(rows)
    assert len(tokens) == len(set(tokens)) == len(rows) and all(len(t) == protocol.TOKEN_SIZE for t in tokens)
    assert frames_of(data) == list(zip(tokens, rows))
    assert protocol.encode_rows(rows[:2])[1] != protocol.encode_rows(rows[:2])[1]
    assert protocol.encode_rows([]) == (b"", [])


def test_the_answer_bytes_are_the_statuses_and_fit_a_pipe():
    assert protocol.EVAL_STATUS_BYTES == bytes(s.value for s in Status)
    assert protocol.ANSWER_CHUNK == protocol.TOKEN_SIZE + 1
    # every row's chunk and the nonces fit a pipe's 64 KiB: no deadlock while the parent still writes rows
    assert protocol.MAX_ROWS_PER_REQUEST * protocol.ANSWER_CHUNK + 2 * protocol.NONCE_SIZE <= 65536
    assert len(set(protocol.LOAD_ANSWER_BYTES)) == len(protocol.LOAD_ANSWER_BYTES)
    steps = {v for k, v in vars(protocol).items() if k.startswith("STEP_")}
    assert set(protocol.LOCKDOWN_STEPS) == steps and all(protocol.LOCKDOWN_FAILED | s < 0x7F for s in steps)
