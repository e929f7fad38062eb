"""Python's full garbage collections during a local smoke run, with the heap frozen after imports (the code as it is)
and without (runner.freeze_heap replaced by a no-op), runs alternating side by side.

Each run is `subnet-ray run sweeps/smoke.yaml --executor local` in a fresh interpreter with a gc
callback: how many full (generation 2) collections ran from the first stage output on, their
seconds, the longest, and each fine-tuning's ledger seconds. Prints one JSON line per run and one
summary line (medians per variant).

    python benchmarks/gc_freeze.py [--repeats 2] [--out /tmp/gc_freeze]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import gc, json, sys, time
import subnet_ray.orchestration.runner as runner
import subnet_ray.stages as stages
if sys.argv[2] == "unfrozen":
    runner.freeze_heap = lambda: None
full, started, t = [], [False], {}
def on_gc(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        t["s"] = time.perf_counter()
    elif started[0]:
        full.append(time.perf_counter() - t["s"])
gc.callbacks.append(on_gc)
execute = stages.execute
def first(node, *a, **k):
    started[0] = True
    return execute(node, *a, **k)
import subnet_ray.orchestration.executors as executors
executors.execute = first
from subnet_ray.cli import main
w = time.perf_counter()
main(["run", "sweeps/smoke.yaml", "--executor", "local", "--root", sys.argv[1], "--quiet"])
print(json.dumps({"wall_s": time.perf_counter() - w, "full_collections": len(full), "full_gc_s": sum(full),
                  "longest_gc_s": max(full, default=0.0)}))
"""


def ledger_finetunes(root: Path) -> list[float]:
    rows = [json.loads(p.read_text()) for p in (root / "store" / "_ledger").glob("*.json")]
    return [round(r["seconds"], 3) for r in sorted(rows, key=lambda r: r["time"]) if r["stage"] == "finetune"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="/tmp/gc_freeze")
    a = p.parse_args()
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    runs: dict[str, list[dict]] = {"frozen": [], "unfrozen": []}
    for i in range(a.repeats):
        for variant in (("frozen", "unfrozen") if i % 2 == 0 else ("unfrozen", "frozen")):
            root = Path(a.out) / f"{variant}{i}"
            shutil.rmtree(root, ignore_errors=True)
            out = subprocess.run([sys.executable, "-c", CHILD, str(root), variant], cwd=ROOT, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{variant} run failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1]) | {"finetune_s": ledger_finetunes(root)}
            row = {"bench": "gc_freeze", "variant": variant, "repeat": i, "load_1min": round(os.getloadavg()[0], 2)} | row
            runs[variant].append(row)
            print(json.dumps(row), flush=True)
    med = {v: {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "full_collections", "full_gc_s", "longest_gc_s")}
           for v, rows in runs.items()}
    print(json.dumps({"bench": "gc_freeze", "summary": True, "median": med,
                      "wall_ratio_unfrozen_over_frozen": med["unfrozen"]["wall_s"] / med["frozen"]["wall_s"]}))


if __name__ == "__main__":
    main()
