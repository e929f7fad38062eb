"""How much slower trials run side by side: k Tune trials at once on a local Ray, timed inside Ray.

Not a fixed cost (overheads.py has those): `Estimate.at_load` (result.py) for the Ray executor scales each
wave's fine-tuning steps and sketched examples by what this probe measures for as many trials as
the wave runs at once. The trials do calibration's own work (`calibration.probe_work`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ...sweep.config import SweepSpec


def side_by_side(spec: SweepSpec, task_id: str, ks: list[int], seconds: float = 2.0) -> dict[int, dict[str, float]]:
    """Returns, for each k in `ks`, the wall seconds per fine-tuning step ("train") and per sketched example ("sketch") of k
    Tune trials doing that work at once, as a wave of k trials does, under the present load (the mean over the k trials).

    What slows trials side by side is measured, not modelled: the memory bandwidth large AdamW
    steps share, other processes' threads taking turns with theirs, what a wave runs beside its
    trials (Ray's own processes, the Tune driver) and the priority Ray gives its workers
    (niceness 15: beside a busy process of niceness 0 they get almost none of its core). A fresh
    process starts a local Ray of its own, as `run` does, and runs max(ks) trials of
    resources.cpus CPUs each; every trial imports what a trial imports, builds the sweep's model,
    takes the first steps (optimizer state allocated) and one sketch pass; then for each k the
    first k of them time the batches calibrate times (the first training batches, a spread of
    training examples) for `seconds` each, starting together (a barrier of files in a shared folder)
    after one untimed call each (the first call after the other phase's work paid to touch memory
    again: a 12-layer encoder's first training cycle after a sketch pass ran ~1.2x its steady time).
    """
    ks = sorted(set(ks), reverse=True)
    job = {"spec": spec.model_dump(mode="json"), "task": task_id, "seconds": seconds,
           "phases": [(name, k) for k in ks for name in ("train", "sketch")]}
    cmd = [sys.executable, "-c", "from subnet_ray.planning.cost.side_by_side import _side_by_side_driver; _side_by_side_driver()"]
    out = subprocess.run(cmd, input=json.dumps(job), capture_output=True, text=True, env=os.environ | {"RAY_USAGE_STATS_ENABLED": "0"})
    last = (out.stdout.strip().splitlines() or [""])[-1]
    got = json.loads(last) if last.startswith("{") else {}
    if out.returncode != 0 or not got or "error" in got:
        why = got.get("error") or (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        raise RuntimeError(f"side-by-side probe ({ks[0]} Tune trials): {why}")
    return {int(k): v for k, v in got.items()}


def _side_by_side_driver() -> None:
    """The driver of side_by_side in a process of its own: the job as JSON on stdin, {k: {train, sketch}} as JSON on stdout."""
    import math

    job = json.loads(sys.stdin.read())
    try:
        import ray
        from ray import tune

        from ...orchestration.tune import init_ray

        spec = SweepSpec.model_validate(job["spec"])
        n = max(k for _, k in job["phases"])
        init_ray(None, max(os.cpu_count() or 1, math.ceil(n * spec.resources.cpus)))  # all n trials at once
        try:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "sync").mkdir()
                tuner = tune.Tuner(tune.with_resources(_side_by_side_trial, {"cpu": spec.resources.cpus}),
                                   param_space={"job": json.dumps(job), "sync": str(Path(tmp) / "sync"), "n": n,
                                                "i": tune.grid_search(list(range(n)))},
                                   tune_config=tune.TuneConfig(reuse_actors=False),
                                   run_config=tune.RunConfig(name="side_by_side", storage_path=tmp, verbose=0))
                results = tuner.fit()
        finally:
            ray.shutdown()
        got = sorted((r.config["i"], json.loads(r.metrics["probe"]) if "probe" in (r.metrics or {}) else {"error": str(r.error)})
                     for r in results)
        errors = [g["error"] for _, g in got if "error" in g]
        if errors:
            raise RuntimeError(errors[0])
        ks = sorted({k for _, k in job["phases"]})
        print(json.dumps({k: {name: sum(g[f"{name}/{k}"] for _, g in got[:k]) / k for name in ("train", "sketch")} for k in ks}))
    except Exception as e:  # noqa: BLE001 - reported to side_by_side, which raises it
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)


def _side_by_side_trial(config: dict) -> None:
    """One Tune trial of side_by_side: the probe's work, its phases started together with the other trials'."""
    from ray import tune

    from .calibration import probe_work
    from ...orchestration.workers import use_cpus

    use_cpus(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))
    sync, n, i = Path(config["sync"]), config["n"], config["i"]

    def together(phase: str, k: int, warm_up) -> bool:
        if i < k:  # the first call after another phase's work is slow (memory given back, touched again): not timed
            warm_up()
        (sync / f"{phase}.{i}").touch()
        deadline = time.monotonic() + 900
        while len(list(sync.glob(f"{phase}.*"))) < n:
            if (sync / "abort").exists():
                raise RuntimeError("another trial of the probe failed")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the other trials were not ready for {phase} in 900 s")
            time.sleep(0.02)
        return i < k  # the first k time it, the others wait for the next phase

    try:
        out = probe_work(json.loads(config["job"]), together)
    except Exception as e:  # noqa: BLE001 - reported to the driver, which raises it
        (sync / "abort").touch()
        out = {"error": f"{type(e).__name__}: {e}"}
    tune.report({"probe": json.dumps(out)})
