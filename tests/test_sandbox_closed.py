"""The closed language (sandbox.closed) and its evaluators: rows that share one locked process pass nothing.

A condition in the closed language is evaluated by its zygote itself, row after row (no fork per row). The claim
is that its answer for a row is a function of that row only. Shown three ways:
- the language: everything that could read or leave state behind is outside it (each form below, and every relay
  of tests/test_sandbox_isolation.py, which then runs with a process per row);
- generated programs (hypothesis) with rows that raise, overflow and are None: every row's answer in one batch,
  in any order, equals its answer computed alone in this process (whose interpreter state has nothing in common
  with the evaluator's);
- the evaluator process: its filter is stacked (two seccomp filters in /proc), its vDSO is gone, and a condition
  outside the language never reaches an evaluator.
"""

from __future__ import annotations

import math
import random
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox import Limits, Status, Supervisor
from sandbox.closed import MAX_NODES, closed_code, row_values
from sandbox.closed import builtins as closed_builtins
from sandbox.supervisor import CLOSED_LANGUAGE, PROCESS_PER_ROW

LIMITS = Limits(timeout_s=5.0, load_timeout_s=5.0, spawn_timeout_s=30.0, backoff_s=0.0, quarantine_after=1000)
PARAMS = ["x", "y"]


def closed(body: str, params=PARAMS):
    return closed_code(textwrap.dedent(body), params)


# ------------------------------------------------------------------------------------------- the language

INSIDE = {
    "the MISSION example": "def condition(x, y):\n    return y - x > 500\n",
    "math module": "import math\ndef condition(x, y):\n    return math.sqrt(abs(x)) + math.pi > math.log1p(y)\n",
    "from math": "from math import hypot, inf\ndef condition(x, y):\n    return hypot(x, y) < inf\n",
    "locals and branches": """\
        def condition(x, y):
            '''peak shaving'''
            if x is None or y is None:
                return False
            total = x + y
            total *= 1.5
            limit = 3000 if y > 0 else 2500
            return total > limit and not (x < 0)
        """,
    "min, max, float": "def condition(x, y):\n    return max(x, y, 10) - min(x, 0.5) > float(y)\n",
    "is not None": "def condition(x, y):\n    return x is not None and x % 7 == 3\n",
    "isnan": "import math\ndef condition(x, y):\n    return math.isnan(x / y)\n",
    "pass": "def condition(x, y):\n    pass\n",
}

OUTSIDE = {
    "import random": "import random\ndef condition(x, y):\n    return x > random.random()\n",
    "import gc": "import gc\ndef condition(x, y):\n    return gc.get_count()[0] > x\n",
    "import inside": "def condition(x, y):\n    import math\n    return math.pi > x\n",
    "import as": "import math as m\ndef condition(x, y):\n    return m.pi > x\n",
    "id()": "def condition(x, y):\n    return id(x) % 2 == 0\n",
    "hash()": "def condition(x, y):\n    return hash(x) > 0\n",
    "is between values": "def condition(x, y):\n    return x is y\n",
    "None is x": "def condition(x, y):\n    return None is x\n",
    "loop": "def condition(x, y):\n    for i in range(3):\n        x += i\n    return x > 0\n",
    "while": "def condition(x, y):\n    while x > 0:\n        x -= 1\n    return True\n",
    "comprehension": "def condition(x, y):\n    return sum([x for _ in range(2)]) > 0\n",
    "list": "def condition(x, y):\n    return [x] == [y]\n",
    "tuple": "def condition(x, y):\n    return (x, y) > (0, 0)\n",
    "subscript": "def condition(x, y):\n    return x[0] > 0\n",
    "string": "def condition(x, y):\n    return 'a' * 3 == 'aaa'\n",
    "f-string": "def condition(x, y):\n    return len(f'{x}') > 3\n",
    "attribute of a value": "def condition(x, y):\n    return x.real > 0\n",
    "math.floor (an int)": "import math\ndef condition(x, y):\n    return math.floor(x) > 0\n",
    "round (an int)": "def condition(x, y):\n    return round(x) > 0\n",
    "int()": "def condition(x, y):\n    return int(x) > 0\n",
    "bool arithmetic": "def condition(x, y):\n    n = (x > 0) + (y > 0)\n    return n > 1\n",
    "negated bool": "def condition(x, y):\n    return -(x > 0) < 0\n",
    "bitwise": "def condition(x, y):\n    return x | y > 0\n",
    "min of one": "def condition(x, y):\n    return min(x) > 0\n",
    "keyword argument": "def condition(x, y):\n    return max(x, y, key=abs) > 0\n",
    "try": "def condition(x, y):\n    try:\n        return x / y > 1\n    except ZeroDivisionError:\n        return False\n",
    "global": "def condition(x, y):\n    global seen\n    seen = x\n    return True\n",
    "module state": "seen = 0.0\ndef condition(x, y):\n    return x > seen\n",
    "nested def": "def condition(x, y):\n    def f():\n        return x\n    return f() > 0\n",
    "lambda": "def condition(x, y):\n    return (lambda: x)() > 0\n",
    "walrus": "def condition(x, y):\n    return (z := x) > 0\n",
    "recursion": "def condition(x, y):\n    return condition(x - 1, y) if x > 0 else True\n",
    "read before assignment": "def condition(x, y):\n    if x > 0:\n        return z > 0\n    z = 1\n    return True\n",
    "a name of two kinds": "def condition(x, y):\n    z = x > 0\n    z = x\n    return z > 0\n",
    "shadowing abs": "def condition(x, y):\n    abs = x\n    return abs > 0\n",
    "a function as a value": "def condition(x, y):\n    f = abs\n    return f(x) > 0\n",
    "default argument": "def condition(x, y=1):\n    return x > y\n",
    "annotation": "def condition(x: float, y):\n    return x > y\n",
    "decorator": "@staticmethod\ndef condition(x, y):\n    return x > y\n",
    "wrong parameters": "def condition(y, x):\n    return x > y\n",
    "complex literal": "def condition(x, y):\n    return x * 1j == 0\n",
    "huge int literal": "def condition(x, y):\n    return x > " + "9" * 400 + "\n",
    "assert": "def condition(x, y):\n    assert x > 0\n    return True\n",
    "raise": "def condition(x, y):\n    raise ValueError\n",
    "in": "def condition(x, y):\n    return x in (1, 2)\n",
    "dunder": "def condition(x, y):\n    return __builtins__ is None\n",
    "syntax error": "def condition(x, y)\n    return True\n",
    "two definitions": "def condition(x, y):\n    return True\ndef condition(x, y):\n    return False\n",
    "class": "class C:\n    pass\ndef condition(x, y):\n    return True\n",
    "too many nodes": "def condition(x, y):\n    return x > " + " + ".join(["y"] * MAX_NODES) + "\n",
}


