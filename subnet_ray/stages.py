"""Computing one stage output of the sweep's graph (sweep/graph.py), and the worker's whole job.

`execute(node, ...)` is what every executor runs for a node (in this process, in a Tune trial
or on a Ray Data driver): check the store, compute into a partial folder, publish, record
the ledger. `compute` dispatches on the node's stage through one table. No Ray, no MLflow:
the orchestration decides where each node runs.
"""
from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from .sweep.config import InfluenceSpec, SweepSpec, TaskSpec
from .data.examples import load_examples, num_labels, tokenizer_for
from .sweep.graph import Node, Stage, branch_of, influence_precision
from .influence.pipeline import Job, influence_jobs
from .influence.pipeline import influence as influence_local
from .influence.engines import write_engine
from .storage.lease import lease
from .models.architectures import pad_with_eos
from .models.classifier import build_model, load_checkpoint
from .train.pretrain import corpus, load_pretrained, pretrain
from .storage.store import DamagedOutput, Store
from .subnetworks import intersection, load_mask, random_mask, save_mask, union
from .subnetworks.pruning import curve_frame, find_subnetworks
from .train.finetune import by_language, checkpoints, evaluate, finetune

HISTORY = "history.json"
TOPK, PREDICTIONS = "topk.parquet", "predictions.parquet"


# ---- computing one node ---------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def data_and_tokenizer(task_json: str, model_name: str):
    """Returns ({split: examples}, tokenizer) of a task (as JSON) for a model name, cached per process (`__wrapped__` loads afresh)."""
    task = TaskSpec.model_validate_json(task_json)
    if model_name == "tiny":
        tokenizer = tokenizer_for(task)
    else:
        from transformers import AutoTokenizer

        tokenizer = pad_with_eos(AutoTokenizer.from_pretrained(model_name))  # decoder tokenizers often lack a pad token
    return {s: load_examples(task, s) for s in ("train", "dev", "test")}, tokenizer


def task_of(spec: SweepSpec, task_id: str) -> TaskSpec:
    """Returns the task `task_id` of the sweep; a ValueError naming the sweep's tasks if it has none of that id."""
    task = next((t for t in spec.tasks if t.id == task_id), None)
    if task is None:
        raise ValueError(f"no task {task_id!r} in sweep {spec.name!r} (its tasks: {[t.id for t in spec.tasks]})")
    return task


def task_data(spec: SweepSpec, task_id: str) -> tuple[TaskSpec, dict, Any]:
    """Returns (task, {split: examples}, tokenizer) for `task_id` of the sweep branch `spec`."""
    task = task_of(spec, task_id)
    splits, tok = data_and_tokenizer(task.model_dump_json(), spec.model.name)
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
    with _named(f"{node.stage} of {node.trial}"), lease(store, node.key, on_wait=on_wait):
        if store.done(node.key):
            on_wait(f"stage output {node.key} was computed by another invocation meanwhile: using it")
            return False
        try:
            compute(node, branch_of(spec, node.params.branch), store, store.partial(node.key), **kwargs)
        except DamagedOutput as e:
            if store.done(e.key):
                on_wait(f"{e}; moved aside to {store.set_aside(e.key, e.problems)}")
            raise
        _publish(store, node, time.perf_counter() - started)
    return True


@contextlib.contextmanager
def _named(what: str) -> Any:
    """Adds to an error that leaves the block the stage output it was computing ("while computing ..."):
    the one line a full disk or a read-only root ends in names it (orchestration/faults.py)."""
    try:
        yield
    except Exception as e:
        e.add_note(f"while computing {what}")
        raise


