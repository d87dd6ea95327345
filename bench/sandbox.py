"""Cost of evaluating a condition in a seccomp-locked worker, beside in-process and fork-per-evaluation.

All in one run, on the MISSION.md example condition:
- in-process: the compiled function called directly in this process (the unsandboxed floor);
- fork per evaluation: os.fork + a pipe, the child evaluates and writes one byte (measurement only: the
  agent must never fork a worker, a forked child holds the agent's memory);
- locked worker, single: Supervisor.evaluate() of one row (one round trip, nonce checked, statuses);
- locked worker, raw: WorkerProcess.request() of one row (the protocol without the pool's bookkeeping);
- locked worker, batched: Supervisor.evaluate() of 1,000 rows (every household of a neighbourhood);
- a fresh worker: spawn + lockdown + load of the condition (what a respawn or a recycle costs).

Targets: median single round trip at most 50 us; batched cost per evaluation at most 5x in-process.

The worker is measured three ways: where the scheduler puts it, pinned to the parent's CPU, and pinned to
another CPU. On a VM a wake-up of another, idle vCPU is a hypervisor round trip (~25 us each way), so
"other CPU" shows the worst placement; "same CPU" is what Limits(cpu_affinity=...) gives and is the
figure of record below.
Prints figures, asserts nothing. Usage: python bench/sandbox.py [--single N] [--batches N] [--forks N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import Limits, Supervisor, sandbox_available  # noqa: E402
from sandbox import protocol  # noqa: E402
from sandbox.supervisor import spawn_worker  # noqa: E402

MISSION = (
    "def condition(neighborhood_power_consumption, neighborhood_power_production):\n"
    "    return neighborhood_power_production - neighborhood_power_consumption > 500\n"
)
PARAMS = ["neighborhood_power_consumption", "neighborhood_power_production"]


def pct(samples_ns: list[int], q: float) -> float:
    s = sorted(samples_ns)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000  # us


def row(name: str, samples_ns: list[int], per: int = 1) -> None:
    med = statistics.median(samples_ns) / 1000
    p99 = pct(samples_ns, 0.99)
    rate = per * 1e6 / med if med else float("inf")
    print(f"{name:50s} {med:11.2f} {p99:11.2f} {med / per * 1000:13.1f} {rate:14,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--single", type=int, default=20000)
    ap.add_argument("--batches", type=int, default=500)
    ap.add_argument("--forks", type=int, default=500)
    ap.add_argument("--spawns", type=int, default=20)
    args = ap.parse_args()

    ok, reason = sandbox_available()
    print(f"sandbox_available: {ok} ({reason}); python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
          f"uid {os.getuid()}")
    rows = [(float(i % 900), float((i * 7919) % 2000)) for i in range(1000)]
    one = (100.0, 700.0)
    clock = time.perf_counter_ns

    namespace: dict = {}
    exec(compile(MISSION, "<bench>", "exec"), namespace)  # trusted baseline, this process only
    fn = namespace["condition"]

    # in-process
    single_in = []
    for _ in range(args.single):
        t = clock()
        fn(*one)
        single_in.append(clock() - t)
    batch_in = []
    for _ in range(args.batches):
        t = clock()
        [fn(*r) for r in rows]
        batch_in.append(clock() - t)

    # fork per evaluation
    forks = []
    for _ in range(args.forks):
        t = clock()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, b"\x01" if fn(*one) else b"\x00")
            os._exit(0)
        os.close(w)
        os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        forks.append(clock() - t)

    limits = Limits(max_evaluations=10**9)
    all_cpus = os.sched_getaffinity(0)

    def measure(parent_cpus, worker_cpus):
        os.sched_setaffinity(0, parent_cpus)
        with Supervisor(limits) as sup:
            sup.register("bench", "mission", MISSION, PARAMS)
            sup.evaluate("bench", "mission", [one])  # spawn outside the measurement
            os.sched_setaffinity(sup.state("bench", "mission").pid, worker_cpus)
            for _ in range(1000):
                sup.evaluate("bench", "mission", [one])
            single = []
            for _ in range(args.single):
                t = clock()
                sup.evaluate("bench", "mission", [one])
                single.append(clock() - t)
            batch = []
            for _ in range(args.batches):
                t = clock()
                sup.evaluate("bench", "mission", rows)
                batch.append(clock() - t)
            assert sup.state("bench", "mission").spawns == 1
        os.sched_setaffinity(0, all_cpus)
        return single, batch

    first = min(all_cpus)
    placements = [("scheduler's choice", all_cpus, all_cpus), ("same CPU", {first}, {first})]
    if len(all_cpus) > 1:
        placements.append(("other CPU", {first}, {max(all_cpus)}))
    measured = [(label, *measure(p, w)) for label, p, w in placements]
    single_w, batch_w = measured[1][1], measured[1][2]  # the figures of record: same CPU (see the docstring)

    worker = spawn_worker(limits)
    raw = []
    try:
        worker.request(protocol.LOAD, (MISSION, tuple(PARAMS)), 1, 5.0)
        for _ in range(1000):
            worker.request(protocol.EVAL, [one], 1, 1.0)
        for _ in range(args.single):
            t = clock()
            worker.request(protocol.EVAL, [one], 1, 1.0)
            raw.append(clock() - t)
    finally:
        worker.kill()

    spawns = []
    for _ in range(args.spawns):
        t = clock()
        w = spawn_worker(limits)
        w.request(protocol.LOAD, (MISSION, tuple(PARAMS)), 1, 5.0)
        spawns.append(clock() - t)
        w.kill()

    print()
    print(f"{'':50s} {'median us':>11s} {'p99 us':>11s} {'ns per eval':>13s} {'evals per s':>14s}")
    row("in-process call, single", single_in)
    row("in-process, loop over 1,000 rows", batch_in, 1000)
    row("fork per evaluation (baseline only)", forks)
    for label, single, batch in measured:
        row(f"locked worker, single, {label}", single)
        row(f"locked worker, batch of 1,000, {label}", batch, 1000)
    row("locked worker, single, raw protocol", raw)
    row("fresh worker: spawn + lockdown + load", spawns)
    print()
    per_eval_in = statistics.median(batch_in) / 1000
    per_eval_w = statistics.median(batch_w) / 1000
    print(f"single round trip median (same CPU): {statistics.median(single_w) / 1000:.1f} us (target <= 50 us); "
          + ", ".join(f"{label}: {statistics.median(s) / 1000:.1f} us" for label, s, _ in measured))
    print(f"batched cost per evaluation: {per_eval_w:.0f} ns vs in-process {per_eval_in:.0f} ns in a loop = "
          f"{per_eval_w / per_eval_in:.2f}x (target <= 5x); vs a single in-process call "
          f"{statistics.median(single_in):.0f} ns = {per_eval_w / statistics.median(single_in):.2f}x")
    print(f"fork per evaluation / locked worker single: "
          f"{statistics.median(forks) / statistics.median(single_w):.0f}x slower")


if __name__ == "__main__":
    main()
