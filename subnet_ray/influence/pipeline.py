"""TracIn influence of training on test examples over epoch checkpoints and head masks: the single-process path.

`influence` computes one table: for each distinct head mask (the test languages' masks;
None = the full model) and each checkpoint it sketches the whole training set and the test
examples of the languages that use that mask, both with the mask on, then scores them
(tracin.top_influences). `influence_jobs` computes several such tables over one model's
checkpoints (what the sweep calls, stages.execute_influence: the influence variants of one
fine-tuned model) with one load per checkpoint and each sketch set made once for all of them.
Examples are sketched in batches of similar length, so little compute is spent on padding;
ids, not positions, tie every sketch to its example.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm
from safetensors import safe_open
from torch import nn

from ..sweep.config import InfluenceSpec
from ..models.classifier import META, WEIGHTS, check_mask, load_checkpoint
from .projection import Projector
from .sketch import DTYPES, Sketches, layer_dims, select_linears, sketch_batch
from .tracin import top_influences
from ..data.tokenization import length_order, token_lengths  # noqa: F401 (token_lengths: distributed imports it from here)


@dataclass(frozen=True)
class MaskGroup:
    """One distinct head mask and the test languages that use it."""

    key: str  # 'none', or 'mask-<hash of the 0/1 pattern>'
    mask: torch.Tensor | None  # [layers, heads] float 0/1
    languages: tuple[str, ...]


def mask_key(mask: torch.Tensor | None) -> str:
    """Returns 'none' for no mask, else a short hash of the mask's 0/1 pattern and shape."""
    if mask is None:
        return "none"
    bits = (mask.detach().cpu() != 0).to(torch.uint8)
    return "mask-" + hashlib.sha1(str(tuple(bits.shape)).encode() + bits.numpy().tobytes()).hexdigest()[:12]


def mask_groups(model: nn.Module, languages: list[str], masks: dict | None) -> list[MaskGroup]:
    """Returns the distinct masks among the test languages', each with its languages; checks every mask's shape."""
    masks = masks or {}
    missing = [lang for lang in languages if masks and lang not in masks]
    if missing:
        raise ValueError(f"masks given, but none for test languages {missing} (map a language to None for the full model)")
    groups: dict[str, list] = {}
    for lang in languages:
        m = masks.get(lang)
        if m is not None:
            m = torch.as_tensor(m)
            check_mask(model, m)
            if m.dim() != 2:
                raise ValueError(f"mask of language {lang!r}: expected one [layers, heads] mask, got shape {tuple(m.shape)}")
            m = (m != 0).float()
        key = mask_key(m)
        groups.setdefault(key, [m, []])[1].append(lang)
    return [MaskGroup(k, m, tuple(langs)) for k, (m, langs) in groups.items()]


def checkpoint_meta(model: nn.Module, directory: str | Path) -> dict:
    """Returns the checkpoint's meta (epoch, lr, ...) after checking its tensor names and shapes against `model` (no weights loaded)."""
    path = Path(directory) / WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes != own:
        missing = sorted(set(own) - set(shapes))[:3]
        extra = sorted(set(shapes) - set(own))[:3]
        bad = sorted(k for k in set(own) & set(shapes) if own[k] != shapes[k])[:3]
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing}, unexpected {extra}, "
            f"wrong shape {[(k, shapes[k], own[k]) for k in bad]}"
        )
    meta_path = Path(directory) / META
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}


def checkpoint_metas(model: nn.Module, checkpoints: list) -> list[dict]:
    """Returns each checkpoint's meta with 'epoch' (from meta, else its position) and 'lr'; checks them all first.

    'lr' is the checkpoint's TracInCP weight: the mean learning rate over the steps of its epoch
    (meta 'lr_mean', written by `finetune`), None if the checkpoint does not record it.
    """
    if not checkpoints:
        raise ValueError("influence needs at least one checkpoint")
    metas = []
    for i, c in enumerate(checkpoints):
        meta = checkpoint_meta(model, c)
        metas.append({"epoch": int(meta.get("epoch", i)), "lr": meta.get("lr_mean"), "dir": str(c)})
    epochs = [m["epoch"] for m in metas]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"checkpoints repeat an epoch: {epochs} ({[m['dir'] for m in metas]})")
    return metas