@contextlib.contextmanager
def _signals_held() -> Any:
    """Runs the block with Ctrl-C, SIGTERM and SIGHUP held back, then delivers the first that came
    (in the main thread; elsewhere a signal is not delivered to this code anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    previous = {s: h for s, h in previous.items() if h is not None}  # None: a handler not set from Python
    held: list[int] = []
    for s in previous:
        signal.signal(s, lambda signum, _: held.append(signum))
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if held:
            signal.raise_signal(held[0])


def _publish(store: Store, node: Node, seconds: float) -> None:
    """Publishes `node`'s partial folder and records it in the ledger, both or neither: a Ctrl-C between
    the two would leave a finished output that no rerun records (it is not recomputed)."""
    with _signals_held():
        store.commit(node.key)
        store.record({"key": node.key, "stage": str(node.stage), "trial": node.trial, "variant": getattr(node.params, "variant", None),
                      "time": time.time(), "seconds": seconds, "pid": os.getpid(), "host": socket.gethostname(),
                      # the Slurm node, where Slurm started this process: a host may run several slurmd
                      **({"slurm_node": os.environ["SLURMD_NODENAME"]} if "SLURMD_NODENAME" in os.environ else {})})


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
    (job.out / HISTORY).write_text(json.dumps(history, indent=2, sort_keys=True))  # a resumed run reads its first epochs back sorted


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


RANDOM_MADE_BY = ("the source mask's enabled heads moved to heads drawn uniformly at random (same number on), "
                  "one draw per language from (random_seed, task, language)")


def _random_masks(job: _Job, **_) -> None:
    """Each language's identified mask shuffled, with its own dev accuracy on the fine-tuned model (inputs: the
    subnetworks and that model): a random mask's metadata describes the random mask, its source's goes under `source`."""
    spec, (sub_key, model_key) = job.spec, job.node.inputs
    rs, src = job.node.params.random_seed, job.store.path(sub_key, hashes="all")
    model = job.make()
    load_checkpoint(model, checkpoints(job.store.path(model_key, hashes="all"))[-1])
    dev = by_language(job.data["dev"])
    for lang in job.task.languages:
        mask, meta = load_mask(_child(src, lang))
        shuffled = random_mask(mask, rs, job.task.id, lang)
        acc = evaluate(model, dev[lang], job.tok, spec.training.max_length, spec.training.batch_size, shuffled,
                       spec.training.device, spec.training.precision)["accuracy"]
        source = {"key": sub_key, "kind": meta.kind, "masked_accuracy": meta.masked_accuracy, "heads_enabled": int(mask.sum()),
                  "threshold": meta.threshold, "step_fraction": meta.step_fraction}
        save_mask(_child(job.out, lang), shuffled, {
            "task": job.task.id, "language": lang, "seed": job.node.params.seed, "checkpoint": model_key,
            "full_accuracy": meta.full_accuracy, "masked_accuracy": acc, "kind": "random", "random_seed": rs,
            "made_by": RANDOM_MADE_BY, "source": source})


def _influence_inputs(node: Node, spec: SweepSpec, store: Store, data: dict, shape: tuple[int, int]) -> tuple[list, dict, list[Path], InfluenceSpec]:
    """Returns (test examples, test language -> float head mask or None, checkpoint folders, influence settings) of an influence node."""
    refs = node.params.masks
    masks = {lang: resolve_mask(store, ref, shape) for lang, ref in refs.items()}
    k = spec.influence.test_per_language
    test = [e for lang in refs for e in [x for x in data["test"] if x.language == lang][:k]]
    ckpts = checkpoints(store.path(node.params.model, hashes="all"))
    masks_f = {l: (m.float() if m is not None else None) for l, m in masks.items()}
    return test, masks_f, ckpts, spec.influence.model_copy(update={"precision": influence_precision(spec)})


def _predictions(model, test: list, masks: dict, spec: SweepSpec, tok, epoch: int) -> list[dict]:
    """Returns one row per test example (test_id, test_language, checkpoint, label, pred) of the model as loaded, each language under its mask."""
    rows = []
    for lang, mask in masks.items():
        exs = [e for e in test if e.language == lang]
        with torch.no_grad():  # predictions only: no autograd graph over the weights
            preds = evaluate(model, exs, tok, spec.training.max_length, spec.influence.batch_size, mask, spec.training.device,
                             influence_precision(spec))["preds"]
        rows += [{"test_id": e.id, "test_language": lang, "checkpoint": epoch, "label": e.label, "pred": p} for e, p in zip(exs, preds)]
    return rows


def _influence(job: _Job, influence_fn: InfluenceFn = influence_local, on_step=None, **_) -> None:
    spec, out, data, tok, make = job.spec, job.out, job.data, job.tok, job.make
    model = make()
    test, masks_f, ckpts, inf_spec = _influence_inputs(job.node, spec, job.store, data, (model.num_layers, model.num_heads))
    # sketching progress from the in-process scorer; a distributed one reports through its own pool
    progress = {"on_step": on_step} if on_step is not None and influence_fn is influence_local else {}
    topk = influence_fn(make, ckpts, data["train"], test, tok, inf_spec, masks_f, spec.training.max_length,
                        spec.training.device, **progress)
    topk.to_parquet(out / TOPK, index=False)
    write_engine(out, "single-process")
    rows = []
    for ckpt in ckpts:
        epoch = load_checkpoint(model, ckpt).get("epoch", int(ckpt.name.split("_")[1]))
        rows += _predictions(model, test, masks_f, spec, tok, epoch)
    pd.DataFrame(rows).to_parquet(out / PREDICTIONS, index=False)


def influence_groups(nodes: list[Node]) -> list[list[Node]]:
    """Returns the influence nodes among `nodes` grouped by fine-tuned model and branch (what execute_influence shares work over), in first-seen order."""
    groups: dict[tuple, list[Node]] = {}
    for n in nodes:
        if n.stage == Stage.INFLUENCE:
            groups.setdefault((n.params.model, json.dumps(n.params.branch, sort_keys=True)), []).append(n)
    return list(groups.values())


def execute_influence(nodes: list[Node], spec: SweepSpec, store: Store, on_wait: Callable[[str], None] = _say,
                      on_step: Callable[[int, int], None] | None = None, engine: Callable[..., dict] = influence_jobs,
                      engine_name: str = "single-process") -> list[str]:
    """Returns the keys computed: the missing ones of `nodes`, influence nodes of one fine-tuned model and branch, computed together.

    What `execute` does for each node (lease, partial folder, publish, ledger), but with one model
    build, one load per checkpoint, and every sketch set shared between the nodes (pipeline.influence_jobs):
    each node's output is the same as `execute` gives it, and is published under its own key as soon
    as its table is complete. Leases are taken in key order, so two invocations cannot deadlock.
    engine: pipeline.influence_jobs (this process), or one of its signature such as
    orchestration.influence_ray.influence_ray_jobs (given the model's factory, so workers build their own);
    engine_name: its name in influence.engines.ENGINE_VERSION, recorded in each output.
    """
    if any(n.stage != Stage.INFLUENCE for n in nodes) or len(influence_groups(nodes)) > 1:
        raise ValueError(f"execute_influence: the nodes must be influence nodes of one fine-tuned model and branch, got {[n.trial for n in nodes]}")
    todo = sorted((n for n in nodes if not store.done(n.key)), key=lambda n: n.key)
    if not todo:
        return []
    since = [time.perf_counter()]  # the ledger's `seconds`: each node's share of the group's time, summing to all of it
    with _named(f"influence of {todo[0].trial}"), contextlib.ExitStack() as held:
        for n in todo:
            held.enter_context(lease(store, n.key, on_wait=on_wait))
        for n in [n for n in todo if store.done(n.key)]:
            on_wait(f"stage output {n.key} was computed by another invocation meanwhile: using it")
        todo = [n for n in todo if not store.done(n.key)]
        if not todo:
            return []
        b = branch_of(spec, todo[0].params.branch)
        task, data, tok = task_data(b, todo[0].params.task)
        make = model_factory(b, task, tok, todo[0].params.seed)
        model = make()
        shape = (model.num_layers, model.num_heads)
        try:
            inputs = {n.key: _influence_inputs(n, b, store, data, shape) for n in todo}
        except DamagedOutput as e:
            if store.done(e.key):
                on_wait(f"{e}; moved aside to {store.set_aside(e.key, e.problems)}")
            raise
        ckpts, inf_spec = inputs[todo[0].key][2], inputs[todo[0].key][3]
        rows: dict[str, list] = {n.key: [] for n in todo}
        by_key = {n.key: n for n in todo}

        def predict(model, meta: dict) -> None:
            epoch = meta.get("epoch", int(Path(meta["dir"]).name.split("_")[1]))
            for key, (test, masks, _, _) in inputs.items():
                rows[key] += _predictions(model, test, masks, b, tok, epoch)

        def publish(key: str, topk: pd.DataFrame) -> None:
            out = store.partial(key)
            topk.to_parquet(out / TOPK, index=False)
            pd.DataFrame(rows[key]).to_parquet(out / PREDICTIONS, index=False)
            write_engine(out, engine_name)
            now = time.perf_counter()
            _publish(store, by_key[key], now - since[0])
            since[0] = now

        jobs = [Job(n.key, inputs[n.key][0], inputs[n.key][1]) for n in todo]
        local = engine is influence_jobs
        engine(model if local else make, ckpts, data["train"], jobs, tok, inf_spec, b.training.max_length, b.training.device,
               on_checkpoint=predict, on_done=publish, **({"on_step": on_step} if local else {}))
    return [n.key for n in todo]


COMPUTE: dict[Stage, Callable[..., None]] = {
    Stage.PRETRAIN: _pretrain, Stage.FINETUNE: _finetune, Stage.SUBNETWORKS: _subnetworks, Stage.RANDOM_MASKS: _random_masks, Stage.INFLUENCE: _influence,
}
