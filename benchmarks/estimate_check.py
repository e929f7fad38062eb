"""Predicted vs measured wall time of whole sweeps: `subnet-ray estimate` against `subnet-ray run`, per stage and in total.

Two sweeps, at the two ends of the cost model: the smoke sweep (fixed costs dominate) and a
sweep on a local 12-layer encoder directory (benchmarks/encoder12.py: 12x12 heads, hidden 384,
a 250,002-row embedding; compute dominates), of the issue's structure at a size that runs in
minutes here (`--langs/--train/--epochs/...` scale it up).

Each sweep is run first (a fresh root, `subnet-ray run`, wall time of the whole process), then
estimated with `--pruned` set to the fraction of heads its subnetwork search actually disabled
(mean over languages): how many pruning steps the search takes is the one input no estimate
can know in advance. Measured, from what the run records:
- per stage: the store ledger's `seconds` of each stage output (`store/_ledger/`), summed per stage;
- per wave and the report: the runner's wave seconds (MLflow parent-run metrics `seconds/<wave>`);
- setup: the rest of the process's wall time (start, imports, data check, Ray start, MLflow store).
Each line is JSON: the row, predicted seconds on an idle machine and at the load the estimate
saw, measured seconds, their ratios, and `uptime`'s load average before and after each command.

A third sweep, `influence33` (benchmarks/sweeps/influence_paper_shape.yaml: issue 33's paper-shaped
influence, `influence.actors: 2`), checks the Ray Data influence wave (planning/cost/ray_data.py): rows
`ray_data:wave` (predicted vs measured seconds of the influence wave) and `ray_data:driver_peak_bytes`
(predicted vs measured peak memory of the `run` process: VmHWM, sampled every 0.5 s), with the counts the
estimate makes (pools, scoring tasks). The estimate gets the run's root (`--root`): its masks say which
are equal, as `--pruned` says how far the search pruned. `--influence-only ROOT` reuses a root whose training
is done: its influence outputs are removed and `run` computes only the influence wave (minutes, not half an hour).

    python benchmarks/estimate_check.py [--sweeps smoke enc12 influence33] [--executors ray local] [--out /tmp/estimate_check] [--busy 1]
    python benchmarks/estimate_check.py --sweeps influence33 --influence-only /tmp/estimate_check/influence_paper_shape-ray
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
STAGES = ("finetune", "subnetworks", "random_masks", "influence")


def load() -> float:
    """Returns the 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def cli(*args: str, nice: int, memory: dict | None = None) -> tuple[str, float, tuple[float, float]]:
    """Returns (stdout, wall seconds, (load before, load after)) of `subnet-ray ARGS` in a fresh process; `memory`, if given,
    gets the process's peak memory (VmHWM, bytes) and its resident anonymous, file and shared pages when its resident
    set was largest, read from /proc every 0.5 s."""
    import tempfile

    before, t = load(), time.perf_counter()
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "subnet_ray.cli", *args], stdout=out, stderr=err, text=True, env=env,
                                preexec_fn=lambda: os.nice(nice))
        while proc.poll() is None:
            if memory is not None:
                status = _status(proc.pid)
                if status.get("VmRSS", 0) >= memory.get("VmRSS", 0):
                    memory.update(status)
                memory["VmHWM"] = max(memory.get("VmHWM", 0), status.get("VmHWM", 0))
            time.sleep(0.5)
        wall = time.perf_counter() - t
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"subnet-ray {' '.join(args)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return stdout, wall, (before, load())


def _status(pid: int) -> dict[str, int]:
    """Returns the process's VmHWM, VmRSS, RssAnon, RssFile and RssShmem in bytes ({} once it is gone)."""
    try:
        lines = open(f"/proc/{pid}/status").read().splitlines()
    except OSError:
        return {}
    keys = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")
    return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in lines if ":" in line) if k in keys}


