"""A sweep invocation's wall time from its stages' costs and its fixed costs: the executor's schedule and the present load.

`run` computes the graph in waves (pre-training, training, SFT, influence), then writes the report.
The local executor runs every node in its own process, one after the other. The Ray executor
runs each wave as Tune trials (a training trial's nodes in order; the influence variants of one
fine-tuned model one trial), `slots` at a time, each trial in a new worker process (`tune_trial` seconds before
its nodes) and each wave with Tune's own cost (`tune_wave`). Fixed costs (startup, data,
tracking, report; ray_start with Ray) are paid once per invocation whatever the sweep's size.

Under load (Estimate.at_load), while m trials run at once each goes at 1 / slowdown(m) of its idle
pace (shared_schedule): with Ray, slowdown(m) is measured by m processes side by side at the
niceness Ray gives its trials (calibration.side_by_side); otherwise (and for the driver's fixed
costs) it is each thread's fair share of the cores, from the load seen while calibrating (run_slowdown).
"""
from __future__ import annotations

import heapq
import os

FIXED = ("startup", "data", "ray_start", "tracking", "report")  # once per invocation, in the order they happen
WAVES = {0: "pretrain", 1: "train", 2: "sft", 3: "influence"}  # runner.run_sweep's wave labels


def cores() -> int:
    """Returns the CPU cores this process may use (a local Ray instance sees the same)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def slots(cpus_per_trial: float, executor: str, cluster_cpus: int | None = None) -> int:
    """Returns how many trials run at once: 1 in one process; on local Ray, its CPUs over each trial's CPUs."""
    if executor == "local":
        return 1
    return max(1, int((cluster_cpus or cores()) // max(cpus_per_trial, 1e-9)))


def makespan(durations: list[float], n: int) -> float:
    """Returns when the last of `durations` ends, each started in order on the first of `n` free slots (Tune's FIFO order)."""
    free = [0.0] * max(1, n)
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def shared_schedule(durations: list[float], n: int, factor) -> tuple[float, list[float]]:
    """Returns (when the last job ends, each job's elapsed seconds) for jobs started in order on the first of `n` free
    slots, where each of m jobs running at once progresses at 1 / factor(m) of its own pace (they share the machine).

    factor(m) == 1 for every m: makespan's schedule.
    """
    pending, running = list(enumerate(durations)), {}  # job -> idle seconds of work left
    start, elapsed, now = {}, [0.0] * len(durations), 0.0
    while pending or running:
        while pending and len(running) < max(1, n):
            i, d = pending.pop(0)
            running[i], start[i] = d, now
        f = factor(len(running))
        first = min(running, key=running.get)
        step = running[first]  # idle seconds of work every running job does until the first of them ends
        now += step * f
        for i in list(running):
            running[i] -= step
            if i == first or running[i] <= 1e-12 * max(1.0, durations[i]):
                elapsed[i] = now - start[i]
                del running[i]
    return now, elapsed


def wave_seconds(trials: dict[int, dict[str, list[float]]], executor: str, n_slots: int, tune_wave: float = 0.0,
                 tune_trial: float = 0.0) -> dict[str, float]:
    """Returns each wave's wall seconds: wave -> {trial name: its nodes' seconds} scheduled as the executor runs it.

    Tune starts a wave's trials in the order of their sorted names (grid_search(sorted(plan))).
    """
    out = {}
    for wave, plan in sorted(trials.items()):
        work = [sum(plan[name]) for name in sorted(plan)]
        if not work:
            continue
        if executor == "local":
            out[WAVES[wave]] = sum(work)
        else:
            out[WAVES[wave]] = tune_wave + makespan([tune_trial + w for w in work], n_slots)
    return out


def others_running(samples: int = 20, interval: float = 0.05) -> float | None:
    """Returns how many threads of other processes want a core now: the median over `samples` reads of the machine's
    runnable threads (/proc/stat procs_running), less the reader. None where that count is not this machine's
    cores' (not Linux, or a container that sees only some of the host's CPUs: the count is the host's).
    """
    import statistics
    import time

    if os.cpu_count() != cores():
        return None
    counts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(interval)
            with open("/proc/stat") as f:
                counts += [int(line.split()[1]) for line in f if line.startswith("procs_running ")]
    except OSError:
        return None
    return max(0.0, statistics.median(counts) - 1) if counts else None


def run_slowdown(calibration_slowdown: float, threads: int, busy_threads: int, n_cores: int, others: float | None = None) -> float:
    """Returns how much slower than on an idle machine the sweep will run, from the load before and during its calibration.

    `others`: threads of other processes that wanted a core before calibrating (others_running), if
    known. The calibration kept `threads` threads busy and ran `calibration_slowdown` times slower:
    other work then wanted about slowdown x cores - threads cores (none where it ran at full speed; a
    single thread on a machine with a free core sees no slowdown whatever the others, hence `others`).
    The sweep keeps `busy_threads` busy (trials side by side x threads each); all share the cores evenly.
    """
    inferred = calibration_slowdown * n_cores - threads if calibration_slowdown > 1.05 else 0.0
    wanting = max(0.0, inferred, others or 0.0)
    return max(1.0, calibration_slowdown if busy_threads <= threads else 0.0, (wanting + busy_threads) / n_cores)


def trials(nodes) -> dict[int, dict[str, list]]:
    """Returns wave -> Tune trial name -> its nodes in order, as runner._plan groups them (the influence nodes of one
    fine-tuned model one trial)."""
    out: dict[int, dict[str, list]] = {}
    for n in nodes:
        name = f"{n.trial}/influence" if str(n.stage) == "influence" else n.trial
        out.setdefault(n.wave, {}).setdefault(name, []).append(n)
    return out