def check_examples(examples: list, what: str) -> None:
    """Raises ValueError if `examples` is empty or repeats an id."""
    if not examples:
        raise ValueError(f"influence: no {what} examples")
    dup = [i for i, c in Counter(ex.id for ex in examples).items() if c > 1]
    if dup:
        raise ValueError(f"influence: {len(dup)} duplicate {what} example ids, e.g. {dup[:3]}")


def by_length(examples: list, tokenizer, max_length: int) -> list:
    """Returns the examples sorted by token count (stable), so batches pad little."""
    return [examples[i] for i in length_order(examples, tokenizer, max_length)]


def sketch_examples(
    model: nn.Module,
    examples: list,
    tokenizer,
    spec: InfluenceSpec,
    max_length: int,
    head_mask: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    projector: Projector | None = None,
    bucket: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list, torch.Tensor]:
    """Returns (examples in sketch order, sketches [n, dim] in spec.dtype) of the model as loaded, under `head_mask`.

    bucket: batch examples of similar token length (sketch order = by length); False keeps
    the given order (for comparison: the sketch of each example is the same either way).
    `on_batch(n)` is called after each batch of n examples.
    """
    linears = select_linears(model, spec.layers)
    if projector is None and spec.proj_dim:
        projector = Projector(spec.proj_dim, spec.projection_seed)
    ordered = by_length(examples, tokenizer, max_length) if bucket else list(examples)
    mask = head_mask.to(device) if head_mask is not None else None
    out = []
    # a bar on a terminal only (disable=None): Tune trials and Ray actors print no bar noise
    for i in tqdm(range(0, len(ordered), spec.batch_size), desc=f"sketching {len(ordered)} examples", leave=False, disable=None):
        out.append(sketch_encoded(model, ordered[i : i + spec.batch_size], tokenizer, max_length, linears, projector, mask, spec, device))
        if on_batch:
            on_batch(len(ordered[i : i + spec.batch_size]))
    return ordered, torch.cat(out)


def sketch_encoded(model: nn.Module, examples: list, tokenizer, max_length: int, linears, projector: Projector | None,
                   head_mask: torch.Tensor | None, spec: InfluenceSpec, device: str | torch.device) -> torch.Tensor:
    """Returns the sketches [len(examples), dim] of one batch, on the CPU in spec.dtype, at the spec's precision.

    The one batch step of both executors: this module's loop and the Ray Data actors.
    """
    from ..data.tokenization import encode

    batch = {k: v.to(device) for k, v in encode(examples, tokenizer, max_length).items()}
    return sketch_batch(model, batch, linears, projector, head_mask, precision_of(spec)).to("cpu", DTYPES[spec.dtype])


def as_sketches(ids: list[str], languages: list[str], values: torch.Tensor, layout, spec: InfluenceSpec, meta: dict,
                mask_key: str) -> Sketches:
    """Returns the Sketches of one checkpoint (meta from checkpoint_metas) and mask group, as both executors assemble them."""
    return Sketches(ids=list(ids), languages=list(languages), values=values, layout=layout, proj_dim=spec.proj_dim,
                    seed=spec.projection_seed, checkpoint=meta["epoch"], lr=meta["lr"], mask=mask_key)


def precision_of(spec: InfluenceSpec) -> str:
    """Returns the sketching precision: spec.precision, fp32 when unset (the sweep sets it from training.precision)."""
    return spec.precision or "fp32"


