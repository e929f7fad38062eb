"""The influence stage on a 12-layer encoder: its time split, and before/after wall time measured side by side.

The sweep (issue 21, scaled down to run in minutes on 2 cores): the local 12x12 h384 encoder of
encoder12.py (250,002-row embedding, 470 MB checkpoints), XNLI format, 3 languages x 60 training
examples, 20 test examples per language, 2 epochs (2 checkpoints), methods full + sft, random
seeds 1 and 2, d=256, top-k 10: 7 influence outputs (full, full+subnet, full+random:1,
full+random:2, full+subopt:de, full+subopt:fr on the full model; sft+subnet on the SFT model).

Steps: (1) the training waves once, into <work>/train (reused when there); (2) per repeat, for each
code version (the base commit's tree, given by --base, and this tree), interleaved and alternating
which goes first: a fresh root holding the training outputs (hard links) and `run_sweep` as
`subnet-ray run` runs it (executor ray: Tune trials), in a subprocess with PYTHONPATH on that
version; (3) per version, the same wave in-process (executor local) with the stage's functions
wrapped in timers: the time split. Ray/Tune overhead = Tune wave - local wave.

Prints JSON lines: {"bench": "influence_stage", "what": "run", ...} per run (wave seconds, load
average before and after), "what": "equal" (max relative score difference of the two versions'
tables, per output), "what": "split" per version, and "what": "ratio" (median base / median new
influence wave, Tune path and local path).

    nice -n 10 python benchmarks/influence_stage.py --base /tmp/base [--new CHECKOUT] [--work /tmp/influence_stage] [--repeats 2] [--profile-repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SWEEP = """name: infl21
tasks:
  - id: xnli
    source: {data}
    languages: [{languages}]
    train_size: {train}
    dev_size: 30
    test_size: 20
model: {{name: {model}}}
training: {{lr: 2.0e-5, epochs: {epochs}, batch_size: 16, max_length: 64, seeds: [1]}}
influence: {{proj_dim: 256, top_k: 10, test_per_language: 20, batch_size: 16}}
methods: [full, sft]
random_seeds: [1, 2]
resources: {{cpus: 2, gpus: 0, max_failures: 1}}
"""

# Runs in a subprocess with PYTHONPATH on one code version: the sweep as `subnet-ray run` runs it.
RUN = """
import json, sys, time
from subnet_ray.sweep.config import load_sweep
from subnet_ray.orchestration.runner import run_sweep
run = run_sweep(load_sweep(sys.argv[1]), sys.argv[2], executor=sys.argv[3], progress=False)
print("RESULT " + json.dumps({"seconds": run.seconds, "computed": len(run.computed)}))
"""

# The same, executor local, with the influence stage's functions timed (names looked up in the
# modules that call them, which both versions share).
PROFILE = """
import json, sys, time
from collections import defaultdict
import pandas as pd
import subnet_ray.influence.pipeline as pipeline
import subnet_ray.stages as stages
import subnet_ray.storage.store as store_mod
from subnet_ray.sweep.config import load_sweep
from subnet_ray.orchestration.runner import run_sweep

spent, calls, n_train = defaultdict(float), defaultdict(int), [None]
active = [False]  # only inside the influence wave

def timed(owner, name, label):
    real = getattr(owner, name)
    def wrapper(*a, **kw):
        if not active[0]:
            return real(*a, **kw)
        what = label(a) if callable(label) else label
        t = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            spent[what] += time.perf_counter() - t
            calls[what] += 1
    setattr(owner, name, wrapper)

timed(stages, "build_model", "model_build")
timed(stages, "load_checkpoint", "checkpoint_load")
timed(pipeline, "load_checkpoint", "checkpoint_load")
timed(pipeline, "checkpoint_metas", "checkpoint_headers")
timed(pipeline, "sketch_examples", lambda a: "sketch_train" if len(a[1]) == n_train[0] else "sketch_test")
timed(pipeline, "top_influences", "score_topk")
timed(stages, "evaluate", "predictions")
timed(store_mod.Store, "path", "inputs_hash_check")  # masks and checkpoints, SHA-256 checked once per process
timed(store_mod.Store, "commit", "store_write")
timed(pd.DataFrame, "to_parquet", "store_write")

