"""The upload's static checks of a condition's source: parse and walk its AST, never execute it.

Run inside a locked trial zygote (sandbox.check.check_condition sends it an INSPECT request), so that a source
that takes the parser a long time or all its memory costs the agent nothing (S7: a compile() holds the GIL for
its whole length). Callable in-process too (tests, tools).
"""

from __future__ import annotations

import ast
import warnings
from typing import Sequence

from sandbox.errors import NO_CONDITION, READS_CLOCK, REJECTED, SYNTAX_ERROR
from sandbox.protocol import ALLOWED_MODULE_NAMES, MAX_SOURCE_CHARS

# An INSPECT answer: the index of the reason (0: none).
REASONS = (None, SYNTAX_ERROR, NO_CONDITION, REJECTED, READS_CLOCK)

# Introspection attributes that lead from a value to frames, code or other modules' globals.
DENIED_ATTRIBUTES = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
    "ag_await", "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "tb_frame", "tb_next",
    "mro", "format", "format_map",
})
# datetime's clocks. No clock reaches a row process anyway (no system call, no vDSO: it dies); refused here first
# with their own reason so that an honest condition learns why (the time of day is not an input).
CLOCK_ATTRIBUTES = frozenset({"now", "today", "utcnow"})



def compiles(source: str) -> str | None:
    """Parse and compile (never execute). Returns None or a fixed reason."""
    if len(source) > MAX_SOURCE_CHARS:
        return REJECTED
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(source, "<condition>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return SYNTAX_ERROR
    return None


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
    reason = compiles(source)  # also the symbol table's checks
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
