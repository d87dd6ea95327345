"""The sandbox's fixed reasons and exceptions (sandbox/errors.py) on data: what the API and the logs show is one of
these strings, never a worker's text; a Status is the byte a worker answers (sandbox/protocol.py)."""

from __future__ import annotations

import pytest

from sandbox import protocol
from sandbox.errors import (
    BackingOff,
    ConditionQuarantined,
    ConditionRejected,
    EvaluationFailed,
    SandboxError,
    SandboxUnavailable,
    Status,
    Violation,
    too_slow,
)


@pytest.mark.parametrize("timeout_s,shown", [(0.05, "50 ms"), (0.25, "250 ms"), (2.0, "2000 ms"),
                                             (0.0004, "1 ms"), (0.0, "1 ms"), (0.0126, "13 ms")])
def test_too_slow_names_the_deadline_in_whole_milliseconds_at_least_one(timeout_s, shown):
    assert too_slow(timeout_s) == f"too slow: exceeded {shown}"


def test_a_status_is_the_protocols_answer_byte():
    assert [Status(b) for b in (protocol.FALSE, protocol.TRUE, protocol.ERROR, protocol.NOT_BOOL)] == [
        Status.FALSE, Status.TRUE, Status.ERROR, Status.NOT_BOOL]
    assert not Status.FALSE and Status.TRUE == 1
    with pytest.raises(ValueError):
        Status(4)


def test_violations_are_fixed_distinct_strings():
    assert len({v.value for v in Violation}) == len(Violation)
    assert Violation("killed by seccomp") is Violation.SECCOMP and Violation.TIMEOUT == "timed out"


def test_every_exception_carries_its_fixed_reason():
    assert ConditionRejected("syntax error").reason == str(ConditionRejected("syntax error")) == "syntax error"
    assert isinstance(SandboxUnavailable("no seccomp"), SandboxError)
    assert ConditionQuarantined().reason == "quarantined"
    backing = BackingOff(1.5)
    assert (backing.reason, backing.retry_after) == ("backing off", 1.5)


def test_a_failed_evaluation_says_why_where_and_what_was_answered():
    failed = EvaluationFailed(Violation.SECCOMP, exit_signal=31, stage="load")
    assert (failed.reason, failed.violation, failed.exit_signal, failed.stage) == (
        "killed by seccomp", Violation.SECCOMP, 31, "load")
    assert failed.answered == b""  # filled in by the supervisor with the rows answered before it
    plain = EvaluationFailed(Violation.TIMEOUT)
    assert (plain.exit_signal, plain.stage, str(plain)) == (None, "evaluate", "timed out")
