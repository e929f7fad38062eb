"""The influence wave on Ray Data (`influence.actors` > 1 with the Ray executor), costed as it runs.

orchestration/influence_ray.influence_ray_jobs computes the influence variants of one fine-tuned
model from the driver, one model after the other (executors.RayDataInfluence), no Tune trials:
- the driver builds the model, loads each checkpoint to predict the test examples (on_checkpoint),
  and puts the weights in the object store;
- per pass of masks (`ray_passes`, the runner's own plan): the example rows are built and put; an actor
  pool of `influence.actors` actors starts (processes importing torch, building the model) and sketches
  every (checkpoint x row), the actors side by side; the driver then reads the materialized pass once
  per sketch set (`collect_set`) into sketch tensors;
- per part (a job's mask group), the training sketches are put once and the test examples scored in
  Ray tasks of `shard_size` test examples (as many at once as the cluster has CPUs for them), or in the
  driver where one shard holds them.

`group_costs` counts those steps with `ray_passes` on a JobPlan of the sweep's shape and prices them
with the calibration (sketched example, scoring, loads, predictions) and `measure`'s probe of what
calibration does not time: a pool's start, a scoring task's start, the driver's collection and row
building per row. Driver memory (`driver_peak_bytes`): what the driver holds at the end of a pass's
collection, from the same counts.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import torch

from ...influence.pipeline import Job, JobPlan
from ...influence.sketch import DTYPES, layer_dims, select_linears
from ...orchestration.influence_ray import RayPass, influence_ray_jobs, ray_passes
from ...train.finetune import by_language
from .walltime import makespan

DEFAULTS = {k: v.default for k, v in inspect.signature(influence_ray_jobs).parameters.items()
            if k in ("budget_mb", "shard_size", "cpus_per_actor")}  # what stages.execute_influence runs it with


@dataclass
class RayDataCosts:
    """What `measure` times on a local Ray: idle-machine seconds (see estimate.estimate's scaling of Ray's wall times)."""

    driver_base: int = 0  # the driver's memory (anonymous and file pages) with run's imports and Ray started: before the wave
    pool_start: float = 0.0  # an actor pool's start and end around its sketching: actors, imports, the model built, Ray Data's plan
    task_start: float = 0.0  # a pass's first round of scoring tasks besides the others: the task workers started
    task_round: float = 0.0  # a round of scoring tasks besides their scoring: dispatch, arguments fetched, tables back
    collect_call: float = 0.0  # one `collect_set` call besides its rows (one iteration over the materialized pass)
    collect_row: float = 0.0  # one materialized row read by one `collect_set` call, at the sweep's sketch length
    row: float = 0.0  # building, sorting and putting one example row of a pass (influence_ray.pass_rows, the Arrow table)
    table_row: float = 0.0  # bytes of one top-k table row as a scoring task's table reaches the driver
    measured: bool = False

    @classmethod
    def of(cls, values: dict | None, slowdown: float = 1.0) -> "RayDataCosts":
        """Returns the costs `measure` gave (None: not measured, all 0), its wall times of several processes scaled to an
        idle machine by the calibration's `slowdown` (as estimate scales Ray's start and Tune's costs)."""
        if not values:
            return cls()
        out = cls(**values, measured=True)
        out.pool_start /= slowdown
        out.task_start /= slowdown
        out.task_round /= slowdown
        return out


@dataclass
class GroupCost:
    """One fine-tuned model's influence variants on Ray Data: idle seconds by where they run, and the counts behind them."""

    driver: float = 0.0  # the driver alone (one thread): build, loads, predictions, rows, collection, driver-side scoring, tables
    actors: float = 0.0  # the actor pools' sketching, actors side by side (and their starts)
    tasks: float = 0.0  # the scoring tasks' rounds, slots side by side
    pools: int = 0  # actor pools started (one per pass)
    passes: list[RayPass] = field(default_factory=list)
    scoring_tasks: int = 0
    driver_parts: int = 0  # parts scored in the driver (one shard)
    rows: int = 0  # example rows sketched, all passes and checkpoints
    sketch_bytes: int = 0  # every sketch made (all passes, sets and checkpoints)
    actors_at_once: int = 1  # actors sketching side by side
    task_slots: int = 1  # scoring tasks at once
    driver_peak_bytes: int = 0  # the driver's peak memory besides its start (driver_peak_bytes)

    @property
    def seconds(self) -> float:
        return self.driver + self.actors + self.tasks


def stand_in_masks(n: int, shape: tuple[int, int]) -> list[torch.Tensor]:
    """Returns `n` distinct 0/1 head masks of `shape` (the i-th: ones but where i + 1 has a set bit), for counting only."""
    cells = shape[0] * shape[1]
    if n >= 2 ** cells:
        raise ValueError(f"{n} distinct masks do not fit {shape} heads")
    out = []
    for i in range(n):
        bits = torch.tensor([((i + 1) >> j) & 1 for j in range(cells)], dtype=torch.float32)
        out.append((1 - bits).view(shape))
    return out


