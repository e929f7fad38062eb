"""The sweep's stage graph: which stage outputs a sweep needs, their keys, and their trials.

A `Node` is one stage output in the artifact store. Its key is a hash of the stage's own
config and its inputs' keys (never of anything it does not depend on), so two sweeps that
agree on a branch share it, and adding random-mask seeds adds nodes without changing any
existing key. `graph(spec)` expands the sweep once (branches x tasks x seeds x methods x
random seeds x influence variants) without computing anything, so `validate` and `status`
use it with no torch imported; stages.compute builds one node.

Stages: [pretrain ->] finetune (full | sft | random-sft) -> subnetworks -> random_masks -> influence.
pretrain (masked-LM pre-training of the tiny encoder, when model.pretrain is set) is shared by
every training seed and method of a task, in a wave of its own before the others.
Each stage's parameters are a typed record (`FinetuneParams`, ...); trial names are made
by `trial_name` alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .config import SweepSpec, TaskSpec, branches
from ..storage.store import Store


class Stage(str, Enum):
    """A stage of the graph (a str, so it prints and compares as its name)."""

    PRETRAIN = "pretrain"
    FINETUNE = "finetune"
    SUBNETWORKS = "subnetworks"
    RANDOM_MASKS = "random_masks"
    INFLUENCE = "influence"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Params:
    """What every node knows: its task, grid branch and training seed."""

    task: str
    branch: dict[str, Any]
    seed: int


@dataclass(frozen=True)
class PretrainParams(Params):
    config: dict  # what the key hashes: the task's text, the tiny sizes, the pre-training settings
    method: str = "pretrain"


@dataclass(frozen=True)
class FinetuneParams(Params):
    method: str  # full | sft | random-sft
    config: dict  # what the key hashes: task, model, training, seed, method (and the pre-trained encoder's key)
    masks: str | None = None  # key of the subnetworks / random_masks output SFT trains with
    random_seed: int | None = None  # random-sft only
    init: str | None = None  # key of the pre-trained encoder fine-tuning starts from


@dataclass(frozen=True)
class SubnetworkParams(Params):
    config: dict  # the pruning settings and max_length


@dataclass(frozen=True)
class RandomMaskParams(Params):
    random_seed: int


@dataclass(frozen=True)
class InfluenceParams(Params):
    variant: str  # e.g. full, full+subnet, full+random:2, sft+union:xa-xb
    model: str  # key of the fine-tuning output whose checkpoints are scored
    masks: dict  # test language -> mask reference {key, languages, op} or None
    config: dict


@dataclass(frozen=True)
class Node:
    """One stage output: its key, what computes it, and the Tune trial that owns it."""

    key: str
    stage: Stage
    trial: str  # readable trial name, e.g. "babel/sft/seed1"
    wave: int  # 0: pre-training, 1: full fine-tuning and masks, 2: SFT, 3: influence
    inputs: tuple[str, ...]
    params: Params = field(hash=False, compare=False)


def trial_name(task: str, method: str, seed: int | None, random_seed: int | None = None, branch: dict | None = None) -> str:
    """Returns the Tune trial's name, e.g. 'babel/random-sft/seed1/rand2/lr=0.001' ('babel/pretrain': no seed)."""
    parts = [task, method] + ([f"seed{seed}"] if seed is not None else []) + ([f"rand{random_seed}"] if random_seed is not None else [])
    return "/".join(parts) + "".join(f"/{k.split('.')[-1]}={v}" for k, v in (branch or {}).items())


def _task_config(task: TaskSpec) -> dict:
    return task.model_dump(mode="json")


def precision_key(precision: str) -> dict:
    """Returns {} for fp32 (so keys from before precision existed stay valid), else {'precision': p}: it changes results."""
    return {} if precision == "fp32" else {"precision": precision}


def influence_precision(spec: SweepSpec) -> str:
    """Returns the precision of the sweep's sketching and test predictions: influence.precision, else training.precision."""
    return spec.influence.precision or spec.training.precision


def pretrain_text(task: TaskSpec) -> dict:
    """Returns what a task's pre-training text depends on: babel's world and languages, else the whole task."""
    if task.id == "babel":
        return {"id": task.id, "languages": list(task.languages), "data_seed": task.data_seed, "babel": task.babel.model_dump(mode="json")}
    return _task_config(task)


def _training_config(spec: SweepSpec) -> dict:
    # seeds are per node; device is where it runs, not what it computes
    cfg = spec.training.model_dump(mode="json", exclude={"seeds", "device", "precision"})
    return cfg | precision_key(spec.training.precision)


def _influence_config(spec: SweepSpec) -> dict:
    # actors and GPUs say how it runs; batch size does not change the sketches
    cfg = spec.influence.model_dump(mode="json", exclude={"actors", "gpus_per_actor", "batch_size", "precision"})
    return cfg | precision_key(influence_precision(spec))


