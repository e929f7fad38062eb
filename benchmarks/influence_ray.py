"""Influence on Ray Data (influence_ray) against the single-process path (influence), same inputs.

One local Ray is started once (num_cpus=2, no dashboard); then every repeat runs, in turn
(the order rotating each repeat), influence() in this process and influence_ray() with 1 and
with 2 sketching actors. Every process uses 1 torch thread and OMP_WAIT_POLICY=PASSIVE, so
one actor does the work the local run does. Each Ray result is checked against the local one
(same rows, every score within 1e-4) before its time counts.

Ray's workers run at the driver's priority (nice 0; Ray's default 15 would rank the actors
below the driver, which runs Ray Data's executor, and Ray's daemons, while the local run
competes with nobody of its own: --worker-niceness 15 measures that default). With Linux
autogroup scheduling (sched_autogroup in the output) the driver, Ray's daemons and its
workers share one CPU share against other sessions' groups: a second actor then adds a core
only when the other groups leave one idle.

Before each call the cluster is let go idle (untimed: the previous pool's actors release their
CPUs asynchronously; idle_wait_s_max is the longest such wait).

Prints JSON lines:
- influence_ray: local_s, ray1_s, ray2_s (medians over the repeats; the Ray times exclude
  Ray start-up but include starting the actor pool, which each call does: it is what a sweep
  pays per variant), ray1_vs_local = ray1_s / local_s, ray2_vs_local, speedup_2_vs_1 =
  ray1_s / ray2_s (ratios of the medians), the per-repeat ratios' ranges, ray_phases (median
  seconds of the sketching pass, i.e. Dataset.materialize: actor start-up and sketching; of
  scoring, i.e. the driver's ray.get on the scoring tasks: their workers' start-up and the
  scoring; and of the rest: rows and object store puts before, collecting the sketches),
  the workload, driver_peak_rss_mb (this process, ru_maxrss: it also ran the local calls,
  and the object store pages it reads count; driver_peak_rss_mb_before_ray_calls: after the
  first local call only) and the 1/5/15-minute load average at start and end (the 2 cores are shared with other
  sessions: a load above ~1 at start means the numbers are contended);
- influence_ray_overhead: the same on a minimal input (24 training and 8 test examples),
  i.e. the fixed cost of a call.

Full: the demo's tiny BERT (4 layers x 4 heads x hidden 64), babel with 4 languages, 2000
training and 500 test examples, one head mask per test language (as the sft method gives: the
training set is sketched under 4 masks), 2 checkpoints, proj_dim 256, top_k 20, batch 32,
max_length 32: ~10 s per local call on an idle core. --quick: a 2 x 4 x 32 model, 200 / 60
examples, 2 masks, 1 repeat, for a smoke test.

Run: .venv/bin/python benchmarks/influence_ray.py [--quick] [--repeats N]
"""
import os

os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # before torch: spinning OpenMP threads steal the other process's core
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token written under the home folder

import argparse
import contextlib
import functools
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subnet_ray.sweep.config import BabelSpec, InfluenceSpec, ModelSpec, TaskSpec, TinySpec
from subnet_ray.data.examples import load_examples
from subnet_ray.influence.pipeline import influence
from subnet_ray.models.classifier import build_model, save_checkpoint
from subnet_ray.data.examples import tokenizer_for

torch.set_num_threads(1)  # as each actor does (cpus_per_actor=1): one local process = one actor's work

LANGUAGES = ["xa", "xb", "ya", "yb"]
KEY = ["test_id", "checkpoint", "sign", "rank"]
TOLERANCE = 1e-4

CONFIGS = {
    "full": dict(tiny=TinySpec(layers=4, heads=4, hidden=64, intermediate=128, max_positions=64),
                 train_per_language=500, test_per_language=125, masks=4, proj_dim=256, repeats=5, warmup=1),
    "quick": dict(tiny=TinySpec(layers=2, heads=4, hidden=32, intermediate=64, max_positions=64),
                  train_per_language=50, test_per_language=15, masks=2, proj_dim=64, repeats=1, warmup=0),
}
TOP_K, BATCH, MAX_LENGTH, CHECKPOINTS = 20, 32, 32, 2


