"""The parent side: spawning locked zygotes, the request/answer exchange, and the pool of zygotes.

Zygotes are fresh interpreters started with ``posix_spawn`` (never a fork of the agent: a forked child
inherits the agent's memory, tokens, consents and households' data). A zygote serves one condition of one
tenant and is never shared; it forks one locked row process per household's row (sandbox.worker). Every
answer is checked byte by byte (the nonce, each row's token, each status, the trailer); anything unexpected,
an EOF or a missed wall-clock deadline gets the zygote and its row process SIGKILLed (the whole process group)
and reaped, and counts as a violation of its condition: the next zygote is spawned only after a growing
backoff, and after ``Limits.quarantine_after`` violations the condition is quarantined.

CPU budget: after every request the parent reads, from /proc, the CPU time the kernel summed for the
zygote's row processes. A condition whose rows use ``Limits.cpu_budget_fraction`` of the request's deadline
``Limits.throttle_after`` times in a row (a sleeper that burns its windows) is throttled (a violation: no
evaluation for ``throttle_s``, doubling), and quarantined like any other repeated violation. Zygotes are
recycled after ``max_evaluations`` rows, when their own CPU time nears RLIMIT_CPU, when their memory grows
(``max_rss_bytes``, or twice what they held after loading), and when idle for ``idle_s``.

The API is synchronous and thread-safe: one request per condition at a time, conditions in parallel from
several threads. From asyncio, call it through ``asyncio.to_thread`` / ``run_in_executor``. ``register``
does no work beyond bookkeeping (no compile on the caller's thread): the source is compiled in the zygote.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import math
import os
import select
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, NoReturn, Sequence

from sandbox import protocol
from sandbox.errors import (
    NO_CONDITION,
    REJECTED,
    SYNTAX_ERROR,
    BackingOff,
    ConditionQuarantined,
    ConditionRejected,
    EvaluationFailed,
    SandboxUnavailable,
    Status,
    Violation,
)

_STATUSES = tuple(Status)  # index == byte value
_LOAD_REASONS = {
    protocol.LOAD_SYNTAX_ERROR: SYNTAX_ERROR,
    protocol.LOAD_NO_CONDITION: NO_CONDITION,
    protocol.LOAD_ERROR: REJECTED,
}
MAX_SOURCE_CHARS = protocol.MAX_SOURCE_CHARS


def compile_in_parent(source: str) -> str | None:
    """Parse and compile in this process (never execute). Returns None or a fixed reason. Not used by the
    Supervisor or the upload check (the zygote compiles): kept for callers of the old API."""
    from sandbox.static import compiles

    return compiles(source)


@dataclass(frozen=True)
class Limits:
    """Deadlines, rlimits and pool policy. Defaults fit a Raspberry Pi 4; tests shorten the deadlines."""

    timeout_s: float = 0.05  # wall-clock deadline of a request of one evaluation
    # Added for each further row of a batch: a row costs a fork, the row process's page faults and its exit
    # (~1.8 ms on this project's VM, ~4 ms when it is loaded; a fork of even a 1 MB C process costs ~0.3 ms
    # there: bench/triggers_sandbox.py).
    timeout_per_row_s: float = 0.01
    max_timeout_s: float = 30.0  # cap of a batch's deadline
    spawn_timeout_s: float = 5.0  # fresh interpreter + pre-imports + lockdown (~45 ms on a Pi 4)
    load_timeout_s: float = 0.5  # compiling and executing the untrusted module
    memory_bytes: int = 128 << 20  # RLIMIT_AS of the zygote and its row processes (a Pi has 1-4 GB)
    cpu_s: int = 30  # RLIMIT_CPU (a backstop: the deadline is what stops a busy worker)
    max_evaluations: int = 100_000  # recycle a worker after this many evaluations
    quarantine_after: int = 3  # violations before a condition is quarantined
    backoff_s: float = 0.25  # wait before spawning again after a violation, doubling each time
    backoff_max_s: float = 30.0
    max_workers: int = 64  # live zygotes in a Supervisor; the least recently used idle one goes first
    cpu_budget_fraction: float = 0.5  # row processes' CPU time over the request's deadline that counts as heavy
    throttle_after: int = 2  # heavy requests in a row that make a CPU-budget violation
    throttle_s: float = 120.0  # no evaluation for this long after a CPU-budget violation, doubling each time
    max_rss_bytes: int = 64 << 20  # a zygote holding more is recycled (it also is at twice its size after loading)
    idle_s: float = 600.0  # a zygote unused for this long is collected
    worker_uid: int = 65534  # used only when the agent runs as root (nobody)
    worker_gid: int = 65534  # (nogroup)
    # CPUs a zygote (and so its row processes) may run on. None with pin_zygotes: each zygote is pinned to one
    # CPU, taken in turn from the agent's, so that a fork, the row process and the zygote's wake-up stay on one
    # CPU (no cross-CPU wake-up per row; on a VM each one is a hypervisor round trip: bench/triggers_sandbox.py)
    # while different triggers still spread over every CPU. None without pin_zygotes: the scheduler decides.
    cpu_affinity: frozenset[int] | None = None
    pin_zygotes: bool = True
    # A row whose process dies, is killed or misses the deadline is that row's ERROR and the next rows go on in a
    # fresh zygote (no household's row decides whether another's is evaluated), this many times per request; then
    # the request's remaining rows are ERROR.
    row_failures_per_request: int = 3
    # A condition in the closed language (sandbox.closed) is evaluated by its zygote itself, row after row, with no
    # fork: the language keeps the rows apart. False: a process per row for every condition.
    evaluators: bool = True

    @property
    def row_timeout_s(self) -> float:
        """Each row's own deadline in a zygote that forks per row: one evaluation's, plus the fork of its process."""
        return self.timeout_s + self.timeout_per_row_s

    def batch_timeout(self, rows: int) -> float:
        return min(self.max_timeout_s, self.timeout_s + self.timeout_per_row_s * max(0, rows - 1))

    def request_timeout(self, rows: int) -> float:
        """A request's whole deadline: its rows', and room for the rows that fail, each costing its own deadline
        and a fresh zygote (~0.1 s), so that a failed row leaves the rows after it their time."""
        return self.batch_timeout(rows) + self.row_failures_per_request * (self.row_timeout_s + 0.1)


# --------------------------------------------------------------------------------------------- spawning

_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawner_executor() -> concurrent.futures.ThreadPoolExecutor:
    """One long-lived thread does every posix_spawn.

    PR_SET_PDEATHSIG fires when the *thread* that created the child exits, not the process: a worker
    spawned from a short-lived thread (an executor's) would be SIGKILLed with it.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner")
        return _spawner


def _forget_spawner_after_fork() -> None:
    global _spawner, _spawner_lock
    _spawner = None  # its thread does not exist in a forked child
    _spawner_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_spawner_after_fork)


