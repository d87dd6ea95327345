"""Cost of isolated evaluation (one locked row process per household's row, forked from a per-trigger zygote),
beside the designs it replaces, all in one run, on the MISSION.md example condition:

- in-process: the compiled function called in a loop in this process (the unsandboxed floor);
- shared interpreter (the design before the zygote): one fresh interpreter evaluating the whole batch, the module
  executed afresh per row, over the same pipes and marshal framing (without its seccomp filter, whose cost per
  system call is negligible here); rows and windows share its interpreter state, which is what S1 exploited;
- fork per evaluation: os.fork of this (small) process + a pipe per row (measurement only: the agent must never
  fork, a forked child holds the agent's memory);
- isolated: Supervisor.evaluate() of batches of 1, 100 and 1,000 rows, two ways. The MISSION example is in the
  closed language (sandbox.closed), so by default its zygote is an evaluator: it evaluates every row itself with
  its third filter stacked (no fork, no clock). With Limits(evaluators=False), what every condition outside the
  closed language gets: per row, the zygote forks a row process, which reads its row, unmaps the vDSO, stacks its
  seccomp filter, executes the module, answers and exits; pinned to one CPU (the default) and where the scheduler
  puts the zygote (pin_zygotes=False).

Per row: median and p99 over the requests of wall time / rows; and CPU per row (the zygote's own and its row
processes', from /proc, plus this process's). Then, for each way, what a 1-minute window of 1,000 households x 10 triggers costs
as a share of one core, here and on a Raspberry Pi 4 core (taken as 4x slower). Target: <= 200 us per row for a
batch of 1,000.

Prints figures, asserts nothing. Usage: PYTHONPATH=. python bench/triggers_sandbox.py [--quick]
(the file is not named sandbox.py: bench/ is sys.path[0] when a bench runs, and would shadow the package.)
"""

from __future__ import annotations

import argparse
import marshal
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import Limits, Supervisor, sandbox_available  # noqa: E402

MISSION = (
    "def condition(neighborhood_power_consumption, neighborhood_power_production):\n"
    "    return neighborhood_power_production - neighborhood_power_consumption > 500\n"
)
PARAMS = ["neighborhood_power_consumption", "neighborhood_power_production"]
HOUSEHOLDS, TRIGGERS, WINDOW_S, PI_SLOWER = 1000, 10, 60.0, 4.0

# The shared-interpreter worker, as before the zygote: one interpreter, a fresh module execution per row.
SHARED = r"""
import marshal, os, sys
def read(n):
    b = b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            os._exit(0)
        b += c
    return b
source = marshal.loads(read(int.from_bytes(read(4), "little")))
code = compile(source, "<condition>", "exec")
builtins = {"abs": abs, "len": len, "max": max, "min": min}
while True:
    rows = marshal.loads(read(int.from_bytes(read(4), "little")))
    out = bytearray()
    for row in rows:
        ns = {"__builtins__": builtins, "__name__": "condition"}
        try:
            exec(code, ns)
            r = ns["condition"](*row)
        except BaseException:
            out.append(2)
            continue
        out.append(1 if r is True else 0 if r is False else 3)
    os.write(1, bytes(out))
"""


def frame(obj) -> bytes:
    payload = marshal.dumps(obj, 2)
    return len(payload).to_bytes(4, "little") + payload


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of pid, in seconds (its reaped children included)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def report(name: str, per_row_us: list[float], cpu_per_row_us: float | None = None) -> None:
    cpu = f"{cpu_per_row_us:12.1f}" if cpu_per_row_us is not None else f"{'':>12s}"
    print(f"{name:58s} {statistics.median(per_row_us):11.1f} {pct(per_row_us, 0.99):11.1f} {cpu}")


def rows_of(n: int) -> list[tuple]:
    return [(float(i % 900), float((i * 7919) % 2000)) for i in range(n)]


def in_process(reps: int) -> list[float]:
    namespace: dict = {}
    exec(compile(MISSION, "<bench>", "exec"), namespace)  # trusted baseline, this process only
    fn = namespace["condition"]
    rows = rows_of(1000)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        [fn(*r) for r in rows]
        out.append((time.perf_counter() - t) / 1000 * 1e6)
    return out


def shared_interpreter(n: int, reps: int) -> tuple[list[float], float]:
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", SHARED], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, bufsize=0, env={})
    try:
        os.write(proc.stdin.fileno(), frame(MISSION))
        request = frame(rows_of(n))
        out = []
        c0, w0 = cpu_self(), proc_cpu(proc.pid)
        for _ in range(reps):
            t = time.perf_counter()
            os.write(proc.stdin.fileno(), request)
            got = b""
            while len(got) < n:
                got += os.read(proc.stdout.fileno(), n - len(got))
            out.append((time.perf_counter() - t) / n * 1e6)
        cpu = (cpu_self() - c0 + proc_cpu(proc.pid) - w0) / (n * reps) * 1e6
        return out, cpu
    finally:
        proc.kill()
        proc.wait()