@pytest.mark.parametrize("name", sorted(INSIDE))
def test_what_the_closed_language_holds(name):
    assert closed(INSIDE[name]) is not None


@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_what_it_refuses(name):
    assert closed(OUTSIDE[name]) is None


def test_int_literals_become_floats_so_no_value_can_grow_without_bound():
    namespace = {"__builtins__": {"abs": abs}}
    exec(closed("def condition(x, y):\n    return 7 // 2\n"), namespace)
    result = namespace["condition"](1.0, 2.0)
    assert type(result) is float and result == 3.0  # an int here could be squared into gigabytes
    assert row_values((1, True, None, 2.5)) == (1.0, 1.0, None, 2.5)
    assert row_values(("text",)) is None and row_values((10 ** 400,)) is None


# ------------------------------------------------------------------------ generated programs, real evaluators


def _expr(depth: int, names=("x", "y", "z")):
    leaf = st.one_of(st.sampled_from(names), st.sampled_from(["0", "1", "-3", "0.5", "1e308", "500"]))
    if depth == 0:
        return leaf
    sub = _expr(depth - 1, names)
    ops = st.sampled_from(["+", "-", "*", "/", "//", "%", "**"])
    return st.one_of(
        leaf,
        st.tuples(sub, ops, sub).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        sub.map(lambda e: f"(-{e})"),
        st.tuples(st.sampled_from(["abs", "math.sqrt", "math.exp", "math.log", "math.atan"]), sub)
        .map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(["min", "max"]), sub, sub).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
        st.tuples(sub, _test(depth - 1, names), sub).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
    )


def _test(depth: int, names=("x", "y", "z")):
    sub = _expr(depth, names)
    checks = ["x is None", "y is not None"] + (["math.isnan(z)"] if "z" in names else [])
    return st.one_of(
        st.tuples(sub, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), sub).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.sampled_from(checks),
    )


PROGRAM = st.tuples(_expr(3), _expr(2, ("x", "y")), _test(2), _test(2)).map(lambda t: textwrap.dedent(f"""\
    import math
    def condition(x, y):
        z = {t[1]}
        if {t[2]}:
            z = {t[0]}
        return {t[3]} or (z > 0 if {t[2]} else not {t[3]})
    """))
ROW_VALUE = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                      st.sampled_from([0.0, -0.0, 1e308, -1e-308]))


