"""TracIn influence on Ray: sketching on a Ray Data actor pool, scoring as tasks over test shards.

Same inputs and results as pipeline.influence and influence_jobs (same ids, scores within float
tolerance); with several jobs (the influence variants of one model), each sketch set once for all:
- one `map_batches` pass (per pass of masks, pipeline.JobPlan.passes) over every (checkpoint x
  example row), where the example rows are every (training example x distinct mask) and every
  test set (under its mask), ordered by checkpoint. One actor pool serves all checkpoints, since starting a pool
  (processes importing torch, building the model) costs seconds. A `SketchActor` holds one
  checkpoint at a time and loads another only when a batch needs it; it sets torch threads
  to its CPUs and applies each row's mask (masks may differ within a batch). Weights and
  example texts travel through the object store, so workers need no shared disk. Output
  rows are keyed by checkpoint, example id and mask (optionally written as parquet shards
  per checkpoint);
- per job and mask group, the training sketches of all checkpoints go into the object store once
  and each shard of its test examples is scored by a task against them.

`ray.init` is called with `address` if Ray is not running yet (None = a local instance).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from ..sweep.config import InfluenceSpec
from ..models.classifier import WEIGHTS, load_checkpoint
from ..influence.pipeline import Job, JobPlan, Tables, as_model, as_sketches, checkpoint_metas, sketch_encoded, token_lengths
from ..influence.projection import Projector
from ..influence.sketch import DTYPES, Sketches, from_numpy, layer_dims, select_linears, to_numpy
from ..influence.tracin import top_influences
from .workers import WORKER_ENV, freeze_heap, use_cpus


class SketchActor:
    """Ray Data callable class: holds one model at one checkpoint at a time; maps a batch of (checkpoint, row) pairs to sketches."""

    def __init__(self, model, weights: list, examples: list, spec: dict, masks: list, tokenizer, max_length: int, device: str, cpus: float):
        import ray

        use_cpus(cpus)
        self.spec = InfluenceSpec.model_validate(spec)
        self.model = as_model(model).to(device).eval()
        self.weights = weights  # one object ref per checkpoint: only the checkpoint in use is fetched
        self.loaded = None
        self.examples = ray.get(examples[0])  # the Arrow table of pass_rows, read in place from the object store
        self.device = device
        self.linears = select_linears(self.model, self.spec.layers)
        self.projector = Projector(self.spec.proj_dim, self.spec.projection_seed) if self.spec.proj_dim else None
        self.masks = [None if m is None else torch.as_tensor(m, dtype=torch.float32) for m in masks]
        self.tokenizer = tokenizer
        self.max_length = max_length
        freeze_heap()  # the worker's imports and the model: not rescanned by every full collection while sketching

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["row"])
        if n == 0:
            raise ValueError("SketchActor got an empty shard of examples")
        checkpoint = batch["checkpoint"]
        # Ray Data may bundle blocks of two checkpoints into a batch: each part is sketched under
        # its own weights, the checkpoint already loaded first so a straddling batch loads once.
        parts = [np.flatnonzero(checkpoint == c) for c in sorted(np.unique(checkpoint), key=lambda c: c != self.loaded)]
        out = {"checkpoint": [], "row": [], "id": [], "set": [], "group": [], "sketch": []}
        for idx in parts:
            self._load(int(checkpoint[idx[0]]))
            rows = batch["row"][idx]
            ids, sets, groups, sketch = self._sketch(rows)
            for k, v in (("checkpoint", checkpoint[idx]), ("row", rows), ("id", ids), ("set", sets), ("group", groups), ("sketch", sketch)):
                out[k].append(v)
        return {k: np.concatenate(v) for k, v in out.items()}

    def _load(self, checkpoint: int) -> None:
        """Loads the weights of checkpoint number `checkpoint` unless they are loaded already."""
        import ray
        from safetensors.torch import load as load_safetensors

        if checkpoint != self.loaded:
            self.model.load_state_dict(load_safetensors(ray.get(self.weights[checkpoint])))
            self.loaded = checkpoint

    def _sketch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Returns (ids, sketch sets, mask groups, sketches) of example rows `rows` under the loaded checkpoint."""
        from ..data.examples import Example

        cols = self.examples.take(rows).to_pydict()
        pairs = cols.get("text_pair", [None] * len(rows))
        examples = [
            Example(id=str(i), language=str(lang), text=str(t), text_pair=p if isinstance(p, str) else None, label=int(y))
            for i, lang, t, p, y in zip(cols["id"], cols["language"], cols["text"], pairs, cols["label"])
        ]
        groups = [self.masks[g] for g in cols["group"]]
        if all(m is None for m in groups):
            head_mask = None
        else:  # an all-ones mask is exactly the full model
            ones = torch.ones_like(next(m for m in groups if m is not None))
            head_mask = torch.stack([ones if m is None else m for m in groups]).to(self.device)
        values = sketch_encoded(self.model, examples, self.tokenizer, self.max_length, self.linears, self.projector,
                                head_mask, self.spec, self.device)
        return (np.array(cols["id"], dtype=object), np.array(cols["set"], dtype=np.int64), np.array(cols["group"], dtype=np.int64),
                to_numpy(values))


