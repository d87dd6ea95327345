"""The escape suite: hostile conditions, each refused at upload or contained at run time.

Every case is run twice through a real Supervisor (real processes, real seccomp, no mocks), bypassing the
upload check as if it had a hole, then through check_condition(), which must refuse it. After each case:

- a canary file (world-writable, in a world-writable directory, so that only seccomp protects it; its path
  is guessable and written into the hostile sources, never handed to a worker otherwise) is untouched and
  no file appeared beside it;
- the test process is alive, and two bystander conditions (one of another tenant, one of the same tenant),
  evaluated all along from a background thread, answered every request correctly from the same workers;
- a worker that was killed (SIGSYS from seccomp, SIGKILL at the deadline, or a bad answer) was reaped and
  the next request got a fresh worker (spawns == 2) that was contained again.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import textwrap
import threading
import time
from dataclasses import dataclass

import pytest

from sandbox import (
    ConditionRejected,
    EvaluationFailed,
    Limits,
    Status,
    Supervisor,
    Violation,
    check_condition,
    inspect_source,
)
from tests.helpers.sandbox import CLOCK_GETTIME_NR, MISSION, MISSION_PARAMS, PRELUDE

BYSTANDER_ROWS = [(100.0, 700.0), (100.0, 500.0), (0.0, 501.0)]
BYSTANDER_EXPECTED = [Status.TRUE, Status.FALSE, Status.TRUE]
SECRET = "edge-test-secret-3f9a1c"
# Recycling (after max_evaluations, or cpu_s/2 seconds busy: tested in test_sandbox.py) is kept out of the way: on a
# slow machine (this suite under QEMU TCG on aarch64: image/test-sandbox-arm64.sh) the bystanders' workers reach
# 15 s busy and would be replaced, which the bystander check rightly counts as a failure. Spawning many workers at
# once there takes longer than 5 s.
LIMITS = Limits(timeout_s=0.3, load_timeout_s=0.5, spawn_timeout_s=30.0, backoff_s=0.0, quarantine_after=1000,
                max_evaluations=10**9, cpu_s=3600)


@dataclass(frozen=True)
class Case:
    name: str
    body: str  # the body of condition(x), or a whole module if it starts with "module:"
    expect: frozenset  # acceptable outcomes

    def source(self, canary: str, parent: int, bystander: int) -> str:
        text = textwrap.dedent(self.body).replace("CANARY_DIR", repr(os.path.dirname(canary))).replace("CANARY", repr(canary))
        text = text.replace("PARENT", str(parent)).replace("BYSTANDER", str(bystander))
        text = text.replace("SECRET", repr(SECRET)).replace("CLOCK_GETTIME_NR", str(CLOCK_GETTIME_NR))
        # the attacker's helpers only where used, so that cases without dunders reach the trial at upload
        prelude = PRELUDE if any(h in text for h in ("_os(", "_sys(", "_mod(", "_libc(", "_type(", "_loop")) else ""
        if text.startswith("module:"):
            return prelude + textwrap.dedent(text[len("module:"):])
        return prelude + "def condition(x):\n" + textwrap.indent(textwrap.dedent(text), "    ")


def case(name, body, *expect):
    return Case(name, body, frozenset(expect))


SECCOMP, TIMEOUT, CRASHED, PROTOCOL = "seccomp", "timeout", "crashed", "protocol"
ERROR, NOT_BOOL, FALSE = "error", "not_bool", "false"
LOAD_SECCOMP, LOAD_TIMEOUT, LOAD_PROTOCOL = "load:seccomp", "load:timeout", "load:protocol"

CASES = [
    # ---- files, through every door
    case("builtin open", "return open(CANARY, 'w') is None", ERROR),
    case("__import__ os", "return __import__('os').remove(CANARY) is None", ERROR),
    case("import statement", "import os\nos.remove(CANARY)\nreturn True", ERROR),
    case("__builtins__ lookup", "return __builtins__['open'](CANARY, 'w') is None", ERROR),
    case("function __globals__ builtins", "return condition.__globals__['__builtins__']['eval']('1') == 1", ERROR),
    case("subclasses walk: os.open", "return _os()['open'](CANARY, 1) > 0", SECCOMP),
    case("subclasses walk: os.remove", "_os()['remove'](CANARY)\nreturn True", SECCOMP),
    case("subclasses walk: os.rename", "_os()['rename'](CANARY, CANARY + '.x')\nreturn True", SECCOMP),
    case("subclasses walk: os.chmod", "_os()['chmod'](CANARY, 0)\nreturn True", SECCOMP),
    case("create a file beside the canary", "_os()['mkdir'](CANARY_DIR + '/pwned')\nreturn True", SECCOMP),
    case("io.open via sys.modules", "return _mod('io').open(CANARY, 'w') is None", SECCOMP),
    case("listdir", "return len(_os()['listdir'](CANARY_DIR)) > 0", SECCOMP),
    # An import takes a lock with a timeout: it reads the monotonic clock first, and a row process has none (its
    # vDSO is unmapped: SIGSEGV, "crashed"); without that, its first stat() is a SIGSYS.
    case("real __import__ of an unloaded module", "return _mod('builtins').__import__('socket') is None", SECCOMP,
         CRASHED),
    case("real import of subprocess", "return _mod('builtins').__import__('subprocess').run('id') is None", SECCOMP,
         CRASHED),
    case("real exec with real builtins",
         "b = _mod('builtins')\nreturn b.exec('import os; os.remove(p)', {'__builtins__': b, 'p': CANARY}) is None",
         SECCOMP),
    case("real compile: SyntaxError reads the file", "return _mod('builtins').compile('(', 'x', 'exec') is None",
         SECCOMP),
    # ---- other processes' memory, our own memory, the environment
    case("/proc/self/mem", "return _os()['open']('/proc/self/mem', 2) > 0", SECCOMP),
    case("/proc/<ppid>/mem", "return _os()['open']('/proc/PARENT/mem', 0) > 0", SECCOMP),
    case("/proc/self/environ", "return _os()['open']('/proc/self/environ', 0) > 0", SECCOMP),
    case("environment variables", "e = _os()['environ']\nreturn any(SECRET in k + v for k, v in e.items())", FALSE),
    case("process_vm_readv on the parent", "return _libc().syscall(310, PARENT, 0, 1, 0, 1, 0) >= 0", SECCOMP),
    case("ptrace attach to the parent", "return _libc().syscall(101, 16, PARENT, 0, 0) >= 0", SECCOMP),
    # ---- code execution and the filter's argument checks
    case("mmap PROT_EXEC", "return _libc().syscall(9, 0, 4096, 7, 0x22, -1, 0) != 0", SECCOMP),
    case("mprotect to RWX", "return _libc().syscall(10, 0x10000, 4096, 7) != 0", SECCOMP),
    case("madvise other advice", "return _libc().syscall(28, 0x10000, 4096, 100) != 0", SECCOMP),
    case("x32 ABI write (allowed nr, foreign ABI)", "return _libc().syscall(0x40000000 | 1, 1, b'x', 1) > 0", SECCOMP),
    case("write to fd 1 with high bits set",
         "c = _mod('ctypes')\nreturn _libc().syscall(c.c_long(1), c.c_long(0x100000001), b'x', c.c_long(1)) > 0",
         SECCOMP),
    # ---- the pipes
    case("write to the request fd", "_os()['write'](0, b'x')\nreturn True", SECCOMP),
    case("read the answer fd", "_os()['read'](1, 1)\nreturn True", SECCOMP),
    case("dup2 over the answer fd", "_os()['dup2'](0, 1)\nreturn True", SECCOMP),
    # A row process has read its one row: read() is gone (the next household's row is in that pipe), and it may
    # write only exactly one answer chunk at a time.
    case("read the request pipe for other data", "return len(_os()['read'](0, 100)) > 0", SECCOMP),
    case("forged answer via os.write", "_os()['write'](1, b'\\x01' * 17)\nreturn True", SECCOMP),
    case("forged answer via ctypes write", "_libc().write(1, b'\\x01' * 64, 64)\nreturn True", SECCOMP),
    case("answer flood", "_os()['write'](1, b'\\x01' * 200000)\nreturn True", SECCOMP),
    case("forged chunk of the right size", "_os()['write'](1, b'\\x01' * 4)\nreturn True", PROTOCOL),
    case("forged chunks for the next rows", "w = _os()['write']\nfor i in range(5):\n    w(1, b'\\x00\\x00\\x00\\x01')\n"
                                            "return True", PROTOCOL),
    case("patch the worker's answer function", """\
        module:
        _mod("sandbox.worker")._answer = lambda nonce, body: _os()["write"](1, nonce + b"\\x09")
        def condition(x):
            return True
        """, "true"),  # patched in a throwaway row process only: the answer is the condition's own
    # ---- processes, threads, signals, sockets, sleeping
    case("os.system", "return _os()['system']('touch ' + CANARY_DIR + '/pwned') == 0", SECCOMP),
    case("subprocess via posix_spawn", "return _os()['posix_spawn']('/bin/sh', ['sh'], {}) > 0", SECCOMP),
    case("execv", "_os()['execv']('/bin/sh', ['sh', '-c', 'touch ' + CANARY_DIR + '/pwned'])\nreturn True",
         SECCOMP),
    case("fork", "return _os()['fork']() >= 0", SECCOMP, CRASHED),  # os.fork takes the import lock (a clock)
    case("fork via libc", "return _libc().fork() >= 0", SECCOMP),
    case("thread", "_mod('_thread').start_new_thread(_loop, ())\nreturn True", SECCOMP, CRASHED),
    case("kill the parent", "_os()['kill'](PARENT, 9)\nreturn True", SECCOMP),
    case("kill another worker", "_os()['kill'](BYSTANDER, 9)\nreturn True", SECCOMP),
    case("install a signal handler", "_mod('signal').signal(14, _loop)\nreturn True", SECCOMP),
    case("alarm", "_mod('signal').alarm(1)\nreturn True", SECCOMP),
    case("socket via ctypes", "return _libc().socket(2, 1, 0) >= 0", SECCOMP),
    case("time.sleep", "_mod('time').sleep(0.001)\nreturn True", SECCOMP, CRASHED),
    # ---- clocks: none in a row process (S1's clock relay, S8's CPU clocks of other processes)
    case("wall clock via the time module", "return _mod('time').time() > 0", CRASHED),
    case("monotonic clock via the time module", "return _mod('time').monotonic() > 0", CRASHED),
    case("datetime.now of the real class", "return _mod('datetime').datetime.now().year > 2000", CRASHED),
    case("CPU clock of the parent, system call",
         "c = _mod('ctypes')\nts = (c.c_long * 2)()\nnr = CLOCK_GETTIME_NR\n"
         "return _libc().syscall(nr, c.c_int((~PARENT << 3) | 2), ts) == 0", SECCOMP),
    case("CPU clock of the parent, libc", "c = _mod('ctypes')\nts = (c.c_long * 2)()\n"
         "return _libc().clock_gettime(c.c_int((~PARENT << 3) | 2), ts) == 0", SECCOMP, CRASHED),
    case("CPU clock of another worker", "c = _mod('ctypes')\nts = (c.c_long * 2)()\n"
         "nr = CLOCK_GETTIME_NR\n"
         "return _libc().syscall(nr, c.c_int((~BYSTANDER << 3) | 2), ts) == 0", SECCOMP),
    case("monotonic clock, system call", "c = _mod('ctypes')\nts = (c.c_long * 2)()\n"
         "nr = CLOCK_GETTIME_NR\n"
         "return _libc().syscall(nr, 1, ts) == 0", SECCOMP),
    case("getpid", "return _os()['getpid']() > 0", SECCOMP),
    case("os._exit", "_os()['_exit'](0)", PROTOCOL),  # no chunk: the zygote's trailer comes early
    case("os._exit with a code", "_os()['_exit'](3)", CRASHED),
    # ---- resources
    case("memory bomb: huge string", "return len('x' * (10 ** 10)) > 0", ERROR),
    case("memory bomb: growing list", "a = []\nwhile True:\n    a.append(' ' * 10 ** 6)", ERROR, TIMEOUT),
    case("memory bomb: huge list", "return len([0] * (10 ** 9)) > 0", ERROR),
    case("CPU bomb: while True", "while True:\n    pass", TIMEOUT),
    case("CPU bomb: 10**(10**8)", "return int(10) ** (10 ** 8) > 0", TIMEOUT),
    # in the closed language (sandbox.closed) every number is a float: the same bomb is an OverflowError at once
    case("CPU bomb in the closed language", "return 10 ** (10 ** 8) > 0", ERROR),
    case("CPU bomb at module level", "module:\nwhile True:\n    pass\ndef condition(x):\n    return True\n",
         LOAD_TIMEOUT),
    case("fork at module level", "module:\n_os()['fork']()\ndef condition(x):\n    return True\n", LOAD_SECCOMP,
         "load:crashed"),
    case("fork via libc at module level", "module:\n_libc().fork()\ndef condition(x):\n    return True\n",
         LOAD_SECCOMP),
    case("deep recursion", "def f(n):\n    return f(n + 1)\nreturn f(0)", ERROR),
    case("deep recursion, limit raised", "_sys().setrecursionlimit(10 ** 7)\ndef f(n):\n    return f(n + 1)\nreturn f(0)",
         CRASHED, ERROR, TIMEOUT),
    # ---- results that are not bools, hostile exceptions
    case("int result", "return 1", NOT_BOOL),
    case("__bool__ that loops", "return _type()('X', (), {'__bool__': _loop})()", NOT_BOOL),
    case("__bool__ that writes", "def b(self):\n    _os()['open'](CANARY, 1)\n    return True\n"
                                 "return _type()('X', (), {'__bool__': b, '__eq__': b, '__hash__': b})()", NOT_BOOL),
    case("int subclass with side effects",
         "def b(self):\n    _os()['remove'](CANARY)\n    return True\n"
         "return _type()('I', (int,), {'__bool__': b, '__index__': b, '__eq__': b})(1)", NOT_BOOL),
    case("result whose __del__ loops", "return _type()('X', (), {'__del__': _loop})()", TIMEOUT),
    case("exception whose __str__ loops", "E = _type()('E', (Exception,), {'__str__': _loop, '__repr__': _loop})\nraise E()",
         ERROR),
    case("exception whose __str__ raises",
         "E = _type()('E', (Exception,), {'__str__': lambda self: 1 / 0, '__repr__': lambda self: 1 / 0})\nraise E()",
         ERROR),
    case("exception whose __str__ writes",
         "def s(self):\n    _os()['remove'](CANARY)\n    return 'x'\n"
         "raise _type()('E', (Exception,), {'__str__': s, '__repr__': s})()", ERROR),
    case("exception whose __del__ loops", "raise _type()('E', (Exception,), {'__del__': _loop})()", TIMEOUT, ERROR),
    case("SystemExit", "raise _mod('builtins').SystemExit(0)", ERROR),
    case("KeyboardInterrupt", "raise _mod('builtins').KeyboardInterrupt()", ERROR),
]

NONCE_FORGER = case("forged answer with the right nonce", """\
    box = []
    def g():
        f = box[0].gi_frame.f_back
        while f is not None and "nonce" not in f.f_locals:
            f = f.f_back
        _os()["write"](1, f.f_locals["nonce"] + b"\\x01")
        yield False
    box.append(g())
    for v in box[0]:
        return v
