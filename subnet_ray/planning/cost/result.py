"""What an estimate says: the `Estimate` result (each stage output's `StageCost`, the fixed costs, the Tune trials per
wave) with its wave, per-stage and present-load totals, and `table`, its fixed-width text.

`estimate` (estimate.py) fills it in; the wave lengths come from walltime.py, the Ray Data influence wave's from
ray_data.py. No torch: it prints what was measured.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

STAGES = ("pretrain", "finetune", "subnetworks", "random_masks", "influence")


@dataclass
class StageCost:
    """One stage output's projected cost."""

    key: str
    stage: str
    seconds: float
    memory_bytes: int  # peak memory of the trial while computing it (device or host)
    checkpoint_bytes: int = 0
    sketch_bytes: int = 0


@dataclass
class Estimate:
    """A sweep's projected cost per stage output, its fixed costs, and its wall time on an executor.

    Every seconds figure is what an idle machine takes (see Clock); `at_load` gives the present load's.
    """

    sweep: str
    device: str
    nodes: list[StageCost] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    executor: str = "local"
    fixed: dict[str, float] = field(default_factory=dict)  # walltime.FIXED name -> seconds, once per invocation
    tune: dict[str, float] = field(default_factory=dict)  # tune_wave, tune_trial seconds (Ray executor)
    trials: dict[int, dict[str, list[str]]] = field(default_factory=dict)  # wave -> Tune trial -> its node keys
    slots: int = 1  # trials at a time
    threads: int = 1  # torch threads per trial (resources.cpus)
    slowdown: float = 1.0  # how much slower than idle the calibration ran (Clock.slowdown)
    others: float | None = None  # threads of other processes wanting a core before calibrating (walltime.others_running)
    # trials side by side -> {"train": ..., "sketch": ...}: how much slower than calibrated a fine-tuning step and a
    # sketched example ran in that many Tune trials at once under the present load (side_by_side.side_by_side)
    side_by_side: dict[int, dict[str, float]] = field(default_factory=dict)
    # the influence wave on Ray Data (executor ray, influence.actors > 1): influence trial name -> ray_data.GroupCost
    ray_data: dict = field(default_factory=dict)
    driver_peak_bytes: int | None = None  # the driver's projected peak memory in that wave (None: not measured)

    def waves(self) -> dict[str, float]:
        """Returns each wave's wall seconds, trials scheduled as the executor runs them (a Ray Data influence wave: its
        models one after the other from the driver, no Tune)."""
        from .walltime import WAVES, wave_seconds

        cost = {n.key: n.seconds for n in self.nodes}
        plan = {w: {t: [cost[k] for k in keys] for t, keys in trials.items()} for w, trials in self.trials.items()}
        out = wave_seconds({w: p for w, p in plan.items() if not self._on_ray_data(w)}, self.executor, self.slots,
                           self.tune.get("tune_wave", 0.0), self.tune.get("tune_trial", 0.0))
        out |= wave_seconds({w: p for w, p in plan.items() if self._on_ray_data(w)}, "local", 1)
        return {WAVES[w]: out[WAVES[w]] for w in sorted(plan) if WAVES[w] in out}

    def _on_ray_data(self, wave: int) -> bool:
        """Returns whether wave `wave` is the influence wave run on Ray Data actor pools (not Tune trials)."""
        from .walltime import WAVES

        return bool(self.ray_data) and WAVES[wave] == "influence"

    def total_seconds(self) -> float:
        """Returns the invocation's wall seconds: its fixed costs and its waves."""
        return sum(self.fixed.values()) + sum(self.waves().values())

    def slowdown_at(self, running: int, work: str = "train") -> float:
        """Returns how much slower than on an idle machine each of `running` trials at once runs now, doing `work` ('train'
        or 'sketch'): measured (side_by_side; linear between the counts measured) where it was, else each process's
        fair share of the cores under the load seen while calibrating (walltime.run_slowdown)."""
        from .walltime import cores, run_slowdown

        if not self.side_by_side:
            return run_slowdown(self.slowdown, self.threads, self.threads * running, cores(), self.others)
        ks = sorted(self.side_by_side)
        lo = max([k for k in ks if k <= running] or ks[:1])
        hi = min([k for k in ks if k >= running] or ks[-1:])
        a, b = self.side_by_side[lo][work], self.side_by_side[hi][work]
        return a if hi == lo else a + (b - a) * (running - lo) / (hi - lo)

    def at_load(self) -> dict:
        """Returns each wave's, stage's and the run's seconds under the present load, and the slowdowns behind them.

        A wave's trials are scheduled as in `waves` but, while m of them run at once, each at
        1 / slowdown_at(m) of its idle pace (walltime.shared_schedule); a trial's nodes take its
        slowdown. The fixed costs (one process, the driver) take the fair-share slowdown of one thread.
        """
        from .walltime import WAVES, cores, run_slowdown, shared_schedule

        ray = self.executor == "ray"
        fixed = run_slowdown(self.slowdown, self.threads, 1, cores(), self.others)
        cost = {n.key: n.seconds for n in self.nodes}
        stage_of = {n.key: n.stage for n in self.nodes}
        waves: dict[str, float] = {}
        stages: dict[str, float] = {}
        for w, plan in sorted(self.trials.items()):
            if not plan:
                continue
            names = sorted(plan)  # Tune's start order (wave_seconds)
            if self._on_ray_data(w):  # the driver alone, then the actors side by side, then the scoring tasks'
                from .ray_data import at_load

                waves[WAVES[w]] = 0.0
                for t in names:
                    idle = sum(cost[k] for k in plan[t])
                    took = at_load(self.ray_data[t], idle, fixed, self.slowdown_at)
                    waves[WAVES[w]] += took
                    for k in plan[t]:
                        stages[stage_of[k]] = stages.get(stage_of[k], 0.0) + cost[k] * (took / idle if idle > 0 else 1.0)
                continue
            work = [(self.tune.get("tune_trial", 0.0) if ray else 0.0) + sum(cost[k] for k in plan[t]) for t in names]
            kind = "sketch" if WAVES[w] == "influence" else "train"
            span, elapsed = shared_schedule(work, self.slots if ray else 1, lambda m, kind=kind: self.slowdown_at(m, kind))
            waves[WAVES[w]] = (self.tune.get("tune_wave", 0.0) * fixed if ray else 0.0) + span
            for t, idle, took in zip(names, work, elapsed):
                for k in plan[t]:
                    stages[stage_of[k]] = stages.get(stage_of[k], 0.0) + cost[k] * (took / idle if idle > 0 else 1.0)
        total = sum(self.fixed.values()) * fixed + sum(waves.values())
        idle = self.waves()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return {"slowdown": total / max(self.total_seconds(), 1e-9), "calibration_slowdown": self.slowdown, "load_1min": load,
                "others_running": self.others, "cores": cores(), "fixed_slowdown": fixed,
                "wave_slowdown": {w: s / idle[w] if idle[w] > 0 else 1.0 for w, s in waves.items()},
                "side_by_side": {str(k): v for k, v in self.side_by_side.items()}, "stages": stages, "waves": waves,
                "total_seconds": total, "total_hours": total / 3600}

    def by_stage(self, cpus: float, gpus: float) -> dict[str, dict]:
        """Returns per stage and per fixed cost: outputs, seconds, hours, device_hours (GPU), cpu_hours, peak memory,
        checkpoint and sketch bytes; 'tune' (trial and wave starts), 'parallel' (seconds saved by trials side by side,
        <= 0) and 'total' (the wall time), so that the rows add up to the total."""
        def row(seconds: float, rows: list[StageCost], per_cpu: float) -> dict:
            hours = seconds / 3600
            return {"outputs": len(rows), "seconds": seconds, "hours": hours,
                    "device_hours": hours * gpus if self.device.startswith("cuda") else 0.0, "cpu_hours": hours * per_cpu,
                    "peak_memory_bytes": max((n.memory_bytes for n in rows), default=0),
                    "checkpoint_bytes": sum(n.checkpoint_bytes for n in rows), "sketch_bytes": sum(n.sketch_bytes for n in rows)}

        out = {}
        for stage in STAGES:
            rows = [n for n in self.nodes if n.stage == stage]
            if stage == "pretrain" and not rows:
                continue  # a row of its own only where the sweep pre-trains
            out[stage] = row(sum(n.seconds for n in rows), rows, cpus)
        for name, seconds in self.fixed.items():
            out[name] = row(seconds, [], 1)
        if self.executor == "ray":
            tuned = [t for w, t in self.trials.items() if t and not self._on_ray_data(w)]
            out["tune"] = row(sum(map(len, tuned)) * self.tune.get("tune_trial", 0.0) + len(tuned) * self.tune.get("tune_wave", 0.0), [], 1)
        total = self.total_seconds()
        if self.executor == "ray":
            out["parallel"] = row(total - sum(r["seconds"] for r in out.values()), [], 1)
        out["total"] = row(total, self.nodes, cpus)
        return out



