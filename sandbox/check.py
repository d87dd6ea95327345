"""Upload-time validation of a condition, and the check that the kernel enforces the sandbox at all.

In the parent the source is only parsed and compiled (``compile()`` and AST inspection), never executed.
The trial run happens in a fresh locked worker that is killed afterwards.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Sequence

from sandbox import protocol
from sandbox.errors import (
    NO_CONDITION,
    NOT_A_BOOL,
    READS_CLOCK,
    REJECTED,
    SYNTAX_ERROR,
    EvaluationFailed,
    SandboxUnavailable,
    Violation,
    too_slow,
)
from sandbox.protocol import MAX_SOURCE_CHARS  # noqa: F401
from sandbox.static import CLOCK_ATTRIBUTES, DENIED_ATTRIBUTES, REASONS, inspect_source  # noqa: F401
from sandbox.supervisor import Limits, spawn_worker

@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str | None = None  # one of the fixed strings of sandbox.errors when not ok
    closed: bool = False  # in the closed language: its samples ran in an evaluator, as its rows will

    def __bool__(self) -> bool:
        return self.ok


def check_condition(
    source: str | bytes,
    parameters: Sequence[str],
    samples: Sequence[tuple[object, ...]],
    timeout_s: float = 0.05,
    *,
    limits: Limits | None = None,
) -> CheckResult:
    """Validate an uploaded condition: static checks, then a trial in a fresh locked zygote.

    Every sample is one evaluation with its own ``timeout_s`` deadline (a separate round trip): in its own row
    process, or for a condition in the closed language by the evaluator, as its rows will be later; the zygote
    compiles the source, a row process (an evaluator: itself, behind its filter) checks that it loads. Reasons
    (fixed strings): ``syntax error``, ``does not define condition(...)``, ``too slow: exceeded N ms``,
    ``did not return a bool`` (it returned something else, or raised, on a sample), ``rejected by
    sandbox`` (static check, module-level code that raised, a worker killed by seccomp or dead).
    Raises SandboxUnavailable if no locked worker can be started: never runs anything unsandboxed.
    Raises ValueError if a sample does not have one value per parameter.
    """
    limits = limits or Limits()
    params = tuple(parameters)
    rows = [tuple(s) for s in samples]
    if any(len(r) != len(params) for r in rows):
        raise ValueError("each sample needs one value per parameter")
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            return CheckResult(False, SYNTAX_ERROR)
    if not isinstance(source, str):
        return CheckResult(False, SYNTAX_ERROR)
    if len(source) > MAX_SOURCE_CHARS:
        return CheckResult(False, REJECTED)

    # A closed condition's sample rows are evaluated the way its rows will be (sandbox.closed: no fork per row, so
    # a loaded machine does not make an honest condition "too slow"); any other's by a row process each.
    worker = spawn_worker(limits, inspect=True, evaluator=limits.evaluators)
    try:
        try:  # the static checks, in the locked zygote: parsing a hostile source costs this process nothing
            found = worker.request(protocol.INSPECT, (source, params), 1, limits.load_timeout_s)[0]
        except EvaluationFailed:
            return CheckResult(False, REJECTED)
        if found >= len(REASONS):
            return CheckResult(False, REJECTED)
        if REASONS[found] is not None:
            return CheckResult(False, REASONS[found])
        try:
            code = worker.request(protocol.LOAD, (source, params), 1, limits.load_timeout_s)[0]
            closed = worker.evaluator and code != protocol.LOAD_NOT_CLOSED
            if not closed and worker.evaluator:
                code = worker.request(protocol.LOAD, (source, params), 1, limits.load_timeout_s)[0]
        except EvaluationFailed as exc:
            return CheckResult(False, _failure_reason(exc, limits.load_timeout_s))
        if code != protocol.OK:
            return CheckResult(False, {protocol.LOAD_SYNTAX_ERROR: SYNTAX_ERROR,
                                       protocol.LOAD_NO_CONDITION: NO_CONDITION}.get(code, REJECTED))
        for row in rows:
            try:
                status = worker.evaluate_rows([row], timeout_s)[0]
            except EvaluationFailed as exc:
                return CheckResult(False, _failure_reason(exc, timeout_s))
            except ValueError:
                raise ValueError("samples must hold only plain values (numbers, None, str)") from None
            if status not in (protocol.TRUE, protocol.FALSE):
                return CheckResult(False, NOT_A_BOOL if status in (protocol.ERROR, protocol.NOT_BOOL) else REJECTED)
        return CheckResult(True, closed=closed)
    finally:
        worker.kill()


def _failure_reason(exc: EvaluationFailed, timeout_s: float) -> str:
    if exc.violation is Violation.TIMEOUT:
        return too_slow(timeout_s)
    return REJECTED


# ------------------------------------------------------------------------------------------ availability

_available: tuple[bool, str] | None = None
_available_lock = threading.Lock()


def sandbox_available(refresh: bool = False, limits: Limits | None = None) -> tuple[bool, str]:
    """Whether this kernel runs locked workers: (True, "seccomp filter enforced") or (False, reason).

    Spawns a zygote and runs a trial condition; reads /proc/<pid>/status (Seccomp: 2, NoNewPrivs: 1);
    then spawns a second zygote whose row process makes a forbidden system call: it must die of SIGSYS.
    The answer is cached for the process (``refresh=True`` runs it again). Where it is False the agent must
    refuse to run triggers.
    """
    global _available
    with _available_lock:
        if _available is None or refresh:
            _available = _probe(limits or Limits())
        return _available


def _probe(limits: Limits) -> tuple[bool, str]:
    try:
        worker = spawn_worker(limits)
    except SandboxUnavailable as exc:
        return False, exc.reason
    try:
        try:
            if worker.request(protocol.LOAD, ("def condition(x):\n    return x > 0\n", ("x",)), 1,
                              limits.load_timeout_s) != bytes([protocol.OK]):
                return False, "trial condition did not load"
            if worker.evaluate_rows([(1.0,), (-1.0,)], limits.load_timeout_s) != bytes(
                    [protocol.TRUE, protocol.FALSE]):
                return False, "trial condition gave a wrong answer"
        except EvaluationFailed:
            return False, "trial worker died"
        try:
            with open(f"/proc/{worker.pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            status = {}
        if status and (status.get("Seccomp", "").strip() != "2" or status.get("NoNewPrivs", "").strip() != "1"):
            return False, "seccomp filter not in place"
    finally:
        worker.kill()
    try:
        worker = spawn_worker(limits)
    except SandboxUnavailable as exc:
        return False, exc.reason
    try:
        worker.request(protocol.PROBE, None, 1, limits.load_timeout_s)
    except EvaluationFailed as exc:
        if exc.exit_signal == signal.SIGSYS:
            return True, "seccomp filter enforced"
        return False, "probe worker died without SIGSYS"
    finally:
        worker.kill()
    return False, "seccomp filter not enforced"