def as_model(model: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """Returns `model` itself, or what the factory builds."""
    return model if isinstance(model, nn.Module) else model()


@dataclass(frozen=True)
class Job:
    """One influence table to compute: its name, its test examples, and test language -> head mask (None = all heads)."""

    name: str
    test: list
    masks: dict | None = None


@dataclass(frozen=True)
class Part:
    """One mask group of one job: scored as one `top_influences` call, the job's table is its parts in order."""

    job: str
    group: MaskGroup
    test: list  # the job's test examples of the group's languages

    @property
    def test_set(self) -> tuple[str, tuple[str, ...]]:
        """Returns the key of its test sketch set: (mask key, test ids)."""
        return self.group.key, tuple(ex.id for ex in self.test)


class JobPlan:
    """The sketch sets a list of jobs over one model needs, each once: the training set per distinct
    mask, the test examples per (mask, test set); and the jobs' parts that score them.

    Checks the examples and masks of every job first (ValueError naming the job).
    """

    def __init__(self, model: nn.Module, train: list, jobs: list[Job]):
        check_examples(train, "training")
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"influence jobs repeat a name: {sorted(n for n, c in Counter(names).items() if c > 1)}")
        self.train, self.names = train, names
        self.parts: list[Part] = []
        for job in jobs:
            check_examples(job.test, "test" if len(jobs) == 1 else f"{job.name!r} test")
            for group in mask_groups(model, sorted({ex.language for ex in job.test}), job.masks):
                self.parts.append(Part(job.name, group, [ex for ex in job.test if ex.language in group.languages]))
        self.masks = {p.group.key: p.group.mask for p in self.parts}  # distinct masks, first-seen order
        self.test_sets = {p.test_set: p.test for p in self.parts}

    def passes(self, row_bytes: int, budget_mb: float) -> list[list[str]]:
        """Returns the mask keys in passes: as many masks per pass as fit `budget_mb` of sketches at
        `row_bytes` per example (all checkpoints), at least one."""
        need = {k: row_bytes * (len(self.train) + sum(len(exs) for (m, _), exs in self.test_sets.items() if m == k)) for k in self.masks}
        out, keys = [], list(self.masks)
        while keys:
            chunk = [keys.pop(0)]
            while keys and sum(need[k] for k in chunk + keys[:1]) <= budget_mb * 2**20:
                chunk.append(keys.pop(0))
            out.append(chunk)
        return out

    def sets(self, chunk: list[str]) -> list[tuple[str, tuple | None, list]]:
        """Returns the sketch sets of the masks in `chunk`: (mask key, None, training set) and (mask key, test ids, test examples)."""
        return [(k, None, self.train) for k in chunk] + [(m, ids, exs) for (m, ids), exs in self.test_sets.items() if m in chunk]


class Tables:
    """Collects the part tables of a plan's jobs; hands each job's table to `on_done` as soon as its last part is in."""

    def __init__(self, plan: JobPlan, on_done: Callable[[str, pd.DataFrame], None] | None = None):
        self.plan, self.on_done = plan, on_done
        self.frames: dict[str, dict] = {n: {} for n in plan.names}
        self.left = Counter(p.job for p in plan.parts)
        self.done: dict[str, pd.DataFrame] = {}

    def add(self, index: int, table: pd.DataFrame) -> None:
        """Records the table of part `index` of the plan."""
        name = self.plan.parts[index].job
        self.frames[name][index] = table
        self.left[name] -= 1
        if self.left[name] == 0:  # in the job's group order, as `influence` concatenates them
            self.done[name] = pd.concat([t for _, t in sorted(self.frames.pop(name).items())], ignore_index=True)
            if self.on_done is not None:
                self.on_done(name, self.done[name])

    def result(self) -> dict[str, pd.DataFrame]:
        """Returns job name -> table, in the jobs' order."""
        return {n: self.done[n] for n in self.plan.names}