""", PROTOCOL)


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    d = tmp_path_factory.mktemp("canary")
    os.chmod(d, 0o777)  # world-writable: only seccomp stands between the worker (nobody) and the file
    path = d / "canary.txt"
    path.write_text("untouched\n")
    os.chmod(path, 0o666)
    st = path.stat()
    return path, (st.st_mtime_ns, st.st_mode, st.st_size, st.st_ino)


class Bystanders:
    """Two innocent conditions evaluated from a background thread while the hostile ones run."""

    def __init__(self, sup: Supervisor):
        self.sup = sup
        self.keys = [("other-org", "innocent"), ("hostile-org", "innocent")]
        for tenant, cid in self.keys:
            sup.register(tenant, cid, MISSION, MISSION_PARAMS)
            assert sup.evaluate(tenant, cid, BYSTANDER_ROWS) == BYSTANDER_EXPECTED
        self.pids = {key: sup.state(*key).pid for key in self.keys}
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for key in self.keys:
                try:
                    if self.sup.evaluate(*key, BYSTANDER_ROWS, timeout_s=5.0) == BYSTANDER_EXPECTED:
                        self.ok += 1
                    else:
                        self.failures.append(f"{key}: wrong answer")
                except Exception as exc:  # noqa: BLE001 - recorded, asserted by the tests
                    self.failures.append(f"{key}: {exc!r}")
            time.sleep(0.002)

    def check(self):
        before = self.ok
        deadline = time.monotonic() + 2
        while self.ok <= before and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.ok > before, "bystanders stopped answering"
        assert not self.failures, self.failures
        for key in self.keys:
            st = self.sup.state(*key)
            assert st.pid == self.pids[key] and st.violations == 0 and st.spawns == 1, (key, st)
            os.kill(st.pid, 0)

    def stop(self):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def sup():
    with Supervisor(LIMITS) as s:
        yield s


@pytest.fixture(scope="module")
def bystanders(sup):
    b = Bystanders(sup)
    yield b
    b.stop()
    assert not b.failures, b.failures


def _kind(violation: Violation, exit_signal: int | None) -> str:
    if violation is Violation.SECCOMP:
        assert exit_signal == signal.SIGSYS
    if violation is Violation.TIMEOUT:
        # killed by us; under heavy load the exit status is occasionally not collected in time (None)
        assert exit_signal in (signal.SIGKILL, None)
    return {Violation.SECCOMP: SECCOMP, Violation.TIMEOUT: TIMEOUT, Violation.CRASHED: CRASHED,
            Violation.PROTOCOL: PROTOCOL}[violation]


def evaluate_watching(sup: Supervisor, tenant: str, cid: str, rows) -> tuple[list, Violation | None]:
    """The statuses, and the violation the evaluation counted (a killed row is that row's ERROR), if any."""
    before = sup.state(tenant, cid).violations
    statuses = sup.evaluate(tenant, cid, rows)
    st = sup.state(tenant, cid)
    return statuses, st.last_violation if st.violations > before else None


def outcome(sup: Supervisor, tenant: str, cid: str) -> str:
    """What one evaluation did: a row whose process was killed is that row's ERROR plus a violation (the
    supervisor goes on with the next rows), told apart here from a condition that raised."""
    before = sup.state(tenant, cid).violations
    try:
        statuses = sup.evaluate(tenant, cid, [(1.0,)])
    except EvaluationFailed as exc:
        assert exc.stage == "load", exc  # only a load failure fails the whole request
        return "load:" + _kind(exc.violation, exc.exit_signal)
    except ConditionRejected as exc:
        return "rejected:" + exc.reason
    st = sup.state(tenant, cid)
    if statuses == [Status.ERROR] and st.violations > before:
        return _kind(st.last_violation, st.last_exit_signal)
    return {Status.ERROR: ERROR, Status.NOT_BOOL: NOT_BOOL, Status.FALSE: FALSE, Status.TRUE: "true"}[statuses[0]]


def assert_canary(canary):
    path, fingerprint = canary
    assert path.read_text() == "untouched\n"
    st = path.stat()
    assert (st.st_mtime_ns, st.st_mode, st.st_size, st.st_ino) == fingerprint
    assert sorted(p.name for p in path.parent.iterdir()) == ["canary.txt"]


def run_hostile(sup, bystanders, canary, c: Case, cid: str) -> tuple[str, str]:
    parent = os.getpid()
    source = c.source(str(canary[0]), parent, bystanders.pids[("other-org", "innocent")])
    sup.register("hostile-org", cid, source, ["x"])
    first = outcome(sup, "hostile-org", cid)
    second = outcome(sup, "hostile-org", cid)
    return first, second


# ------------------------------------------------------------------------------------------- tests


def test_suite_is_large_enough():
    assert len(CASES) + 1 >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_escape_is_contained(sup, bystanders, canary, c: Case):
    cid = "case-" + c.name
    first, second = run_hostile(sup, bystanders, canary, c, cid)
    assert first in c.expect, (c.name, first)
    assert second in c.expect, (c.name, second)
    st = sup.state("hostile-org", cid)
    killed = {SECCOMP, TIMEOUT, CRASHED, PROTOCOL, LOAD_SECCOMP, LOAD_TIMEOUT, LOAD_PROTOCOL, "load:crashed"}
    if first in killed:
        assert st.spawns == 2, st  # reaped and respawned for the second request
        assert st.violations >= 2
        if first.endswith(SECCOMP):
            assert st.last_exit_signal == signal.SIGSYS
    elif first in (ERROR, FALSE):
        assert st.spawns == 1 and st.pid is not None and st.violations == 0  # the worker lives on
    elif first == NOT_BOOL:
        assert st.spawns == 1 and st.violations == 0  # a row's own answer, the worker lives on
    assert_canary(canary)
    bystanders.check()
    os.kill(os.getpid(), 0)
    sup.unregister("hostile-org", cid)


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_escape_is_refused_at_upload(c: Case, canary):
    source = c.source(str(canary[0]), os.getpid(), 1)
    static = inspect_source(source, ["x"])
    result = check_condition(source, ["x"], [(1.0,)], timeout_s=0.05,
                             limits=Limits(load_timeout_s=0.3))
    assert not result.ok
    assert result.reason == static or static is None
    assert_canary(canary)


def test_forged_answer_with_the_right_nonce(sup, bystanders, canary):
    """A row process can read the nonce of the request (its zygote's memory) but not write it: it may write only
    exactly one answer chunk at a time (SIGSYS), and a chunk needs its row's token, which no other row process
    knows (PROTOCOL). A forged answer can only say what the condition itself could have returned; it can never
    answer for another household's row or a request it has not seen."""
    source = NONCE_FORGER.source(str(canary[0]), os.getpid(), 1)
    assert inspect_source(source, ["x"]) is not None  # refused at upload (gi_frame, dunders)
    sup.register("hostile-org", "forger", source, ["x"])
    seen = []
    for _ in range(3):
        statuses, violation = evaluate_watching(sup, "hostile-org", "forger", [(1.0,)])
        seen.append(violation or statuses)
        if violation:
            assert statuses == [Status.ERROR]
    assert Violation.SECCOMP in seen or Violation.PROTOCOL in seen
    for s in seen:
        assert s in (Violation.PROTOCOL, Violation.SECCOMP, [Status.TRUE])
    assert_canary(canary)
    bystanders.check()
    sup.unregister("hostile-org", "forger")


def test_many_escapes_at_once(bystanders, canary):
    """Every killing case at the same time from 8 threads: each gets its own verdict, bystanders unharmed. (A
    supervisor of its own with a long deadline: 8 at once on a loaded machine must not turn a kill into a
    timeout.)"""
    killing = [c for c in CASES if c.expect <= {SECCOMP, PROTOCOL, CRASHED}]
    parent = os.getpid()
    with Supervisor(Limits(**{**LIMITS.__dict__, "timeout_s": 5.0})) as sup:
        for c in killing:
            sup.register("hostile-org", "par-" + c.name, c.source(str(canary[0]), parent, 1), ["x"])

        def run(c):
            statuses, violation = evaluate_watching(sup, "hostile-org", "par-" + c.name, [(1.0,)] * 10)
            assert statuses == [Status.ERROR] * 10  # each row killed in turn, or the rest ERROR after 3 failures
            return c, violation

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(run, killing))
        for c, violation in results:
            assert violation is not None and violation.name.lower() in c.expect, (c.name, violation)
        assert_canary(canary)
        bystanders.check()


