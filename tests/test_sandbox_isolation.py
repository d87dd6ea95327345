"""Rows and windows are independent: no bit passes from one household's row to the next, or to the next window.

Each attack is a real condition that relays one bit per pair of rows: a *writer* row (x >= 0: pair x // 2, bit
x % 2) leaves interpreter state behind, the next *reader* row (x < 0: pair -1 - x) reads it back and returns it.
20 bits (40 rows) per run, so chance cannot pass.

For every attack, the test shows that the encoding works: evaluated the way the sandbox did before the zygote
(one interpreter, a fresh execution of the module per row, the same restricted builtins; in a subprocess so that
the attack's side effects stay there), the readers return the writers' bits. Then, through a real Supervisor
(real zygote, real seccomp), the readers' answers are the same for the bits and for their complement: they
carry nothing. Attacks that need a clock get none: their row process is killed and the request fails.

Some attacks reach past the restricted builtins (the escape suite's subclass walk) as if the upload check had a
hole: they are registered directly, as the escape suite does.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandbox import (
    READS_CLOCK,
    BackingOff,
    ConditionQuarantined,
    Limits,
    Status,
    Supervisor,
    Violation,
    check_condition,
    inspect_source,
)
from sandbox.closed import closed_code
from tests.helpers.sandbox import CLOCK_GETTIME_NR, PRELUDE

REPO = Path(__file__).resolve().parent.parent
LIMITS = Limits(timeout_s=5.0, load_timeout_s=5.0, spawn_timeout_s=30.0, backoff_s=0.0, quarantine_after=1000,
                max_evaluations=10**9, cpu_s=3600)
PAIRS = 20

# The design before the zygote: one interpreter, the module executed afresh for every row.
OLD_DESIGN = textwrap.dedent("""\
    import ctypes, json, sys, warnings  # ctypes: the old worker had it loaded too (for libseccomp)
    sys.path.insert(0, sys.argv[1])
    from sandbox.worker import _preimport, _safe_builtins
    with warnings.catch_warnings():
        builtins = _safe_builtins(_preimport())
    source, rows = json.loads(sys.stdin.read())
    code = compile(source, "<condition>", "exec")
    out = []
    for row in rows:
        namespace = {"__builtins__": builtins, "__name__": "condition"}
        try:
            exec(code, namespace)
            result = namespace["condition"](*row)
        except BaseException:
            out.append(2)
            continue
        out.append(1 if result is True else 0 if result is False else 3)
    print(json.dumps(out))
""")


def rows_for(bits: list[int]) -> list[tuple]:
    rows = []
    for pair, bit in enumerate(bits):
        rows += [(2 * pair + bit,), (-1 - pair,)]
    return rows


def readers(statuses) -> list[int]:
    return [int(s) for s in statuses[1::2]]


def old_design(source: str, bits: list[int]) -> list[int]:
    r = subprocess.run([sys.executable, "-c", OLD_DESIGN, str(REPO)], input=json.dumps([source, rows_for(bits)]),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return readers(json.loads(r.stdout))


def sandboxed(source: str, bits: list[int]) -> list[int]:
    with Supervisor(LIMITS) as sup:
        sup.register("org", "attack", source, ["x"])
        statuses = sup.evaluate("org", "attack", rows_for(bits))
        st = sup.state("org", "attack")
        assert st.spawns == 1 and st.violations == 0, st
        # and between windows: the same zygote, the next request
        again = sup.evaluate("org", "attack", rows_for(bits))
        assert sup.state("org", "attack").spawns == 1
    assert readers(again) == readers(statuses)
    return readers(statuses)


def secret_bits(seed: int) -> list[int]:
    rng = random.Random(seed)
    bits = [rng.randrange(2) for _ in range(PAIRS)]
    bits[0], bits[1] = 0, 1  # both values occur
    return bits


def assert_relays_then_blocked(source: str, *, exact: bool = True) -> None:
    bits = secret_bits(len(source))
    flipped = [1 - b for b in bits]
    got = old_design(source, bits)
    matches = sum(g == b for g, b in zip(got, bits))
    assert matches == PAIRS if exact else matches >= 0.8 * PAIRS, (got, bits)  # the encoding works
    assert old_design(source, flipped) != got
    through = sandboxed(source, bits)
    assert sandboxed(source, flipped) == through  # the readers' answers do not depend on the writers' rows
    assert through != bits


def attack(body: str, escape: bool = False) -> str:
    source = textwrap.dedent(body)
    return PRELUDE + source if escape else source


# ------------------------------------------------------------------------------------------------ attacks

GC_COUNTER = attack("""\
    def condition(x):
        flag = []
        def detector():
            try:
                yield 1
            finally:
                flag.append(1)
        def allocations_until_collection():
            # a garbage cycle holding a suspended generator: its finally runs when the cyclic GC collects it
            del flag[:]
            g = detector()
            for v in g:
                break
            cycle = [g]
            cycle.append(cycle)
            g = None
            cycle = None
            keep = []
            n = 0
            while not flag and n < 5000:
                keep.append([])
                n += 1
            return n
        if x >= 0:
            allocations_until_collection()  # generation 0's counter is now about 0
            for i in range(400 * (x % 2)):  # garbage cycles: counted until the next collection
                c = []
                c.append(c)
            return True
        return allocations_until_collection() < 500
