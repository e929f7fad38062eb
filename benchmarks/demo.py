"""The demo sweep's wall time and peak memory, and Ray's overhead on the same trials.

Runs sweeps/demo.yaml twice from an empty root: once in one process (executor local) and
once through Ray Tune + Ray Data (local Ray). Prints one JSON line per run with wall time per
wave and the peak of the machine's used memory above the starting level (sampled every
0.2 s: it includes Ray's worker processes, and anything else running on the machine), then a
line with ray_overhead = (Ray training waves time / one-process training waves time) - 1,
target <= 0.15. After the first run, one more line: the demo's headline effects
(subnet_ray.analysis.effects: in-language positive shares of the full model, heads kept per
language, Fig 2 diagonal, random-mask changes, Fig 8 correlation) and their checks.
"""
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from subnet_ray.sweep.config import load_sweep
from subnet_ray.orchestration.runner import run_sweep

DEMO = Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml"


def used_bytes() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kb = lambda k: int(info[k].split()[0]) * 1024  # noqa: E731
    return kb("MemTotal") - kb("MemAvailable")


def measured(executor: str, root: Path) -> dict:
    base, peak, stop = used_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], used_bytes() - base)
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    run = run_sweep(load_sweep(DEMO), root, executor=executor, progress=False)
    wall = time.perf_counter() - start
    stop.set()
    t.join()
    summary = json.loads((run.reports[0] / "summary.json").read_text())
    return {"benchmark": "demo", "executor": executor, "wall_s": round(wall, 1), "effects": summary["effects"],
            "waves_s": {k: round(v, 1) for k, v in run.seconds.items()}, "peak_memory_mb": round(peak[0] / 2**20),
            "stage_outputs": len(run.computed), "target_wall_s": 300}


def main() -> None:
    out = {}
    for executor in sys.argv[1:] or ["local", "ray"]:
        with tempfile.TemporaryDirectory() as d:
            out[executor] = measured(executor, Path(d))
        effects = out[executor].pop("effects")
        print(json.dumps(out[executor]), flush=True)
        if len(out) == 1:
            for task, values in effects.items():
                print(json.dumps({"benchmark": "demo_effects", "executor": executor, **values}), flush=True)
    if {"local", "ray"} <= set(out):
        train = lambda r: r["waves_s"]["train"] + r["waves_s"]["sft"]  # noqa: E731
        print(json.dumps({"benchmark": "demo_ray_overhead", "one_process_train_s": round(train(out["local"]), 1),
                          "tune_train_s": round(train(out["ray"]), 1),
                          "ray_overhead": round(train(out["ray"]) / train(out["local"]) - 1, 3), "target_ray_overhead": 0.15,
                          "influence_local_s": out["local"]["waves_s"]["influence"], "influence_tune_s": out["ray"]["waves_s"]["influence"]}))


if __name__ == "__main__":
    main()
