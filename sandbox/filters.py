"""The three seccomp allow-lists of a trigger's processes, built in the parent with libseccomp and exported as
classic BPF programs that the zygote installs with one prctl() each (sandbox.lockdown).

Built here, in the trusted parent, rather than in the zygote: the zygote then never loads libseccomp or pyseccomp
(a third of its memory, and what a fork per row copies), and needs only ctypes and libc. The programs depend on
the architecture and on the kernel (libseccomp asks it which actions it supports), both the parent's and the
zygote's alike; they are built once per process.

- ZYGOTE_SYSCALLS: the zygote, one fresh interpreter per trigger (never a fork of the agent). It only ever
  compiles the condition's source; it never executes it and never reads a row.
- CHILD_SYSCALLS: a row process, forked from the zygote for one household's row (or for the load check),
  stacks it once it has read that row (seccomp filters stack: a process can only ever lose system calls) and
  only then executes the condition. It cannot read, cannot fork, cannot read any clock, and can write exactly
  one answer-sized chunk at a time to the answer pipe.
- EVALUATOR_SYSCALLS: a zygote whose condition is in the closed language (sandbox.closed) evaluates the rows
  itself, one after another, and stacks it once it has loaded the condition: it keeps reading rows and writing
  answers on its two pipes, and loses fork, wait, prctl and every clock.

Default action and foreign-architecture action (x32 or i386 system calls on x86-64): KILL_PROCESS (the process
dies of SIGSYS). System calls are named as libseccomp names them (resolved per architecture), never by number.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

from sandbox import protocol
from sandbox.lockdown import PR_SET_PDEATHSIG, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, SIGKILL

PROT_EXEC = 0x4
MADV_DONTNEED = 4
MADV_FREE = 8
EACCES = 13
CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
# glibc's fork(): clone(CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD) on every architecture. Exactly
# these flags: no thread, no shared memory, no namespace, no vfork.
FORK_CLONE_FLAGS = 0x01000000 | 0x00200000 | 17

# The memory calls every CPython needs (malloc, obmalloc arenas, realloc of big blocks).
_MEMORY = {
    "mmap": "obmalloc arenas and large malloc blocks; only without PROT_EXEC (no new code)",
    "mmap2": "the 32-bit ARM name of mmap (Raspberry Pi OS armhf); same PROT_EXEC condition",
    "munmap": "free arenas and large blocks (and, in a row process, the vDSO: see sandbox.worker)",
    "brk": "glibc malloc's main heap",
    "mremap": "realloc of large blocks (growing lists, strings, big ints)",
    "madvise": "other libcs' free() (musl's MADV_FREE); only MADV_DONTNEED and MADV_FREE",
    "exit_group": "os._exit()",
}
# name -> why. Argument conditions are in the build functions.
ZYGOTE_SYSCALLS = {
    **_MEMORY,
    "read": "receive requests; only on the request fd (arg0 == 0). A row process reads its own row here, "
            "before it stacks its own filter",
    "write": "send answers; only on the answer fd (arg0 == 1)",
    "clone": "fork one row process; only with glibc fork()'s exact flags (no thread, no CLONE_VM, no namespace)",
    "set_robust_list": "glibc's fork() registers the new process's robust futex list (its own memory) in it",
    "wait4": "reap the row process (its status is looked at only to give up on the whole request)",
    "prctl": "in a row process before its filter: PR_SET_SECCOMP (filter mode only) and "
             "PR_SET_PDEATHSIG(SIGKILL); nothing else",
    "clock_gettime": "only CLOCK_REALTIME and CLOCK_MONOTONIC, where the vDSO falls back to the system call "
                     "(some ARM clock sources); never another process's CPU clock",
    "clock_gettime64": "the 32-bit ARM name of clock_gettime; same clock ids",
    "openat": "answered EACCES, never allowed: compile() opens the source file named in a SyntaxError to quote "
              "the line; it then quotes the string instead",
    "open": "as openat (the x86-64 legacy name)",
}
CHILD_SYSCALLS = {
    **_MEMORY,
    "write": "the one answer chunk: only on the answer fd and only exactly ANSWER_CHUNK bytes",
}
EVALUATOR_SYSCALLS = {
    **_MEMORY,
    "read": "the rows of its own condition's requests; only on the request fd",
    "write": "their answers; only on the answer fd",
}
# Deliberately NOT allowed (each was considered):
#   mprotect      only glibc's non-main (per-thread) arenas use it; one thread. No W^X hole.
#   rt_sigreturn  no signal handler ever runs: SIGINT is reset to SIG_DFL before the lockdown, the processes have
#                 their own process group, SIGXCPU keeps its default action, installing a handler is denied.
#   clone3        glibc's fork() uses clone; clone3's flags are in memory, where a filter cannot look.
#   read (row)    a row process has read its one row before its filter: it cannot read the next household's.
#   clock_* (row) no clock at all in a row process or an evaluator: no system call, and the vDSO is unmapped
#                 (sandbox.worker).
#   rt_sigprocmask, futex, getrandom, getpid...  not used once every module is imported (one thread,
#                 hash seed drawn at start-up); stat would only serve imports, denied on purpose.
ALLOWED_SYSCALLS = ZYGOTE_SYSCALLS  # the wider of the two lists (compatibility name)


def load_pyseccomp(libc_name: str = "libc.so.6", libseccomp_name: str = "libseccomp.so.2") -> ModuleType:
    """Import pyseccomp without letting ctypes.util run ldconfig in a subprocess.

    pyseccomp calls ctypes.util.find_library("c") and ("seccomp") at import. The real find_library forks
    /sbin/ldconfig (slow, and the agent forks nothing): a stub answers the sonames.
    """
    import types

    names = {"c": libc_name, "seccomp": libseccomp_name}
    stub = types.ModuleType("ctypes.util")
    stub.find_library = names.get  # type: ignore[attr-defined]
    real = sys.modules.get("ctypes.util")
    sys.modules["ctypes.util"] = stub
    had_attr = hasattr(ctypes, "util")
    old_attr = getattr(ctypes, "util", None)
    ctypes.util = stub  # type: ignore[attr-defined]
    try:
        import pyseccomp  # type: ignore[import-untyped]  # no stubs: its filters are Any here
    finally:
        if real is not None:
            sys.modules["ctypes.util"] = real
        else:
            del sys.modules["ctypes.util"]
        if had_attr:
            ctypes.util = old_attr  # type: ignore[attr-defined]
        else:
            del ctypes.util  # type: ignore[attr-defined]
    return cast(ModuleType, pyseccomp)  # untyped: Any to mypy


Allow = Callable[..., None]  # allow(name, *rule arguments, action=ALLOW): one rule, if the system call exists here


def _new_filter(pyseccomp: ModuleType) -> tuple[Any, Allow]:
    s = pyseccomp
    f = s.SyscallFilter(s.KILL_PROCESS)
    f.set_attr(s.Attr.ACT_BADARCH, s.KILL_PROCESS)

    def allow(name: str, *args: Any, action: Any = s.ALLOW) -> None:
        number = s.resolve_syscall(s.Arch.NATIVE, name)
        if number < 0:  # not a system call on this architecture (mmap2 on 64-bit, mmap on armhf...)
            return
        f.add_rule(action, number, *args)

    no_exec = s.Arg(2, s.MASKED_EQ, PROT_EXEC, 0)
    allow("mmap", no_exec)
    allow("mmap2", no_exec)
    allow("munmap")
    allow("brk")
    allow("mremap")
    allow("madvise", s.Arg(2, s.EQ, MADV_DONTNEED))
    allow("madvise", s.Arg(2, s.EQ, MADV_FREE))
    allow("exit_group")
    return f, allow


def build_zygote_filter(pyseccomp: ModuleType) -> Any:
    """ZYGOTE_SYSCALLS as a pyseccomp SyscallFilter (built in memory only)."""
    s = pyseccomp
    f, allow = _new_filter(s)
    allow("read", s.Arg(0, s.EQ, protocol.REQUEST_FD))
    allow("write", s.Arg(0, s.EQ, protocol.ANSWER_FD))
    allow("clone", s.Arg(0, s.EQ, FORK_CLONE_FLAGS))
    allow("wait4")
    allow("set_robust_list")
    allow("prctl", s.Arg(0, s.EQ, PR_SET_SECCOMP), s.Arg(1, s.EQ, SECCOMP_MODE_FILTER))
    allow("prctl", s.Arg(0, s.EQ, PR_SET_PDEATHSIG), s.Arg(1, s.EQ, SIGKILL))
    for name in ("clock_gettime", "clock_gettime64"):
        allow(name, s.Arg(0, s.EQ, CLOCK_REALTIME))
        allow(name, s.Arg(0, s.EQ, CLOCK_MONOTONIC))
    allow("openat", action=s.ERRNO(EACCES))
    allow("open", action=s.ERRNO(EACCES))
    return f


def build_child_filter(pyseccomp: ModuleType) -> Any:
    """CHILD_SYSCALLS as a pyseccomp SyscallFilter: what a row process keeps once it has read its row."""
    s = pyseccomp
    f, allow = _new_filter(s)
    allow("write", s.Arg(0, s.EQ, protocol.ANSWER_FD), s.Arg(2, s.EQ, protocol.ANSWER_CHUNK))
    return f


def build_evaluator_filter(pyseccomp: ModuleType) -> Any:
    """EVALUATOR_SYSCALLS as a pyseccomp SyscallFilter: what a closed condition's zygote keeps once loaded."""
    s = pyseccomp
    f, allow = _new_filter(s)
    allow("read", s.Arg(0, s.EQ, protocol.REQUEST_FD))
    allow("write", s.Arg(0, s.EQ, protocol.ANSWER_FD))
    return f


def export_bpf(f: Any) -> bytes:
    """The filter's BPF program, through a pipe (libseccomp exports to a file descriptor)."""
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb", closefd=False) as out:
            f.export_bpf(out)
        os.close(w)
        w = -1
        chunks = []
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    program = b"".join(chunks)
    if not program or len(program) % 8:
        raise OSError("libseccomp exported no BPF program")
    return program


_programs: tuple[bytes, bytes, bytes] | None = None
_programs_lock = threading.Lock()


def programs() -> tuple[bytes, bytes, bytes]:
    """(zygote's program, row process's program, evaluator's program), built once. Raises OSError/ImportError where libseccomp is
    missing or the kernel refuses (libseccomp asks it which actions it supports)."""
    global _programs
    with _programs_lock:
        if _programs is None:
            s = load_pyseccomp()
            zygote, child, evaluator = (export_bpf(build(s)) for build in (
                build_zygote_filter, build_child_filter, build_evaluator_filter))
            _programs = zygote, child, evaluator
        return _programs
