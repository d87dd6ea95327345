"""The closed language: conditions that can read nothing but their own row, so that many rows can share one locked
process without any bit passing from one household's row to the next.

A process per row (sandbox.worker's zygote) isolates any Python, at the price of a fork per row. Most conditions
are a few comparisons and sums of their parameters; for those, isolation can come from the language instead: a
condition in the closed language is a *function of its row only*. It cannot name or reach any state that outlives
its call or that another row could have changed: no loops, no containers, no attributes but a fixed list of
``math`` functions and constants, no strings, no ``is`` but against None, no try, no imports but of math, no
global or closure, no call but of pure numeric functions, and every number a float (int literals become floats,
rows' values are converted, no allowed operation makes an int: a float cannot grow without bound, an int can; and
``a ** b`` is math.pow's, which raises where a float power would be complex). Its memory and time per row are
bounded by its size (no loop, no call of itself). Every Python operation it may use depends only on its operands: never on the allocator, the garbage collector, object identity, a clock,
``random``'s or ``decimal``'s state, or what an earlier call left behind; so running rows one after another in one
process gives each row exactly the answer it would get alone in a fresh one (tests/test_sandbox_closed.py checks
this against the relays of tests/test_sandbox_isolation.py and on generated programs).

``closed_code(source, parameters)`` returns the compiled, rewritten module, or None when the source is outside
the language (it then runs with a process per row, as before). The verdict is computed by the process that will
evaluate the rows, from the very source it compiles (sandbox.worker, EVALUATOR mode): nothing trusts a verdict
from elsewhere. Refusing is always safe; the rules only ever widen with a test that shows the new form pure.
"""

from __future__ import annotations

import ast
import math
import warnings
from types import CodeType, ModuleType, SimpleNamespace
from typing import Any, Sequence

NUM, BOOL, NONE = "num", "bool", "none"
MAX_NODES = 2000  # bounds a row's time and memory (no loop): ~2,000 float operations at most

# math's pure functions of floats that return a float (or, for the is* ones, a bool). Not floor/ceil/trunc
# (they return ints), not fsum/prod/dist (iterables), not frexp/modf (tuples), not isclose (keywords).
MATH_FUNCTIONS = {
    **dict.fromkeys((
        "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "copysign", "cos", "cosh", "degrees", "erf",
        "erfc", "exp", "expm1", "fabs", "fmod", "gamma", "hypot", "lgamma", "log", "log10", "log1p", "log2",
        "pow", "radians", "remainder", "sin", "sinh", "sqrt", "tan", "tanh",
    ), NUM),
    **dict.fromkeys(("isfinite", "isinf", "isnan"), BOOL),
}
MATH_CONSTANTS = ("e", "inf", "nan", "pi", "tau")
BUILTIN_FUNCTIONS = {"abs": 1, "float": 1, "max": 2, "min": 2}  # name -> fewest positional arguments
POWER = "__pow__"  # the name `a ** b` is rewritten to call (a dunder: no source can name it)
_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)


class _Outside(Exception):
    """The source uses something outside the closed language."""