def influence(
    model: nn.Module | Callable[[], nn.Module],
    checkpoints: list[str | Path],
    train: list,
    test: list,
    tokenizer,
    spec: InfluenceSpec,
    masks: dict[str, torch.Tensor | None] | None = None,
    max_length: int = 128,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Returns the top-k influences table (tracin.COLUMNS) of `train` on `test` over `checkpoints`.

    `on_step(done, total)` is called after each sketched batch, counting examples sketched over every
    mask group and checkpoint.
    model: a SequenceClassifier (its weights are overwritten by each checkpoint) or a factory.
    train, test: data.Example lists; test is used as given (the caller picks the examples
    every compared model classifies correctly). masks: test language -> head mask [layers,
    heads] or None (full model); omitted = the full model for all. Train and test sketches of a
    test language are both taken under its mask; the training set is sketched once per
    distinct mask and checkpoint.
    """
    return influence_jobs(model, checkpoints, train, [Job("influence", test, masks)], tokenizer, spec, max_length, device,
                          on_step=on_step)["influence"]


def influence_jobs(
    model: nn.Module | Callable[[], nn.Module],
    checkpoints: list[str | Path],
    train: list,
    jobs: list[Job],
    tokenizer,
    spec: InfluenceSpec,
    max_length: int = 128,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, int], None] | None = None,
    on_checkpoint: Callable[[nn.Module, dict], None] | None = None,
    on_done: Callable[[str, pd.DataFrame], None] | None = None,
    budget_mb: float = 2048.0,
) -> dict[str, pd.DataFrame]:
    """Returns job name -> the table `influence(model, checkpoints, train, job.test, ..., masks=job.masks)` returns.

    The jobs share one model and its checkpoints (the influence variants of one fine-tuned model),
    so they share work: each sketch set (checkpoint, head mask, examples) is made once for all jobs
    (the training set once per distinct mask and checkpoint), and each checkpoint is loaded once per
    pass. A pass covers as many distinct masks as `budget_mb` of sketches (all checkpoints) allows,
    at least one, so memory stays that of one mask's sketches when they are large.
    on_checkpoint(model, meta): called once per checkpoint while it is loaded (meta: its meta.json
    plus 'dir'); on_done(name, table): as soon as a job's table is complete; on_step: as in `influence`.
    """
    model = as_model(model)
    plan = JobPlan(model, train, jobs)
    metas = checkpoint_metas(model, checkpoints)
    linears = select_linears(model, spec.layers)
    layout = layer_dims(linears, spec.proj_dim)
    projector = Projector(spec.proj_dim, spec.projection_seed) if spec.proj_dim else None
    model.to(device).eval()
    total = len(metas) * (len(plan.masks) * len(train) + sum(len(exs) for exs in plan.test_sets.values()))
    done = [0]

    def count(n: int) -> None:
        done[0] += n
        on_step(done[0], total)

    tables = Tables(plan, on_done)
    row_bytes = sum(d for _, d in layout) * DTYPES[spec.dtype].itemsize * len(metas)
    for p, chunk in enumerate(plan.passes(row_bytes, budget_mb)):
        sk: dict[tuple, list[Sketches]] = {}  # (mask key, test ids or None for train) -> one Sketches per checkpoint
        for meta in metas:
            info = load_checkpoint(model, meta["dir"])
            if p == 0 and on_checkpoint is not None:
                on_checkpoint(model, info | {"dir": meta["dir"]})
            for key, ids, examples in plan.sets(chunk):
                ordered, values = sketch_examples(model, examples, tokenizer, spec, max_length, plan.masks[key], device, projector,
                                                  on_batch=count if on_step else None)
                sk.setdefault((key, ids), []).append(
                    as_sketches([ex.id for ex in ordered], [ex.language for ex in ordered], values, layout, spec, meta, key))
        for i, part in enumerate(plan.parts):
            if part.group.key in chunk:
                tables.add(i, top_influences(sk[part.test_set], sk[(part.group.key, None)], spec.top_k, spec.lr_weighting))
    return tables.result()
