"""The wire format between the supervisor (parent) and a worker: shared constants and the two encoders.

Requests go parent -> worker (the trusted direction): a 4-byte little-endian length, then a ``marshal``
payload ``(kind, nonce, body)``. ``marshal`` only builds plain values (numbers, strings, bytes, tuples,
lists, dicts, None); the parent never sends code objects. Never pickle.

Answers go worker -> parent (the untrusted direction) and are raw bytes of a length the parent knows in
advance: the request's 16-byte nonce, then one byte per evaluation (or one status byte for the other
kinds). The parent never decodes them with anything richer than a byte comparison: a wrong nonce, a wrong
length, a byte outside the allowed set, an EOF or a missed deadline is a violation and the worker is killed.

The nonce is random (``os.urandom``) so that a hostile condition cannot pre-write the answer to a request it
has not seen yet: a stale or forged answer carries the wrong nonce.
"""

from __future__ import annotations

import marshal
import os

NONCE_SIZE = 16
HEADER_SIZE = 4
MAX_REQUEST_BYTES = 64 << 20
MARSHAL_VERSION = 2  # no reference table: dumps is ~40% faster for rows of floats

# The worker's two file descriptors (the only ones it keeps open).
REQUEST_FD = 0
ANSWER_FD = 1

# Request kinds.
PING = 1  # body None; answer: one byte, OK or LOCKDOWN_FAILED | step
LOAD = 2  # body (source: str, parameters: tuple[str, ...]); answer: one LOAD_* byte
EVAL = 3  # body: list of argument tuples; answer: one status byte per tuple
PROBE = 4  # body None; the worker makes a forbidden system call; it must die of SIGSYS

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
    payload = marshal.dumps((kind, nonce, body), MARSHAL_VERSION)
    if len(payload) > MAX_REQUEST_BYTES:
        raise ValueError("request too large")
    return len(payload).to_bytes(HEADER_SIZE, "little") + payload