def fork_per_evaluation(reps: int) -> tuple[list[float], float]:
    namespace: dict = {}
    exec(compile(MISSION, "<bench>", "exec"), namespace)
    fn = namespace["condition"]
    out = []
    c0 = cpu_self()
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(reps):
        t = time.perf_counter()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, b"\x01" if fn(100.0, 700.0) else b"\x00")
            os._exit(0)
        os.close(w)
        os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        out.append((time.perf_counter() - t) * 1e6)
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    children = ch1.ru_utime + ch1.ru_stime - ch0.ru_utime - ch0.ru_stime
    return out, (cpu_self() - c0 + children) / reps * 1e6


def isolated(limits: Limits, n: int, reps: int) -> tuple[list[float], float]:
    with Supervisor(limits) as sup:
        sup.register("bench", "mission", MISSION, PARAMS)
        sup.evaluate("bench", "mission", rows_of(1))  # spawn + load outside the measurement
        pid = sup.state("bench", "mission").pid
        rows = rows_of(n)
        out = []
        c0, z0 = cpu_self(), proc_cpu(pid)
        for _ in range(reps):
            t = time.perf_counter()
            sup.evaluate("bench", "mission", rows)
            out.append((time.perf_counter() - t) / n * 1e6)
        cpu = (cpu_self() - c0 + proc_cpu(pid) - z0) / (n * reps) * 1e6
        assert sup.state("bench", "mission").spawns == 1, "the zygote was replaced during the measurement"
    return out, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    scale = 0.2 if args.quick else 1.0
    reps = {1: max(20, int(300 * scale)), 100: max(3, int(20 * scale)), 1000: max(2, int(6 * scale))}

    ok, reason = sandbox_available()
    print(f"sandbox_available: {ok} ({reason}); python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
          f"{os.uname().machine}; uid {os.getuid()}; load average {os.getloadavg()[0]:.2f}")
    if not ok:
        print("no sandbox here: nothing to measure")
        return
    print()
    print(f"{'per row':58s} {'median us':>11s} {'p99 us':>11s} {'CPU us':>12s}")
    report("in-process loop over 1,000 rows", in_process(200))
    for n in (1, 100, 1000):
        per_row, cpu = shared_interpreter(n, reps[n])
        report(f"shared interpreter (before), batch of {n:,}", per_row, cpu)
    forks, fork_cpu = fork_per_evaluation(reps[1])
    report("fork per evaluation of this process (baseline)", forks, fork_cpu)
    limits = Limits(max_evaluations=10**9, timeout_s=30.0, timeout_per_row_s=0.05, max_timeout_s=600.0, cpu_s=3600,
                    cpu_budget_fraction=2.0)
    forking = Limits(**{**limits.__dict__, "evaluators": False})
    first = min(os.sched_getaffinity(0))
    tiers = {
        "closed language, one evaluator per trigger": limits,
        "process per row, zygote pinned to one CPU": Limits(**{**forking.__dict__, "cpu_affinity": frozenset({first})}),
        "process per row, scheduler's choice": Limits(**{**forking.__dict__, "pin_zygotes": False}),
    }
    results = {}
    for label, lim in tiers.items():
        for n in (1, 100, 1000):
            per_row, cpu = isolated(lim, n, reps[n])
            results[(label, n)] = (per_row, cpu)
            report(f"{label}, batch of {n:,}"[:58], per_row, cpu)

    print()
    rows_per_window = HOUSEHOLDS * TRIGGERS
    for label in tiers:
        per_row, cpu = results[(label, 1000)]
        median_1000 = statistics.median(per_row)
        cpu_s = cpu * 1e-6 * rows_per_window
        print(f"{label}: batch of 1,000: median {median_1000:.1f} us per row (target <= 200 us): "
              f"{'met' if median_1000 <= 200 else 'NOT met'}; a {WINDOW_S:.0f} s window of {HOUSEHOLDS:,} households "
              f"x {TRIGGERS} triggers = {rows_per_window:,} rows: {cpu_s:.2f} s of CPU = "
              f"{100 * cpu_s / WINDOW_S:.1f}% of one core here, ~{100 * PI_SLOWER * cpu_s / WINDOW_S:.1f}% of a Pi 4 "
              f"core (4x slower)")

if __name__ == "__main__":
    main()
