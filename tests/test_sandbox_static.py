"""The upload's static checks (sandbox/static.py) on data: a source and its parameters in, a fixed reason out, in
this process (the agent runs them in a locked trial zygote; tests/test_sandbox_check.py goes through it)."""

from __future__ import annotations

import pytest

from sandbox.errors import NO_CONDITION, READS_CLOCK, REJECTED, SYNTAX_ERROR
from sandbox.protocol import MAX_SOURCE_CHARS
from sandbox.static import REASONS, compiles, inspect_source

OK = "def condition(a, b):\n    return a > b\n"


def test_attribute_assignment_is_refused_at_upload():
    """Module attributes would outlive the fresh namespace each row gets."""
    from sandbox import inspect_source

    assert inspect_source("import math\ndef condition(x):\n    math.seen = x\n    return True\n", ["x"])
    assert inspect_source("def condition(x):\n    return x > 1\n", ["x"]) is None


@pytest.mark.parametrize("source", [
    OK,
    "import math\nimport statistics as st\nfrom datetime import timedelta\n"
    "def condition(a, b):\n    return math.fsum([a, b]) > st.mean([a, b]) + timedelta(1).days\n",
    "def helper(x):\n    return x * 2\ndef condition(a, b):\n    return helper(a) > b\n",
    "LIMIT = 3\ndef condition(a, b):\n    match a:\n        case {'k': v, **rest}:\n            return True\n"
    "        case [x, *others]:\n            return False\n    return a > LIMIT\n",
    "def condition(a, b):\n    return condition is not None and a > b\n",  # reading its own name is fine
    "def condition(a, b):\n    return a.real > b.imag\n",
])
def test_an_honest_condition_passes(source):
    assert inspect_source(source, ["a", "b"]) is None
    assert inspect_source(source.encode(), ("a", "b")) is None


@pytest.mark.parametrize("source,reason", [
    # not Python, not UTF-8, too long
    ("def condition(a, b)\n    return True\n", SYNTAX_ERROR),
    (b"def condition(a, b):\n    return '\xff'\n", SYNTAX_ERROR),
    ("def condition(a, b):\n    return True\n\x00", SYNTAX_ERROR),
    ("def condition(a, b):\n    nonlocal a\n    return True\n", SYNTAX_ERROR),  # the symbol table's check
    (OK + "#" * MAX_SOURCE_CHARS, REJECTED),
    # the one condition(a, b)
    ("def cond(a, b):\n    return True\n", NO_CONDITION),
    ("def condition(b, a):\n    return True\n", NO_CONDITION),
    ("def condition(a, b, *rest):\n    return True\n", NO_CONDITION),
    ("def condition(a, *, b):\n    return True\n", NO_CONDITION),
    ("def condition(a, b=1):\n    return True\n", NO_CONDITION),
    ("class condition:\n    pass\n", NO_CONDITION),
    ("def f():\n    def condition(a, b):\n        return True\n" + OK, NO_CONDITION),
    (OK + "import math as condition\n", NO_CONDITION),
    (OK + "from math import floor as condition\n", NO_CONDITION),
    (OK + "def f():\n    global condition\n", NO_CONDITION),
    (OK + "for condition in []:\n    pass\n", NO_CONDITION),
    # escapes and state
    ("def condition(a, b):\n    return a.__class__ is b\n", REJECTED),
    ("def condition(a, b):\n    return a._private is b\n", REJECTED),
    ("def condition(a, b):\n    return '{0.__class__}'.format(a) == b\n", REJECTED),
    ("def condition(a, b):\n    return type(a).mro() == b\n", REJECTED),
    ("def condition(a, b):\n    return __import__ is a\n", REJECTED),
    ("def __f():\n    pass\n" + OK, REJECTED),
    ("def f(__x):\n    return __x\n" + OK, REJECTED),
    ("def condition(a, b):\n    return dict(__x=1) == a\n", REJECTED),
    ("def condition(a, b):\n    match a:\n        case __x:\n            return True\n", REJECTED),
    ("def condition(a, b):\n    match a:\n        case {**__rest}:\n            return True\n    return False\n",
     REJECTED),
    ("def condition(a, b):\n    match a:\n        case object(tb_frame=f):\n            return True\n"
     "    return False\n", REJECTED),
    ("N = 0\ndef condition(a, b):\n    global N\n    N += 1\n    return N > 1\n", REJECTED),
    ("import os\n" + OK, REJECTED),
    ("import math, os\n" + OK, REJECTED),
    ("from . import math\n" + OK, REJECTED),
    ("from .math import floor\n" + OK, REJECTED),  # a relative import of an allowed name
    ("from math import *\n" + OK, REJECTED),
    ("from datetime import _time\n" + OK, REJECTED),
    ("import math\ndef condition(a, b):\n    math.pi = a\n    return True\n", REJECTED),
    ("import math\ndef condition(a, b):\n    del math.pi\n    return True\n", REJECTED),
    # the clock
    ("import datetime\ndef condition(a, b):\n    return datetime.datetime.now().hour > a\n", READS_CLOCK),
    ("from datetime import date\ndef condition(a, b):\n    return date.today().day > a\n", READS_CLOCK),
    ("import datetime\ndef condition(a, b):\n    match datetime.datetime:\n        case type(utcnow=f):\n"
     "            return True\n    return False\n", READS_CLOCK),
])
def test_a_refused_source_gets_its_reason(source, reason):
    assert inspect_source(source, ["a", "b"]) == reason


def test_a_source_that_is_not_text_is_a_syntax_error():
    assert inspect_source(42, ["a"]) == SYNTAX_ERROR  # type: ignore[arg-type]


def test_the_parameters_are_the_triggers_own_in_order():
    source = "def condition(power, price):\n    return power > price\n"
    assert inspect_source(source, ["power", "price"]) is None
    assert inspect_source(source, ["price", "power"]) == NO_CONDITION
    assert inspect_source(source, ["power"]) == NO_CONDITION
    assert inspect_source("def condition():\n    return True\n", []) is None


def test_compiles_only_compiles():
    assert compiles("raise SystemExit(1)\n") is None  # never executed
    assert compiles("def f(:\n") == SYNTAX_ERROR
    assert compiles("x" * (MAX_SOURCE_CHARS + 1)) == REJECTED
    assert compiles("x" * MAX_SOURCE_CHARS) is None


def test_an_inspect_answer_is_an_index_into_the_reasons():
    # the zygote answers REASONS.index(reason) in one byte: every reason has one index, none is 0 but None
    assert REASONS[0] is None and len(set(REASONS)) == len(REASONS) < 256
    assert {SYNTAX_ERROR, NO_CONDITION, REJECTED, READS_CLOCK} == set(REASONS[1:])
