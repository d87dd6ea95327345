"""The worker: a fresh interpreter that locks itself down, then evaluates one untrusted condition.

Started by the supervisor (never forked from the agent) as::

    python -I -S -B -c BOOTSTRAP <sandbox parent dir> <pyseccomp dir> <parent pid> <memory bytes> <cpu s> <uid> <gid>

with an empty environment, fd 0 = request pipe, fd 1 = answer pipe, fd 2 = /dev/null. ``-S`` disables
site, so BOOTSTRAP puts the two directories from argv on sys.path (nothing comes from the environment).
(``-m sandbox.worker`` cannot work: under ``-I -S`` neither the current directory nor site-packages is on
sys.path, so the module would not be found before any of our code runs.)

Order (DESIGN.md, "Process model and the sandbox"): pre-import the allowed modules, libc and libseccomp;
switch to the unprivileged uid/gid when root; PR_SET_PDEATHSIG(SIGKILL); PR_SET_DUMPABLE(0); close every fd
but 0 and 1; rlimits; PR_SET_NO_NEW_PRIVS; build and load the seccomp filter. Only then does it read
the LOAD request and compile the untrusted source. If any step fails it answers LOCKDOWN_FAILED | step to
the first request and exits: it never compiles a condition unlocked.

Nothing here imports agent or drivers.
"""

from __future__ import annotations

import marshal
import os
import sys

from sandbox import protocol

BOOTSTRAP = "import sys; sys.path[:0] = sys.argv[1:3]; from sandbox.worker import main; main(sys.argv[3:])"

# What a condition may import (pre-imported before the lockdown: importing later needs openat).
ALLOWED_MODULE_NAMES = ("math", "statistics", "datetime")

# A small allow-list of builtins. Not the security boundary (seccomp is): it makes honest mistakes fail
# early. No __import__ (a restricted one is provided), open, eval, exec, compile, getattr, setattr,
# type, vars, globals, locals, dir, print, input, breakpoint, __build_class__ ...
SAFE_BUILTIN_NAMES = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int",
    "isinstance", "len", "list", "map", "max", "min", "pow", "range", "reversed", "round", "set", "slice",
    "sorted", "str", "sum", "tuple", "zip",
    "ArithmeticError", "Exception", "IndexError", "KeyError", "OverflowError", "TypeError", "ValueError",
    "ZeroDivisionError",
)

assert (protocol.FALSE, protocol.TRUE, protocol.ERROR, protocol.NOT_BOOL) == (0, 1, 2, 3)  # _evaluate's literals


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
    import warnings

    warnings.simplefilter("ignore")  # showing a warning would read the source file (openat)
    time.localtime()  # glibc reads /etc/localtime once; later localtime() calls need no file
    datetime.datetime.now().astimezone()
    statistics.mean([1.0, 2.0])

    def view(module):
        return types.SimpleNamespace(**{
            name: value for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        })

    modules = {"math": view(math), "statistics": view(statistics), "datetime": view(datetime)}
    assert tuple(modules) == ALLOWED_MODULE_NAMES
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


