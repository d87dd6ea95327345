"""The zygote's lockdown: prctl flags, closed fds, rlimits, the unprivileged user, then its seccomp filter; and
the one prctl() a row process uses to stack its own.

Only sandbox.worker imports this module (before it has seen any untrusted code). The filters themselves are
built in the parent (sandbox.filters) and handed over as BPF programs: no libseccomp in the zygote.
The seccomp filters are the security boundary. Everything else (restricted builtins, the AST check at upload)
only makes honest mistakes fail early.
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
SECCOMP_MODE_FILTER = 2
SIGKILL = 9
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


class LockdownError(Exception):
    def __init__(self, step: int):
        super().__init__(protocol.LOCKDOWN_STEPS.get(step, "lockdown failed"))
        self.step = step


def load_libc(libc_name: str = "libc.so.6") -> ctypes.CDLL:
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    libc.prctl.restype = ctypes.c_int
    return libc


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class CompiledFilter:
    """A BPF program (from sandbox.filters) ready to install with one prctl(PR_SET_SECCOMP): the zygote's own at
    the end of its lockdown, a row process's before it executes the condition (a single system call the
    zygote's filter allows)."""

    def __init__(self, program: bytes):
        if not program or len(program) % 8:
            raise ValueError("not a BPF program")
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._prog = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))
        self.address = ctypes.addressof(self._prog)

    def install(self, libc: ctypes.CDLL) -> bool:
        return bool(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self.address, 0, 0) == 0)


def _prctl(libc: ctypes.CDLL, option: int, arg2: int = 0) -> None:
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


def lock_down(libc: ctypes.CDLL, zygote_filter: "CompiledFilter", *, parent_pid: int, uid: int, gid: int,
              memory_bytes: int, cpu_s: int) -> None:
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
        sys.stdin = sys.stdout = sys.stderr = None
        keep = max(protocol.REQUEST_FD, protocol.ANSWER_FD) + 1
        os.closerange(keep, max(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 16))
        step = protocol.STEP_RLIMITS
        set_rlimits(memory_bytes, cpu_s)
        step = protocol.STEP_NO_NEW_PRIVS
        _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
        step = protocol.STEP_SECCOMP
        if not zygote_filter.install(libc):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
    except LockdownError:
        raise
    except BaseException as exc:
        raise LockdownError(step) from exc