def workload(cfg: dict, folder: Path, train_per_language: int, test_per_language: int) -> dict:
    """Returns the inputs of one influence call: a model factory, checkpoint dirs, examples, tokenizer, spec and masks."""
    task = TaskSpec(id="babel", languages=LANGUAGES, train_size=train_per_language, dev_size=1, test_size=test_per_language,
                    babel=BabelSpec(families=[["xa", "xb"], ["ya", "yb"]]))
    tok = tokenizer_for(task)
    model_spec = ModelSpec(name="tiny", tiny=cfg["tiny"], dropout=0.0)
    # A partial of an installed function: Ray workers can import it (a lambda or a local def they could not).
    factory = functools.partial(build_model, model_spec, num_labels=2, vocab_size=len(tok), seed=0)
    model = factory()
    g = torch.Generator().manual_seed(5)
    dirs = []
    for e in range(1, CHECKPOINTS + 1):  # each checkpoint a perturbation of the last, so their gradients differ
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        save_checkpoint(model, folder / f"epoch_{e}", {"epoch": e, "lr": 1e-3 / e})
        dirs.append(folder / f"epoch_{e}")
    layers, heads = cfg["tiny"].layers, cfg["tiny"].heads
    masks = {}
    for i, lang in enumerate(LANGUAGES):  # cfg["masks"] distinct masks, each pruning one head
        m = torch.ones(layers, heads)
        k = i % cfg["masks"]
        m[k % layers, k % heads] = 0
        masks[lang] = m
    spec = InfluenceSpec(proj_dim=cfg["proj_dim"], top_k=TOP_K, batch_size=BATCH)
    return dict(model=factory, checkpoints=dirs, train=load_examples(task, "train"), test=load_examples(task, "test"),
                tokenizer=tok, spec=spec, masks=masks)


def check_same(ref: pd.DataFrame, got: pd.DataFrame, what: str) -> float:
    """Returns the fraction of rows naming the same training example; raises unless rows match and scores agree within TOLERANCE.

    The score at each (test, checkpoint, sign, rank) is compared, not the training example
    there: babel repeats sentences, so exact ties may order differently under other batching.
    """
    ref, got = ref.sort_values(KEY).reset_index(drop=True), got.sort_values(KEY).reset_index(drop=True)
    if not got[KEY].equals(ref[KEY]):
        raise AssertionError(f"{what}: the Ray result's rows differ from the local result's ({len(got)} vs {len(ref)} rows)")
    diff = float(np.abs(got.score.to_numpy() - ref.score.to_numpy()).max())
    if diff > TOLERANCE:
        raise AssertionError(f"{what}: a Ray score differs from the local one by {diff:.2e} > {TOLERANCE}")
    return float((got.train_id == ref.train_id).mean())


@contextlib.contextmanager
def timed_phases(log: dict):
    """Yields with influence_ray's phases timed: seconds appended to log["sketch"] and log["score"].

    "sketch": every Dataset.materialize call (the sketching pass); "score": every ray.get that
    influence_ray itself calls (waiting for the scoring tasks). Measurement only: both are
    restored on exit.
    """
    import ray
    import ray.data

    originals = {"sketch": (ray.data.Dataset, "materialize"), "score": (ray, "get")}
    saved = {k: getattr(owner, attr) for k, (owner, attr) in originals.items()}

    def wrapped(phase):
        fn = saved[phase]

        def timed(*args, **kwargs):
            if phase == "score" and sys._getframe(1).f_code.co_name != "influence_ray":
                return fn(*args, **kwargs)  # Ray Data's own ray.get calls, inside the sketching pass or the collection
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                log[phase].append(time.perf_counter() - t)
        return timed

    for k, (owner, attr) in originals.items():
        setattr(owner, attr, wrapped(k))
    try:
        yield
    finally:
        for k, (owner, attr) in originals.items():
            setattr(owner, attr, saved[k])