from subnet_ray.orchestration import executors
real_run_wave = executors.LocalExecutor.run_wave
wave = {}
def run_wave(self, w, label, plan):
    if w == executors.INFLUENCE_WAVE:
        n_train[0] = len(stages.task_data(self.spec, self.spec.tasks[0].id)[1]["train"])
        active[0] = True
        t = time.perf_counter()
    try:
        return real_run_wave(self, w, label, plan)
    finally:
        if w == executors.INFLUENCE_WAVE:
            active[0] = False
            wave["s"] = time.perf_counter() - t
executors.LocalExecutor.run_wave = run_wave
run_sweep(load_sweep(sys.argv[1]), sys.argv[2], executor="local", progress=False)
split = {k: round(v, 2) for k, v in sorted(spent.items())}
split["other"] = round(wave["s"] - sum(spent.values()), 2)
print("RESULT " + json.dumps({"wave_s": round(wave["s"], 2), "split_s": split, "calls": dict(calls)}))
"""


def load() -> float:
    """Returns the 1-minute load average."""
    return os.getloadavg()[0]


def emit(record: dict) -> None:
    print(json.dumps({"bench": "influence_stage"} | record), flush=True)


def prepare(work: Path, encoder: Path | None, languages: list[str], train: int, epochs: int) -> Path:
    """Returns the sweep file, after building the encoder (unless given) and the training waves' outputs (unless there)."""
    sys.path.insert(0, str(HERE))
    from encoder12 import build

    from subnet_ray.sweep.config import load_sweep
    from subnet_ray.sweep.graph import graph
    from subnet_ray.stages import execute
    from subnet_ray.storage.store import store_for

    work.mkdir(parents=True, exist_ok=True)
    base = encoder or work / "enc12"
    model_dir, data_dir = base / "encoder12", base / "data"
    if not (model_dir / "config.json").exists() or not all((data_dir / l / "test.jsonl").exists() for l in languages):
        model_dir, data_dir = build(base, tuple(languages))
    sweep = work / "sweep.yaml"
    sweep.write_text(SWEEP.format(data=data_dir, languages=", ".join(languages), train=train, model=model_dir, epochs=epochs))
    spec = load_sweep(sweep)
    store = store_for(work / "train")
    t = time.perf_counter()
    ran = sum(execute(n, spec, store, progress=False) for n in graph(spec) if n.wave < 3)
    if ran:
        emit({"what": "training_waves", "outputs": ran, "seconds": round(time.perf_counter() - t, 1)})
    return sweep


def fresh_root(work: Path, name: str) -> Path:
    """Returns a new root whose store holds the training outputs (hard links: no copy of the checkpoints)."""
    root = work / "runs" / name
    if root.exists():
        subprocess.run(["rm", "-rf", str(root)], check=True)
    root.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(work / "train" / "store"), str(root / "store")], check=True)
    return root


