"""Upload-time validation of a condition, and the check that the kernel enforces the sandbox at all.

In the parent the source is only parsed and compiled (``compile()`` and AST inspection), never executed.
The trial run happens in a fresh locked worker that is killed afterwards.
"""

from __future__ import annotations

import ast
import signal
import threading
import warnings
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
from sandbox.supervisor import Limits, compile_in_parent, spawn_worker
from sandbox.worker import ALLOWED_MODULE_NAMES

# Introspection attributes that lead from a value to frames, code or other modules' globals.
DENIED_ATTRIBUTES = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
    "ag_await", "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "tb_frame", "tb_next",
    "mro", "format", "format_map",
})
# datetime's clocks. No clock reaches a row process anyway (no system call, no vDSO: it dies); refused here first
# with their own reason so that an honest condition learns why (the time of day is not an input).
CLOCK_ATTRIBUTES = frozenset({"now", "today", "utcnow"})


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str | None = None  # one of the fixed strings of sandbox.errors when not ok

    def __bool__(self) -> bool:
        return self.ok


def inspect_source(source: str | bytes, parameters: Sequence[str]) -> str | None:
    """Static checks only (no execution). Returns a fixed reason, or None when the source looks right.

    - decodes (UTF-8) and compiles: else ``syntax error``; longer than supervisor.MAX_SOURCE_CHARS:
      ``rejected by sandbox``;
    - exactly one top-level ``def condition(<parameters in order>)``: plain positional parameters, no
      defaults, no ``*args``/``**kw``, no decorator, and nothing else binds the name ``condition``;
      else ``does not define condition(...)``;
    - no dunder names, no attribute starting with ``_`` (``__class__``, ``__subclasses__``, ``_sys``...)
      or in DENIED_ATTRIBUTES (frames, code, ``str.format``), also as keyword patterns of ``match``
      (``case object(__class__=c)`` reads an attribute), no imports but of math, statistics and
      datetime: else ``rejected by sandbox``; datetime's ``now``/``today``/``utcnow`` (also as ``match``
      keywords): ``reads the clock``. This only turns honest mistakes and the obvious escapes
      away early: seccomp in the worker is the boundary.
    """
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            return SYNTAX_ERROR
    if not isinstance(source, str):
        return SYNTAX_ERROR
    reason = compile_in_parent(source)  # also the symbol table's checks
    if reason is not None:
        return reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(source, "<condition>")

    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and n.name == "condition"]
    if len(defs) != 1 or not isinstance(defs[0], ast.FunctionDef):
        return NO_CONDITION
    fn = defs[0]
    args = fn.args
    if (fn.decorator_list or args.posonlyargs or args.vararg or args.kwonlyargs or args.kwarg
            or args.defaults or [a.arg for a in args.args] != list(parameters)):
        return NO_CONDITION

    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id.startswith("__"):
                return REJECTED
            if node.id == "condition" and not isinstance(node.ctx, ast.Load):
                return NO_CONDITION
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") or node.attr in DENIED_ATTRIBUTES:
                return REJECTED
            if node.attr in CLOCK_ATTRIBUTES:
                return READS_CLOCK
            if not isinstance(node.ctx, ast.Load):
                # `math.x = v` would outlive the fresh namespace each row gets: a channel between households
                return REJECTED
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name.startswith("__"):
                return REJECTED
            if node.name == "condition" and node is not fn:
                return NO_CONDITION
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            if "condition" in node.names:
                return NO_CONDITION
            return REJECTED  # a condition keeps no state between calls (see sandbox.worker._Condition)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in ALLOWED_MODULE_NAMES:
                    return REJECTED
                if (alias.asname or alias.name) == "condition":
                    return NO_CONDITION
        elif isinstance(node, ast.ImportFrom):
            if node.level or node.module not in ALLOWED_MODULE_NAMES:
                return REJECTED
            for alias in node.names:
                if alias.name == "*" or alias.name.startswith("_"):
                    return REJECTED
                if (alias.asname or alias.name) == "condition":
                    return NO_CONDITION
        elif isinstance(node, ast.arg):
            if node.arg.startswith("__"):
                return REJECTED
        elif isinstance(node, ast.MatchClass):
            if any(a.startswith("_") or a in DENIED_ATTRIBUTES for a in node.kwd_attrs):
                return REJECTED
            if any(a in CLOCK_ATTRIBUTES for a in node.kwd_attrs):
                return READS_CLOCK
        elif isinstance(node, (ast.MatchAs, ast.MatchStar, ast.MatchMapping)):
            name = getattr(node, "name", None) or getattr(node, "rest", None)
            if name is not None and name.startswith("__"):
                return REJECTED
        elif isinstance(node, ast.keyword):
            if node.arg is not None and node.arg.startswith("__"):
                return REJECTED
    return None


def check_condition(
    source: str | bytes,
    parameters: Sequence[str],
    samples: Sequence[tuple],
    timeout_s: float = 0.05,
    *,
    limits: Limits | None = None,
) -> CheckResult:
    """Validate an uploaded condition: static checks, then a trial in a fresh locked zygote.

    Every sample is one evaluation in its own row process with its own ``timeout_s`` deadline (a separate
    round trip); the zygote compiles the source, a row process checks that it loads. Reasons
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
    reason = inspect_source(source, params)
    if reason is not None:
        return CheckResult(False, reason)
    if isinstance(source, bytes):
        source = source.decode("utf-8")

    worker = spawn_worker(limits)
    try:
        try:
            answer = worker.request(protocol.LOAD, (source, params), 1, limits.load_timeout_s)
        except EvaluationFailed as exc:
            return CheckResult(False, _failure_reason(exc, limits.load_timeout_s))
        code = answer[0]
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
        return CheckResult(True)
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
