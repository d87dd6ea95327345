"""Exceptions and fixed reason strings. No message ever carries text that came from a worker."""

from __future__ import annotations

import enum

# Fixed reasons of check_condition() (and of ConditionRejected at load time).
SYNTAX_ERROR = "syntax error"
NO_CONDITION = "does not define condition(...)"
NOT_A_BOOL = "did not return a bool"
REJECTED = "rejected by sandbox"
READS_CLOCK = "reads the clock"  # datetime's now()/today()/utcnow(): a condition gets no clock (a relay between rows)
OUTSIDE_CLOSED = "outside the closed language"  # where the operator requires it (sandbox.closed)


def too_slow(timeout_s: float) -> str:
    return f"too slow: exceeded {max(1, round(timeout_s * 1000))} ms"


class Status(enum.IntEnum):
    """The outcome of one evaluation (one byte of an answer)."""

    FALSE = 0
    TRUE = 1
    ERROR = 2  # the condition raised (the exception's text is never looked at)
    NOT_BOOL = 3  # it returned something that is not exactly True or False


class Violation(str, enum.Enum):
    """Why a worker was killed (or a request counted against its condition). Values are fixed strings."""

    TIMEOUT = "timed out"  # missed the wall-clock deadline: SIGKILLed
    SECCOMP = "killed by seccomp"  # died of SIGSYS: made a system call outside the allow-list
    CRASHED = "worker died"  # EOF or death by any other signal / exit
    PROTOCOL = "bad answer"  # wrong nonce, wrong length or a byte outside the allowed set
    CPU_BUDGET = "over its CPU budget"  # rows used most of their deadline request after request: throttled


class SandboxError(Exception):
    """Base class. ``reason`` is always one of the fixed strings of this module."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SandboxUnavailable(SandboxError):
    """The worker could not lock itself down (e.g. the kernel refuses seccomp). Never run unsandboxed."""


class ConditionRejected(SandboxError):
    """The source does not load: SYNTAX_ERROR, NO_CONDITION or REJECTED (module-level code raised)."""


class ConditionQuarantined(SandboxError):
    """Too many violations; lifted only by Supervisor.release() or by registering the condition again."""

    def __init__(self) -> None:
        super().__init__("quarantined")


class BackingOff(SandboxError):
    """The last worker of this condition was killed; a new one may be spawned after ``retry_after`` s."""

    def __init__(self, retry_after: float):
        super().__init__("backing off")
        self.retry_after = retry_after


class EvaluationFailed(SandboxError):
    """The request's worker was killed (the whole request failed); ``violation`` says why.

    ``stage`` is "load" when it happened while the worker compiled and executed the source (module-level
    code), "evaluate" otherwise; ``exit_signal`` is the signal that ended the worker (SIGSYS, SIGKILL...);
    ``answered``: the status bytes of the rows answered (each with its own token) before it failed.
    """

    def __init__(self, violation: Violation, exit_signal: int | None = None, stage: str = "evaluate"):
        super().__init__(violation.value)
        self.violation = violation
        self.exit_signal = exit_signal
        self.stage = stage
        self.answered = b""
