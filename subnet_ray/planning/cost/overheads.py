"""What a sweep invocation costs besides its stages' compute: named fixed costs, timed through the real code paths.

`estimate` (estimate.py) times the stages; this module times what one `subnet-ray run` pays on
top of them, once per invocation or once per Tune wave or trial, never per stage output:

- startup: a fresh interpreter importing what `run` imports (torch, transformers, MLflow,
  matplotlib, the stages; Ray and Tune with the Ray executor), and its exit;
- data: loading every task's data and tokenizer (the driver checks them before anything starts);
- tracking: MLflow: a new SQLite store and experiment, the parent run, one child run per trial
  with its params and per-epoch metrics, the runs ended (stores_fixed: the same on a new root);
  finetune_log: the part each fine-tuning waits for while it runs (its child run opened on its first
  epoch, its epochs logged: in-process with the local executor; with Ray, in the driver's Tune
  callback before the trial's tune.report returns), counted in its stage output's time;
- ray_start: starting a local Ray instance and shutting it down (Ray executor);
- tune_wave, tune_trial: Tune's cost of a wave, and of each trial on top of it (a worker process
  that imports the stages and loads the task data: what `tune._trainable` does before its nodes);
- report: every report folder `run` writes (one per branch and seed, plus the pooled one of a
  branch with several seeds), built by the real report code on synthetic results of the sweep's
  shape (languages, variants, masks, test examples, top-k rows, checkpoints), then logged to MLflow.

Every cost is the smaller of wall and CPU time where one process does the work (both bound
what an idle machine takes), wall time where several processes do (Ray, Tune).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ...sweep.config import SweepSpec, branches
from ...sweep.graph import Stage, graph

RUN_IMPORTS = ("subnet_ray.cli", "subnet_ray.orchestration.runner", "subnet_ray.stages", "subnet_ray.orchestration.tracking",
               "subnet_ray.analysis.report", "matplotlib.pyplot")


def _quiet(fn) -> float:
    """Returns min(wall, CPU seconds of this process) of one call of `fn`."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return min(time.perf_counter() - w, time.process_time() - c)


def startup(executor: str) -> float:
    """Returns the seconds of a fresh interpreter that imports what `subnet-ray run` imports and exits (min of wall and its CPU)."""
    mods = RUN_IMPORTS + (("ray", "ray.tune", "ray.data") if executor == "ray" else ())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import " + ", ".join(mods)], check=True, env=os.environ.copy())
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return min(wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))


def data_load(spec: SweepSpec) -> float:
    """Returns the seconds to load every distinct task's data and tokenizer of the sweep once, uncached."""
    from ...stages import data_and_tokenizer
    from .inputs import tokenizer_here

    seen, total = set(), 0.0
    for _, b in branches(spec):
        for task in b.tasks:
            # a hub model's tokenizer is not downloaded (inputs.setup): the task's own stands in
            at = (task.model_dump_json(), b.model.name if tokenizer_here(b.model.name) else "tiny")
            if at not in seen:
                seen.add(at)
                total += _quiet(lambda: data_and_tokenizer.__wrapped__(*at))
    return total


def tracking(spec: SweepSpec) -> tuple[float, float]:
    """Returns the seconds of the sweep's MLflow bookkeeping on a new root (store, parent run, child runs with params
    and epochs) that no fine-tuning waits for, and what each fine-tuning waits for while it runs (its child run opened,
    its epochs logged)."""
    from ...orchestration.mlflow_values import flat_params
    from ...orchestration.tracking import Tracker
    from ...orchestration.trial_runs import TrialLog

    nodes = graph(spec)
    live, finetunes = 0.0, [n for n in nodes if n.stage == Stage.FINETUNE]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter(), time.process_time()
        with Tracker(spec.name, tmp) as tracker:
            tracker.start(spec.name, flat_params(spec.model_dump(mode="json", exclude={"random_seeds"})), {"executor": "estimate"})
            log = TrialLog(tracker, nodes, spec)
            for n in finetunes:  # as the executor's on_epoch does: the run opened on the first epoch
                live += _quiet(lambda n=n: [log.epoch(n.key, epoch, {"train_loss": 1.0, "dev_accuracy_mean": 0.5})
                                            for epoch in range(1, spec.training.epochs + 1)])
            for n in nodes:
                log.run(n.trial)
            for trial in log.by_trial:
                log.run(trial).end("FINISHED")
            tracker.link_children()
        total = min(time.perf_counter() - t[0], time.process_time() - t[1])
    return max(0.0, total - live), live / max(1, len(finetunes))


