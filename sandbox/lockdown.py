"""The worker's lockdown: prctl flags, closed fds, rlimits, the unprivileged user, the seccomp allow-list.

Only the worker imports this module (before it has seen any untrusted code). The parent never does.

The seccomp filter is the security boundary. Everything else (restricted builtins, the AST check at upload)
only makes honest mistakes fail early. The filter's default action is KILL_PROCESS (the worker dies of
SIGSYS); so is its action for a foreign architecture (x32 or i386 system calls on x86-64).

The allow-list was found empirically (strace of a worker evaluating pure-computation conditions, plus
trial and error with the filter in place, see tests/test_sandbox.py) and is the minimum for CPython 3.11
once every module it may use has been imported:
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

from sandbox import protocol

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

PROT_EXEC = 0x4
MADV_DONTNEED = 4
MADV_FREE = 8

# name -> why. Argument conditions are in build_filter(). strace of workers evaluating conditions that use
# math, statistics, datetime, big lists, strings, dicts, 50 MB bytes, exceptions and RecursionError shows
# exactly: read, write, mmap, munmap, brk, mremap, exit_group (x86-64, glibc 2.36, CPython 3.11).
ALLOWED_SYSCALLS = {
    "read": "receive requests; only on the request fd (arg0 == 0)",
    "write": "send answers; only on the answer fd (arg0 == 1)",
    "mmap": "obmalloc arenas and large malloc blocks; only without PROT_EXEC (no new code)",
    "mmap2": "the 32-bit ARM name of mmap (Raspberry Pi OS armhf); same PROT_EXEC condition",
    "munmap": "free arenas and large blocks",
    "brk": "glibc malloc's main heap",
    "mremap": "realloc of large blocks (growing lists, strings, big ints)",
    "exit_group": "os._exit(): the worker exits on EOF of the request pipe",
    # Not seen on x86-64 but allowed for portability (harmless):
    "madvise": "other libcs' free() (musl's MADV_FREE); only MADV_DONTNEED and MADV_FREE",
    "clock_gettime": "datetime.now() where the vDSO falls back to the system call (some ARM clock sources)",
    "clock_gettime64": "the 32-bit ARM name of clock_gettime",
}
# Deliberately NOT allowed (each was considered):
#   mprotect      only glibc's non-main (per-thread) arenas use it; the worker has one thread. No W^X hole.
#   rt_sigreturn  no signal handler ever runs: SIGINT is reset to SIG_DFL before the lockdown, the worker has
#                 its own process group, SIGXCPU keeps its default action, installing a handler is denied.
#   rt_sigprocmask, futex, getrandom, getpid...  not used once every module is imported (one thread,
#                 hash seed drawn at start-up); openat/stat would only serve imports, denied on purpose.


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


def build_filter(pyseccomp):
    """The allow-list as a pyseccomp SyscallFilter (built in memory only: no file is needed any more)."""
    s = pyseccomp
    f = s.SyscallFilter(s.KILL_PROCESS)
    f.set_attr(s.Attr.ACT_BADARCH, s.KILL_PROCESS)
    no_exec = s.Arg(2, s.MASKED_EQ, PROT_EXEC, 0)

    def allow(name, *args):
        number = s.resolve_syscall(s.Arch.NATIVE, name)
        if number < 0:  # not a system call on this architecture (mmap2 on 64-bit, mmap on armhf...)
            return
        f.add_rule(s.ALLOW, number, *args)

    allow("read", s.Arg(0, s.EQ, protocol.REQUEST_FD))
    allow("write", s.Arg(0, s.EQ, protocol.ANSWER_FD))
    allow("mmap", no_exec)
    allow("mmap2", no_exec)
    allow("munmap")
    allow("brk")
    allow("mremap")
    allow("madvise", s.Arg(2, s.EQ, MADV_DONTNEED))
    allow("madvise", s.Arg(2, s.EQ, MADV_FREE))
    allow("exit_group")
    allow("clock_gettime")
    allow("clock_gettime64")
    return f


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
        (resource.RLIMIT_NPROC, 0, 0),  # no new process (ignored for root: hence the uid switch)
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_FSIZE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    ]
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))


def lock_down(libc, pyseccomp, *, parent_pid: int, uid: int, gid: int, memory_bytes: int, cpu_s: int):
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
        build_filter(pyseccomp).load()  # libseccomp probes the kernel's seccomp API while building
    except LockdownError:
        raise
    except BaseException as exc:
        raise LockdownError(step) from exc