def task_env() -> dict | None:
    """Returns the runtime env for actors and tasks: only WORKER_ENV variables the job's own env lacks.

    Ray keeps a worker pool per runtime env: repeating the job's env here would start fresh
    workers (torch imported anew, seconds each) for every call instead of reusing idle ones.
    """
    import ray

    job = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    missing = {k: v for k, v in WORKER_ENV.items() if job.get(k) != v}
    return {"env_vars": missing} if missing else None


ACTOR_INIT_DEATHS = 2  # consecutive sketching actors that may die while starting, each replaced, before the pass fails


@contextmanager
def _replacing_dead_actors():
    """Within the block, a Ray Data actor that dies while it starts is replaced (up to ACTOR_INIT_DEATHS in a
    row) rather than failing the pass: Ray's default is to fail on the first, and a busy node occasionally
    loses a pending actor. A constructor that always fails still fails the pass, after that many tries."""
    import ray

    ctx = ray.data.DataContext.get_current()
    before = ctx.max_consecutive_actor_init_deaths
    if 0 <= before < ACTOR_INIT_DEATHS:
        ctx.max_consecutive_actor_init_deaths = ACTOR_INIT_DEATHS
    try:
        yield
    finally:
        ctx.max_consecutive_actor_init_deaths = before


def _score_shard(test: list[Sketches], train: list[Sketches], top_k: int, lr_weighting: bool, cpus: float) -> pd.DataFrame:
    """Returns the top-k table of one test shard (runs as a Ray task)."""
    use_cpus(cpus)
    return top_influences(test, train, top_k, lr_weighting)


def pass_rows(sets: list[tuple[int, str, list]], tokenizer, max_length: int) -> list[dict]:
    """Returns one row per example of each sketch set (mask index, role, examples), sorted by token count so batches pad little.

    A row's `set` is the index of its sketch set, its `group` the index of its mask (what the actor applies).
    """
    unique = {ex.id: ex for _, _, exs in sets for ex in exs}
    length = dict(zip(unique, token_lengths(list(unique.values()), tokenizer, max_length)))
    rows = sorted(((s, g, role, ex) for s, (g, role, exs) in enumerate(sets) for ex in exs), key=lambda r: length[r[3].id])
    has_pair = any(ex.text_pair is not None for ex in unique.values())
    out = []
    for i, (s, g, role, ex) in enumerate(rows):
        row = {"row": i, "set": s, "role": role, "group": g, "id": ex.id, "language": ex.language, "text": ex.text, "label": int(ex.label)}
        if has_pair:
            row["text_pair"] = ex.text_pair
        out.append(row)
    return out


@dataclass(frozen=True)
class RayPass:
    """One pass of influence_ray_jobs as it runs: one actor pool sketching `rows` example rows per checkpoint, in
    `blocks` blocks per checkpoint; the driver then collects the pass's sketches once per sketch set (`sets` of them) and
    scores each part: `shards[i]` Ray tasks for part i of the plan (0: scored in the driver, one shard only)."""

    chunk: tuple[str, ...]  # the mask keys of the pass
    rows: int
    blocks: int
    sets: int
    shards: dict[int, int]  # plan part index -> scoring tasks (0 = in the driver)


def shards_of(n_test: int, shard_size: int) -> int:
    """Returns the scoring tasks of a part of `n_test` test examples: 0 where one shard holds them (scored in the driver:
    a task would only add a worker start), else one per `shard_size` test examples."""
    return 0 if n_test <= shard_size else math.ceil(n_test / shard_size)