def _read_exactly(n: int, first: bytes) -> bytes | None:
    chunks = [first]
    have = len(first)
    while have < n:
        chunk = os.read(protocol.REQUEST_FD, min(n - have, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _read_request():
    """(kind, nonce, body), or None at EOF. The parent sends one request at a time."""
    data = os.read(protocol.REQUEST_FD, 1 << 16)
    if not data:
        return None
    if len(data) < protocol.HEADER_SIZE:
        data = _read_exactly(protocol.HEADER_SIZE, data)
        if data is None:
            return None
    total = protocol.HEADER_SIZE + int.from_bytes(data[: protocol.HEADER_SIZE], "little")
    if len(data) < total:
        data = _read_exactly(total, data)
        if data is None:
            return None
    if len(data) != total:
        os._exit(3)  # the parent never pipelines requests
    return marshal.loads(memoryview(data)[protocol.HEADER_SIZE:])


def _answer(nonce: bytes, body) -> None:
    data = nonce + body
    while data:
        data = data[os.write(protocol.ANSWER_FD, data):]


class _Condition:
    """The compiled module. Every row gets a fresh execution of it, so nothing a condition keeps (module
    globals, closures, mutable defaults) carries from one household's row to the next, or between windows:
    otherwise row 0's value could be encoded in the other rows' answers."""

    __slots__ = ("code", "builtins", "stateless")

    def __init__(self, code, builtins_dict: dict, loaded: dict, fn):
        self.code = code
        self.builtins = builtins_dict
        # The usual case, kept fast: a module of imports and the one def, a function without defaults or
        # closure. With `global`, `nonlocal` and attribute stores refused at upload, such a function has
        # nowhere to keep anything, so the loaded one serves every row.
        module_type = type(os)
        self.stateless = (
            all(name in ("__builtins__", "__name__", "condition") or type(value) is module_type
                for name, value in loaded.items())
            and fn.__closure__ is None and fn.__defaults__ is None and fn.__kwdefaults__ is None
        ) and fn

    def fresh(self):
        if self.stateless:
            return self.stateless
        namespace = {"__builtins__": self.builtins, "__name__": "condition"}
        exec(self.code, namespace)
        return namespace["condition"]


def _load(body, builtins_dict: dict):
    """Compile and execute the untrusted module. Returns (_Condition or None, answer byte)."""
    source, parameters = body
    try:
        code = compile(source, "<condition>", "exec", dont_inherit=True)
    except BaseException:
        return None, protocol.LOAD_SYNTAX_ERROR
    namespace = {"__builtins__": builtins_dict, "__name__": "condition"}
    try:
        exec(code, namespace)
    except BaseException:
        return None, protocol.LOAD_ERROR
    fn = namespace.get("condition")
    function_type = type(_preimport)
    if type(fn) is not function_type:
        return None, protocol.LOAD_NO_CONDITION
    fcode = fn.__code__
    if (
        fcode.co_argcount != len(parameters)
        or fcode.co_posonlyargcount
        or fcode.co_kwonlyargcount
        or fcode.co_flags & 0x0C  # CO_VARARGS | CO_VARKEYWORDS
        or tuple(fcode.co_varnames[: len(parameters)]) != tuple(parameters)
    ):
        return None, protocol.LOAD_NO_CONDITION
    return _Condition(code, builtins_dict, namespace, fn), protocol.OK


def _evaluate(condition, rows) -> bytes:
    """One status byte per row. Never calls __bool__ (or anything else) on what the condition returns.

    The literals are protocol.FALSE (0), TRUE (1), ERROR (2), NOT_BOOL (3). bool has exactly two instances
    and cannot be subclassed, so identity with True/False is ``type(result) is bool``.
    """
    if condition is None:
        return b"\x02" * len(rows)
    out = []
    append = out.append
    fresh = condition.fresh
    for row in rows:
        try:
            result = fresh()(*row)
        except BaseException:
            append(2)
            continue
        append(1 if result is True else 0 if result is False else 3)
    return bytes(out)


def _serve(failed_step: int, builtins_dict: dict | None) -> None:
    fn = None
    while True:
        request = _read_request()
        if request is None:
            os._exit(0)
        kind, nonce, body = request
        if failed_step:
            _answer(nonce, bytes([protocol.LOCKDOWN_FAILED | failed_step]))
            os._exit(2)
        if kind == protocol.EVAL:
            _answer(nonce, _evaluate(fn, body))
        elif kind == protocol.LOAD:
            if fn is not None:
                os._exit(3)  # one condition per worker
            fn, status = _load(body, builtins_dict)
            _answer(nonce, bytes([status]))
        elif kind == protocol.PING:
            _answer(nonce, bytes([protocol.OK]))
        elif kind == protocol.PROBE:
            os.getppid()  # not on the allow-list: SIGSYS here
            _answer(nonce, bytes([protocol.PROBE_SURVIVED]))
        else:
            os._exit(3)


def main(argv: list[str]) -> None:
    parent_pid, memory_bytes, cpu_s, uid, gid = (int(a) for a in argv[:5])
    failed_step = protocol.STEP_IMPORT
    builtins_dict = None
    try:
        from sandbox import lockdown

        modules = _preimport()
        builtins_dict = _safe_builtins(modules)
        libc, pyseccomp = lockdown.load_libraries()
        lockdown.lock_down(
            libc, pyseccomp, parent_pid=parent_pid, uid=uid, gid=gid, memory_bytes=memory_bytes, cpu_s=cpu_s
        )
        failed_step = 0
    except BaseException as exc:
        failed_step = getattr(exc, "step", failed_step)
        if not isinstance(failed_step, int) or not 0 < failed_step < 16:
            failed_step = protocol.STEP_IMPORT
    # From here on, only the seccomp allow-list's calls are possible (unless failed_step is set, in which
    # case the worker answers the failure and exits without compiling anything).
    _serve(failed_step, builtins_dict)


if __name__ == "__main__":  # pragma: no cover - the supervisor uses BOOTSTRAP
    sys.exit("start workers with sandbox.supervisor, not directly")
