"""Computing one stage output of the sweep's graph (graph.py), and the worker's whole job.

`execute(node, ...)` is what every executor runs for a node (in this process, in a Tune trial
or on a Ray Data driver): check the store, compute into a partial folder, publish, record
the ledger. `compute` dispatches on the node's stage through one table. No Ray, no MLflow:
the orchestration decides where each node runs.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from .config import SweepSpec, TaskSpec
from .data import load_examples, num_labels, tokenizer_for
from .graph import Node, Stage, branch_of, influence_precision
from .influence.pipeline import influence as influence_local
from .lease import lease
from .models import build_model, load_checkpoint
from .pretrain import corpus, load_pretrained, pretrain
from .store import DamagedOutput, Store
from .subnetworks import intersection, load_mask, random_mask, save_mask, union
from .subnetworks.pruning import curve_frame, find_subnetworks
from .train import by_language, checkpoints, evaluate, finetune

HISTORY = "history.json"
TOPK, PREDICTIONS = "topk.parquet", "predictions.parquet"


# ---- computing one node ---------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _data(task_json: str, model_name: str):
    task = TaskSpec.model_validate_json(task_json)
    if model_name == "tiny":
        tokenizer = tokenizer_for(task)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_name)
    return {s: load_examples(task, s) for s in ("train", "dev", "test")}, tokenizer


def task_data(spec: SweepSpec, task_id: str) -> tuple[TaskSpec, dict, Any]:
    """Returns (task, {split: examples}, tokenizer) for `task_id` of the sweep branch `spec`."""
    task = next(t for t in spec.tasks if t.id == task_id)
    splits, tok = _data(task.model_dump_json(), spec.model.name)
    return task, splits, tok


def model_factory(spec: SweepSpec, task: TaskSpec, tokenizer, seed: int) -> Callable[[], torch.nn.Module]:
    """Returns a function that builds the sweep's model for `task` (weights then come from a checkpoint)."""
    return lambda: build_model(spec.model, num_labels(task), len(tokenizer), seed=seed)