def _high_pipe() -> tuple[int, int]:
    """A close-on-exec pipe whose two fds are both >= 3 (so the dup2 to 0 and 1 cannot clobber them)."""
    r, w = os.pipe()
    fds = []
    for fd in (r, w):
        if fd < 3:
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = high
        fds.append(fd)
    return fds[0], fds[1]


def _package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _programs() -> tuple[bytes, bytes, bytes]:
    """The zygote's, the row processes' and the evaluators' seccomp programs (sandbox.filters, built once here in
    the parent)."""
    from sandbox import filters

    try:
        return filters.programs()
    except ImportError as exc:
        raise SandboxUnavailable(protocol.LOCKDOWN_STEPS[protocol.STEP_IMPORT]) from exc
    except Exception as exc:  # libseccomp refused: it asks the kernel which actions it supports
        raise SandboxUnavailable(protocol.LOCKDOWN_STEPS[protocol.STEP_SECCOMP]) from exc


_cpu_turn = 0


def _next_cpu() -> frozenset[int] | None:
    """One of this process's CPUs, in turn."""
    global _cpu_turn
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except OSError:
        return None
    with _spawner_lock:
        _cpu_turn += 1
        return frozenset({cpus[_cpu_turn % len(cpus)]})


_SIGDEF = tuple(s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP))


