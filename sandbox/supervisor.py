"""The parent side: spawning locked workers, the request/answer exchange, and the pool of workers.

Workers are fresh interpreters started with ``posix_spawn`` (never a fork of the agent: a forked child
inherits the agent's memory, tokens, consents and households' data). Every answer is checked byte by byte;
anything unexpected, an EOF or a missed wall-clock deadline gets the worker SIGKILLed and reaped, and counts
as a violation of its condition: the next worker is spawned only after a growing backoff, and after
``Limits.quarantine_after`` violations the condition is quarantined. Workers are recycled after
``Limits.max_evaluations`` evaluations so that no state builds up. A worker serves one condition of one
tenant and is never shared.

The API is synchronous and thread-safe: one request per condition at a time, conditions in parallel from
several threads. From asyncio, call it through ``asyncio.to_thread`` / ``run_in_executor``.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import importlib.util
import math
import os
import select
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

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
MAX_SOURCE_CHARS = 16_384


def compile_in_parent(source: str) -> str | None:
    """Parse and compile (never execute) in the parent. Returns None or a fixed reason.

    Needed before any worker sees the source: when CPython raises a SyntaxError for "exec" code it opens
    the file named in the error to quote the line, and in a locked worker that openat() is a SIGSYS.
    """
    import warnings

    if len(source) > MAX_SOURCE_CHARS:
        return REJECTED
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(source, "<condition>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return SYNTAX_ERROR
    return None


@dataclass(frozen=True)
class Limits:
    """Deadlines, rlimits and pool policy. Defaults fit a Raspberry Pi 4; tests shorten the deadlines."""

    timeout_s: float = 0.05  # wall-clock deadline of a request of one evaluation
    timeout_per_row_s: float = 0.0005  # added for each further row of a batch
    max_timeout_s: float = 2.0  # cap of a batch's deadline
    spawn_timeout_s: float = 5.0  # fresh interpreter + pre-imports + lockdown (~45 ms on a Pi 4)
    load_timeout_s: float = 0.5  # compiling and executing the untrusted module
    memory_bytes: int = 128 << 20  # RLIMIT_AS; with the agent's MemoryMax in mind (a Pi has 1-4 GB)
    cpu_s: int = 30  # RLIMIT_CPU (a backstop: the deadline is what stops a busy worker)
    max_evaluations: int = 100_000  # recycle a worker after this many evaluations
    quarantine_after: int = 3  # violations before a condition is quarantined
    backoff_s: float = 0.25  # wait before spawning again after a violation, doubling each time
    backoff_max_s: float = 30.0
    max_workers: int = 64  # live workers in a Supervisor; the least recently used idle one goes first
    worker_uid: int = 65534  # used only when the agent runs as root (nobody)
    worker_gid: int = 65534  # (nogroup)
    # CPUs a worker may run on (None: the scheduler decides). Pinning workers to the agent's CPU makes a round
    # trip a direct switch between the two processes instead of a cross-CPU wake-up (see bench/sandbox.py).
    cpu_affinity: frozenset[int] | None = None

    def batch_timeout(self, rows: int) -> float:
        return min(self.max_timeout_s, self.timeout_s + self.timeout_per_row_s * max(0, rows - 1))


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


def _paths() -> tuple[str, str]:
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.find_spec("pyseccomp")
    if spec is None or not spec.origin:
        raise SandboxUnavailable(protocol.LOCKDOWN_STEPS[protocol.STEP_IMPORT])
    return package_parent, os.path.dirname(os.path.abspath(spec.origin))


_SIGDEF = tuple(s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP))


def spawn_worker(limits: Limits, executable: str | None = None) -> "WorkerProcess":
    """Start a fresh locked worker and wait until it reports its lockdown done (a PING round trip).

    Raises SandboxUnavailable if it cannot start or lock itself down.
    """
    import sys

    from sandbox.worker import BOOTSTRAP

    exe = executable or sys.executable
    package_parent, seccomp_dir = _paths()
    argv = [
        exe, "-I", "-S", "-B", "-c", BOOTSTRAP, package_parent, seccomp_dir,
        str(os.getpid()), str(limits.memory_bytes), str(limits.cpu_s), str(limits.worker_uid), str(limits.worker_gid),
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
    if limits.cpu_affinity:
        try:
            os.sched_setaffinity(pid, limits.cpu_affinity)
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


class WorkerProcess:
    """The parent's handle on one worker: two non-blocking pipe ends and an unreaped pid."""

    def __init__(self, pid: int, request_fd: int, answer_fd: int):
        self.pid = pid
        self._req = request_fd
        self._ans = answer_fd
        os.set_blocking(request_fd, False)
        os.set_blocking(answer_fd, False)
        self._rpoll = select.poll()
        self._rpoll.register(answer_fd, select.POLLIN)
        self._wpoll = select.poll()
        self._wpoll.register(request_fd, select.POLLOUT)
        self.wait_status: int | None = None
        self.evaluations = 0
        self.busy_s = 0.0  # wall time spent in requests: bounds the CPU time the worker used after start-up
        try:  # a pidfd names this process, not a pid number that could be reused if someone else reaped it
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = None

    @property
    def alive(self) -> bool:
        return self.wait_status is None

    def request(self, kind: int, body: object, answer_len: int, timeout_s: float) -> bytes:
        """Send one request, return the answer's bytes after the (checked) nonce.

        Raises ValueError (nothing sent) if marshal cannot encode ``body``; EvaluationFailed (the worker
        is then dead and reaped) on a missed deadline, an EOF, a wrong nonce or a wrong length.
        """
        if not self.alive:
            raise EvaluationFailed(Violation.CRASHED)
        nonce = protocol.new_nonce()
        frame = protocol.encode_request(kind, nonce, body)
        start = time.monotonic()
        deadline = start + timeout_s
        self._send(frame, deadline)
        data = self._receive(protocol.NONCE_SIZE + answer_len, deadline)
        if data[: protocol.NONCE_SIZE] != nonce:
            self._fail(Violation.PROTOCOL)
        self.busy_s += time.monotonic() - start
        return data[protocol.NONCE_SIZE:]

    def _send(self, frame: bytes, deadline: float) -> None:
        view = memoryview(frame)
        sent = 0
        while True:
            try:
                sent += os.write(self._req, view[sent:])
            except BlockingIOError:
                pass
            except OSError:  # EPIPE: the worker is gone
                self._fail(Violation.CRASHED)
            if sent == len(frame):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(Violation.TIMEOUT)
            for _fd, event in self._wpoll.poll(math.ceil(remaining * 1000)):
                if event & (select.POLLERR | select.POLLHUP):
                    self._fail(Violation.CRASHED)

    def _receive(self, want: int, deadline: float) -> bytes:
        buf = b""
        while True:
            remaining = deadline - time.monotonic()
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
            if len(buf) >= want:
                if len(buf) > want:
                    self._fail(Violation.PROTOCOL)
                return buf

    def _fail(self, violation: Violation):
        exit_signal = self.kill()
        if exit_signal == signal.SIGSYS:
            violation = Violation.SECCOMP
        raise EvaluationFailed(violation, exit_signal)

    def kill(self) -> int | None:
        """SIGKILL and reap (idempotent). Returns the signal that ended the worker, None if it exited."""
        if self.wait_status is None:
            for fd in (self._req, self._ans):
                try:
                    os.close(fd)
                except OSError:
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
        if self.wait_status >= 0 and os.WIFSIGNALED(self.wait_status):
            return os.WTERMSIG(self.wait_status)
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

    # -- registration

    def register(self, tenant: str, condition_id: str, source: str, parameters: Sequence[str]) -> None:
        """Add (or replace, which clears violations and quarantine) a condition. Spawns lazily.

        The source is compiled here (not executed): a syntax error (or a source over MAX_SOURCE_CHARS)
        is remembered and raised as ConditionRejected by evaluate(), without spawning a worker.
        """
        if not isinstance(tenant, str) or not isinstance(condition_id, str) or not isinstance(source, str):
            raise TypeError("tenant, condition_id and source must be str")
        params = tuple(parameters)
        if not all(isinstance(p, str) for p in params):
            raise TypeError("parameters must be str")
        key = (tenant, condition_id)
        slot = _Slot(tenant, condition_id, source, params)
        slot.rejected = compile_in_parent(source)
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
        )

    # -- evaluation

    def evaluate(
        self, tenant: str, condition_id: str, rows: Iterable[Sequence], timeout_s: float | None = None
    ) -> list[Status]:
        """Evaluate the condition on every row (a tuple of arguments) in one round trip.

        Returns one Status per row. Raises KeyError (not registered), ConditionQuarantined,
        ConditionRejected, BackingOff, SandboxUnavailable, or EvaluationFailed (the whole request failed
        and its worker was killed). ``timeout_s`` defaults to ``Limits.batch_timeout(len(rows))``.
        """
        if not isinstance(rows, (list, tuple)):
            rows = list(rows)
        slot = self._slot(tenant, condition_id)
        with slot.lock:
            if slot.removed:
                raise KeyError((tenant, condition_id))
            if slot.quarantined:
                raise ConditionQuarantined()
            if slot.rejected is not None:
                raise ConditionRejected(slot.rejected)
            if not rows:
                return []
            worker = self._ensure_worker(slot)
            timeout = self.limits.batch_timeout(len(rows)) if timeout_s is None else timeout_s
            try:
                body = worker.request(protocol.EVAL, rows, len(rows), timeout)
            except ValueError:
                raise TypeError("rows must hold only plain values (numbers, None, str)") from None
            except EvaluationFailed as exc:
                self._count_violation(slot, exc.violation, exc.exit_signal)
                raise
            if body.translate(None, protocol.EVAL_STATUS_BYTES):
                worker.kill()
                self._count_violation(slot, Violation.PROTOCOL, None)
                raise EvaluationFailed(Violation.PROTOCOL)
            n = len(rows)
            slot.evaluations += n
            worker.evaluations += n
            if protocol.NOT_BOOL in body:
                self._count_violation(slot, Violation.NOT_BOOL, None)
            if (
                worker.evaluations >= self.limits.max_evaluations
                or worker.busy_s >= self.limits.cpu_s / 2
                or slot.quarantined
            ):
                self._drop_worker(slot)  # recycle: the next request gets a fresh interpreter
            return list(map(_STATUSES.__getitem__, body))

    def evaluate_one(self, tenant: str, condition_id: str, *args, timeout_s: float | None = None) -> Status:
        return self.evaluate(tenant, condition_id, [args], timeout_s)[0]

    # -- internals

    def _slot(self, tenant: str, condition_id: str) -> _Slot:
        with self._lock:
            return self._slots[(tenant, condition_id)]

    def _ensure_worker(self, slot: _Slot) -> WorkerProcess:
        worker = slot.worker
        key = (slot.tenant, slot.condition_id)
        if worker is not None and worker.alive:
            with self._lock:
                if key in self._live:
                    self._live.move_to_end(key)
            return worker
        now = time.monotonic()
        if now < slot.next_spawn_at:
            raise BackingOff(slot.next_spawn_at - now)
        self._make_room()
        worker = spawn_worker(self.limits, self._executable)
        slot.spawns += 1
        try:
            answer = worker.request(protocol.LOAD, (slot.source, slot.parameters), 1, self.limits.load_timeout_s)
        except EvaluationFailed as exc:
            exc.stage = "load"
            self._count_violation(slot, exc.violation, exc.exit_signal)
            raise
        code = answer[0]
        if code != protocol.OK:
            worker.kill()
            reason = _LOAD_REASONS.get(code)
            if reason is None:
                self._count_violation(slot, Violation.PROTOCOL, None)
                raise EvaluationFailed(Violation.PROTOCOL, stage="load")
            slot.rejected = reason
            raise ConditionRejected(reason)
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

    def _count_violation(self, slot: _Slot, violation: Violation, exit_signal: int | None) -> None:
        slot.violations += 1
        slot.last_violation = violation
        if violation is not Violation.NOT_BOOL:
            slot.last_exit_signal = exit_signal
            self._drop_worker(slot)  # already killed and reaped
            backoff = self.limits.backoff_s * 2 ** (slot.violations - 1)
            slot.next_spawn_at = time.monotonic() + min(self.limits.backoff_max_s, backoff)
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

    def __exit__(self, *exc) -> None:
        self.close()