def job_plan(nodes, b, data: dict, model, store=None) -> tuple[JobPlan, list]:
    """Returns (the JobPlan stages.execute_influence hands the engine for these influence nodes of one model, the jobs):
    the same jobs in the same (key) order, test examples as _influence_inputs picks them; each mask reference's mask
    from `store` where it is there (so references to equal masks share their sketches, as in the run), else a
    stand-in mask of its own (references not yet computed are assumed to be different masks)."""
    from ...stages import resolve_mask

    shape = (model.num_layers, model.num_heads)
    refs: dict[str, dict] = {}
    for n in nodes:
        for ref in n.params.masks.values():
            if ref is not None:
                refs.setdefault(repr(sorted(ref.items())), ref)
    stand_in = iter(stand_in_masks(len(refs), shape))
    masks = {}
    for name, ref in refs.items():
        real = store is not None and store.done(ref["key"])
        masks[name] = resolve_mask(store, ref, shape).float() if real else next(stand_in)
    test = by_language(data["test"])
    k = b.influence.test_per_language
    jobs = []
    for n in sorted(nodes, key=lambda n: n.key):
        exs = [e for lang in n.params.masks for e in test.get(lang, [])[:k]]
        jobs.append(Job(n.key, exs, {lang: None if ref is None else masks[repr(sorted(ref.items()))]
                                     for lang, ref in n.params.masks.items()}))
    return JobPlan(model, data["train"], jobs), jobs


def group_costs(nodes, b, cal, data: dict, model, costs: RayDataCosts, task_slots: int, store=None) -> GroupCost:
    """Returns the idle seconds, counts and driver memory of the influence nodes of one fine-tuned model run by
    influence_ray_jobs with stages.execute_influence's arguments; `task_slots`: scoring tasks at once; store: job_plan's."""
    inf, ckpts = b.influence, b.training.epochs
    plan, jobs = job_plan(nodes, b, data, model, store)
    dim = sum(d for _, d in layer_dims(select_linears(model, inf.layers), inf.proj_dim))
    item = torch.tensor([], dtype=DTYPES[inf.dtype]).element_size()
    row_bytes = dim * item * ckpts
    passes = ray_passes(plan, row_bytes, DEFAULTS["budget_mb"], inf.batch_size, inf.actors, DEFAULTS["shard_size"])
    actors = max(1, min(inf.actors, task_slots))  # a pool larger than the cluster's CPUs runs that many at once
    n_train = len(plan.train)
    g = GroupCost(pools=len(passes), passes=passes, actors_at_once=actors, task_slots=task_slots)
    # driver, before the passes: the model built, each checkpoint loaded to predict every job's test examples
    g.driver += cal.build + ckpts * cal.load + ckpts * sum(len(j.test) for j in jobs) * cal.eval_example[inf.batch_size]
    g.driver += len(nodes) * cal.table_io
    for p in passes:
        unique = len({ex.id for _, _, exs in plan.sets(list(p.chunk)) for ex in exs})
        g.driver += unique * cal.encode_example + p.rows * costs.row
        g.actors += costs.pool_start + ckpts * cal.load + p.rows * ckpts * cal.sketch_example / actors
        g.driver += p.sets * (costs.collect_call + p.rows * ckpts * costs.collect_row)
        g.rows += p.rows * ckpts
        g.tasks += costs.task_start if any(p.shards.values()) else 0.0
        g.sketch_bytes += p.rows * row_bytes
        for i, tasks in p.shards.items():
            n_test = len(plan.parts[i].test)
            if not tasks:
                g.driver += cal.score_fixed + cal.score_unit * n_test * n_train * ckpts
                g.driver_parts += 1
                continue
            size = DEFAULTS["shard_size"]
            work = [cal.score_fixed + cal.score_unit * min(size, n_test - j) * n_train * ckpts for j in range(0, n_test, size)]
            g.tasks += costs.task_round * math.ceil(tasks / task_slots) + makespan(work, task_slots)
            g.scoring_tasks += tasks
    g.driver_peak_bytes = driver_peak_bytes(plan, passes, row_bytes, ckpts, inf.top_k, costs.table_row)
    return g