def spawn_worker(limits: Limits, executable: str | None = None, *, inspect: bool = False,
                 evaluator: bool = False) -> "WorkerProcess":
    """Start a fresh locked zygote and wait until it reports its lockdown done (a PING round trip). With
    ``inspect``, a trial zygote that also answers INSPECT (it pre-imports ast, which others do without); with
    ``evaluator``, one that evaluates a closed condition's rows itself (sandbox.worker, sandbox.closed).

    Raises SandboxUnavailable if it cannot start or lock itself down.
    """
    import sys

    from sandbox.worker import BOOTSTRAP

    exe = executable or sys.executable
    argv = [
        exe, "-I", "-S", "-B", "-c", BOOTSTRAP, _package_parent(),
        str(os.getpid()), str(limits.memory_bytes), str(limits.cpu_s), str(limits.worker_uid), str(limits.worker_gid),
        *(program.hex() for program in _programs()), "1" if inspect else "0", "1" if evaluator else "0",
    ]
    req_r, req_w = _high_pipe()
    ans_r, ans_w = _high_pipe()
    try:
        file_actions = [
            (os.POSIX_SPAWN_DUP2, req_r, protocol.REQUEST_FD),
            (os.POSIX_SPAWN_DUP2, ans_w, protocol.ANSWER_FD),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
        ]
        future = _spawner_executor().submit(
            os.posix_spawn, exe, argv, {},  # an EMPTY environment
            file_actions=file_actions, setpgroup=0, setsigmask=(), setsigdef=_SIGDEF,
        )
        try:
            pid = future.result()
        except OSError as exc:
            raise SandboxUnavailable("could not start a worker") from exc
    except BaseException:
        for fd in (req_w, ans_r):
            os.close(fd)
        raise
    finally:
        os.close(req_r)
        os.close(ans_w)
    worker = WorkerProcess(pid, req_w, ans_r)
    worker.evaluator = evaluator
    cpus = limits.cpu_affinity or (_next_cpu() if limits.pin_zygotes else None)
    if cpus:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass  # a hint only
    try:
        answer = worker.request(protocol.PING, None, 1, limits.spawn_timeout_s)
    except EvaluationFailed as exc:
        raise SandboxUnavailable("worker did not start") from exc
    code = answer[0]
    if code != protocol.OK:
        worker.kill()
        step = code & 0x0F if code & 0xF0 == protocol.LOCKDOWN_FAILED else 0
        raise SandboxUnavailable(protocol.LOCKDOWN_STEPS.get(step, "lockdown failed"))
    return worker


_CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcessTimes:
    """A zygote's figures as the kernel keeps them (/proc/<pid>/stat), never as the zygote says."""

    own_s: float  # the zygote's own CPU time
    rows_s: float  # the CPU time of its reaped row processes (cutime + cstime)
    rss_bytes: int


