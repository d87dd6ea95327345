"""The zygote and its row processes: every household's row is evaluated in interpreter state that no other row,
window or organization has touched.

The supervisor starts one zygote per trigger (a fresh interpreter, never a fork of the agent) as::

    python -I -S -B -c BOOTSTRAP <sandbox parent dir> <parent pid> <memory bytes> <cpu s> <uid> <gid> \
        <zygote's BPF program, hex> <row process's BPF program, hex> <evaluator's BPF program, hex> \
        <inspector: 1 or 0> <evaluator: 1 or 0>

with an empty environment, fd 0 = request pipe, fd 1 = answer pipe, fd 2 = /dev/null. ``-S`` disables
site, so BOOTSTRAP puts the directory from argv on sys.path (nothing comes from the environment). The two
seccomp programs are built by the parent (sandbox.filters): no libseccomp in the zygote.

The zygote: pre-imports what conditions may use (and what the compiler needs: unicodedata for non-ASCII
identifiers), loads libc, notes where the vDSO is, then locks itself down (sandbox.lockdown: unprivileged uid/gid when root, PR_SET_PDEATHSIG, PR_SET_DUMPABLE(0),
every fd closed but 0 and 1, rlimits, PR_SET_NO_NEW_PRIVS, its seccomp filter). Only then does it read a LOAD
request, and it only *compiles* the source: it never executes a condition and never reads a row. If any step
fails it answers LOCKDOWN_FAILED | step to the first request and exits.

For every row it forks one row process (glibc's fork() through ctypes: no Python at-fork hooks run, nothing is
re-seeded), and waits for it before the next. The row process:

1. reads its own row frame from fd 0 (exactly one frame: the next one belongs to the next household);
2. unmaps the vDSO (so no clock can be read without a system call, and the strict filter allows none), sets
   PR_SET_PDEATHSIG, and stacks the strict filter (sandbox.lockdown.CHILD_SYSCALLS: memory and exit_group,
   and one answer chunk written to fd 1; no read, no clock, no fork);
3. executes the module afresh, calls ``condition(*row)``, writes ``token + status`` and ``_exit(0)``s.

So GC counters, allocator state, object ids, ``random``'s state, the decimal context and the memory high-water
mark start from the zygote's state for every row, and nothing a row leaves behind reaches the next one: the
zygote learns from a row process only that it exited (its status is looked at only to give up on the whole
request: any other exit than 0 makes the zygote exit at once, taking what it saw with it). The CPU time of row
processes is summed by the kernel in the zygote's cutime, which the parent reads from /proc (never from the
zygote's memory, which the next row process would inherit).

An *evaluator* (started with evaluator 1) is a zygote for conditions in the closed language (sandbox.closed:
a condition that can read nothing but its own row). At LOAD it checks the source itself, answers LOAD_NOT_CLOSED
if it is outside the language (the supervisor then starts a forking zygote), else unmaps the vDSO, stacks the
evaluator filter (sandbox.filters.EVALUATOR_SYSCALLS: read and write on its pipes, memory; no fork, no clock) and
only then executes the module. It evaluates each row itself, one after another, without a fork: the language,
not a process, keeps the rows apart.

Nothing here imports agent or drivers.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import sys

from sandbox import protocol

BOOTSTRAP = "import sys; sys.path[:0] = sys.argv[1:2]; from sandbox.worker import main; main(sys.argv[2:])"


# A small allow-list of builtins. Not the security boundary (seccomp is): it makes honest mistakes fail
# early. No __import__ (a restricted one is provided), open, eval, exec, compile, getattr, setattr,
# type, vars, globals, locals, dir, print, input, breakpoint, __build_class__, id, hash ...
SAFE_BUILTIN_NAMES = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int",
    "isinstance", "len", "list", "map", "max", "min", "pow", "range", "reversed", "round", "set", "slice",
    "sorted", "str", "sum", "tuple", "zip",
    "ArithmeticError", "Exception", "IndexError", "KeyError", "OverflowError", "TypeError", "ValueError",
    "ZeroDivisionError",
)

assert (protocol.FALSE, protocol.TRUE, protocol.ERROR, protocol.NOT_BOOL) == (0, 1, 2, 3)  # _evaluate's literals
VDSO_NAMES = ("[vdso]", "[vvar]", "[vvar_vclock]")
AT_SYSINFO_EHDR = 33  # getauxval(): where the kernel mapped the vDSO


def _preimport_inspector() -> None:
    """Trial zygotes only: the upload's static checks (ast: ~0.9 MB that no fork per row should copy)."""
    from sandbox import static

    assert static.inspect_source("def condition(x):\n    return x > 1\n", ["x"]) is None
    assert static.inspect_source("def condition(x)\n", ["x"]) is not None  # the SyntaxError path, warmed up


