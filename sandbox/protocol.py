"""The wire format between the supervisor (parent) and a worker: shared constants and the two encoders.

Requests go parent -> worker (the trusted direction): a 4-byte little-endian length, then a ``marshal``
payload ``(kind, nonce, body)``. ``marshal`` only builds plain values (numbers, strings, bytes, tuples,
lists, dicts, None); the parent never sends code objects. Never pickle.

An EVAL request is a header frame ``(EVAL, nonce, n)``, which the zygote reads, then ``n`` row frames
``(token, row)``, each read by the one row process forked for it (the zygote never reads a row: it reads
frames exactly, never ahead); or, by an evaluator (a zygote whose condition is in the closed language,
sandbox.closed), read and answered one after another by the evaluator itself.

Answers go worker -> parent (the untrusted direction) and are raw bytes of a length the parent knows in
advance: the request's 16-byte nonce, then the body, for an EVAL then the nonce again (written by the zygote
once every row process has exited cleanly). An EVAL body is one ANSWER_CHUNK per row, written by that row's
process: the row's random TOKEN_SIZE-byte token, then its status byte. A row process knows only its own
token, so it cannot answer for another household's row, and an extra or missing chunk moves the trailer. The
parent never decodes answers with anything richer than a byte comparison: a wrong nonce or token, a wrong
length, a byte outside the allowed set, an EOF or a missed deadline is a violation and the worker is killed.

The nonce and tokens are random (``os.urandom``) so that a hostile condition cannot pre-write the answer to a
request it has not seen yet: a stale or forged answer carries the wrong nonce.
"""

from __future__ import annotations

import marshal
import os
from collections.abc import Sequence

NONCE_SIZE = 16
HEADER_SIZE = 4
MAX_REQUEST_BYTES = 64 << 20
MAX_SOURCE_CHARS = 16_384
# What a condition may import (the worker pre-imports them before its lockdown; the inspector refuses the rest).
ALLOWED_MODULE_NAMES = ("math", "statistics", "datetime")
MARSHAL_VERSION = 2  # no reference table: dumps is ~40% faster for rows of floats

# The worker's two file descriptors (the only ones it keeps open).
REQUEST_FD = 0
ANSWER_FD = 1

TOKEN_SIZE = 3
ANSWER_CHUNK = TOKEN_SIZE + 1  # what a row process writes: its token, its status byte
MAX_ROWS_PER_REQUEST = 8192  # answers of one request fit in a pipe's 64 KiB: no deadlock while the parent writes

# A zygote that gives up on a request (a row process died or exited with a code of its own) exits with
# ZYGOTE_CHILD_SIGNALED + the signal, or ZYGOTE_CHILD_EXITED: the parent sees an EOF and reaps it.
ZYGOTE_CHILD_EXITED = 99
ZYGOTE_CHILD_SIGNALED = 100

# Request kinds.
PING = 1  # body None; answer: one byte, OK or LOCKDOWN_FAILED | step
LOAD = 2  # body (source: str, parameters: tuple[str, ...]); answer: one LOAD_* byte
EVAL = 3  # body: the number of row frames that follow; answer: nonce, one chunk per row, nonce
PROBE = 4  # body None; a row process makes a forbidden system call; it must die of SIGSYS
INSPECT = 5  # body (source, parameters), trial zygotes only: the static checks; answer: index in static.REASONS

# Per-evaluation statuses (one byte each in an EVAL answer).
FALSE = 0
TRUE = 1
ERROR = 2  # the condition raised
NOT_BOOL = 3  # the condition returned something that is not exactly True or False
EVAL_STATUS_BYTES = bytes((FALSE, TRUE, ERROR, NOT_BOOL))

# PING / LOAD answer bytes.
OK = 0
LOAD_SYNTAX_ERROR = 1
LOAD_NO_CONDITION = 2  # no function named condition with the expected parameters after executing the source
LOAD_ERROR = 3  # the module-level code raised
LOAD_NOT_CLOSED = 4  # an evaluator zygote's condition is outside the closed language: start a forking zygote
LOCKDOWN_FAILED = 0x10  # | the step that failed (see LOCKDOWN_STEPS)
PROBE_SURVIVED = 0x7F  # the forbidden call in PROBE returned: seccomp is not enforced

LOAD_ANSWER_BYTES = bytes((OK, LOAD_SYNTAX_ERROR, LOAD_NO_CONDITION, LOAD_ERROR))

# Lockdown steps in the order the worker performs them; a failure answers LOCKDOWN_FAILED | step.
STEP_IMPORT = 1  # pre-import the allowed modules, libc and libseccomp
STEP_CREDENTIALS = 2  # as root: drop supplementary groups, switch to the unprivileged uid/gid
STEP_PDEATHSIG = 3  # PR_SET_PDEATHSIG(SIGKILL); checks the parent is still the one that spawned us
STEP_DUMPABLE = 4  # PR_SET_DUMPABLE(0)
STEP_FDS = 5  # close every fd but REQUEST_FD and ANSWER_FD
STEP_RLIMITS = 6  # address space, CPU, files, processes, core, file size, memlock, msgqueue, locks
STEP_NO_NEW_PRIVS = 7  # PR_SET_NO_NEW_PRIVS
STEP_SECCOMP = 8  # build and load the allow-list

LOCKDOWN_STEPS = {
    STEP_IMPORT: "pre-import or libseccomp unavailable",
    STEP_CREDENTIALS: "could not switch to the unprivileged user",
    STEP_PDEATHSIG: "could not set the parent-death signal",
    STEP_DUMPABLE: "could not clear the dumpable flag",
    STEP_FDS: "could not close file descriptors",
    STEP_RLIMITS: "could not set resource limits",
    STEP_NO_NEW_PRIVS: "could not set no_new_privs",
    STEP_SECCOMP: "the kernel refused the seccomp filter",
}


def new_nonce() -> bytes:
    """A fresh random nonce (from the kernel's CSPRNG, never ``random``)."""
    return os.urandom(NONCE_SIZE)


def encode_request(kind: int, nonce: bytes, body: object) -> bytes:
    """Length-prefixed marshal frame. Raises ValueError for anything marshal cannot carry."""
    payload = marshal.dumps((kind, nonce, body), MARSHAL_VERSION)  # type: ignore[arg-type]  # ValueError if not
    if len(payload) > MAX_REQUEST_BYTES:
        raise ValueError("request too large")
    return len(payload).to_bytes(HEADER_SIZE, "little") + payload


def encode_rows(rows: Sequence[Sequence[object]]) -> tuple[bytes, list[bytes]]:
    """Row frames ``(token, row)`` for an EVAL and their tokens (distinct, random). ValueError as above."""
    tokens: list[bytes] = []
    seen: set[bytes] = set()
    while len(tokens) < len(rows):
        pool = os.urandom(TOKEN_SIZE * (len(rows) - len(tokens)))  # one system call, not one per row
        for i in range(0, len(pool), TOKEN_SIZE):
            token = pool[i:i + TOKEN_SIZE]
            if token not in seen:
                seen.add(token)
                tokens.append(token)
    frames = []
    for token, row in zip(tokens, rows):
        payload = marshal.dumps((token, row), MARSHAL_VERSION)  # type: ignore[arg-type]  # ValueError if not
        frames.append(len(payload).to_bytes(HEADER_SIZE, "little") + payload)
    data = b"".join(frames)
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError("request too large")
    return data, tokens