def test_a_worker_holds_nothing_of_the_parent(sup, bystanders):
    """The parent's secrets (here an environment variable and a module global) are not in a worker: it is a
    fresh interpreter, not a fork. Searched from inside: environment, every loaded module's globals."""
    os.environ["EDGE_TEST_SECRET"] = SECRET
    globals()["PARENT_ONLY_TOKEN"] = SECRET
    try:
        body = textwrap.dedent("""\
            module:
            def condition(x):
                found = False
                for name, m in list(_sys().modules.items()):
                    d = getattr_free(m)
                    for v in list(d.values()):
                        try:
                            if v.__class__ is str and SECRET in v:
                                found = True
                        except Exception:
                            pass
                for k, v in _os()["environ"].items():
                    if SECRET in k + v:
                        found = True
                return found
            def getattr_free(m):
                try:
                    return m.__dict__
                except Exception:
                    return {}
        """)
        c = case("search for parent secrets", body, FALSE)
        sup.register("hostile-org", "search", c.source("/nonexistent/canary", os.getpid(), 1), ["x"])
        assert sup.evaluate("hostile-org", "search", [(1.0,)]) == [Status.FALSE]
        # the same search in this (the parent) process does find them: the probe works
        namespace: dict = {}
        exec(c.source("/nonexistent/canary", os.getpid(), 1), namespace)  # test process only, trusted
        assert namespace["condition"](1.0) is True
    finally:
        del os.environ["EDGE_TEST_SECRET"]
        globals().pop("PARENT_ONLY_TOKEN", None)
        sup.unregister("hostile-org", "search")
    bystanders.check()