def load_masks(store: Store, key: str, languages: list[str], shape: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Returns {language: bool mask} stored under a subnetworks or random_masks key."""
    folder = store.path(key, hashes="all")  # checked against its manifest before a value is read
    return {l: load_mask(_child(folder, l), shape)[0] for l in languages}


def _child(folder: Path, name: str) -> Path:
    """Returns folder/name, refusing a name that would leave `folder` (a language code is a path component)."""
    p = (folder / name).resolve()
    if p.parent != folder.resolve():
        raise ValueError(f"{name!r} is not a safe folder name inside {folder}")
    return p


def resolve_mask(store: Store, ref: dict | None, shape) -> torch.Tensor | None:
    """Returns the mask a reference names: one language's, or the union / intersection of two."""
    if ref is None:
        return None
    masks = list(load_masks(store, ref["key"], ref["languages"], shape).values())
    if ref["op"] == "union":
        return union(*masks)
    if ref["op"] == "intersect":
        return intersection(*masks)
    return masks[0]


InfluenceFn = Callable[..., pd.DataFrame]


def compute(node: Node, spec: SweepSpec, store: Store, out: Path, *, influence_fn: InfluenceFn = influence_local,
            on_epoch: Callable[[dict], None] | None = None, progress: bool = True,
            on_step: Callable[[int, int, int, int], None] | None = None) -> None:
    """Computes `node` of the sweep branch `spec` into the folder `out`; inputs must be in `store`."""
    task, data, tok = task_data(spec, node.params.task)
    job = _Job(node, spec, store, out, task, data, tok, model_factory(spec, task, tok, node.params.seed))
    COMPUTE[node.stage](job, influence_fn=influence_fn, on_epoch=on_epoch, progress=progress, on_step=on_step)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def execute(node: Node, spec: SweepSpec, store: Store, on_wait: Callable[[str], None] = _say, **kwargs) -> bool:
    """Returns True after computing `node` into the store and recording it in the ledger, False if it was there.

    The node's lease is taken first: if another process (another invocation) is computing it,
    this one says so through `on_wait`, waits, and uses what the other published. An input found
    damaged while it loads is moved aside at once, so the next run recomputes it.
    """
    if store.done(node.key):
        return False
    started = time.perf_counter()  # the ledger's `seconds`: what `estimate` is checked against, per stage
    with lease(store, node.key, on_wait=on_wait):
        if store.done(node.key):
            on_wait(f"stage output {node.key} was computed by another invocation meanwhile: using it")
            return False
        try:
            with store.writing(node.key) as out:
                compute(node, branch_of(spec, node.params.branch), store, out, **kwargs)
        except DamagedOutput as e:
            if store.done(e.key):
                on_wait(f"{e}; moved aside to {store.set_aside(e.key, e.problems)}")
            raise
    store.record({"key": node.key, "stage": str(node.stage), "trial": node.trial, "variant": getattr(node.params, "variant", None),
                  "time": time.time(), "seconds": time.perf_counter() - started, "pid": os.getpid()})
    return True


@dataclass
class _Job:
    """One node's computation: the node, its branch, the store, the output folder and the task's data."""

    node: Node
    spec: SweepSpec
    store: Store
    out: Path
    task: TaskSpec
    data: dict
    tok: Any
    make: Callable[[], torch.nn.Module]


def _pretrain(job: _Job, progress: bool = True, on_step=None, **_) -> None:
    spec = job.spec
    pretrain(spec.model.tiny, job.tok, corpus(job.task, spec.model.pretrain.sentences), spec.model.pretrain,
             spec.training.max_length, job.out, spec.training.device, progress=progress, on_step=on_step)


def _finetune(job: _Job, on_epoch=None, progress: bool = True, on_step=None, **_) -> None:
    p, model, masks = job.node.params, job.make(), None
    if p.init is not None:
        load_pretrained(model, job.store.path(p.init, hashes="all"))
    if p.masks is not None:
        shape = (model.num_layers, model.num_heads)
        masks = {l: m.float() for l, m in load_masks(job.store, p.masks, job.task.languages, shape).items()}
    history = finetune(model, job.data["train"], job.data["dev"], job.tok, job.spec.training, job.out, p.seed,
                       masks=masks, on_epoch=on_epoch, progress=progress, on_step=on_step)
    (job.out / HISTORY).write_text(json.dumps(history, indent=2))


def _subnetworks(job: _Job, on_step=None, **_) -> None:
    spec, model = job.spec, job.make()
    load_checkpoint(model, checkpoints(job.store.path(job.node.inputs[0], hashes="all"))[-1])
    subs = find_subnetworks(model, by_language(job.data["dev"]), job.tok, spec.subnetworks, spec.training.max_length,
                            spec.training.device, spec.training.precision, on_step=on_step)
    for lang, s in subs.items():
        save_mask(_child(job.out, lang), s.mask, {
            "task": job.task.id, "language": lang, "seed": job.node.params.seed, "checkpoint": job.node.inputs[0],
            "full_accuracy": s.full_accuracy, "masked_accuracy": s.accuracy, "threshold": spec.subnetworks.threshold,
            "step_fraction": spec.subnetworks.step_fraction,
        })
    curve_frame(subs).to_csv(job.out / "pruning_curves.csv", index=False)


def _random_masks(job: _Job, **_) -> None:
    rs, src = job.node.params.random_seed, job.store.path(job.node.inputs[0], hashes="all")
    for lang in job.task.languages:
        mask, meta = load_mask(_child(src, lang))
        save_mask(_child(job.out, lang), random_mask(mask, rs, job.task.id, lang),
                  meta.model_dump() | {"kind": "random", "random_seed": rs, "source": job.node.inputs[0]})


def _influence(job: _Job, influence_fn: InfluenceFn = influence_local, on_step=None, **_) -> None:
    node, spec, store, out, data, tok, make = job.node, job.spec, job.store, job.out, job.data, job.tok, job.make
    model = make()
    shape = (model.num_layers, model.num_heads)
    refs = node.params.masks
    masks = {lang: resolve_mask(store, ref, shape) for lang, ref in refs.items()}
    k = spec.influence.test_per_language
    test = [e for lang in refs for e in [x for x in data["test"] if x.language == lang][:k]]
    ckpts = checkpoints(store.path(node.params.model, hashes="all"))
    masks_f = {l: (m.float() if m is not None else None) for l, m in masks.items()}
    precision = influence_precision(spec)
    inf_spec = spec.influence.model_copy(update={"precision": precision})
    # sketching progress from the in-process scorer; a distributed one reports through its own pool
    progress = {"on_step": on_step} if on_step is not None and influence_fn is influence_local else {}
    topk = influence_fn(make, ckpts, data["train"], test, tok, inf_spec, masks_f, spec.training.max_length,
                        spec.training.device, **progress)
    topk.to_parquet(out / TOPK, index=False)
    rows = []
    for ckpt in ckpts:
        epoch = load_checkpoint(model, ckpt).get("epoch", int(ckpt.name.split("_")[1]))
        for lang in refs:
            exs = [e for e in test if e.language == lang]
            preds = evaluate(model, exs, tok, spec.training.max_length, spec.influence.batch_size, masks_f[lang], spec.training.device,
                             precision)["preds"]
            rows += [{"test_id": e.id, "test_language": lang, "checkpoint": epoch, "label": e.label, "pred": p} for e, p in zip(exs, preds)]
    pd.DataFrame(rows).to_parquet(out / PREDICTIONS, index=False)


COMPUTE: dict[Stage, Callable[..., None]] = {
    Stage.PRETRAIN: _pretrain, Stage.FINETUNE: _finetune, Stage.SUBNETWORKS: _subnetworks, Stage.RANDOM_MASKS: _random_masks, Stage.INFLUENCE: _influence,
}
