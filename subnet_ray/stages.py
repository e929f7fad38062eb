"""The sweep's stage graph: which stage outputs a sweep needs, their keys, and how each is computed.

A `Node` is one stage output in the artifact store. Its key is a hash of the stage's own
config and its inputs' keys (never of anything it does not depend on), so two sweeps that
agree on a branch share it, and adding random-mask seeds adds nodes without changing any
existing key. `graph(spec)` lists the nodes in dependency order without computing anything
(so `status` can say what is missing); `compute(node, ...)` builds one. No Ray, no MLflow:
the orchestration decides where each node runs.

Stages: finetune (full | sft | random-sft) -> subnetworks -> random_masks -> influence.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from .config import SweepSpec, TaskSpec, branches
from .data import load_examples, num_labels
from .influence import influence as influence_local
from .models import build_model, load_checkpoint
from .store import Store
from .subnetworks import curve_frame, find_subnetworks, intersection, load_mask, random_mask, save_mask, union
from .tokenization import build_tokenizer
from .train import by_language, checkpoints, evaluate, finetune

HISTORY = "history.json"
TOPK, PREDICTIONS = "topk.parquet", "predictions.parquet"


@dataclass(frozen=True)
class Node:
    """One stage output: its key, what computes it, and the Tune trial that owns it."""

    key: str
    stage: str  # finetune | subnetworks | random_masks | influence
    trial: str  # readable trial name, e.g. "babel/sft/seed1"
    wave: int  # 1: full fine-tuning and masks, 2: SFT, 3: influence
    inputs: tuple[str, ...]
    params: dict = field(default_factory=dict, hash=False, compare=False)


def _task_config(task: TaskSpec) -> dict:
    return task.model_dump(mode="json")


def _training_config(spec: SweepSpec) -> dict:
    # seeds are per node; device is where it runs, not what it computes
    return spec.training.model_dump(mode="json", exclude={"seeds", "device"})


def _influence_config(spec: SweepSpec) -> dict:
    # actors and GPUs say how it runs; batch size does not change the sketches
    return spec.influence.model_dump(mode="json", exclude={"actors", "gpus_per_actor", "batch_size"})


def _branch_label(values: dict) -> str:
    return "".join(f"/{k.split('.')[-1]}={v}" for k, v in values.items())


def graph(spec: SweepSpec, random_seeds: list[int] | None = None) -> list[Node]:
    """Returns every node the sweep needs, inputs before the nodes that use them.

    random_seeds overrides spec.random_seeds (what `rerun-random` adds).
    """
    nodes: dict[str, Node] = {}

    def add(n: Node) -> Node:
        nodes.setdefault(n.key, n)
        return nodes[n.key]

    for values, b in branches(spec):
        bl = _branch_label(values)
        rseeds = b.random_seeds if random_seeds is None else random_seeds
        for task in b.tasks:
            langs = task.languages
            model_cfg, train_cfg = b.model.model_dump(mode="json"), _training_config(b)
            for seed in b.training.seeds:
                common = {"task": task.id, "branch": values, "seed": seed}
                full_trial = f"{task.id}/full/seed{seed}{bl}"
                ft_cfg = {"task": _task_config(task), "model": model_cfg, "training": train_cfg, "seed": seed, "method": "full"}
                full = add(Node(Store.key("finetune", ft_cfg), "finetune", full_trial, 1, (), {**common, "method": "full", "config": ft_cfg}))
                models = {"full": full}
                sub_cfg = {**b.subnetworks.model_dump(mode="json", exclude={"batch_size"}), "max_length": b.training.max_length}
                sub = add(Node(Store.key("subnetworks", sub_cfg, [full.key]), "subnetworks", full_trial, 1, (full.key,), {**common, "config": sub_cfg}))
                rnd = {}
                for rs in rseeds:
                    rnd[rs] = add(Node(Store.key("random_masks", {"random_seed": rs}, [sub.key]), "random_masks", full_trial, 1, (sub.key,), {**common, "random_seed": rs}))
                if "sft" in b.methods:
                    cfg = {**ft_cfg, "method": "sft"}
                    models["sft"] = add(Node(Store.key("finetune", cfg, [sub.key]), "finetune", f"{task.id}/sft/seed{seed}{bl}", 2, (sub.key,), {**common, "method": "sft", "config": cfg, "masks": sub.key}))
                if "random-sft" in b.methods:
                    for rs in rseeds:
                        cfg = {**ft_cfg, "method": "random-sft"}
                        trial = f"{task.id}/random-sft/seed{seed}/rand{rs}{bl}"
                        models[f"random-sft:{rs}"] = add(Node(Store.key("finetune", cfg, [rnd[rs].key]), "finetune", trial, 2, (rnd[rs].key,), {**common, "method": "random-sft", "random_seed": rs, "config": cfg, "masks": rnd[rs].key}))
                for variant, model_key, masks in _variants(b, task, langs, models, sub, rnd):
                    owner = nodes[model_key].trial
                    inf_cfg = {"influence": _influence_config(b), "max_length": b.training.max_length, "masks": masks}
                    mask_keys = sorted({r["key"] for r in masks.values() if r})
                    add(Node(Store.key("influence", inf_cfg, [model_key, *mask_keys]), "influence", owner, 3, (model_key, *mask_keys),
                             {**common, "variant": variant, "model": model_key, "masks": masks, "config": inf_cfg}))
    return list(nodes.values())


def branch_of(spec: SweepSpec, values: dict) -> SweepSpec:
    """Returns the branch of `spec` whose grid values are `values`."""
    for v, b in branches(spec):
        if v == values:
            return b
    raise KeyError(f"sweep {spec.name} has no branch {values}")


def _ref(key: str, *languages: str, op: str | None = None) -> dict:
    return {"key": key, "languages": list(languages), "op": op}


def _variants(b: SweepSpec, task: TaskSpec, langs: list[str], models: dict, sub: Node, rnd: dict) -> list[tuple[str, str, dict]]:
    """Returns (variant name, model key, {test language: mask ref or None}) for every influence run."""
    out = [("full", models["full"].key, {l: None for l in langs}), ("full+subnet", models["full"].key, {l: _ref(sub.key, l) for l in langs})]
    focus = b.analysis.random_test_language or langs[0]
    if focus not in langs:
        raise ValueError(f"analysis.random_test_language {focus!r} is not one of the task's languages {langs}")
    for rs, node in rnd.items():
        out.append((f"full+random:{rs}", models["full"].key, {focus: _ref(node.key, focus)}))
    for donor in langs:
        if donor != focus:
            out.append((f"full+subopt:{donor}", models["full"].key, {focus: _ref(sub.key, donor)}))
    if "sft" in models:
        out.append(("sft+subnet", models["sft"].key, {l: _ref(sub.key, l) for l in langs}))
        for a, c in b.analysis.compose:
            if a not in langs or c not in langs:
                raise ValueError(f"analysis.compose pair {[a, c]} names a language outside {langs}")
            for op in ("union", "intersect"):
                out.append((f"sft+{op}:{a}-{c}", models["sft"].key, {l: _ref(sub.key, a, c, op=op) for l in (a, c)}))
    for rs in rnd:
        if f"random-sft:{rs}" in models:
            out.append((f"random-sft:{rs}", models[f"random-sft:{rs}"].key, {l: _ref(rnd[rs].key, l) for l in langs}))
    return out


# ---- computing one node ---------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _data(task_json: str, model_name: str):
    task = TaskSpec.model_validate_json(task_json)
    if model_name == "tiny":
        tokenizer = build_tokenizer(task)
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
    folder = store.path(key)
    return {l: load_mask(folder / l, shape)[0] for l in languages}


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
    task, data, tok = task_data(spec, node.params["task"])
    seed = node.params["seed"]
    make = model_factory(spec, task, tok, seed)
    device = spec.training.device
    if node.stage == "finetune":
        model = make()
        masks = None
        if "masks" in node.params:
            masks = {l: m.float() for l, m in load_masks(store, node.params["masks"], task.languages, (model.num_layers, model.num_heads)).items()}
        history = finetune(model, data["train"], data["dev"], tok, spec.training, out, seed, masks=masks, on_epoch=on_epoch, progress=progress,
                           on_step=on_step)
        (out / HISTORY).write_text(json.dumps(history, indent=2))
    elif node.stage == "subnetworks":
        model = make()
        last = checkpoints(store.path(node.inputs[0]))[-1]
        load_checkpoint(model, last)
        subs = find_subnetworks(model, by_language(data["dev"]), tok, spec.subnetworks, spec.training.max_length, device)
        for lang, s in subs.items():
            save_mask(out / lang, s.mask, {
                "task": task.id, "language": lang, "seed": seed, "checkpoint": node.inputs[0], "full_accuracy": s.full_accuracy,
                "masked_accuracy": s.accuracy, "threshold": spec.subnetworks.threshold, "step_fraction": spec.subnetworks.step_fraction,
            })
        curve_frame(subs).to_csv(out / "pruning_curves.csv", index=False)
    elif node.stage == "random_masks":
        rs = node.params["random_seed"]
        src = store.path(node.inputs[0])
        for lang in task.languages:
            mask, meta = load_mask(src / lang)
            save_mask(out / lang, random_mask(mask, rs), meta.model_dump() | {"kind": "random", "random_seed": rs, "source": node.inputs[0]})
    elif node.stage == "influence":
        _compute_influence(node, spec, store, out, task, data, tok, make, influence_fn)
    else:
        raise ValueError(f"unknown stage {node.stage!r}")


def _compute_influence(node, spec, store, out, task, data, tok, make, influence_fn) -> None:
    model = make()
    shape = (model.num_layers, model.num_heads)
    refs = node.params["masks"]
    masks = {lang: resolve_mask(store, ref, shape) for lang, ref in refs.items()}
    k = spec.influence.test_per_language
    test = [e for lang in refs for e in [x for x in data["test"] if x.language == lang][:k]]
    ckpts = checkpoints(store.path(node.params["model"]))
    masks_f = {l: (m.float() if m is not None else None) for l, m in masks.items()}
    topk = influence_fn(make, ckpts, data["train"], test, tok, spec.influence, masks_f, spec.training.max_length, spec.training.device)
    topk.to_parquet(out / TOPK, index=False)
    rows = []
    for ckpt in ckpts:
        epoch = load_checkpoint(model, ckpt).get("epoch", int(ckpt.name.split("_")[1]))
        for lang in refs:
            exs = [e for e in test if e.language == lang]
            preds = evaluate(model, exs, tok, spec.training.max_length, spec.influence.batch_size, masks_f[lang], spec.training.device)["preds"]
            rows += [{"test_id": e.id, "test_language": lang, "checkpoint": epoch, "label": e.label, "pred": p} for e, p in zip(exs, preds)]
    pd.DataFrame(rows).to_parquet(out / PREDICTIONS, index=False)
