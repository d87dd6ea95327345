"""The lockdown of a trigger's processes: prctl flags, closed fds, rlimits, the unprivileged user, two seccomp
allow-lists.

Only sandbox.worker imports this module (before it has seen any untrusted code). The parent never does.

Two kinds of process (see sandbox.worker):

- the **zygote**, one fresh interpreter per trigger (never a fork of the agent), locks itself down with
  ZYGOTE_SYSCALLS. It only ever compiles the condition's source; it never executes it and never reads a row.
- a **row process**, forked from the zygote for one household's row (or for the load check), reads that one
  row, then stacks CHILD_SYSCALLS on top (seccomp filters stack: a process can only ever lose system calls) and
  only then executes the condition. It cannot read, cannot fork, cannot read any clock, and can write exactly
  one answer-sized chunk at a time to the answer pipe.

The seccomp filters are the security boundary. Everything else (restricted builtins, the AST check at upload)
only makes honest mistakes fail early. Default action and foreign-architecture action (x32 or i386 system
calls on x86-64): KILL_PROCESS (the process dies of SIGSYS). System calls are named as libseccomp names them
(resolved per architecture), never by number.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

from sandbox import protocol

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
SIGKILL = 9

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
# Deliberately NOT allowed (each was considered):
#   mprotect      only glibc's non-main (per-thread) arenas use it; one thread. No W^X hole.
#   rt_sigreturn  no signal handler ever runs: SIGINT is reset to SIG_DFL before the lockdown, the processes have
#                 their own process group, SIGXCPU keeps its default action, installing a handler is denied.
#   clone3        glibc's fork() uses clone; clone3's flags are in memory, where a filter cannot look.
#   read (row)    a row process has read its one row before its filter: it cannot read the next household's.
#   clock_* (row) no clock at all in a row process: no system call, and the vDSO is unmapped (sandbox.worker).
#   rt_sigprocmask, futex, getrandom, getpid...  not used once every module is imported (one thread,
#                 hash seed drawn at start-up); stat would only serve imports, denied on purpose.
ALLOWED_SYSCALLS = ZYGOTE_SYSCALLS  # the wider of the two lists (compatibility name)


class LockdownError(Exception):
    def __init__(self, step: int):
        super().__init__(protocol.LOCKDOWN_STEPS.get(step, "lockdown failed"))
        self.step = step


def load_libraries(libc_name: str = "libc.so.6", libseccomp_name: str = "libseccomp.so.2"):
    """Load libc (for prctl) and pyseccomp without letting ctypes.util run ldconfig in a subprocess.

    pyseccomp calls ctypes.util.find_library("c") and ("seccomp") at import. The real find_library forks
    /sbin/ldconfig (slow, and it would import subprocess into the worker): a stub answers the sonames.
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
        import pyseccomp
    finally:
        if real is not None:
            sys.modules["ctypes.util"] = real
        else:
            del sys.modules["ctypes.util"]
        if had_attr:
            ctypes.util = old_attr  # type: ignore[attr-defined]
        else:
            del ctypes.util  # type: ignore[attr-defined]
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    libc.prctl.restype = ctypes.c_int
    return libc, pyseccomp


def _new_filter(pyseccomp):
    s = pyseccomp
    f = s.SyscallFilter(s.KILL_PROCESS)
    f.set_attr(s.Attr.ACT_BADARCH, s.KILL_PROCESS)

    def allow(name, *args, action=s.ALLOW):
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


def build_zygote_filter(pyseccomp):
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


def build_child_filter(pyseccomp):
    """CHILD_SYSCALLS as a pyseccomp SyscallFilter: what a row process keeps once it has read its row."""
    s = pyseccomp
    f, allow = _new_filter(s)
    allow("write", s.Arg(0, s.EQ, protocol.ANSWER_FD), s.Arg(2, s.EQ, protocol.ANSWER_CHUNK))
    return f


def build_filter(pyseccomp):
    """Compatibility name: the zygote's filter."""
    return build_zygote_filter(pyseccomp)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class CompiledFilter:
    """A filter exported to classic BPF once, before the lockdown, and installed with one prctl() per row process.

    libseccomp's own load() would probe the kernel and allocate; prctl(PR_SET_SECCOMP) with a ready program is
    a single system call the zygote's filter allows."""

    def __init__(self, program: bytes):
        if not program or len(program) % 8:
            raise ValueError("not a BPF program")
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._prog = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))
        self.address = ctypes.addressof(self._prog)

    def install(self, libc) -> bool:
        return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self.address, 0, 0) == 0


def export_filter(f) -> CompiledFilter:
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
    return CompiledFilter(b"".join(chunks))


def _prctl(libc, option: int, arg2: int = 0) -> None:
    if libc.prctl(option, arg2, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


def drop_privileges(uid: int, gid: int) -> None:
    """As root, become uid/gid with no supplementary groups (clears every capability too)."""
    if os.geteuid() != 0 and os.getuid() != 0:
        return
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise OSError("credentials did not change")


def set_rlimits(memory_bytes: int, cpu_s: int) -> None:
    limits = [
        (resource.RLIMIT_AS, memory_bytes, memory_bytes),
        (resource.RLIMIT_CPU, cpu_s, cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard one
        (resource.RLIMIT_NOFILE, 2, 2),  # fds 0 and 1 stay open; no new fd can be made
        # No RLIMIT_NPROC: the zygote forks its row processes, and the limit counts every process of the uid.
        # A row process cannot fork (its filter has no clone); the zygote runs no untrusted code.
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_FSIZE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    ]
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))


def lock_down(libc, pyseccomp, *, parent_pid: int, uid: int, gid: int, memory_bytes: int, cpu_s: int):  # noqa: C901
    """Steps 2..8 in order (step 1, the imports, is the caller's). Raises LockdownError(step)."""
    import signal

    step = protocol.STEP_CREDENTIALS
    try:
        # If memory runs short, the kernel kills a worker, never the agent that reads the meters.
        try:
            with open("/proc/self/oom_score_adj", "w") as adj:
                adj.write("1000")
        except OSError:
            pass
        # The uid switch comes before PR_SET_PDEATHSIG and PR_SET_DUMPABLE because a change of
        # credentials resets both (kernel commit_creds()).
        drop_privileges(uid, gid)
        try:
            _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError:
            pass  # kernels before 4.3 have no ambient capabilities
        step = protocol.STEP_PDEATHSIG
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # no Python signal handler: rt_sigreturn stays denied
        _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before the line above
            os._exit(0)
        step = protocol.STEP_DUMPABLE
        _prctl(libc, PR_SET_DUMPABLE, 0)
        step = protocol.STEP_FDS
        sys.stdin = sys.stdout = sys.stderr = None  # type: ignore[assignment]
        keep = max(protocol.REQUEST_FD, protocol.ANSWER_FD) + 1
        os.closerange(keep, max(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 16))
        step = protocol.STEP_RLIMITS
        set_rlimits(memory_bytes, cpu_s)
        step = protocol.STEP_NO_NEW_PRIVS
        _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
        step = protocol.STEP_SECCOMP
        build_zygote_filter(pyseccomp).load()  # libseccomp probes the kernel's seccomp API while building
    except LockdownError:
        raise
    except BaseException as exc:
        raise LockdownError(step) from exc