def run(code: Path, script: str, *args: str) -> dict:
    """Returns the RESULT record the script prints, run in a subprocess with PYTHONPATH on `code`."""
    env = os.environ | {"PYTHONPATH": str(code), "RAY_AUTH_MODE": "disabled", "OMP_WAIT_POLICY": "PASSIVE",
                        "MLFLOW_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1"}
    p = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, cwd=str(code))
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode or not lines:
        raise RuntimeError(f"{code}: exit {p.returncode}\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def tables(root: Path, sweep: Path) -> dict:
    """Returns influence variant -> (its top-k table, its predictions table) in the root's store."""
    import pandas as pd

    from subnet_ray.sweep.config import load_sweep
    from subnet_ray.sweep.graph import graph
    from subnet_ray.stages import PREDICTIONS, TOPK
    from subnet_ray.storage.store import store_for

    store = store_for(root)
    return {n.params.variant: (pd.read_parquet(store.path(n.key) / TOPK), pd.read_parquet(store.path(n.key) / PREDICTIONS))
            for n in graph(load_sweep(sweep)) if n.stage == "influence"}


def compare(a: dict, b: dict) -> dict:
    """Returns per variant the max relative score difference, the share of identical (test, rank) -> train id rows,
    and whether the predictions tables are equal."""
    keys = ["test_id", "checkpoint", "sign", "rank"]
    out = {}
    for v in sorted(a):
        x, y = a[v][0].sort_values(keys).reset_index(drop=True), b[v][0].sort_values(keys).reset_index(drop=True)
        assert x[keys].equals(y[keys]), v
        rel = ((x.score - y.score).abs() / y.score.abs().clip(lower=1e-12)).max()
        out[v] = {"max_rel_score_diff": float(rel), "same_train_id": float((x.train_id == y.train_id).mean()),
                  "same_predictions": bool(a[v][1].equals(b[v][1]))}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="a checkout of the code to compare against (e.g. git worktree add /tmp/base f226c0f)")
    p.add_argument("--new", type=Path, default=HERE.parent, help="the checkout to measure (default: this one)")
    p.add_argument("--work", type=Path, default=Path("/tmp/influence_stage"))
    p.add_argument("--encoder", type=Path, help="folder where encoder12.py built (or builds) encoder12/ and data/")
    p.add_argument("--languages", nargs="+", default=["en", "de", "fr"])
    p.add_argument("--train", type=int, default=60, help="training examples per language")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--profile-repeats", type=int, default=1, help="in-process runs with the time split, per version (0: none)")
    a = p.parse_args(argv)
    new = a.new.resolve()
    sweep = prepare(a.work, a.encoder, a.languages, a.train, a.epochs)
    versions = {"base": a.base.resolve(), "new": new}
    emit({"what": "setup", "sweep": str(sweep), "base": str(versions["base"]), "new": str(new),
          "languages": a.languages, "train_per_language": a.train, "epochs": a.epochs, "test_per_language": 20, "proj_dim": 256})
    waves = {v: {"ray": [], "local": []} for v in versions}
    for r in range(a.repeats):
        for v in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
            root, before = fresh_root(a.work, f"{v}-ray-{r}"), load()
            res = run(versions[v], RUN, str(sweep), str(root), "ray")
            waves[v]["ray"].append(res["seconds"]["influence"])
            emit({"what": "run", "version": v, "repeat": r, "executor": "ray", "influence_s": round(res["seconds"]["influence"], 1),
                  "seconds": {k: round(s, 1) for k, s in res["seconds"].items()}, "load_before": before, "load_after": load()})
    emit({"what": "equal", "outputs": compare(tables(a.work / "runs" / "new-ray-0", sweep), tables(a.work / "runs" / "base-ray-0", sweep))})
    if a.profile_repeats:
        for r in range(a.profile_repeats):
            for v in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
                root, before = fresh_root(a.work, f"{v}-local-{r}"), load()
                res = run(versions[v], PROFILE, str(sweep), str(root))
                waves[v]["local"].append(res["wave_s"])
                emit({"what": "split", "version": v, "repeat": r, "executor": "local", **res, "load_before": before, "load_after": load()})
    med = {v: {k: statistics.median(s) for k, s in w.items() if s} for v, w in waves.items()}
    emit({"what": "ratio", "median_influence_s": med, "repeats": a.repeats,
          "base_over_new": {k: round(med["base"][k] / med["new"][k], 2) for k in med["new"]},
          "tune_overhead_s": {v: round(m["ray"] - m["local"], 1) for v, m in med.items() if "local" in m}})


if __name__ == "__main__":
    sys.exit(main())