def _preimport_evaluator(evaluator_filter, modules: dict) -> tuple:
    """Evaluators only: the closed language's checker (it needs ast, as the trial's inspector does) and the
    builtins a closed condition may call."""
    from sandbox import closed

    assert closed.closed_code("import math\ndef condition(x):\n    return math.sqrt(x) ** 2 > 1\n", ["x"]) is not None
    assert closed.closed_code("def condition(x):\n    return [x]\n", ["x"]) is None
    return closed, evaluator_filter, closed.builtins(modules["math"])


def _preimport() -> dict:
    """Import what conditions may use, warm up what would touch files later, return read-only-ish views.

    A condition gets a namespace of each module's public, non-module attributes (no ``statistics.sys``,
    ``statistics.random``, ``datetime.sys``): again only against honest mistakes, seccomp is the boundary.
    """
    import datetime
    import math
    import statistics
    import time
    import types
    import unicodedata  # noqa: F401  the compiler imports it for non-ASCII identifiers (NFKC)
    import warnings

    warnings.simplefilter("ignore")  # showing a warning would read the source file (openat)
    time.localtime()  # glibc reads /etc/localtime once; later localtime() calls need no file
    datetime.datetime(2026, 1, 1, 12).astimezone()
    statistics.mean([1.0, 2.0])
    compile("é = 1\n", "<warm-up>", "exec", dont_inherit=True)

    def view(module):
        return types.SimpleNamespace(**{
            name: value for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        })

    modules = {"math": view(math), "statistics": view(statistics), "datetime": view(datetime)}
    assert tuple(modules) == protocol.ALLOWED_MODULE_NAMES  # pre-imported: importing later needs openat
    return modules


def _safe_builtins(modules: dict) -> dict:
    import builtins

    def restricted_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name in modules:
            return modules[name]
        raise ImportError("import not allowed")

    safe = {name: getattr(builtins, name) for name in SAFE_BUILTIN_NAMES}
    safe["__import__"] = restricted_import
    return safe


def _vdso_regions(libc) -> list[tuple[int, int]]:
    """(start, length) of the vDSO and its data pages, read before the lockdown (it needs openat). Raises if
    the kernel mapped a vDSO (getauxval(AT_SYSINFO_EHDR)) that /proc/self/maps does not show: a row process
    would keep a clock."""
    regions = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                if fields and fields[-1] in VDSO_NAMES:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    regions.append((start, end - start))
    except OSError:
        pass
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = (ctypes.c_ulong,)
    base = libc.getauxval(AT_SYSINFO_EHDR)
    if base and not any(start <= base < start + length for start, length in regions):
        raise OSError("the vDSO was not found in /proc/self/maps")
    return regions


# ------------------------------------------------------------------------------------------- framing


def _read_exactly(n: int) -> bytes | None:
    """Exactly n bytes of the request pipe (never more: what follows is someone else's), None at EOF."""
    chunks = []
    have = 0
    while have < n:
        chunk = os.read(protocol.REQUEST_FD, n - have)
        if not chunk:
            return None
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _read_frame():
    header = _read_exactly(protocol.HEADER_SIZE)
    if header is None:
        return None
    payload = _read_exactly(int.from_bytes(header, "little"))
    if payload is None:
        return None
    return marshal.loads(payload)