def ray_passes(plan: JobPlan, row_bytes: int, budget_mb: float, batch_size: int, actors: int, shard_size: int) -> list[RayPass]:
    """Returns the passes influence_ray_jobs makes over `plan` (row_bytes: one example's sketch bytes over every
    checkpoint): what it runs and what `estimate` counts (planning/cost/ray_data.py)."""
    out = []
    for chunk in plan.passes(row_bytes, budget_mb):
        sets = plan.sets(chunk)
        rows = sum(len(exs) for _, _, exs in sets)
        # Blocks per checkpoint as a pass of one checkpoint had them, in checkpoint order, so an
        # actor mostly sees one checkpoint after the other and rarely reloads.
        blocks = max(1, min(rows // batch_size, 8 * actors))
        shards = {i: shards_of(len(p.test), shard_size) for i, p in enumerate(plan.parts) if p.group.key in chunk}
        out.append(RayPass(tuple(chunk), rows, blocks, len(sets), shards))
    return out


def influence_ray(
    model: nn.Module | Callable[[], nn.Module],
    checkpoints: list[str | Path],
    train: list,
    test: list,
    tokenizer,
    spec: InfluenceSpec,
    masks: dict[str, torch.Tensor | None] | None = None,
    max_length: int = 128,
    device: str = "cpu",
    address: str | None = None,
    cpus_per_actor: float = 1.0,
    shard_size: int = 256,
    sketch_dir: str | None = None,
) -> pd.DataFrame:
    """Returns the same table as pipeline.influence, computed on Ray (see the module docstring).

    model: as for pipeline.influence; a factory must be importable on the workers (a function
    of an installed module, or a functools.partial of one), an instance travels with its weights.
    Extra arguments: address of the cluster if Ray is not initialised yet; CPUs per actor
    and scoring task (torch threads follow it); test examples per scoring task; sketch_dir, a
    local folder or URI Ray can write, to keep each checkpoint's sketches as parquet shards
    (columns row, set, id, group, sketch). GPUs per actor and the number of actors come from spec.
    """
    return influence_ray_jobs(model, checkpoints, train, [Job("influence", test, masks)], tokenizer, spec, max_length, device,
                              address=address, cpus_per_actor=cpus_per_actor, shard_size=shard_size, sketch_dir=sketch_dir)["influence"]


def influence_ray_jobs(
    model: nn.Module | Callable[[], nn.Module],
    checkpoints: list[str | Path],
    train: list,
    jobs: list[Job],
    tokenizer,
    spec: InfluenceSpec,
    max_length: int = 128,
    device: str = "cpu",
    on_checkpoint: Callable[[nn.Module, dict], None] | None = None,
    on_done: Callable[[str, pd.DataFrame], None] | None = None,
    budget_mb: float = 2048.0,
    address: str | None = None,
    cpus_per_actor: float = 1.0,
    shard_size: int = 256,
    sketch_dir: str | None = None,
    on_phase: Callable[[str, float, dict], None] | None = None,
) -> dict[str, pd.DataFrame]:
    """Returns the same tables as pipeline.influence_jobs, computed on Ray: one actor pool (one `map_batches`)
    per pass of masks, so several jobs of one model pay its start once; other arguments as influence_ray.

    on_checkpoint(model, meta) runs in this process, each checkpoint loaded once here for it. The passes are
    ray_passes(...)'s. on_phase(name, seconds, counts), after each phase: 'setup' (the model built, on_checkpoint
    run per checkpoint, the weights put), then per pass 'rows' (its example rows built
    and put), 'pool' (the actor pool's sketching, rows = example rows x checkpoints), 'collect' (the sketches
    gathered per sketch set), then 'score' per part (tasks: how many Ray tasks, 0 = in this process).
    """
    import ray

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    phase = _Phases(on_phase)
    if not ray.is_initialized():
        ray.init(address=address)
    build = model  # actors get the factory if there is one, so no weights are pickled with it
    model = as_model(model)
    plan = JobPlan(model, train, jobs)
    metas = checkpoint_metas(model, checkpoints)
    layout = layer_dims(select_linears(model, spec.layers), spec.proj_dim)
    if on_checkpoint is not None:
        model.eval()
        for meta in metas:
            on_checkpoint(model, load_checkpoint(model, meta["dir"]) | {"dir": meta["dir"]})
    actor_device = "cuda" if spec.gpus_per_actor > 0 else device
    weights = [ray.put((Path(meta["dir"]) / WEIGHTS).read_bytes()) for meta in metas]
    score = ray.remote(num_cpus=cpus_per_actor, runtime_env=task_env())(_score_shard)
    tables = Tables(plan, on_done)
    row_bytes = sum(d for _, d in layout) * DTYPES[spec.dtype].itemsize * len(metas)
    phase("setup", checkpoints=len(metas))
    for ps in ray_passes(plan, row_bytes, budget_mb, spec.batch_size, spec.actors, shard_size):
        chunk = list(ps.chunk)
        sets = plan.sets(chunk)
        rows = pass_rows([(chunk.index(k), "train" if ids is None else "test", exs) for k, ids, exs in sets], tokenizer, max_length)
        set_of = np.array([r["set"] for r in rows])
        masks_np = [None if plan.masks[k] is None else plan.masks[k].numpy() for k in chunk]
        examples = ray.put(pa.Table.from_pylist(rows))  # once: each input row is only (checkpoint, row index)
        phase("rows", rows=len(rows))
        with _replacing_dead_actors():
            ds = ray.data.from_arrow([pa.table({"checkpoint": np.full(len(part), c), "row": part})
                                      for c in range(len(metas)) for part in np.array_split(np.arange(len(rows)), ps.blocks)])
            out = ds.map_batches(
                SketchActor,
                fn_constructor_kwargs=dict(model=build, weights=weights, examples=[examples], spec=spec.model_dump(), masks=masks_np,
                                           tokenizer=tokenizer, max_length=max_length, device=actor_device, cpus=cpus_per_actor),
                batch_size=spec.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=spec.actors),
                num_cpus=cpus_per_actor, num_gpus=spec.gpus_per_actor, runtime_env=task_env(),
            ).materialize()
        del examples, ds
        phase("pool", rows=len(rows) * len(metas), actors=spec.actors)
        if sketch_dir is not None:
            from ray.data.expressions import col

            for c, meta in enumerate(metas):
                out.filter(expr=col("checkpoint") == c).drop_columns(["checkpoint"]).write_parquet(
                    f"{sketch_dir.rstrip('/')}/epoch_{meta['epoch']}")
        sk = {}
        for s, (key, ids, exs) in enumerate(sets):
            idx = np.flatnonzero(set_of == s)
            per_checkpoint, seen = collect_set(out, s, idx, len(metas), len(rows), spec.dtype)
            what = "train" if ids is None else "test"
            for c, meta in enumerate(metas):
                if not seen[c].all():
                    lost = [rows[i]["id"] for i in idx[~seen[c]][:3]]
                    raise RuntimeError(f"checkpoint {meta['epoch']}: the sketching pass lost {what} examples, e.g. {lost}")
                sk.setdefault((key, ids), []).append(as_sketches([rows[i]["id"] for i in idx], [rows[i]["language"] for i in idx],
                                                                 per_checkpoint[c], layout, spec, meta, key))
                per_checkpoint[c] = None
        del out
        phase("collect", sets=len(sets))
        for i, tasks in ps.shards.items():
            part = plan.parts[i]
            sk_test, sk_train = sk[part.test_set], sk[(part.group.key, None)]
            n_test = len(sk_test[0].ids)
            if not tasks:  # one shard: a task would only add a worker start (seconds: imports)
                tables.add(i, top_influences(sk_test, sk_train, spec.top_k, spec.lr_weighting))
                phase("score", part=i, tasks=0, tests=n_test)
                continue
            train_ref = ray.put(sk_train)
            shards = [[t.take(t.ids[j : j + shard_size]) for t in sk_test] for j in range(0, n_test, shard_size)]
            tables.add(i, pd.concat(ray.get([score.remote(shard, train_ref, spec.top_k, spec.lr_weighting, cpus_per_actor)
                                             for shard in shards]), ignore_index=True))
            del train_ref
            phase("score", part=i, tasks=len(shards), tests=n_test)
    return tables.result()


class _Phases:
    """Calls on_phase(name, seconds since the previous phase, counts) as influence_ray_jobs goes; nothing without one."""

    def __init__(self, on_phase: Callable[[str, float, dict], None] | None):
        self.on_phase, self.since = on_phase, time.perf_counter()

    def __call__(self, name: str, **counts) -> None:
        if self.on_phase is not None:
            now = time.perf_counter()
            self.on_phase(name, now - self.since, counts)
            self.since = now


def collect_set(out, group: int, idx: np.ndarray, n_checkpoints: int, n_rows: int, dtype: str) -> tuple[list[torch.Tensor], np.ndarray]:
    """Returns (per checkpoint the sketches of rows `idx`, one sketch set's, in that order; which arrived [checkpoints, len(idx)]).

    One pass over the sketched dataset per sketch set (`group`: its index, the rows' `set`), holding only that set's sketches.
    """
    pos = np.full(n_rows, -1)
    pos[idx] = np.arange(len(idx))
    values, seen = [None] * n_checkpoints, np.zeros((n_checkpoints, len(idx)), dtype=bool)
    for b in out.iter_batches(batch_format="numpy", batch_size=None):
        keep = b["set"] == group
        for c in np.unique(b["checkpoint"][keep]):
            sel = keep & (b["checkpoint"] == c)
            at, sk = pos[b["row"][sel]], b["sketch"][sel]
            if (at < 0).any():
                raise RuntimeError(f"the sketching pass put rows of another sketch set in set {group}, e.g. id {b['id'][sel][at < 0][0]}")
            if seen[c, at].any():
                raise RuntimeError(f"the sketching pass returned rows twice, e.g. id {b['id'][sel][seen[c, at]][0]}")
            if values[c] is None:
                values[c] = torch.zeros((len(idx), sk.shape[1]), dtype=DTYPES[dtype])
            values[c][torch.from_numpy(at)] = from_numpy(sk, dtype)
            seen[c, at] = True
    if any(v is None for v in values):
        raise RuntimeError(f"the sketching pass returned no rows for sketch set {group}")
    return values, seen
