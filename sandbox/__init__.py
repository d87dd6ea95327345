"""Seccomp-locked evaluation of untrusted conditions (built in the triggers issue). Knows nothing of agent/.

No interpreter state carries between rows, windows or organizations: a condition in the closed language
(sandbox.closed) can read nothing but its row, and its zygote evaluates the rows itself behind a third filter; any
other condition's rows each get their own locked process, forked from a per-trigger zygote that only compiles the
condition (sandbox.worker).

Public API (imported lazily, so that a zygote importing ``sandbox.worker`` loads only what it needs):

- ``Supervisor(limits=None)``: pool of zygotes keyed by (tenant, condition id); ``register`` (no compile),
  ``evaluate`` (batched: one Status per row), ``evaluate_one``, ``state``, ``release``, ``unregister``,
  ``collect_idle``, ``close``.
- ``Limits``: deadlines, rlimits, CPU budget, recycling, quarantine and backoff policy.
- ``check_condition(source, parameters, samples, timeout_s=0.05) -> CheckResult``: upload validation (static
  checks and trial, both in a locked trial zygote).
- ``sandbox_available() -> (bool, reason)``: does this kernel enforce the seccomp filter?
- ``Status`` (FALSE, TRUE, ERROR, NOT_BOOL), ``Violation``, ``ConditionState``, the exceptions
  (``SandboxError`` and its subclasses) and the fixed reason strings.
"""

from __future__ import annotations

TYPE_CHECKING = False  # mypy takes it as True; not typing's: a zygote imports no more than it needs

if TYPE_CHECKING:  # the names below as mypy sees them (`X as X`: re-exported; a name left out is an `object` to it)
    from sandbox.check import (CheckResult as CheckResult, check_condition as check_condition,
        sandbox_available as sandbox_available)
    from sandbox.static import inspect_source as inspect_source
    from sandbox.errors import (NO_CONDITION as NO_CONDITION, NOT_A_BOOL as NOT_A_BOOL,
        OUTSIDE_CLOSED as OUTSIDE_CLOSED, READS_CLOCK as READS_CLOCK, REJECTED as REJECTED,
        SYNTAX_ERROR as SYNTAX_ERROR, BackingOff as BackingOff, ConditionQuarantined as ConditionQuarantined,
        ConditionRejected as ConditionRejected, EvaluationFailed as EvaluationFailed, SandboxError as SandboxError,
        SandboxUnavailable as SandboxUnavailable, Status as Status, Violation as Violation, too_slow as too_slow)
    from sandbox.supervisor import (ConditionState as ConditionState, Limits as Limits, Supervisor as Supervisor,
        WorkerProcess as WorkerProcess, spawn_worker as spawn_worker)

_EXPORTS = {
    "Supervisor": "sandbox.supervisor",
    "Limits": "sandbox.supervisor",
    "ConditionState": "sandbox.supervisor",
    "WorkerProcess": "sandbox.supervisor",
    "spawn_worker": "sandbox.supervisor",
    "check_condition": "sandbox.check",
    "inspect_source": "sandbox.check",
    "CheckResult": "sandbox.check",
    "sandbox_available": "sandbox.check",
    "Status": "sandbox.errors",
    "Violation": "sandbox.errors",
    "SandboxError": "sandbox.errors",
    "SandboxUnavailable": "sandbox.errors",
    "ConditionRejected": "sandbox.errors",
    "ConditionQuarantined": "sandbox.errors",
    "BackingOff": "sandbox.errors",
    "EvaluationFailed": "sandbox.errors",
    "SYNTAX_ERROR": "sandbox.errors",
    "NO_CONDITION": "sandbox.errors",
    "NOT_A_BOOL": "sandbox.errors",
    "REJECTED": "sandbox.errors",
    "READS_CLOCK": "sandbox.errors",
    "OUTSIDE_CLOSED": "sandbox.errors",
    "too_slow": "sandbox.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