def wait_idle(timeout: float = 60.0) -> float:
    """Returns the seconds until the cluster has all its CPUs free again (the last pool's actors gone)."""
    import ray

    t = time.perf_counter()
    total = ray.cluster_resources().get("CPU", 0)
    while ray.available_resources().get("CPU", 0) < total and time.perf_counter() - t < timeout:
        time.sleep(0.1)
    return time.perf_counter() - t


def measure(inputs: dict, repeats: int, warmup: int, what: str) -> dict:
    """Returns per-variant lists of seconds over `repeats` rounds (after `warmup`), the variants interleaved, order rotating.

    Before each variant the cluster is let go idle (untimed), so no call waits for CPUs still
    held by the previous call's actors; that wait is recorded separately.
    """
    from subnet_ray.orchestration.influence_ray import influence_ray

    ref = influence(**inputs, max_length=MAX_LENGTH)
    local_peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    agree, phases = [], {"sketch": [], "score": []}

    def ray_checked(actors):
        spec = inputs["spec"].model_copy(update={"actors": actors})

        def run():
            with timed_phases(phases):
                got = influence_ray(**(inputs | {"spec": spec}), max_length=MAX_LENGTH, cpus_per_actor=1.0)
            agree.append(check_same(ref, got, f"{what}, actors={actors}"))
        return run

    fns = {"local": lambda: influence(**inputs, max_length=MAX_LENGTH), "ray1": ray_checked(1), "ray2": ray_checked(2)}
    names = list(fns)
    times = {k: [] for k in fns}
    split = {k: {"sketch": [], "score": []} for k in ("ray1", "ray2")}
    loads, idle_waits = [], []
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[: r % len(names)]  # no variant always runs first (after a quiet gap) or last
        if r >= warmup:
            loads.append(round(os.getloadavg()[0], 2))
        for k in order:
            idle_waits.append(wait_idle())
            for v in phases.values():
                v.clear()
            t = time.perf_counter()
            fns[k]()
            if r >= warmup:
                times[k].append(time.perf_counter() - t)
                if k in split:
                    if len(phases["sketch"]) != 1:
                        raise RuntimeError(f"expected one sketching pass (Dataset.materialize) per influence_ray call, saw {len(phases['sketch'])}")
                    for phase, v in phases.items():
                        split[k][phase].append(sum(v))
    return {"times": times, "phases": split, "load_1min_per_repeat": loads,
            "idle_wait_s_max": round(max(idle_waits), 2), "local_peak_mb": local_peak_mb, "train_id_agreement": round(min(agree), 4), "rows": len(ref)}


def summary(m: dict) -> dict:
    """Returns medians, ratios of medians and the per-repeat ratios' ranges of one measurement."""
    t = m["times"]
    med = {k: statistics.median(v) for k, v in t.items()}

    def span(a, b):
        r = [x / y for x, y in zip(t[a], t[b])]
        return [round(min(r), 2), round(max(r), 2)]

    phases = {}
    for k, split in m["phases"].items():
        phases[f"{k}_sketch_pass_s"] = round(statistics.median(split["sketch"]), 2)
        phases[f"{k}_scoring_s"] = round(statistics.median(split["score"]), 2)
        rest = [total - a - b for total, a, b in zip(t[k], split["sketch"], split["score"])]
        phases[f"{k}_rest_s"] = round(statistics.median(rest), 2)
    return {
        "local_s": round(med["local"], 2), "ray1_s": round(med["ray1"], 2), "ray2_s": round(med["ray2"], 2),
        "ray1_vs_local": round(med["ray1"] / med["local"], 2), "ray2_vs_local": round(med["ray2"] / med["local"], 2),
        "speedup_2_vs_1": round(med["ray1"] / med["ray2"], 2),
        "per_repeat_range": {"ray1_vs_local": span("ray1", "local"), "ray2_vs_local": span("ray2", "local"),
                             "speedup_2_vs_1": span("ray1", "ray2")},
        "ray_phases": phases,
        "per_repeat_s": {k: [round(x, 2) for x in v] for k, v in t.items()},
        "load_1min_per_repeat": m["load_1min_per_repeat"], "idle_wait_s_max": m["idle_wait_s_max"],
        "rows": m["rows"], "train_id_agreement": m["train_id_agreement"],
    }