def enc12_sweep(args) -> Path:
    """Returns a sweep file on the 12-layer encoder directory (built by benchmarks/encoder12.py if missing) of the asked size."""
    base = Path(args.enc12)
    if not (base / "encoder12" / "model.safetensors").exists():
        subprocess.run([sys.executable, str(HERE / "encoder12.py"), str(base)], check=True)
    langs = ["en", "de", "fr", "es", "ru"][: args.langs]
    methods = ", ".join(args.methods)
    text = f"""name: enc12check
tasks:
  - id: xnli
    source: {base / 'data'}
    languages: [{', '.join(langs)}]
    train_size: {args.train}
    dev_size: {args.dev}
    test_size: {args.test}
model: {{name: {base / 'encoder12'}}}
training: {{lr: 2.0e-5, epochs: {args.epochs}, batch_size: 16, max_length: 64, seeds: [1]}}
subnetworks: {{step_fraction: 0.1, threshold: 0.95}}
influence: {{proj_dim: {args.proj_dim}, top_k: 10, test_per_language: {args.test}, batch_size: 16}}
methods: [{methods}]
random_seeds: [{', '.join(str(s) for s in range(1, args.random_seeds + 1))}]
analysis: {{random_test_language: {langs[0]}}}
resources: {{cpus: {args.cpus}, gpus: 0, max_failures: 1}}
"""
    path = Path(args.out) / "enc12check.yaml"
    path.write_text(text)
    return path


def measured(root: Path, wall: float, since: float = 0.0) -> tuple[dict[str, float], float]:
    """Returns measured seconds per stage, wave, report and setup (and total) from the run's records (ledger entries from
    `since` on, the last parent run's waves), and the pruned fraction."""
    from subnet_ray.storage.store import store_for
    from subnet_ray.subnetworks.masks import load_mask

    store = store_for(str(root))
    out = {s: 0.0 for s in STAGES}
    for e in store.ledger():
        if e["time"] >= since:
            out[e["stage"]] = out.get(e["stage"], 0.0) + e["seconds"]
    with sqlite3.connect(root / "mlflow.db") as db:
        # a rerun logs its waves on the same parent run again: the last invocation's are the latest timestamp's
        last = db.execute("select max(timestamp) from metrics where key like 'seconds/%'").fetchone()[0]
        waves = dict(db.execute("select key, value from metrics where key like 'seconds/%' and timestamp = ?", (last,)).fetchall())
    for k, v in waves.items():
        out[f"wave:{k.split('/')[1]}"] = v
    out["setup"] = wall - sum(waves.values())
    out["total"] = wall
    fractions = []
    for sub in (root / "store" / "subnetworks").iterdir():
        for lang in sub.iterdir():
            if lang.is_dir():
                mask = load_mask(lang)[0].numpy()
                fractions.append(1 - mask.mean())
    return out, float(np.mean(fractions))


def predicted(est: dict) -> tuple[dict[str, float], dict[str, float]]:
    """Returns the estimate's seconds for the rows `measured` gives, on an idle machine and at the load it saw."""
    st, load = est["stages"], est["at_load"]
    out, at = {}, {}
    for s in STAGES:
        if s in st:
            out[s], at[s] = st[s]["seconds"], load["stages"].get(s, 0.0)
    for k, v in est["waves"].items():
        out[f"wave:{k}"], at[f"wave:{k}"] = v, load["waves"][k]
    out["wave:report"] = st["report"]["seconds"]
    out["setup"] = sum(st[k]["seconds"] for k in ("startup", "data", "ray_start", "tracking") if k in st)
    for k in ("wave:report", "setup"):
        at[k] = out[k] * load["fixed_slowdown"]
    out["total"], at["total"] = est["total_seconds"], load["total_seconds"]
    return out, at


def check(sweep: Path, executor: str, args) -> None:
    """Runs then estimates the sweep, with `args.busy` processes of `yes` (niceness 0) running during both: a shared machine."""
    busy = [subprocess.Popen(["nice", "-n", "0", "yes"], stdout=subprocess.DEVNULL) for _ in range(args.busy)]
    try:
        _check(sweep, executor, args)
    finally:
        for p in busy:
            p.kill()
            p.wait()