def alone(source: str, row) -> Status:
    """The row's answer computed in this process, on its own (the reference)."""
    namespace = {"__builtins__": closed_builtins(math)}
    exec(closed_code(source, PARAMS), namespace)
    values = row_values(row)
    if values is None:
        return Status.ERROR
    try:
        result = namespace["condition"](*values)
    except BaseException:
        return Status.ERROR
    return Status.TRUE if result is True else Status.FALSE if result is False else Status.NOT_BOOL


@pytest.fixture(scope="module")
def supervisor():
    with Supervisor(LIMITS) as sup:
        yield sup


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(source=PROGRAM, rows=st.lists(st.tuples(ROW_VALUE, ROW_VALUE), min_size=2, max_size=40),
       seed=st.integers(0, 2**32))
def test_every_row_gets_the_answer_it_would_get_alone(supervisor, source, rows, seed):
    assert closed_code(source, PARAMS) is not None, source
    supervisor.register("org", "generated", source, PARAMS)
    expected = [alone(source, row) for row in rows]
    assert supervisor.evaluate("org", "generated", rows) == expected
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    shuffled = supervisor.evaluate("org", "generated", [rows[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(len(rows))] == expected  # and in any order
    state = supervisor.state("org", "generated")
    assert state.isolation == CLOSED_LANGUAGE and state.spawns == 1, state


def _proc(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/{name}") as f:
        return f.read()


def test_an_evaluator_runs_stacked_filters_without_a_vdso(supervisor):
    supervisor.register("org", "mission", INSIDE["the MISSION example"], PARAMS)
    assert supervisor.evaluate("org", "mission", [(0.0, 600.0), (0.0, 400.0), (None, 1.0)]) == [
        Status.TRUE, Status.FALSE, Status.ERROR]
    state = supervisor.state("org", "mission")
    assert state.isolation == CLOSED_LANGUAGE
    status = _proc(state.pid, "status")
    assert "Seccomp:\t2" in status  # filter mode
    filters = [line for line in status.splitlines() if line.startswith("Seccomp_filters:")]
    if filters:  # Linux >= 5.9: the zygote's filter and, stacked on it, the evaluator's
        assert filters == ["Seccomp_filters:\t2"], filters
    maps = _proc(state.pid, "maps")
    assert "[vdso]" not in maps and "[vvar]" not in maps


def test_a_condition_outside_the_language_gets_a_process_per_row(supervisor):
    supervisor.register("org", "loop", OUTSIDE["loop"], PARAMS)
    assert supervisor.evaluate("org", "loop", [(1.0, 0.0), (-9.0, 0.0)]) == [Status.TRUE, Status.FALSE]
    state = supervisor.state("org", "loop")
    assert state.isolation == PROCESS_PER_ROW and state.spawns == 1
    assert "Seccomp_filters:\t1" in _proc(state.pid, "status") or "Seccomp_filters" not in _proc(state.pid, "status")
    assert "[vdso]" in _proc(state.pid, "maps")  # a zygote: its row processes unmap it, it keeps it


def test_the_operator_can_require_a_process_per_row_for_every_condition():
    with Supervisor(Limits(timeout_s=5.0, load_timeout_s=5.0, spawn_timeout_s=30.0, evaluators=False)) as sup:
        sup.register("org", "mission", INSIDE["the MISSION example"], PARAMS)
        assert sup.evaluate("org", "mission", [(0.0, 600.0)]) == [Status.TRUE]
        assert sup.state("org", "mission").isolation == PROCESS_PER_ROW


def test_rows_that_are_not_numbers_are_errors_not_crashes(supervisor):
    supervisor.register("org", "mission", INSIDE["the MISSION example"], PARAMS)
    assert supervisor.evaluate("org", "mission", [("a", 1.0), (0.0, 600.0), (10 ** 400, 1.0)]) == [
        Status.ERROR, Status.TRUE, Status.ERROR]
    assert supervisor.state("org", "mission").violations == 0


def test_a_malformed_row_is_that_rows_error_and_a_big_request_is_read_whole(supervisor):
    supervisor.register("org", "mission", INSIDE["the MISSION example"], PARAMS)
    assert supervisor.evaluate("org", "mission", ["ab", (0.0, 600.0), 5, (0.0, 1.0)]) == [
        Status.ERROR, Status.TRUE, Status.ERROR, Status.FALSE]
    rows = [(0.0, float(i)) for i in range(8192)]  # ~200 KB of frames: many pipe reads in one request
    assert supervisor.evaluate("org", "mission", rows) == [Status.TRUE if i > 500 else Status.FALSE
                                                            for i in range(8192)]
    state = supervisor.state("org", "mission")
    assert state.violations == 0 and state.spawns == 1 and state.isolation == CLOSED_LANGUAGE