def closed_code(source: str, parameters: Sequence[str]) -> CodeType | None:
    """The module's code object, rewritten (every int literal a float), or None if outside the language."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source, "<condition>")
        if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
            return None
        _Checker(tuple(parameters)).module(tree)
        tree = ast.fix_missing_locations(_Rewrite().visit(tree))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return compile(tree, "<condition>", "exec", dont_inherit=True)
    except (_Outside, SyntaxError, ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        return None


def row_values(row: Sequence[object]) -> tuple[float | None, ...] | None:
    """A row as the closed language sees it: floats and None. None if a value is of another type."""
    out: list[float | None] = []
    for value in row:
        kind = type(value)
        if value is None or isinstance(value, float) and kind is float:
            out.append(value)
        elif isinstance(value, int) and (kind is int or kind is bool):
            try:
                out.append(float(value))
            except OverflowError:
                return None
        else:
            return None
    return tuple(out)


def builtins(math_module: ModuleType | SimpleNamespace) -> dict[str, Any]:
    """The builtins a closed condition runs with: the functions it may call, its power, an import of math only."""
    import builtins as python

    def import_math(name: str, globals: object = None, locals: object = None, fromlist: object = (),
                    level: int = 0) -> ModuleType | SimpleNamespace:
        if level == 0 and name == "math":
            return math_module
        raise ImportError("import not allowed")

    safe = {name: getattr(python, name) for name in BUILTIN_FUNCTIONS}
    safe[POWER] = math.pow
    safe["__import__"] = import_math
    return safe


class _Rewrite(ast.NodeTransformer):
    """Int literals become floats; ``a ** b`` and ``x **= b`` call math.pow (float ** float can be complex)."""

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        if type(node.value) is int:
            return ast.copy_location(ast.Constant(float(node.value)), node)  # OverflowError: outside
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Pow):
            return ast.copy_location(_power(node.left, node.right), node)
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Pow):
            assert isinstance(node.target, ast.Name)  # the checker allows no other target
            target = node.target.id
            value = _power(ast.Name(target, ast.Load()), node.value)
            return ast.copy_location(ast.Assign([ast.Name(target, ast.Store())], value), node)
        return node


def _power(base: ast.expr, exponent: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(POWER, ast.Load()), [base, exponent], [])


class _Checker:
    """One pass over the module: statement forms, and a kind (num, bool or none) for every expression."""

    def __init__(self, parameters: tuple[str, ...]):
        self.parameters = parameters
        self.math_module = False  # `import math` seen
        self.imported: dict[str, str] = {}  # `from math import x`: name -> NUM/BOOL (function) or "const"
        self.kinds: dict[str, str] = {}  # the function's names -> kind

    # -- module and function

    def module(self, tree: ast.Module) -> None:
        body = list(tree.body)
        if body and _is_docstring(body[0]):
            body = body[1:]
        defs = 0
        for node in body:
            if isinstance(node, ast.Import):
                if [(a.name, a.asname) for a in node.names] != [("math", None)]:
                    raise _Outside
                self.math_module = True
            elif isinstance(node, ast.ImportFrom):
                if node.module != "math" or node.level:
                    raise _Outside
                for alias in node.names:
                    if alias.asname is not None:
                        raise _Outside
                    if alias.name in MATH_FUNCTIONS:
                        self.imported[alias.name] = MATH_FUNCTIONS[alias.name]
                    elif alias.name in MATH_CONSTANTS:
                        self.imported[alias.name] = "const"
                    else:
                        raise _Outside
            elif isinstance(node, ast.FunctionDef) and node.name == "condition" and not defs:
                defs += 1
                self.function(node)
            else:
                raise _Outside
        if defs != 1:
            raise _Outside

    def function(self, fn: ast.FunctionDef) -> None:
        args = fn.args
        if (fn.decorator_list or fn.returns or args.posonlyargs or args.vararg or args.kwonlyargs or args.kwarg
                or args.defaults or any(a.annotation for a in args.args)
                or tuple(a.arg for a in args.args) != self.parameters or len(set(self.parameters)) != len(args.args)):
            raise _Outside
        for name in self.parameters:
            self._bind(name, NUM)
        body = list(fn.body)
        if body and _is_docstring(body[0]):
            body = body[1:]
        self.statements(body)

    def _reserved(self, name: str) -> bool:
        return (name == "condition" or name in BUILTIN_FUNCTIONS or name in self.imported
                or (name == "math" and self.math_module) or name.startswith("__"))

    def _bind(self, name: str, kind: str) -> None:
        if self._reserved(name) or kind == NONE or self.kinds.get(name, kind) != kind:
            raise _Outside
        self.kinds[name] = kind

    # -- statements

    def statements(self, nodes: list[ast.stmt]) -> None:
        for node in nodes:
            self.statement(node)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Return):
            if node.value is not None:
                self.expr(node.value)
        elif isinstance(node, ast.Assign):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                raise _Outside
            self._bind(node.targets[0].id, self.expr(node.value))
        elif isinstance(node, ast.AugAssign):
            if not isinstance(node.target, ast.Name) or not isinstance(node.op, _ARITHMETIC):
                raise _Outside
            if self.kinds.get(node.target.id) != NUM or self.expr(node.value) != NUM:
                raise _Outside
        elif isinstance(node, ast.If):
            self.truth(node.test)
            self.statements(node.body)
            self.statements(node.orelse)
        elif not isinstance(node, ast.Pass):
            raise _Outside  # loops, try, with, raise, assert, del, global, nested def/class, import, match...

    # -- expressions

    def truth(self, node: ast.expr) -> None:
        if self.expr(node) == NONE:
            raise _Outside

    def expr(self, node: ast.expr) -> str:
        method = getattr(self, "e_" + type(node).__name__, None)
        if method is None:
            raise _Outside  # subscripts, containers, comprehensions, lambda, walrus, f-strings, starred, yield...
        kind: str = method(node)
        return kind

    def e_Constant(self, node: ast.Constant) -> str:
        value = node.value
        if value is None:
            return NONE
        if type(value) is bool:
            return BOOL
        if type(value) is float or type(value) is int:
            if type(value) is int:
                float(value)  # OverflowError: outside
            return NUM
        raise _Outside  # str (but docstrings), bytes, complex, Ellipsis

    def e_Name(self, node: ast.Name) -> str:
        if self.imported.get(node.id) == "const":
            return NUM
        kind = self.kinds.get(node.id)
        if kind is None:
            raise _Outside  # a function's name used as a value, or a name read before it is assigned
        return kind

    def e_Attribute(self, node: ast.Attribute) -> str:
        if self._math_name(node) not in MATH_CONSTANTS:
            raise _Outside
        return NUM

    def _math_name(self, node: ast.Attribute) -> str | None:
        if self.math_module and isinstance(node.value, ast.Name) and node.value.id == "math":
            return node.attr
        return None

    def e_BinOp(self, node: ast.BinOp) -> str:
        if not isinstance(node.op, _ARITHMETIC) or self.expr(node.left) != NUM or self.expr(node.right) != NUM:
            raise _Outside
        return NUM

    def e_UnaryOp(self, node: ast.UnaryOp) -> str:
        if isinstance(node.op, ast.Not):
            self.truth(node.operand)
            return BOOL
        if isinstance(node.op, (ast.USub, ast.UAdd)) and self.expr(node.operand) == NUM:
            return NUM
        raise _Outside  # ~ (ints only), or - of a bool (an int)

    def e_BoolOp(self, node: ast.BoolOp) -> str:
        kinds = {self.expr(value) for value in node.values}  # `a or b` is one of its operands
        if len(kinds) != 1 or NONE in kinds:
            raise _Outside
        return kinds.pop()

    def e_Compare(self, node: ast.Compare) -> str:
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:]):
            if isinstance(op, (ast.Is, ast.IsNot)):
                # only `x is None`: identity of anything else is the allocator's business
                if not (_is_none(right) and self.expr(left) == NUM):
                    raise _Outside
            elif isinstance(op, _ORDER):
                if self.expr(left) == NONE or self.expr(right) == NONE:
                    raise _Outside
            else:
                raise _Outside  # in / not in
        return BOOL

    def e_IfExp(self, node: ast.IfExp) -> str:
        self.truth(node.test)
        body, orelse = self.expr(node.body), self.expr(node.orelse)
        if body != orelse or body == NONE:
            raise _Outside
        return body

    def e_Call(self, node: ast.Call) -> str:
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise _Outside
        func = node.func
        if isinstance(func, ast.Name) and func.id in BUILTIN_FUNCTIONS and func.id not in self.kinds:
            kind = NUM
            if len(node.args) < BUILTIN_FUNCTIONS[func.id]:
                raise _Outside  # min(x) and max(x) would iterate over x
        elif isinstance(func, ast.Name) and self.imported.get(func.id) in (NUM, BOOL):
            kind = self.imported[func.id]
        elif isinstance(func, ast.Attribute) and self._math_name(func) in MATH_FUNCTIONS:
            kind = MATH_FUNCTIONS[func.attr]
        else:
            raise _Outside
        if not node.args or any(self.expr(a) != NUM for a in node.args):
            raise _Outside
        return kind


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and type(node.value.value) is str


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


assert all(callable(getattr(math, name)) for name in MATH_FUNCTIONS)
assert all(type(getattr(math, name)) is float for name in MATH_CONSTANTS)