def graph(spec: SweepSpec, random_seeds: list[int] | None = None) -> list[Node]:
    """Returns every node the sweep needs, inputs before the nodes that use them.

    random_seeds overrides spec.random_seeds (what `rerun-random` adds).
    """
    nodes: dict[str, Node] = {}

    def add(n: Node) -> Node:
        nodes.setdefault(n.key, n)
        return nodes[n.key]

    for values, b in branches(spec):
        rseeds = b.random_seeds if random_seeds is None else random_seeds
        for task in b.tasks:
            model_cfg, train_cfg = b.model.model_dump(mode="json", exclude={"pretrain"}), _training_config(b)
            init, pre = None, ()
            if b.model.pretrain is not None:
                pt_cfg = {"text": pretrain_text(task), "tiny": b.model.tiny.model_dump(mode="json"),
                          "pretrain": b.model.pretrain.model_dump(mode="json"), "max_length": b.training.max_length}
                # only model grid values can change it: branches that differ elsewhere share this node and name
                name = trial_name(task.id, "pretrain", None, branch={k: v for k, v in values.items() if k.startswith("model.")})
                node = add(Node(Store.key("pretrain", pt_cfg), Stage.PRETRAIN, name, 0, (),
                                PretrainParams(task=task.id, branch=values, seed=b.model.pretrain.seed, config=pt_cfg)))
                init, pre = node.key, (node.key,)
            for seed in b.training.seeds:
                common = {"task": task.id, "branch": values, "seed": seed}
                full_trial = trial_name(task.id, "full", seed, branch=values)
                ft_cfg = {"task": _task_config(task), "model": model_cfg, "training": train_cfg, "seed": seed, "method": "full",
                          **({"init": init} if init else {})}
                full = add(Node(Store.key("finetune", ft_cfg), Stage.FINETUNE, full_trial, 1, pre,
                                FinetuneParams(**common, method="full", config=ft_cfg, init=init)))
                models = {"full": full}
                sub_cfg = {**b.subnetworks.model_dump(mode="json", exclude={"batch_size"}), "max_length": b.training.max_length,
                           **precision_key(b.training.precision)}
                sub = add(Node(Store.key("subnetworks", sub_cfg, [full.key]), Stage.SUBNETWORKS, full_trial, 1, (full.key,),
                               SubnetworkParams(**common, config=sub_cfg)))
                rnd = {}
                for rs in rseeds:
                    # "draw" names how masks are drawn (one stream per language), so stores holding masks
                    # drawn the old way (one permutation shared by all languages) are not reused; the full
                    # model is an input because each random mask records its own dev accuracy on it
                    rnd[rs] = add(Node(Store.key("random_masks", {"random_seed": rs, "draw": "per-language"}, [sub.key, full.key]),
                                       Stage.RANDOM_MASKS, full_trial, 1, (sub.key, full.key), RandomMaskParams(**common, random_seed=rs)))
                if "sft" in b.methods:
                    cfg = {**ft_cfg, "method": "sft"}
                    models["sft"] = add(Node(Store.key("finetune", cfg, [sub.key]), Stage.FINETUNE,
                                             trial_name(task.id, "sft", seed, branch=values), 2, (sub.key, *pre),
                                             FinetuneParams(**common, method="sft", config=cfg, masks=sub.key, init=init)))
                if "random-sft" in b.methods:
                    for rs in rseeds:
                        cfg = {**ft_cfg, "method": "random-sft"}
                        models[f"random-sft:{rs}"] = add(Node(
                            Store.key("finetune", cfg, [rnd[rs].key]), Stage.FINETUNE,
                            trial_name(task.id, "random-sft", seed, rs, values), 2, (rnd[rs].key, *pre),
                            FinetuneParams(**common, method="random-sft", config=cfg, masks=rnd[rs].key, random_seed=rs, init=init)))
                for variant, model_key, masks in variants(b, task, models, sub, rnd):
                    inf_cfg = {"influence": _influence_config(b), "max_length": b.training.max_length, "masks": masks}
                    mask_keys = sorted({r["key"] for r in masks.values() if r})
                    add(Node(Store.key("influence", inf_cfg, [model_key, *mask_keys]), Stage.INFLUENCE, nodes[model_key].trial, 3,
                             (model_key, *mask_keys), InfluenceParams(**common, variant=variant, model=model_key, masks=masks, config=inf_cfg)))
    return list(nodes.values())


def branch_of(spec: SweepSpec, values: dict) -> SweepSpec:
    """Returns the branch of `spec` whose grid values are `values`."""
    for v, b in branches(spec):
        if v == values:
            return b
    raise KeyError(f"sweep {spec.name} has no branch {values}")


def mask_ref(key: str, *languages: str, op: str | None = None) -> dict:
    """Returns a reference to a stored mask: one language's, or the union / intersection of two."""
    return {"key": key, "languages": list(languages), "op": op}


def variants(b: SweepSpec, task: TaskSpec, models: dict, sub: Node, rnd: dict) -> list[tuple[str, str, dict]]:
    """Returns (variant name, model key, {test language: mask ref or None}) for every influence run."""
    langs = task.languages
    out = [("full", models["full"].key, {l: None for l in langs}), ("full+subnet", models["full"].key, {l: mask_ref(sub.key, l) for l in langs})]
    focus = b.analysis.random_test_language or langs[0]
    if focus not in langs:
        raise ValueError(f"analysis.random_test_language {focus!r} is not one of the task's languages {langs}")
    for rs, node in rnd.items():
        out.append((f"full+random:{rs}", models["full"].key, {focus: mask_ref(node.key, focus)}))
    for donor in langs:
        if donor != focus:
            out.append((f"full+subopt:{donor}", models["full"].key, {focus: mask_ref(sub.key, donor)}))
    if "sft" in models:
        out.append(("sft+subnet", models["sft"].key, {l: mask_ref(sub.key, l) for l in langs}))
        for a, c in b.analysis.compose:
            if a not in langs or c not in langs:
                raise ValueError(f"analysis.compose pair {[a, c]} names a language outside {langs}")
            for op in ("union", "intersect"):
                out.append((f"sft+{op}:{a}-{c}", models["sft"].key, {l: mask_ref(sub.key, a, c, op=op) for l in (a, c)}))
    for rs in rnd:
        if f"random-sft:{rs}" in models:
            out.append((f"random-sft:{rs}", models[f"random-sft:{rs}"].key, {l: mask_ref(rnd[rs].key, l) for l in langs}))
    return out