class _BufferedFrames:
    """An evaluator's reader: every frame on its request pipe is its own condition's, so it may read ahead."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.at = 0

    def exactly(self, n: int) -> bytes | None:
        while len(self.buf) - self.at < n:
            if self.at:  # drop what was read before reading more (never a copy per chunk)
                del self.buf[:self.at]
                self.at = 0
            chunk = os.read(protocol.REQUEST_FD, max(1 << 16, n - len(self.buf)))
            if not chunk:
                return None
            self.buf += chunk
        data = bytes(self.buf[self.at:self.at + n])
        self.at += n
        return data

    def frame(self):
        header = self.exactly(protocol.HEADER_SIZE)
        if header is None:
            return None
        payload = self.exactly(int.from_bytes(header, "little"))
        if payload is None:
            return None
        return marshal.loads(payload)


def _answer(data: bytes) -> None:
    while data:
        data = data[os.write(protocol.ANSWER_FD, data):]


# ---------------------------------------------------------------------------------------- the zygote


class Zygote:
    """Everything a row process needs, prepared before the lockdown; then the request loop."""

    def __init__(self, libc, child_filter, vdso: list[tuple[int, int]], builtins_dict: dict):
        import gc

        self.gc = gc
        self.libc = libc
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        libc.munmap.restype = ctypes.c_int
        # PyDLL: called with the GIL held; no Python at-fork hook runs in the row process (random's would reseed
        # from getrandom, which neither filter allows), and the row process needs none.
        self.fork = ctypes.PyDLL(None).fork
        self.fork.restype = ctypes.c_int
        self.fork.argtypes = ()
        self.child_filter = child_filter
        self.vdso = vdso
        self.builtins = builtins_dict
        self.code = None
        self.parameters: tuple = ()
        self.inspector = False
        # An evaluator's: (sandbox.closed, its filter, its builtins) before LOAD, then its condition function.
        self.evaluator: tuple | None = None
        self.function = None

    # -- in a row process, before anything untrusted runs

    def isolate(self, strict_filter=None) -> None:
        """No clock, no parent-less survival, then the strict filter (or an evaluator's). Exits if a step fails."""
        from sandbox import lockdown

        libc = self.libc
        # (PR_SET_TSC(SIGSEGV) here would also take rdtsc away, but on a VM every switch to and from a
        # process without it rewrites CR4, a trap to the hypervisor: 1.5 -> 6.8 ms per row measured.)
        for start, length in self.vdso:
            if libc.munmap(start, length) != 0:
                os._exit(protocol.ZYGOTE_CHILD_EXITED)
        libc.prctl(lockdown.PR_SET_PDEATHSIG, lockdown.SIGKILL, 0, 0, 0)
        if not (strict_filter or self.child_filter).install(libc):
            os._exit(protocol.ZYGOTE_CHILD_EXITED)
        self.gc.enable()

    def row_process(self) -> None:
        frame = _read_frame()
        if frame is None:
            os._exit(0)
        token, row = frame
        self.isolate()
        status = self.evaluate(row)
        os.write(protocol.ANSWER_FD, token + _STATUS[status])
        os._exit(0)

    def evaluate(self, row) -> int:
        """Never calls __bool__ (or anything else) on what the condition returns; bool has exactly two instances
        and cannot be subclassed, so identity with True/False is the test."""
        namespace = {"__builtins__": self.builtins, "__name__": "condition"}
        try:
            exec(self.code, namespace)
            result = namespace["condition"](*row)
        except BaseException:
            return 2
        return 1 if result is True else 0 if result is False else 3

    def load_process(self) -> None:
        os._exit(self.check_module())

    def check_module(self) -> int:
        self.isolate()
        return self.execute_module(self.builtins)[0]

    def execute_module(self, builtins_dict: dict):
        """(LOAD status, the condition function): executes the module (in an isolated process)."""
        namespace = {"__builtins__": builtins_dict, "__name__": "condition"}
        try:
            exec(self.code, namespace)
        except BaseException:
            return protocol.LOAD_ERROR, None
        fn = namespace.get("condition")
        if type(fn) is not type(_preimport):
            return protocol.LOAD_NO_CONDITION, None
        fcode = fn.__code__
        if (
            fcode.co_argcount != len(self.parameters)
            or fcode.co_posonlyargcount
            or fcode.co_kwonlyargcount
            or fcode.co_flags & 0x0C  # CO_VARARGS | CO_VARKEYWORDS
            or tuple(fcode.co_varnames[: len(self.parameters)]) != tuple(self.parameters)
        ):
            return protocol.LOAD_NO_CONDITION, None
        return protocol.OK, fn

    def probe_process(self) -> None:
        self.isolate()
        os.getppid()  # on neither allow-list: SIGSYS here
        os._exit(0)

    # -- in the zygote

    def run(self, target) -> int:
        """Fork a process running ``target`` and wait for it. Returns its exit code; gives up (exits) if it was
        killed by a signal or exited through something else than our code."""
        pid = self.fork()
        if pid == 0:
            try:
                target()
            finally:
                os._exit(protocol.ZYGOTE_CHILD_EXITED)
        if pid < 0:
            os._exit(protocol.ZYGOTE_CHILD_EXITED)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            os._exit(protocol.ZYGOTE_CHILD_SIGNALED + os.WTERMSIG(status))
        return os.WEXITSTATUS(status)

    def inspect(self, body) -> int:
        from sandbox import static

        if self.code is not None:
            os._exit(3)  # before LOAD only
        source, parameters = body
        try:
            return static.REASONS.index(static.inspect_source(source, parameters))
        except BaseException:
            return static.REASONS.index(static.REJECTED)

    def load(self, body) -> int:
        import warnings

        if self.code is not None:
            os._exit(3)  # one condition per zygote
        if self.evaluator is not None:
            return self.load_closed(body)
        source, parameters = body
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                code = compile(source, "<condition>", "exec", dont_inherit=True)
        except BaseException:
            return protocol.LOAD_SYNTAX_ERROR
        self.code, self.parameters = code, tuple(parameters)
        status = self.run(self.load_process)
        if status not in protocol.LOAD_ANSWER_BYTES:
            os._exit(protocol.ZYGOTE_CHILD_EXITED)
        if status != protocol.OK:
            self.code = None
        else:
            # Row processes' collections then never walk (and write to) the zygote's objects: fewer pages to copy.
            self.gc.freeze()
        return status

    def load_closed(self, body) -> int:
        """An evaluator's LOAD: the closed language's check and compile here, then the evaluator's filter, and only
        then the module's execution (imports of math and one def). After this no fork and no clock."""
        closed, evaluator_filter, builtins_dict = self.evaluator
        self.evaluator = None
        source, parameters = body
        try:
            code = closed.closed_code(source, parameters)
        except BaseException:
            code = None
        if code is None:
            return protocol.LOAD_NOT_CLOSED
        self.code, self.parameters, self.row_values = code, tuple(parameters), closed.row_values
        self.isolate(evaluator_filter)
        self.gc.disable()  # closed conditions make no reference cycles; no collection runs between rows
        status, self.function = self.execute_module(builtins_dict)
        if status != protocol.OK:
            self.code = None
        return status

    def eval_closed(self, nonce: bytes, count, frames: _BufferedFrames) -> None:
        """Each row evaluated here, one after another: the closed language keeps them apart (sandbox.closed)."""
        fn, row_values = self.function, self.row_values
        out = [nonce]
        for _ in range(count):
            frame = frames.frame()
            if type(frame) is not tuple or len(frame) != 2:
                os._exit(3)
            token, row = frame
            values = row_values(row) if type(row) in (tuple, list) else None  # not a row: that row's ERROR
            status = 2
            if values is not None:
                try:
                    result = fn(*values)
                except BaseException:
                    pass
                else:
                    status = 1 if result is True else 0 if result is False else 3
            out.append(token + _STATUS[status])
        out.append(nonce)
        _answer(b"".join(out))

    def serve_closed(self) -> None:
        """An evaluator once loaded: EVAL and PING only."""
        frames = _BufferedFrames()
        while True:
            request = frames.frame()
            if request is None:
                os._exit(0)
            kind, nonce, body = request
            if kind == protocol.EVAL and type(body) is int and 0 < body <= protocol.MAX_ROWS_PER_REQUEST:
                self.eval_closed(nonce, body, frames)
            elif kind == protocol.PING:
                _answer(nonce + bytes([protocol.OK]))
            else:
                os._exit(3)

    def eval_rows(self, nonce: bytes, count) -> None:
        if self.code is None or type(count) is not int or not 0 < count <= protocol.MAX_ROWS_PER_REQUEST:
            os._exit(3)
        _answer(nonce)
        row_process = self.row_process
        for _ in range(count):
            if self.run(row_process) != 0:
                os._exit(protocol.ZYGOTE_CHILD_EXITED)
        _answer(nonce)

    def serve(self, failed_step: int) -> None:
        while True:
            request = _read_frame()
            if request is None:
                os._exit(0)
            kind, nonce, body = request
            if failed_step:
                _answer(nonce + bytes([protocol.LOCKDOWN_FAILED | failed_step]))
                os._exit(2)
            if kind == protocol.EVAL:
                self.eval_rows(nonce, body)
            elif kind == protocol.LOAD:
                closed = self.evaluator is not None
                status = self.load(body)
                _answer(nonce + bytes([status]))
                if closed and self.function is not None:
                    self.serve_closed()
                if closed and (status != protocol.LOAD_NOT_CLOSED or not self.inspector):
                    # did not load, or outside the language: the supervisor starts a zygote without ast. A trial
                    # zygote (it has ast anyway) takes a second LOAD instead, and forks its few sample rows.
                    os._exit(0)
            elif kind == protocol.PING:
                _answer(nonce + bytes([protocol.OK]))
            elif kind == protocol.INSPECT and self.inspector:
                _answer(nonce + bytes([self.inspect(body)]))
            elif kind == protocol.PROBE:
                self.run(self.probe_process)
                _answer(nonce + bytes([protocol.PROBE_SURVIVED]))
            else:
                os._exit(3)


_STATUS = tuple(bytes([b]) for b in range(4))


def _serve_failure(failed_step: int) -> None:
    request = _read_frame()
    if request is not None:
        _answer(request[1] + bytes([protocol.LOCKDOWN_FAILED | failed_step]))
    os._exit(2)


def main(argv: list[str]) -> None:
    parent_pid, memory_bytes, cpu_s, uid, gid = (int(a) for a in argv[:5])
    zygote_program, child_program, evaluator_program = (bytes.fromhex(a) for a in argv[5:8])
    inspector = argv[8:9] == ["1"]
    evaluator = argv[9:10] == ["1"]
    failed_step = protocol.STEP_IMPORT
    zygote = None
    try:
        import gc

        from sandbox import lockdown

        modules = _preimport()
        builtins_dict = _safe_builtins(modules)
        if inspector:
            _preimport_inspector()
        libc = lockdown.load_libc()
        zygote = Zygote(libc, lockdown.CompiledFilter(child_program), _vdso_regions(libc), builtins_dict)
        zygote.inspector = inspector
        if evaluator:
            zygote.evaluator = _preimport_evaluator(lockdown.CompiledFilter(evaluator_program), modules)
        lockdown.lock_down(libc, lockdown.CompiledFilter(zygote_program), parent_pid=parent_pid, uid=uid, gid=gid,
                           memory_bytes=memory_bytes, cpu_s=cpu_s)
        gc.disable()  # the zygote's own garbage is small; row processes enable it again
        failed_step = 0
    except BaseException as exc:
        failed_step = getattr(exc, "step", failed_step)
        if not isinstance(failed_step, int) or not 0 < failed_step < 16:
            failed_step = protocol.STEP_IMPORT
    # From here on, only the zygote's seccomp allow-list's calls are possible (unless failed_step is set, in which
    # case it answers the failure and exits without compiling anything).
    if failed_step or zygote is None:
        _serve_failure(failed_step or protocol.STEP_IMPORT)
    zygote.serve(0)


if __name__ == "__main__":  # pragma: no cover - the supervisor uses BOOTSTRAP
    sys.exit("start workers with sandbox.supervisor, not directly")