""")

OBJECT_IDENTITY = attack("""\
    def condition(x):
        def gen():
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = b0 = b1 = b2 = b3 = b4 = b5 = b6 = 0
            yield a0
        def address(o):
            return int(str(o).split(" at ")[1][:-1], 16)
        if x >= 0:
            gs = [gen() for i in range(16)]
            order = sorted(range(16), key=lambda i: address(gs[i]))
            last = order[15 if x % 2 else 0]
            for i in order:
                if i != last:
                    gs[i] = None
            gs[last] = None  # freed last: the allocator hands this block out first
            return True
        gs = [gen() for i in range(16)]
        ranks = sorted(address(g) for g in gs)
        return ranks.index(address(gs[0])) >= 8
""")

RANDOM_STATE = attack("""\
    def condition(x):
        r = _mod("random")._inst
        if x >= 0:
            r.seed(0)
            for i in range(1 + x % 2):
                r.random()
            return True
        return r.getstate()[1][-1] == 4
""", escape=True)

DECIMAL_CONTEXT = attack("""\
    def condition(x):
        context = _mod("decimal").getcontext()
        if x >= 0:
            context.prec = 20 + x % 2
            return True
        return context.prec == 21
""", escape=True)

# glibc raises its mmap threshold to the size of the largest mmapped block freed so far: a high-water mark.
# Pair p works one MiB above pair p - 1, so that every pair starts below what the last one left.
MEMORY_HIGH_WATER = attack("""\
    def condition(x):
        c = _mod("ctypes")
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        Info = _type()("Info", (c.Structure,), {"_fields_": [(n, c.c_size_t) for n in names]})
        libc = c.CDLL(None)
        libc.mallinfo2.restype = Info
        pair = x // 2 if x >= 0 else -1 - x
        level = (pair + 2) << 20
        if x >= 0:
            if x % 2:
                s = "x" * (level + (512 << 10))
                s = None
            return True
        before = libc.mallinfo2().hblks
        s = "x" * (level + (256 << 10))
        mmapped = libc.mallinfo2().hblks > before
        s = None
        return not mmapped