def driver_peak_bytes(plan: JobPlan, passes: list[RayPass], row_bytes: int, checkpoints: int, top_k: int, table_row: float) -> int:
    """Returns the driver's memory at its peak besides what it holds before the wave, while it scores a pass's largest
    part: the pass's sketches (every set and checkpoint: the tensors `collect_set` filled), the materialized pass it read
    them from (object store pages the driver mapped stay resident: the sketch column and each row's keys), the part's
    training sketches put for its tasks, and the part's top-k table twice (the tasks' tables fetched, and their
    concatenation) at `table_row` bytes a row (RayDataCosts.table_row).
    """
    best = 0
    for p in passes:
        held = p.rows * row_bytes
        mapped = p.rows * (row_bytes + checkpoints * ROW_KEYS)
        n_train = len(plan.train)
        tables = max(len(plan.parts[i].test) * (checkpoints + (checkpoints > 1)) * 2 * min(top_k, n_train) for i in p.shards)
        put = n_train * row_bytes if any(p.shards.values()) else 0
        best = max(best, held + mapped + put + int(2 * tables * table_row))
    return best


ROW_KEYS = 64  # bytes per materialized row besides its sketch: checkpoint, row, set, group (int64) and the id string


def measure(spec) -> dict[str, float]:
    """Returns RayDataCosts' fields measured on the running Ray (ray.init done): the sweep's first task and model, a
    checkpoint of a fresh model, real example rows; synthetic sketches for the collection. Wall seconds (several
    processes) for pool_start and task_start, the smaller of wall and CPU for the driver's own steps."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import pyarrow as pa
    import ray

    from ...models.classifier import save_checkpoint
    from ...orchestration.influence_ray import collect_set, pass_rows
    from ...sweep.config import branches
    from .inputs import setup

    b = branches(spec)[0][1]
    inf = b.influence
    data, tok, make, _ = setup(b, b.tasks[0].id)
    model = make()
    dim = sum(d for _, d in layer_dims(select_linears(model, inf.layers), inf.proj_dim))
    out: dict[str, float] = {}

    def quiet(fn) -> float:
        w, c = time.perf_counter(), time.process_time()
        fn()
        return min(time.perf_counter() - w, time.process_time() - c)

    # rows: what a pass builds for every example row before its pool starts (the training set once, as one mask's)
    train = data["train"][:2000]
    out["row"] = quiet(lambda: ray.put(pa.Table.from_pylist(pass_rows([(0, "train", train)], tok, b.training.max_length))))
    out["row"] /= len(train)
    # collection: a materialized pass of synthetic sketches at the sweep's length (made by map_batches, as the actors'
    # are), read for a set of a quarter of its rows
    per_size = {}
    for n in (2000, 8000):
        ds = ray.data.range(n, override_num_blocks=16).map_batches(_synthetic_pass, fn_kwargs={"dim": dim}, batch_format="numpy",
                                                                   batch_size=None).materialize()
        idx = np.arange(0, n, 4)
        collect_set(ds, 0, idx, 1, n, inf.dtype)  # Ray Data's first iteration of a dataset starts its executor: not timed
        per_size[n] = min(quiet(lambda: collect_set(ds, 0, idx, 1, n, inf.dtype)) for _ in range(3))
        del ds
    out["collect_row"] = max(0.0, (per_size[8000] - per_size[2000]) / 6000)
    out["collect_call"] = max(0.0, per_size[2000] - 2000 * out["collect_row"])
    # a pool's start and rounds of scoring tasks: influence_ray_jobs on a few examples, one checkpoint, two parts (two
    # languages, one under a mask) of as many one-example shards as the cluster runs tasks at once; twice, the mean.
    # A pass's first round starts the task workers (its pool's actors took the idle ones), later rounds reuse them.
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // DEFAULTS["cpus_per_actor"]))
    small = inf.model_copy(update={"top_k": 2})
    rows = data["train"][: 2 * inf.actors]
    by_lang = list(by_language(data["test"]).items())[:2]
    test = [e for _, exs in by_lang for e in exs[:slots]]
    masks = {by_lang[0][0]: None, by_lang[-1][0]: stand_in_masks(1, (model.num_layers, model.num_heads))[0]}
    pools, firsts, rounds = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp) / "epoch_1", {"epoch": 1, "lr_mean": 1.0})
        for _ in range(2):
            seen: list = []
            influence_ray_jobs(make, [Path(tmp) / "epoch_1"], rows, [Job("probe", test, masks)], tok, small,
                               b.training.max_length, "cpu", shard_size=1, on_phase=lambda name, s, counts: seen.append((name, s)))
            pools.append(sum(s for name, s in seen if name == "pool"))
            score = [s for name, s in seen if name == "score"]
            firsts.append(score[0])
            rounds.append(score[-1])
    out["pool_start"] = sum(pools) / len(pools)
    out["task_round"] = sum(rounds) / len(rounds)
    out["task_start"] = max(0.0, sum(firsts) / len(firsts) - out["task_round"])
    out["driver_base"] = private_bytes()
    # a top-k table as it reaches the driver from a task: its bytes per row
    import pandas as pd

    from ...influence.sketch import Sketches
    from ...influence.tracin import top_influences

    layout = layer_dims(select_linears(model, inf.layers), inf.proj_dim)
    sk = lambda n, w: [Sketches([f"{data['train'][0].id}{w}{i}" for i in range(n)], [data["train"][0].language] * n,  # noqa: E731
                                torch.randn(n, dim), layout, inf.proj_dim, 0, 1)]
    table = ray.get(ray.put(top_influences(sk(16, "t"), sk(max(inf.top_k, 16), "n"), inf.top_k)))
    out["table_row"] = float(pd.DataFrame(table).memory_usage(deep=True).sum() / len(table))
    return out


def _synthetic_pass(batch: dict, dim: int) -> dict:
    """Returns rows of the columns a sketching pass outputs (influence_ray.SketchActor), random sketches of length `dim`."""
    import numpy as np

    rows = batch["id"]
    return {"checkpoint": np.zeros(len(rows), dtype=np.int64), "row": rows, "id": np.array([f"x/{i}" for i in rows], dtype=object),
            "set": rows % 4, "group": rows % 4, "sketch": np.random.default_rng(int(rows[0])).standard_normal((len(rows), dim), dtype=np.float32)}


def private_bytes() -> int:
    """Returns this process's resident anonymous and file pages (not the object store's shared pages it maps), 0 where
    /proc does not say."""
    try:
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    except OSError:
        return 0
    return sum(int(status[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile") if k in status)


def cost_groups(est, groups: list, measured: dict | None, task_slots: int, store=None) -> list[tuple[list, GroupCost, object, int]]:
    """Returns (nodes, their GroupCost, calibration, params) for every group (estimate._estimate_into's (nodes, branch,
    calibration, data, model, params) of one fine-tuned model) as the Ray Data wave runs them; sets est.ray_data,
    est.driver_peak_bytes and the assumption that says what was counted."""
    costs = RayDataCosts.of(measured, est.slowdown)
    peak, out = 0, []
    for nodes, b, cal, data, model, params in groups:
        g = group_costs(nodes, b, cal, data, model, costs, task_slots, store)
        est.ray_data[f"{nodes[0].trial}/influence"] = g
        peak = max(peak, g.driver_peak_bytes)
        out.append((nodes, g, cal, params))
    est.driver_peak_bytes = costs.driver_base + peak if costs.measured else None
    gs = list(est.ray_data.values())
    est.assumptions.append(
        f"influence.actors > 1: the influence wave runs from the driver on Ray Data, one model after the other: "
        f"{sum(g.pools for g in gs)} actor pool(s) of {max(g.actors_at_once for g in gs)} actors (one per pass of masks), "
        f"{sum(g.rows for g in gs)} sketched rows, {sum(g.scoring_tasks for g in gs)} scoring tasks "
        f"({max(g.task_slots for g in gs)} at once) and {sum(g.driver_parts for g in gs)} part(s) scored in the driver; "
        + (f"a pool's start {costs.pool_start:.1f} s, a pass's task workers' {costs.task_start:.1f} s and a round of tasks' "
           f"{costs.task_round:.1f} s (measured on a local Ray)"
           if costs.measured else "pool and task starts and the driver's collection not measured: counted as 0")
        + ("; masks not yet in the store count as distinct" if store is not None else
           "; every mask reference counts as a distinct mask (estimate --root with the masks computed counts equal ones once)"))
    return out


def at_load(g: GroupCost, idle: float, fixed: float, slowdown_at) -> float:
    """Returns the wall seconds of group `g` (its nodes' idle seconds `idle`, the node I/O beyond g.seconds in the
    driver) under the present load: the driver's share at the driver's slowdown `fixed`, the actors' and the scoring
    tasks' at slowdown_at(processes side by side, 'sketch') (Estimate.slowdown_at)."""
    driver = g.driver + max(0.0, idle - g.seconds)
    return (driver * fixed + g.actors * slowdown_at(g.actors_at_once, "sketch")
            + g.tasks * slowdown_at(g.task_slots, "sketch"))


def summary(est) -> dict | None:
    """Returns the Ray Data wave's counts, idle seconds by where they run, and the driver's projected peak memory, per
    model and in all (None where the influence wave is not on Ray Data): what `estimate` prints as JSON."""
    if not est.ray_data:
        return None
    models = {t: {"pools": g.pools, "passes": len(g.passes), "rows": g.rows, "scoring_tasks": g.scoring_tasks,
                  "driver_parts": g.driver_parts, "driver_s": g.driver, "actors_s": g.actors, "tasks_s": g.tasks,
                  "driver_peak_extra_bytes": g.driver_peak_bytes} for t, g in est.ray_data.items()}
    return {"models": models, "pools": sum(m["pools"] for m in models.values()),
            "scoring_tasks": sum(m["scoring_tasks"] for m in models.values()), "driver_peak_bytes": est.driver_peak_bytes}