def human_bytes(n: float) -> str:
    """Returns `n` bytes as B, KB, MB, GB or TB (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def table(est: Estimate, cpus: float, gpus: float) -> str:
    """Returns the per-stage and fixed costs as a fixed-width text table (rows add up to the total), the waves, the present
    load's total, then the assumptions."""
    head = (f"{'stage':<13}{'outputs':>8}{'seconds':>10}{'hours':>10}{'device-h':>10}{'CPU-h':>10}{'peak mem':>11}"
            f"{'checkpoints':>13}{'sketches':>11}")
    rows = [head, "-" * len(head)]
    for stage, r in est.by_stage(cpus, gpus).items():
        if stage == "total":
            rows.append("-" * len(head))
        rows.append(f"{stage:<13}{r['outputs'] or '':>8}{r['seconds']:>10.1f}{r['hours']:>10.3g}{r['device_hours']:>10.3g}"
                    f"{r['cpu_hours']:>10.3g}{human_bytes(r['peak_memory_bytes']):>11}{human_bytes(r['checkpoint_bytes']):>13}"
                    f"{human_bytes(r['sketch_bytes']):>11}")
    waves = ", ".join(f"{k} {v:.1f} s" for k, v in est.waves().items())
    load = est.at_load()
    rows.append(f"waves (wall, {est.slots} trial(s) at a time): {waves}")
    others = f", {load['others_running']:g} other thread(s) running" if load["others_running"] is not None else ""
    rows.append(f"at the present load ({load['load_1min']:.2f} on {load['cores']} cores{others}; calibration ran "
                f"{load['calibration_slowdown']:.2f}x slower than idle, this run ~{load['slowdown']:.2f}x): "
                f"{load['total_seconds']:.1f} s ({load['total_hours']:.3g} h)")
    return "\n".join(rows + [f"assumes: {a}" for a in est.assumptions])