""", escape=True)

WALL_CLOCK = attack("""\
    from datetime import datetime
    def condition(x):
        if x >= 0:
            while True:  # wait for the 2 ms slot that spells the bit, near its start
                us = datetime.now().microsecond
                if (us // 2000) % 2 == x % 2 and us % 2000 < 500:
                    return True
        return (datetime.now().microsecond // 2000) % 2 == 1
""")

MONOTONIC_CLOCK = attack("""\
    def condition(x):
        clock = _mod("time").monotonic_ns
        if x >= 0:
            while True:
                us = clock() // 1000
                if (us // 2000) % 2 == x % 2 and us % 2000 < 500:
                    return True
        return (clock() // 1000 // 2000) % 2 == 1
""", escape=True)


def test_the_plain_attacks_pass_the_upload_check():
    """The GC and allocator relays are conditions an organization can upload (they passed before this design)."""
    for source in (GC_COUNTER, OBJECT_IDENTITY):
        assert inspect_source(source, ["x"]) is None
        assert check_condition(source, ["x"], [(0,), (1,), (-1,)], timeout_s=5.0).ok


RELAYS = (GC_COUNTER, OBJECT_IDENTITY, RANDOM_STATE, DECIMAL_CONTEXT, MEMORY_HIGH_WATER, WALL_CLOCK, MONOTONIC_CLOCK)


@pytest.mark.parametrize("source", RELAYS)
def test_every_relay_is_outside_the_closed_language(source):
    """So it runs with a process per row (sandbox.closed: closed conditions share an evaluator), as below."""
    assert closed_code(source, ["x"]) is None


def test_gc_generation_counter_relays_nothing():
    assert_relays_then_blocked(GC_COUNTER)


def test_object_identity_and_allocator_relay_nothing():
    assert_relays_then_blocked(OBJECT_IDENTITY, exact=False)  # the harness's own frees blur a bit now and then


def test_random_module_state_relays_nothing():
    assert_relays_then_blocked(RANDOM_STATE)


def test_decimal_context_relays_nothing():
    assert_relays_then_blocked(DECIMAL_CONTEXT)


def test_memory_high_water_mark_relays_nothing():
    assert_relays_then_blocked(MEMORY_HIGH_WATER)


@pytest.mark.parametrize("source", [WALL_CLOCK, MONOTONIC_CLOCK], ids=["wall clock", "monotonic clock"])
def test_clock_slot_relay_gets_no_clock(source):
    """The busy-wait relay works in one interpreter (allowing for a preemption now and then); in a row process
    there is no clock to wait on: each row process that reads it dies (that row's ERROR, a violation), so no
    answer carries anything."""
    bits = secret_bits(7)
    got = old_design(source, bits)
    assert sum(g == b for g, b in zip(got, bits)) >= 0.8 * PAIRS, (got, bits)
    with Supervisor(LIMITS) as sup:
        sup.register("org", "clock", source, ["x"])
        assert sup.evaluate("org", "clock", rows_for(bits)) == [Status.ERROR] * (2 * PAIRS)
        st = sup.state("org", "clock")
        assert st.last_violation is Violation.CRASHED  # SIGSEGV: the vDSO is not mapped
        assert sup.evaluate("org", "clock", [(-1,)]) == [Status.ERROR]  # nor a reader alone
        assert sup.state("org", "clock").violations == st.violations + 1


def test_clock_reads_are_refused_at_upload():
    for body in ("from datetime import datetime\ndef condition(x):\n    return datetime.now().hour > x\n",
                 "import datetime\ndef condition(x):\n    return datetime.date.today().day > x\n",
                 "import datetime\ndef condition(x):\n    return datetime.datetime.utcnow().hour > x\n",
                 "import datetime\ndef condition(x):\n    match datetime.datetime:\n"
                 "        case datetime.datetime(now=n):\n            return True\n    return False\n"):
        assert inspect_source(body, ["x"]) == READS_CLOCK
        assert check_condition(body, ["x"], [(1.0,)], timeout_s=1.0).reason == READS_CLOCK
    # arithmetic on datetime stays allowed
    honest = ("from datetime import datetime, timedelta\ndef condition(x):\n"
              "    return datetime(2026, 1, 1) + timedelta(hours=x) > datetime(2026, 1, 1, 6)\n")
    assert check_condition(honest, ["x"], [(7.0,), (1.0,)], timeout_s=1.0).ok


def test_cpu_clock_of_another_process_is_refused():
    """S8: a row process asks for the agent's CPU clock (and another worker's) with a direct system call, as the
    escape suite does: killed by seccomp. Through libc (the vDSO, gone) it dies as well."""
    body = PRELUDE + textwrap.dedent("""\
        def condition(x):
            c = _mod("ctypes")
            ts = (c.c_long * 2)()
            clock_id = c.c_int((~int(x) << 3) | 2)  # CPUCLOCK_SCHED of pid x
            if x > 0:
                nr = CLOCK_GETTIME_NR
                return _libc().syscall(nr, clock_id, ts) == 0
            return _libc().clock_gettime(c.c_int((~int(-x) << 3) | 2), ts) == 0
    """).replace("CLOCK_GETTIME_NR", str(CLOCK_GETTIME_NR))
    with Supervisor(LIMITS) as sup:
        sup.register("org", "innocent", "def condition(x):\n    return x > 0\n", ["x"])
        assert sup.evaluate("org", "innocent", [(1,)]) == [Status.TRUE]
        other = sup.state("org", "innocent").pid
        sup.register("org", "cpu-clock", body, ["x"])
        for pid, expected in ((os.getpid(), {Violation.SECCOMP}), (other, {Violation.SECCOMP}),
                              (-os.getpid(), {Violation.SECCOMP, Violation.CRASHED})):
            before = sup.state("org", "cpu-clock").violations
            assert sup.evaluate("org", "cpu-clock", [(pid,)]) == [Status.ERROR]
            st = sup.state("org", "cpu-clock")
            assert st.violations == before + 1 and st.last_violation in expected, (pid, st.last_violation)
        assert sup.evaluate("org", "innocent", [(1,)]) == [Status.TRUE]


# -------------------------------------------------------------------------------------------- CPU budget


def _spin_iterations(cpu_s: float) -> int:
    n = 200_000
    while True:
        t = time.process_time()
        sum(range(n))
        if time.process_time() - t >= cpu_s:
            return n
        n *= 2


def test_a_sleeper_burning_its_deadline_is_throttled_then_quarantined():
    """A condition that uses most of its deadline window after window (here >= 1.25% of a generous 4 s deadline, 50 ms,
    ~100 ms of CPU per window: the fraction is small so that a loaded machine cannot turn it into a timeout) is a
    violation every `throttle_after` windows, and quarantined after `quarantine_after` of them. An honest
    condition under the same budget is not."""
    n = _spin_iterations(0.1)
    sleeper = f"def condition(x):\n    return sum(range({n})) < x\n"
    honest = "def condition(x):\n    return x > 1\n"
    limits = Limits(timeout_s=4.0, backoff_s=0.0, cpu_budget_fraction=0.0125, throttle_after=2, throttle_s=0.0,
                    quarantine_after=3, spawn_timeout_s=30.0, load_timeout_s=5.0)
    with Supervisor(limits) as sup:
        sup.register("org", "sleeper", sleeper, ["x"])
        sup.register("org", "honest", honest, ["x"])
        windows = 0
        while windows < 12:
            windows += 1
            assert sup.evaluate("org", "honest", [(2,)]) == [Status.TRUE]
            try:
                sup.evaluate("org", "sleeper", [(1,)])
            except ConditionQuarantined:
                break
        st = sup.state("org", "sleeper")
        assert st.quarantined and st.budget_violations == 3 and st.last_violation is Violation.CPU_BUDGET, st
        assert windows <= 7  # 2 heavy windows per violation, 3 violations
        assert st.cpu_s > 0.3
        honest_state = sup.state("org", "honest")
        assert honest_state.violations == 0 and honest_state.budget_violations == 0 and not honest_state.quarantined


def test_a_throttled_condition_skips_windows():
    n = _spin_iterations(0.1)
    sleeper = f"def condition(x):\n    return sum(range({n})) < x\n"
    limits = Limits(timeout_s=4.0, cpu_budget_fraction=0.0125, throttle_after=2, throttle_s=60.0,
                    spawn_timeout_s=30.0, load_timeout_s=5.0)
    with Supervisor(limits) as sup:
        sup.register("org", "sleeper", sleeper, ["x"])
        sup.evaluate("org", "sleeper", [(1,)])
        sup.evaluate("org", "sleeper", [(1,)])  # the second heavy window in a row: throttled
        with pytest.raises(BackingOff) as b:
            sup.evaluate("org", "sleeper", [(1,)])
        assert 50 < b.value.retry_after <= 60
        st = sup.state("org", "sleeper")
        assert st.budget_violations == 1 and st.violations == 1 and not st.quarantined


# ------------------------------------------------------------------------------------------ small things


def test_non_ascii_identifiers_are_accepted():
    source = "def condition(x):\n    größe = x * 2\n    Δ = größe - 1\n    return Δ > 1\n"
    assert inspect_source(source, ["x"]) is None
    assert check_condition(source, ["x"], [(3.0,), (0.5,)], timeout_s=5.0).ok
    with Supervisor(LIMITS) as sup:
        sup.register("org", "accents", source, ["x"])
        assert sup.evaluate("org", "accents", [(3.0,), (0.5,)]) == [Status.TRUE, Status.FALSE]
        assert sup.state("org", "accents").violations == 0


def test_register_and_upload_compile_nothing_in_this_process():
    """S7: a source that takes the compiler a long time (a compile() holds the GIL throughout) costs the agent
    nothing at register (the zygote compiles it at the first evaluation) nor at upload (the trial zygote parses
    and compiles it); counted in compile() and ast.parse() calls of this process, not in time."""
    import builtins

    calls = []
    real = builtins.compile

    def counting(*args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("filename"))
        return real(*args, **kwargs)

    import ast

    parses = []
    real_parse = ast.parse

    def counting_parse(*args, **kwargs):
        parses.append(1)
        return real_parse(*args, **kwargs)

    nested = "def condition(x):\n    return " + "(lambda: " * 150 + "x" + ")()" * 150 + " > 0\n"
    with Supervisor(LIMITS) as sup:
        builtins.compile, ast.parse = counting, counting_parse
        try:
            for i in range(10):
                sup.register("org", f"c{i}", nested, ["x"])
            # the upload's static checks and trial: parsed and compiled in the locked trial zygote too
            assert check_condition(nested, ["x"], [(1.0,)], timeout_s=5.0, limits=LIMITS).ok
            assert check_condition("def condition(x)\n", ["x"], [(1.0,)], timeout_s=5.0).reason == "syntax error"
        finally:
            builtins.compile, ast.parse = real, real_parse
        assert calls == [] and parses == []
        assert sup.evaluate("org", "c0", [(1.0,), (-1.0,)]) == [Status.TRUE, Status.FALSE]