def _check(sweep: Path, executor: str, args) -> None:
    root = Path(args.influence_only or Path(args.out) / f"{sweep.stem}-{executor}")
    if args.influence_only:  # the training's outputs stay; the influence wave is computed anew
        subprocess.run(["rm", "-rf", str(root / "store" / "influence")], check=True)
    else:
        subprocess.run(["rm", "-rf", str(root)], check=True)
    since, memory = time.time(), {}
    _, wall, run_load = cli("run", str(sweep), "--root", str(root), "--executor", executor, "--quiet", nice=args.nice, memory=memory)
    meas, pruned = measured(root, wall, since)
    pruned = min(1.0, max(pruned, 1e-3))
    out, est_wall, est_load = cli("estimate", str(sweep), "--executor", executor, "--pruned", f"{pruned:.4f}", "--root", str(root),
                                  nice=args.nice)
    est = json.loads(out.strip().splitlines()[-1])
    (Path(args.out) / f"{sweep.stem}-{executor}-estimate.json").write_text(json.dumps(est, indent=1))
    pred, at = predicted(est)
    if est.get("ray_data"):
        ray_data_rows(sweep, executor, est, meas, memory, run_load)
    rows = ["wave:influence", "influence"] if args.influence_only else list(pred)
    for row in [r for r in rows if r in meas]:
        p, a, m = pred[row], at[row], meas[row]
        print(json.dumps({"sweep": sweep.stem, "executor": executor, "row": row, "predicted_s": round(p, 2),
                          "predicted_at_load_s": round(a, 2), "measured_s": round(m, 2),
                          "ratio": round(p / m, 3) if m else None, "ratio_at_load": round(a / m, 3) if m else None}), flush=True)
    print(json.dumps({"sweep": sweep.stem, "executor": executor, "summary": True, "pruned_measured": round(pruned, 4),
                      "run_load_before_after": run_load, "estimate_load_before_after": est_load, "estimate_wall_s": round(est_wall, 1),
                      "slowdown_at_load": round(est["at_load"]["slowdown"], 3), "calibration_slowdown": round(est["at_load"]["calibration_slowdown"], 3),
                      "others_running": est["at_load"].get("others_running"), "busy_processes": args.busy,
                      "wave_slowdown": {k: round(v, 3) for k, v in est["at_load"]["wave_slowdown"].items()},
                      "side_by_side": est["at_load"]["side_by_side"],
                      "fixed_s": {k: round(v, 2) for k, v in est["fixed"].items()}, "tune_s": est["tune"]}), flush=True)


def ray_data_rows(sweep: Path, executor: str, est: dict, meas: dict, memory: dict, run_load) -> None:
    """Prints the Ray Data wave's rows: its seconds and the driver's peak memory, predicted and measured, and the counts."""
    rd, wave = est["ray_data"], "wave:influence"
    p, a, m = est["waves"]["influence"], est["at_load"]["waves"]["influence"], meas.get(wave)
    print(json.dumps({"sweep": sweep.stem, "executor": executor, "row": "ray_data:wave", "predicted_s": round(p, 2),
                      "predicted_at_load_s": round(a, 2), "measured_s": round(m, 2) if m else None,
                      "ratio": round(p / m, 3) if m else None, "ratio_at_load": round(a / m, 3) if m else None,
                      "run_load_before_after": run_load, "pools": rd["pools"], "scoring_tasks": rd["scoring_tasks"],
                      "models": {t: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in g.items()} for t, g in rd["models"].items()}}),
          flush=True)
    peak = rd["driver_peak_bytes"]
    print(json.dumps({"sweep": sweep.stem, "executor": executor, "row": "ray_data:driver_peak_bytes", "predicted": peak,
                      "measured": memory.get("VmHWM"), "ratio": round(peak / memory["VmHWM"], 3) if peak and memory.get("VmHWM") else None,
                      "at_largest_rss": {k: v for k, v in memory.items() if k != "VmHWM"}}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweeps", nargs="+", default=["smoke", "enc12"], choices=["smoke", "enc12", "influence33"])
    p.add_argument("--executors", nargs="+", default=["ray"], choices=["ray", "local"])
    p.add_argument("--out", default="/tmp/estimate_check", help="roots and the generated sweep file go here")
    p.add_argument("--enc12", default="/tmp/enc12", help="folder of benchmarks/encoder12.py's output (built if missing)")
    p.add_argument("--langs", type=int, default=3)
    p.add_argument("--train", type=int, default=60, help="training examples per language")
    p.add_argument("--dev", type=int, default=40, help="dev examples per language (pruning)")
    p.add_argument("--test", type=int, default=20, help="test examples per language (influence)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["full", "sft", "random-sft"])
    p.add_argument("--random-seeds", type=int, default=2)
    p.add_argument("--proj-dim", type=int, default=256)
    p.add_argument("--cpus", type=float, default=1, help="resources.cpus: torch threads per trial")
    p.add_argument("--nice", type=int, default=10)
    p.add_argument("--busy", type=int, default=0, help="processes of `yes` running during the run and the estimate (a shared machine)")
    p.add_argument("--influence-only", metavar="ROOT", help="a root of the sweep whose training is done: rerun its influence wave only")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    sweeps = {"smoke": ROOT / "sweeps" / "smoke.yaml", "influence33": HERE / "sweeps" / "influence_paper_shape.yaml"}
    if "enc12" in args.sweeps:
        sweeps["enc12"] = enc12_sweep(args)
    for name in args.sweeps:
        for executor in args.executors:
            check(sweeps[name], executor, args)


if __name__ == "__main__":
    main()