def synthetic_results(spec: SweepSpec, task, nodes, seed: int, layers: int, heads: int):
    """Returns a TaskResults of the branch's shape for `task` and training `seed` (random values): what its report draws."""
    from ...analysis.results import InfluenceResult, TaskResults, parse_variant

    rng = np.random.default_rng(0)
    langs, k, epochs = list(task.languages), spec.influence.top_k, spec.training.epochs
    per_lang = min(spec.influence.test_per_language, task.test_size or spec.influence.test_per_language)
    n_train = task.train_size or 100
    masks = {l: rng.random((layers, heads)) < 0.7 for l in langs}
    mine = [n for n in nodes if n.params.task == task.id and n.params.seed == seed]
    random_masks = {n.params.random_seed: {l: rng.permutation(m.ravel()).reshape(layers, heads) for l, m in masks.items()}
                    for n in mine if n.stage == Stage.RANDOM_MASKS}
    influence, acc = {}, []
    for n in (n for n in mine if n.stage == Stage.INFLUENCE):
        tested = list(n.params.masks)
        test_lang = np.repeat(tested, per_lang)
        test_id = np.array([f"{l}/{i}" for l in tested for i in range(per_lang)])
        ckpts = np.array([-1, *range(1, epochs + 1)])
        rows = len(test_id) * len(ckpts) * 2 * k
        ti = np.repeat(np.arange(len(test_id)), len(ckpts) * 2 * k)
        train_lang = rng.choice(langs, rows)
        topk = pd.DataFrame({
            "test_id": test_id[ti], "test_language": test_lang[ti], "checkpoint": np.tile(np.repeat(ckpts, 2 * k), len(test_id)),
            "sign": np.tile(np.repeat(["pos", "neg"], k), len(test_id) * len(ckpts)), "rank": np.tile(np.arange(k), rows // k),
            "train_id": np.char.add(train_lang.astype(str), rng.integers(0, n_train, rows).astype(str)), "train_language": train_lang,
            "score": rng.uniform(-1, 1, rows).astype(np.float32)})
        label = rng.integers(0, 2, len(test_id))
        preds = pd.DataFrame({"test_id": test_id, "test_language": test_lang, "label": label,
                              "pred": np.where(rng.random(len(test_id)) < 0.8, label, 1 - label)})
        influence[n.params.variant] = InfluenceResult(topk, preds)
        parse_variant(n.params.variant)  # a name the report cannot read fails here, not in the timing
        acc += [(n.params.variant, l, e, s, float(rng.uniform(0.5, 0.9))) for l in langs for e in range(1, epochs + 1) for s in ("dev", "test")]
    curves = pd.DataFrame([(l, s, s * max(1, layers * heads // 10), 0.8 - 0.02 * s, 0.8) for l in langs for s in range(4)],
                          columns=["language", "step", "heads_disabled", "accuracy", "full_accuracy"])
    accuracy = pd.DataFrame(acc, columns=["variant", "language", "epoch", "split", "accuracy"])
    return TaskResults(task.id, langs, masks, random_masks, curves, accuracy, influence,
                       threshold=spec.subnetworks.threshold, step_fraction=spec.subnetworks.step_fraction)


def report(spec: SweepSpec) -> float:
    """Returns the seconds to write (and log to MLflow) every report folder of the sweep, and to log the trials' mask and
    influence artifacts (trial_runs.TrialLog.finish), on synthetic results of the sweep's shape."""
    from ...analysis.report import build_report
    from ...analysis.seeds import build_seeds_report
    from ...orchestration.runner import log_reports
    from ...orchestration.tracking import Tracker
    from ...orchestration.trial_runs import TrialLog

    total = 0.0
    with tempfile.TemporaryDirectory() as tmp, Tracker(spec.name, Path(tmp) / "root") as tracker:
        tracker.start(spec.name, {}, {})
        log = TrialLog(tracker, graph(spec), spec)
        for values, b in branches(spec):
            nodes = graph(b)
            by_seed = {}
            for seed in b.training.seeds:
                results = [synthetic_results(b, t, nodes, seed, *_heads(b, t)) for t in b.tasks]
                folder = Path(tmp) / "reports" / f"{len(by_seed)}-{seed}"
                total += _quiet(lambda: (build_report(results, folder, spec.name), log_reports(tracker, spec, [folder])))
                by_seed[seed] = results
                total += _trial_artifacts(log, nodes, {r.task: r for r in results}, seed, Path(tmp) / "artifacts")
            if len(by_seed) >= 2:
                pooled = Path(tmp) / "reports" / "pooled"
                total += _quiet(lambda: (build_seeds_report(by_seed, pooled, spec.name), log_reports(tracker, spec, [pooled])))
    return total


def _heads(spec: SweepSpec, task) -> tuple[int, int]:
    """Returns (layers, heads) of the sweep's model: its known shape, a local directory's config.json, else BERT base's 12 x 12."""
    from ..sizes import shape_of

    shape = shape_of(spec, task)
    if shape is not None:
        return shape[0].layers, shape[0].heads
    config = Path(spec.model.name) / "config.json"
    if config.is_file():
        from .inputs import layers_and_heads

        return layers_and_heads(json.loads(config.read_text()))  # DistilBERT's names too
    return 12, 12


def _trial_artifacts(log, nodes, results: dict, seed: int, tmp: Path) -> float:
    """Returns the seconds to log each mask node's masks (with their PNG and JSON views) and each influence node's tables."""
    from ...stages import PREDICTIONS, TOPK

    total = 0.0
    for n in (n for n in nodes if n.params.seed == seed and n.params.task in results):
        r, folder = results[n.params.task], tmp / n.key
        if n.stage in (Stage.SUBNETWORKS, Stage.RANDOM_MASKS):
            for lang, mask in r.masks.items():
                (folder / lang).mkdir(parents=True, exist_ok=True)
                np.save(folder / lang / "mask.npy", mask)
            total += _quiet(lambda: log._artifacts(log.run(n.trial), f"masks/{n.key}", folder, masks=True))
        elif n.stage == Stage.INFLUENCE and n.params.variant in r.influence:
            folder.mkdir(parents=True, exist_ok=True)
            res = r.influence[n.params.variant]
            res.topk.to_parquet(folder / TOPK)  # the stage writes these (its own cost); the log copies them
            res.predictions.to_parquet(folder / PREDICTIONS)
            total += _quiet(lambda: log._artifacts(log.run(n.trial), f"influence/{n.key}", folder))
    return total


def _probe_trial(config: dict) -> None:
    """A Tune trial doing what tune._trainable does before its nodes: threads, the sweep, the stages' imports, the heap
    frozen, the task data; it reports the niceness Ray runs its workers at."""
    from ray import tune

    from ...orchestration.workers import freeze_heap, use_cpus

    use_cpus(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))
    spec = SweepSpec.model_validate_json(config["spec"])
    from ...stages import task_data

    freeze_heap()
    for task in spec.tasks:
        task_data(spec, task.id)
    tune.report({"end": time.time(), "nice": os.nice(0)})


def ray_costs(spec: SweepSpec) -> dict[str, float]:
    """Returns {ray_start, tune_wave, tune_trial} wall seconds and worker_nice, measured in a fresh process (a local Ray of
    its own)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(spec.model_dump_json())
    try:
        out = subprocess.run([sys.executable, "-m", "subnet_ray.planning.cost.overheads", f.name], check=True, capture_output=True,
                             text=True, env=os.environ.copy())
    finally:
        os.unlink(f.name)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure_ray(spec: SweepSpec) -> dict[str, float]:
    """Returns Ray's start, Tune's per-wave and per-trial wall seconds (two probe trials that hold every CPU run one after
    the other), `worker_nice`, the niceness the trials ran at (Ray's default: 15), and with influence.actors > 1
    `ray_data`, the Ray Data wave's own costs (ray_data.measure)."""
    import ray
    from ray import tune

    from ...orchestration.tune import init_ray

    t = time.perf_counter()
    init_ray(None)
    ray_start = time.perf_counter() - t
    cpus = ray.cluster_resources().get("CPU", 1)
    with tempfile.TemporaryDirectory() as tmp:
        tuner = tune.Tuner(tune.with_resources(_probe_trial, {"cpu": cpus}),
                           param_space={"spec": spec.model_dump_json(), "i": tune.grid_search([0, 1])},
                           tune_config=tune.TuneConfig(reuse_actors=False),
                           run_config=tune.RunConfig(name="probe", storage_path=tmp, verbose=0))
        t = time.perf_counter()
        results = tuner.fit()
        wave = time.perf_counter() - t
    ends = sorted(r.metrics["end"] for r in results)
    trial = ends[1] - ends[0]  # from one trial's end to the next one's: a new worker, its imports, the data
    out = {"tune_wave": max(0.0, wave - 2 * trial), "tune_trial": trial, "worker_nice": max(r.metrics["nice"] for r in results)}
    if spec.influence.actors > 1:  # the influence wave runs on Ray Data actor pools from the driver
        from .ray_data import measure as ray_data

        out["ray_data"] = ray_data(spec)
    t = time.perf_counter()
    ray.shutdown()  # `run` pays it too, at exit
    ray_start += time.perf_counter() - t
    return out | {"ray_start": ray_start}


def measure(spec: SweepSpec, executor: str) -> dict[str, float]:
    """Returns the named fixed costs (seconds on an idle machine, as far as this machine shows it) of one `run` of the sweep."""
    rest, per_finetune = tracking(spec)
    # each fine-tuning waits for its epochs to be logged: in this process (local), or in the driver's Tune callback
    # before its tune.report returns (Ray)
    costs = {"startup": startup(executor), "data": data_load(spec), "tracking": rest, "finetune_log": per_finetune,
             "report": report(spec)}
    if executor == "ray":
        costs |= ray_costs(spec)
    return costs


if __name__ == "__main__":  # the Ray probe, in a process of its own (ray_costs), with what `run` imports (its driver's memory)
    import importlib

    for module in RUN_IMPORTS:
        importlib.import_module(module)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    print(json.dumps(_measure_ray(SweepSpec.model_validate_json(Path(sys.argv[1]).read_text()))))