def autogroup() -> bool | None:
    """Returns whether Linux autogroup scheduling is on (CPU shared per session, not per process), None if unknown."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke configuration (seconds, 1 repeat)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default: 5, --quick 1)")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice value of Ray's worker processes (default 0, as this driver; Ray's own default is 15)")
    args = parser.parse_args()
    name = "quick" if args.quick else "full"
    cfg = CONFIGS[name]
    repeats = args.repeats if args.repeats is not None else cfg["repeats"]
    if repeats < 1:
        parser.error(f"--repeats must be >= 1, got {repeats}")
    load_start = [round(x, 2) for x in os.getloadavg()]

    # Ray starts its workers at nice 15 unless told otherwise: the actors would then yield to
    # the driver and Ray's daemons, while the local run (nice 0) yields to nothing of its own.
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    import ray

    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # own and short: Ray's socket paths are capped at 107 bytes
    folder = Path(tempfile.mkdtemp(prefix="influence_ray_bench"))
    try:
        inputs = workload(cfg, folder / "main", cfg["train_per_language"], cfg["test_per_language"])
        # 24 training and 8 test examples: what remains is the fixed cost of a call.
        small = workload(cfg, folder / "small", max(1, BATCH // len(LANGUAGES) - 2), 2)
        t = time.perf_counter()
        # as a sweep's driver starts Ray (orchestration.tune.init_ray): the job's runtime env holds WORKER_ENV
        from subnet_ray.orchestration.workers import WORKER_ENV

        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp, log_to_driver=False,
                 runtime_env={"env_vars": dict(WORKER_ENV)})
        ray_start_s = time.perf_counter() - t
        ray.data.DataContext.get_current().enable_progress_bars = False
        main_m = measure(inputs, repeats, cfg["warmup"], "main")
        small_m = measure(small, repeats, cfg["warmup"], "overhead")
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    load_end = [round(x, 2) for x in os.getloadavg()]
    tiny = cfg["tiny"]
    common = {
        "config": name, "ray_num_cpus": 2, "ray_worker_niceness": args.worker_niceness, "driver_niceness": os.nice(0),
        "sched_autogroup": autogroup(), "torch_threads_per_process": 1, "cpus_per_actor": 1,
        "timing": "median of interleaved repeats (order rotating); ray_s excludes ray.init but includes actor-pool start-up",
    }
    print(json.dumps({
        "benchmark": "influence_ray", **common, "repeats": repeats, "warmup": cfg["warmup"],
        "model": f"{tiny.layers}x{tiny.heads}-h{tiny.hidden}", "checkpoints": CHECKPOINTS,
        "n_train": len(inputs["train"]), "n_test": len(inputs["test"]), "masks": cfg["masks"],
        "proj_dim": cfg["proj_dim"], "top_k": TOP_K, "batch_size": BATCH, "max_length": MAX_LENGTH,
        **summary(main_m), "max_abs_score_diff_allowed": TOLERANCE,
        "ray_init_s": round(ray_start_s, 2), "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "driver_peak_rss_mb_before_ray_calls": main_m["local_peak_mb"],
        "load_avg_start": load_start, "load_avg_end": load_end,
    }), flush=True)
    print(json.dumps({
        "benchmark": "influence_ray_overhead", **common, "repeats": repeats, "warmup": cfg["warmup"],
        "n_train": len(small["train"]), "n_test": len(small["test"]), "masks": cfg["masks"], **summary(small_m),
    }), flush=True)


if __name__ == "__main__":
    main()