class _ChunkCheck:
    """Checks an EVAL answer as it arrives: the nonce, then per row its token and a status byte."""

    def __init__(self, nonce: bytes, tokens: Sequence[bytes]):
        self.nonce = nonce
        self.tokens = tokens
        self.done = 0  # chunks checked

    def __call__(self, buf: bytes) -> bool:
        if buf[: len(self.nonce)] != self.nonce[: len(buf)]:
            return False
        size, start = protocol.ANSWER_CHUNK, protocol.NONCE_SIZE
        complete = min(len(self.tokens), max(0, (len(buf) - start) // size))
        for i in range(self.done, complete):
            at = start + i * size
            if buf[at:at + protocol.TOKEN_SIZE] != self.tokens[i] or buf[at + protocol.TOKEN_SIZE] > protocol.NOT_BOOL:
                return False
        self.done = complete
        return True


class WorkerProcess:
    """The parent's handle on one zygote: two non-blocking pipe ends and an unreaped pid (also its process
    group, which its row processes share)."""

    def __init__(self, pid: int, request_fd: int, answer_fd: int):
        self.pid = pid
        self._req = request_fd
        self._ans = answer_fd
        os.set_blocking(request_fd, False)
        os.set_blocking(answer_fd, False)
        self._partial = b""  # what arrived of the current answer (its checked chunks survive a failure)
        self._check: _ChunkCheck | None = None
        self._rpoll = select.poll()
        self._rpoll.register(answer_fd, select.POLLIN)
        self._wpoll = select.poll()
        self._wpoll.register(request_fd, select.POLLOUT)
        self.wait_status: int | None = None
        self.evaluator = False  # evaluates its rows itself (a closed condition) rather than forking per row
        self.evaluations = 0
        self.loaded_rss = 0  # after the LOAD: what the zygote's memory is measured against
        self.last_used = time.monotonic()
        try:  # a pidfd names this process, not a pid number that could be reused if someone else reaped it
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = None

    @property
    def alive(self) -> bool:
        return self.wait_status is None

    def request(self, kind: int, body: object, answer_len: int, timeout_s: float, frames: bytes = b"",
                trailer: bool = False, tokens: Sequence[bytes] | None = None,
                row_timeout_s: float | None = None) -> bytes:
        """Send one request (and ``frames``: an EVAL's rows), return the answer's bytes after the (checked) nonce
        (and before the nonce again, with ``trailer``). With ``tokens``, the answer is one chunk per token, each
        checked as it arrives (its token, a status byte): a forged chunk fails at once, not at the deadline; and with
        ``row_timeout_s``, each chunk must come within that of the one before (a row's own deadline).

        Raises ValueError (nothing sent) if marshal cannot encode ``body``; EvaluationFailed (the zygote
        is then dead and reaped) on a missed deadline, an EOF, a wrong nonce or a wrong length.
        """
        if not self.alive:
            raise EvaluationFailed(Violation.CRASHED)
        nonce = protocol.new_nonce()
        frame = protocol.encode_request(kind, nonce, body)
        deadline = time.monotonic() + timeout_s
        self._send(frame + frames if frames else frame, deadline)
        tail = protocol.NONCE_SIZE if trailer else 0
        check = self._check = _ChunkCheck(nonce, tokens) if tokens is not None else None
        data = self._receive(protocol.NONCE_SIZE + answer_len + tail, deadline, nonce if trailer else None, check,
                             row_timeout_s)
        self.last_used = time.monotonic()
        if data[: protocol.NONCE_SIZE] != nonce or (trailer and data[-tail:] != nonce):
            self._fail(Violation.PROTOCOL)
        return data[protocol.NONCE_SIZE: len(data) - tail]

    def evaluate_rows(self, rows: Sequence[Sequence[object]], timeout_s: float,
                      row_timeout_s: float | None = None) -> bytes:
        """One status byte per row, each from the row's own process (or an evaluator's). Every chunk must carry its
        row's token, in order, and the zygote's trailer (the nonce again) must follow the last: else PROTOCOL.
        With ``row_timeout_s`` (a zygote that forks per row), each row has that deadline of its own."""
        frames, tokens = protocol.encode_rows(rows)
        n = len(rows)
        chunk = protocol.ANSWER_CHUNK
        try:
            answers = self.request(protocol.EVAL, n, n * chunk, timeout_s, frames, trailer=True, tokens=tokens,
                                   row_timeout_s=row_timeout_s)
        except EvaluationFailed as exc:
            done = self._check.done if self._check is not None else 0
            start = protocol.NONCE_SIZE + protocol.TOKEN_SIZE
            exc.answered = bytes(self._partial[start + i * chunk] for i in range(done))
            raise
        return answers[protocol.TOKEN_SIZE::chunk]

    def _send(self, frame: bytes, deadline: float) -> None:
        view = memoryview(frame)
        sent = 0
        while True:
            try:
                sent += os.write(self._req, view[sent:])
            except BlockingIOError:
                pass
            except OSError:  # EPIPE: the zygote is gone
                self._fail(Violation.CRASHED)
            if sent == len(frame):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(Violation.TIMEOUT)
            for _fd, event in self._wpoll.poll(math.ceil(remaining * 1000)):
                if event & (select.POLLERR | select.POLLHUP):
                    self._fail(Violation.CRASHED)

    def _receive(self, want: int, deadline: float, trailer: bytes | None = None,
                 check: "_ChunkCheck | None" = None, row_timeout_s: float | None = None) -> bytes:
        """``want`` bytes; with ``trailer``, a trailer that comes early (a row process that exited without its
        chunk) fails at once rather than at the deadline; with ``row_timeout_s``, each checked chunk within that
        of the one before."""
        buf = self._partial = b""
        done = 0
        row_deadline = time.monotonic() + row_timeout_s if row_timeout_s is not None else math.inf
        while True:
            if check is not None and check.done > done:
                done = check.done
                row_deadline = time.monotonic() + row_timeout_s if row_timeout_s is not None else math.inf
            remaining = min(deadline, row_deadline) - time.monotonic()
            if remaining <= 0:
                self._fail(Violation.TIMEOUT)
            if not self._rpoll.poll(math.ceil(remaining * 1000)):
                continue
            try:
                chunk = os.read(self._ans, want + 1 - len(buf))  # one more than expected: catches extra bytes
            except BlockingIOError:
                continue
            except OSError:
                self._fail(Violation.CRASHED)
            if not chunk:
                self._fail(Violation.CRASHED)
            buf += chunk
            self._partial = buf
            if trailer is not None and protocol.NONCE_SIZE < len(buf) < want and buf.endswith(trailer):
                self._fail(Violation.PROTOCOL)
            if check is not None and not check(buf):
                self._fail(Violation.PROTOCOL)
            if len(buf) >= want:
                if len(buf) > want:
                    self._fail(Violation.PROTOCOL)
                return buf

    def _fail(self, violation: Violation) -> NoReturn:
        exit_signal = self.kill()
        if exit_signal == signal.SIGSYS:
            violation = Violation.SECCOMP
        raise EvaluationFailed(violation, exit_signal)

    def times(self) -> ProcessTimes | None:
        try:
            fd = os.open(f"/proc/{self.pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            stat = os.read(fd, 4096)
        except OSError:
            return None
        finally:
            os.close(fd)
        fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": fields 3.. of proc(5)
        try:
            utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
            rss = int(fields[21])
        except (IndexError, ValueError):
            return None
        return ProcessTimes((utime + stime) * _CLOCK_TICK_S, (cutime + cstime) * _CLOCK_TICK_S, rss * _PAGE_BYTES)

    def kill(self) -> int | None:
        """SIGKILL the process group (the zygote and a row process) and reap the zygote (idempotent).

        Returns the signal that ended the request: the zygote's, or the one its row process died of (the zygote
        then exits with ZYGOTE_CHILD_SIGNALED + that signal); None if nothing was killed by a signal."""
        if self.wait_status is None:
            for fd in (self._req, self._ans):
                try:
                    os.close(fd)
                except OSError:
                    pass
            try:
                # the zygote is not reaped yet: its pid, and so its process group id, cannot have been reused
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                else:
                    os.kill(self.pid, signal.SIGKILL)  # our unreaped child: the pid cannot have been reused
            except ProcessLookupError:
                pass
            finally:
                if self._pidfd is not None:
                    os.close(self._pidfd)
                    self._pidfd = None
            try:
                _, self.wait_status = os.waitpid(self.pid, 0)
            except ChildProcessError:  # reaped by someone else's waitpid(-1)
                self.wait_status = -1
        return self.exit_signal

    @property
    def exit_signal(self) -> int | None:
        status = self.wait_status
        if status is None or status < 0:
            return None
        if os.WIFSIGNALED(status):
            return os.WTERMSIG(status)
        code = os.WEXITSTATUS(status)
        if protocol.ZYGOTE_CHILD_SIGNALED < code < protocol.ZYGOTE_CHILD_SIGNALED + 65:
            return code - protocol.ZYGOTE_CHILD_SIGNALED
        return None


# --------------------------------------------------------------------------------------------- the pool


@dataclass(frozen=True)
class ConditionState:
    """A snapshot of one registered condition, for the API's admin view and for tests."""

    tenant: str
    condition_id: str
    pid: int | None  # the live worker, if any
    spawns: int
    evaluations: int
    violations: int
    quarantined: bool
    rejected: str | None  # fixed reason if the source did not load
    last_violation: Violation | None
    last_exit_signal: int | None  # signal that ended the last killed worker (SIGSYS, SIGKILL...)
    retry_after: float  # seconds of backoff left before a new worker may be spawned
    cpu_s: float = 0.0  # CPU time of the condition's row processes so far (as the kernel counted it)
    budget_violations: int = 0  # requests refused for burning the CPU budget (throttled), part of violations
    isolation: str | None = None  # CLOSED_LANGUAGE or PROCESS_PER_ROW once a worker has loaded it


class _Slot:
    def __init__(self, tenant: str, condition_id: str, source: str, parameters: tuple[str, ...]):
        self.tenant = tenant
        self.condition_id = condition_id
        self.source = source
        self.parameters = parameters
        self.lock = threading.Lock()
        self.worker: WorkerProcess | None = None
        self.spawns = 0
        self.evaluations = 0
        self.violations = 0
        self.quarantined = False
        self.rejected: str | None = None
        self.last_violation: Violation | None = None
        self.last_exit_signal: int | None = None
        self.next_spawn_at = 0.0
        self.removed = False
        self.heavy = 0  # heavy requests in a row (CPU budget)
        self.cpu_s = 0.0
        self.budget_violations = 0
        self.closed: bool | None = None  # in the closed language? (known once an evaluator has loaded it)


CLOSED_LANGUAGE, PROCESS_PER_ROW = "closed language", "process per row"


class Supervisor:
    """A pool of locked workers, one per (tenant, condition id); never shared across tenants.

    ``tenant`` is an opaque string (the API uses the organization); a worker only ever sees the rows of
    the condition it serves.
    """

    def __init__(self, limits: Limits | None = None, *, executable: str | None = None):
        self.limits = limits or Limits()
        self._executable = executable
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._live: OrderedDict[tuple[str, str], _Slot] = OrderedDict()  # slots with a worker, LRU first
        self._closed = False
        self._next_collection = 0.0

    # -- registration

    def register(self, tenant: str, condition_id: str, source: str, parameters: Sequence[str]) -> None:
        """Add (or replace, which clears violations and quarantine) a condition. Spawns lazily.

        Nothing is compiled here (this may be the event loop's thread): the zygote compiles the source when the
        condition is first evaluated, and a syntax error is then remembered and raised as ConditionRejected by
        every evaluate(). A source over MAX_SOURCE_CHARS is rejected at once, without spawning.
        """
        if not isinstance(tenant, str) or not isinstance(condition_id, str) or not isinstance(source, str):
            raise TypeError("tenant, condition_id and source must be str")
        params = tuple(parameters)
        if not all(isinstance(p, str) for p in params):
            raise TypeError("parameters must be str")
        key = (tenant, condition_id)
        slot = _Slot(tenant, condition_id, source, params)
        slot.rejected = REJECTED if len(source) > MAX_SOURCE_CHARS else None
        with self._lock:
            if self._closed:
                raise RuntimeError("supervisor closed")
            old = self._slots.get(key)
            self._slots[key] = slot
        if old is not None:
            self._retire(old)

    def unregister(self, tenant: str, condition_id: str) -> None:
        with self._lock:
            old = self._slots.pop((tenant, condition_id), None)
        if old is not None:
            self._retire(old)

    def release(self, tenant: str, condition_id: str) -> None:
        """Lift a quarantine (an operator's decision) and forget past violations."""
        slot = self._slot(tenant, condition_id)
        with slot.lock:
            slot.quarantined = False
            slot.violations = 0
            slot.budget_violations = 0
            slot.heavy = 0
            slot.next_spawn_at = 0.0

    def conditions(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._slots)

    def state(self, tenant: str, condition_id: str) -> ConditionState:
        slot = self._slot(tenant, condition_id)
        worker = slot.worker
        return ConditionState(
            tenant=slot.tenant,
            condition_id=slot.condition_id,
            pid=worker.pid if worker is not None and worker.alive else None,
            spawns=slot.spawns,
            evaluations=slot.evaluations,
            violations=slot.violations,
            quarantined=slot.quarantined,
            rejected=slot.rejected,
            last_violation=slot.last_violation,
            last_exit_signal=slot.last_exit_signal,
            retry_after=max(0.0, slot.next_spawn_at - time.monotonic()),
            cpu_s=slot.cpu_s,
            budget_violations=slot.budget_violations,
            isolation=None if slot.closed is None else CLOSED_LANGUAGE if slot.closed else PROCESS_PER_ROW,
        )

    # -- evaluation

    def evaluate(
        self, tenant: str, condition_id: str, rows: Iterable[Sequence[object]], timeout_s: float | None = None
    ) -> list[Status]:
        """Evaluate the condition on every row (a tuple of arguments), each row in its own process.

        Returns one Status per row (a row whose process failed: ERROR, see _evaluate_part). Raises KeyError (not
        registered), ConditionQuarantined, ConditionRejected, BackingOff (also while throttled),
        SandboxUnavailable, or EvaluationFailed (a zygote failed to load the condition). ``timeout_s`` defaults to
        ``Limits.request_timeout(len(rows))`` (per request of at most protocol.MAX_ROWS_PER_REQUEST rows).
        """
        if not isinstance(rows, (list, tuple)):
            rows = list(rows)
        self.collect_idle()
        slot = self._slot(tenant, condition_id)
        with slot.lock:
            if slot.removed:
                raise KeyError((tenant, condition_id))
            if slot.quarantined:
                raise ConditionQuarantined()
            if slot.rejected is not None:
                raise ConditionRejected(slot.rejected)
            out: list[Status] = []
            for first in range(0, len(rows), protocol.MAX_ROWS_PER_REQUEST):
                part = rows[first:first + protocol.MAX_ROWS_PER_REQUEST]
                out.extend(self._evaluate_part(slot, part, timeout_s))
            return out

    def _evaluate_part(self, slot: "_Slot", rows: Sequence[Sequence[object]], timeout_s: float | None) -> list[Status]:
        """One Status per row. A row whose process dies, is killed or misses the deadline is that row's ERROR and a
        violation of the condition; the rows after it go on in a fresh zygote, without backoff, so that whether one
        household's row is evaluated never depends on another's (at most Limits.row_failures_per_request times: then
        the remaining rows are ERROR). A NOT_BOOL is that row's answer, no violation (it would make a quarantine that
        depends on one household's value)."""
        out: list[Status] = []
        failures = 0
        total = self.limits.request_timeout(len(rows)) if timeout_s is None else timeout_s
        deadline: float | None = None  # from when the first zygote is ready (its start is not the rows' time)
        while len(out) < len(rows):
            # a failure comes after the first zygote was ready: deadline is set then
            if failures >= self.limits.row_failures_per_request or (
                    failures and deadline is not None and deadline <= time.monotonic()):
                out.extend([Status.ERROR] * (len(rows) - len(out)))
                break
            rest = rows[len(out):]
            worker = self._ensure_worker(slot, continuing=failures > 0)
            if deadline is None:
                deadline = time.monotonic() + total
            timeout = deadline - time.monotonic()
            before = worker.times()
            # a forking zygote's rows each have the deadline of one evaluation, short enough that the failures
            # allowed leave the other rows time (an evaluator's are bounded by the closed language, answered at once)
            row_timeout = None if worker.evaluator else min(
                self.limits.row_timeout_s, total / (self.limits.row_failures_per_request + 1))
            try:
                body = worker.evaluate_rows(rest, max(timeout, 0.001), row_timeout)
            except ValueError:
                raise TypeError("rows must hold only plain values (numbers, None, str)") from None
            except EvaluationFailed as exc:
                self._count_violation(slot, exc.violation, exc.exit_signal, backoff=False)
                slot.evaluations += len(exc.answered) + 1
                out.extend(map(_STATUSES.__getitem__, exc.answered))
                out.append(Status.ERROR)
                failures += 1
                continue
            n = len(rest)
            slot.evaluations += n
            worker.evaluations += n
            after = worker.times()
            if not slot.quarantined and before is not None and after is not None:
                used = after.own_s - before.own_s if worker.evaluator else after.rows_s - before.rows_s
                self._account(slot, worker, after, used, self.limits.batch_timeout(len(rest)))
            if slot.worker is worker and (worker.evaluations >= self.limits.max_evaluations or slot.quarantined):
                self._drop_worker(slot)  # recycle: the next request gets a fresh zygote
            out.extend(map(_STATUSES.__getitem__, body))
        return out

    def _account(self, slot: "_Slot", worker: WorkerProcess, times: ProcessTimes, rows_cpu_s: float,
                 timeout: float) -> None:
        """The CPU budget, and recycling a zygote that used its own CPU or grew."""
        slot.cpu_s += rows_cpu_s
        if rows_cpu_s >= self.limits.cpu_budget_fraction * timeout:
            slot.heavy += 1
            if slot.heavy >= self.limits.throttle_after:
                slot.heavy = 0
                slot.budget_violations += 1
                self._count_violation(slot, Violation.CPU_BUDGET, None)
                return
        else:
            slot.heavy = 0
        limit = self.limits.max_rss_bytes
        if worker.loaded_rss:
            limit = min(limit, 2 * worker.loaded_rss)
        if times.own_s >= self.limits.cpu_s / 2 or times.rss_bytes > limit:
            self._drop_worker(slot)

    def collect_idle(self) -> int:
        """Kill zygotes unused for Limits.idle_s (at most every few seconds; evaluate() calls it). Returns how many."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_collection:
                return 0
            self._next_collection = now + min(10.0, self.limits.idle_s / 2)
            idle = [slot for slot in self._live.values()
                    if slot.worker is not None and now - slot.worker.last_used >= self.limits.idle_s]
        collected = 0
        for slot in idle:
            if slot.lock.acquire(blocking=False):
                try:
                    if slot.worker is not None and now - slot.worker.last_used >= self.limits.idle_s:
                        self._drop_worker(slot)
                        collected += 1
                finally:
                    slot.lock.release()
        return collected

    def evaluate_one(self, tenant: str, condition_id: str, *args: object, timeout_s: float | None = None) -> Status:
        return self.evaluate(tenant, condition_id, [args], timeout_s)[0]

    # -- internals

    def _slot(self, tenant: str, condition_id: str) -> _Slot:
        with self._lock:
            return self._slots[(tenant, condition_id)]

    def _ensure_worker(self, slot: _Slot, continuing: bool = False) -> WorkerProcess:
        worker = slot.worker
        key = (slot.tenant, slot.condition_id)
        if worker is not None and worker.alive:
            with self._lock:
                if key in self._live:
                    self._live.move_to_end(key)
            return worker
        now = time.monotonic()
        if now < slot.next_spawn_at and not continuing:
            raise BackingOff(slot.next_spawn_at - now)
        self._make_room()
        slot.spawns += 1  # one start, even when an evaluator found the condition outside the closed language
        code, worker = self._load(slot, evaluator=self.limits.evaluators and slot.closed is not False)
        if code == protocol.LOAD_NOT_CLOSED and worker.evaluator:
            worker.kill()
            slot.closed = False
            code, worker = self._load(slot, evaluator=False)
        elif code == protocol.OK:
            slot.closed = worker.evaluator
        if code != protocol.OK:
            worker.kill()
            reason = _LOAD_REASONS.get(code)
            if reason is None:
                self._count_violation(slot, Violation.PROTOCOL, None)
                raise EvaluationFailed(Violation.PROTOCOL, stage="load")
            slot.rejected = reason
            raise ConditionRejected(reason)
        times = worker.times()
        worker.loaded_rss = times.rss_bytes if times is not None else 0
        slot.worker = worker
        with self._lock:
            if self._closed or slot.removed:
                closed = True
            else:
                closed = False
                self._live[key] = slot
        if closed:
            self._drop_worker(slot)
            raise KeyError(key)
        return worker

    def _load(self, slot: _Slot, evaluator: bool) -> tuple[int, WorkerProcess]:
        """Spawn a zygote (an evaluator, or one that forks per row) and LOAD the condition: (answer code, worker)."""
        worker = spawn_worker(self.limits, self._executable, evaluator=evaluator)
        try:
            answer = worker.request(protocol.LOAD, (slot.source, slot.parameters), 1, self.limits.load_timeout_s)
        except EvaluationFailed as exc:
            exc.stage = "load"
            self._count_violation(slot, exc.violation, exc.exit_signal)
            raise
        return answer[0], worker

    def _make_room(self) -> None:
        """Evict least recently used idle workers while the pool is full (busy ones are skipped)."""
        while True:
            with self._lock:
                if len(self._live) < self.limits.max_workers:
                    return
                candidates = list(self._live.values())
            for victim in candidates:
                if victim.lock.acquire(blocking=False):
                    try:
                        self._drop_worker(victim)
                    finally:
                        victim.lock.release()
                    break
            else:
                return  # all busy: go over the cap rather than wait

    def _drop_worker(self, slot: _Slot) -> None:
        worker, slot.worker = slot.worker, None
        with self._lock:
            self._live.pop((slot.tenant, slot.condition_id), None)
        if worker is not None:
            worker.kill()

    def _count_violation(self, slot: _Slot, violation: Violation, exit_signal: int | None,
                         backoff: bool = True) -> None:
        """Count it (quarantine after Limits.quarantine_after); the worker is gone. ``backoff``: wait before the
        next spawn (load failures, which no row decides; a row's failure goes on at once, see _evaluate_part)."""
        slot.violations += 1
        slot.last_violation = violation
        if violation is Violation.CPU_BUDGET:
            self._drop_worker(slot)  # throttled: no zygote, so no evaluation, for throttle_s (doubling)
            slot.next_spawn_at = time.monotonic() + self.limits.throttle_s * 2 ** (slot.budget_violations - 1)
        else:
            slot.last_exit_signal = exit_signal
            self._drop_worker(slot)  # already killed and reaped
            if backoff:
                wait = self.limits.backoff_s * 2 ** (slot.violations - 1)
                slot.next_spawn_at = time.monotonic() + min(self.limits.backoff_max_s, wait)
        if slot.violations >= self.limits.quarantine_after:
            slot.quarantined = True

    def _retire(self, slot: _Slot) -> None:
        with slot.lock:
            slot.removed = True
            self._drop_worker(slot)

    def close(self) -> None:
        """Kill every worker. The supervisor cannot be used afterwards."""
        with self._lock:
            self._closed = True
            slots = list(self._slots.values())
            self._slots.clear()
        for slot in slots:
            self._retire(slot)

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
