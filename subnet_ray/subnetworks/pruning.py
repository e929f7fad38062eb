"""Iterative head pruning (Michel et al. 2019; paper Sec. 3.1): one language-specific mask per language.

From the full model, each step disables the `step_fraction` of *all* heads (rounded half up:
14 of 144 for XLM-R base) with the lowest normalised importance among the heads still
enabled, recomputes importance under the new mask, and evaluates dev accuracy. Pruning stops
as soon as accuracy falls below `threshold` x the full model's accuracy; the mask returned is
the last one that met it. One head always stays enabled.

`prune` is the loop on two callables (so it can be tested on scripted accuracies);
`find_subnetworks` runs it per language on a model and its dev examples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pandas as pd
import torch

from ..sweep.config import SubnetworkSpec, heads_per_step
from ..models.classifier import SequenceClassifier
from .importance import importance_pass, normalize_importance

CURVE_COLUMNS = ("language", "step", "heads_disabled", "accuracy", "full_accuracy")
# Accuracies are ratios of counts; a tie with threshold x full accuracy counts as met, and a
# last-bit float difference in the product must not decide it.
_TIE = 1e-9


@dataclass(frozen=True)
class Subnetwork:
    """A language's pruned head mask, its pruning curve and its dev accuracies."""

    language: str
    mask: torch.Tensor  # bool [layers, heads], True = head enabled
    full_accuracy: float  # dev accuracy of the full model on this language
    accuracy: float  # dev accuracy with `mask`
    curve: list[dict] = field(default_factory=list)  # rows with CURVE_COLUMNS, step 0 = full model

    @property
    def heads_disabled(self) -> int:
        """Returns the number of heads `mask` disables."""
        return int((~self.mask).sum())


def step_size(total_heads: int, step_fraction: float) -> int:
    """Returns how many heads one pruning step disables: step_fraction x total heads, rounded half up."""
    if not 0.0 < step_fraction <= 1.0:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    n = heads_per_step(total_heads, step_fraction)
    if n < 1:
        raise ValueError(
            f"step_fraction {step_fraction} of {total_heads} heads rounds to 0 heads per step, so pruning would disable "
            f"nothing on this model: use a step_fraction of at least {0.5 / total_heads:.4g}"
        )
    return n


def lowest_enabled(importance: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Returns the flat indices of the `n` enabled heads with the lowest importance (ties: lower index first)."""
    score = torch.as_tensor(importance, dtype=torch.float64).flatten().clone()
    score[~mask.flatten()] = math.inf
    return torch.argsort(score, stable=True)[:n]


def prune(
    importance_fn: Callable[[torch.Tensor], torch.Tensor],
    accuracy_fn: Callable[[torch.Tensor], float],
    shape: tuple[int, int],
    step_fraction: float,
    threshold: float,
    language: str = "",
) -> Subnetwork:
    """Returns the last mask whose accuracy stays >= threshold x full accuracy, with the pruning curve.

    importance_fn(mask) -> [layers, heads] importance under the bool `mask` (lower = pruned
    first; already normalised as wanted). accuracy_fn(mask) -> dev accuracy under `mask`.
    The curve has one row for the full model (step 0) and one per step taken, including the
    step that fell below the threshold (its mask is not returned).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1] (a fraction of the full model's accuracy), got {threshold}")
    layers, heads = shape
    per_step = step_size(layers * heads, step_fraction)
    mask = torch.ones(layers, heads, dtype=torch.bool)
    full = float(accuracy_fn(mask))
    accuracy = full
    curve = [dict(language=language, step=0, heads_disabled=0, accuracy=full, full_accuracy=full)]
    step = 0
    while int(mask.sum()) > 1:
        step += 1
        importance = torch.as_tensor(importance_fn(mask))
        if importance.shape != mask.shape:
            raise ValueError(f"importance_fn returned shape {tuple(importance.shape)}, expected {tuple(mask.shape)}")
        # Never disable every head: the last step may take fewer.
        drop = lowest_enabled(importance, mask, min(per_step, int(mask.sum()) - 1))
        candidate = mask.clone()
        candidate.view(-1)[drop] = False
        acc = float(accuracy_fn(candidate))
        curve.append(dict(language=language, step=step, heads_disabled=int((~candidate).sum()), accuracy=acc, full_accuracy=full))
        if acc < threshold * full - _TIE:
            break
        mask, accuracy = candidate, acc
    return Subnetwork(language=language, mask=mask, full_accuracy=full, accuracy=accuracy, curve=curve)


class _OnePassScorer:
    """Importance and accuracy under a mask from the same forward passes, cached for the last mask.

    The pruning loop asks for the accuracy of a candidate mask and then, if it is kept, for the
    importance under it: one pass answers both, so each step costs one importance pass.
    """

    def __init__(self, model, batches, spec: SubnetworkSpec, device, precision: str = "fp32"):
        self.model, self.batches, self.spec, self.device, self.precision = model, batches, spec, device, precision
        self._key: bytes | None = None
        self._pass = None

    def _run(self, mask: torch.Tensor):
        key = mask.numpy().tobytes()
        if key != self._key:
            self._pass = importance_pass(self.model, self.batches, mask, "example", self.device, self.precision)
            self._key = key
        return self._pass

    def importance(self, mask: torch.Tensor) -> torch.Tensor:
        raw = self._run(mask).importance
        return normalize_importance(raw, mask, layers=self.spec.normalize_layers, global_scaling=self.spec.global_scaling)

    def accuracy(self, mask: torch.Tensor) -> float:
        return self._run(mask).accuracy


def find_subnetwork(
    model: SequenceClassifier, batches: list[dict], spec: SubnetworkSpec, language: str = "", device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> Subnetwork:
    """Returns the pruned subnetwork of `model` for one language's encoded dev batches."""
    if not batches or sum(int(b["labels"].shape[0]) for b in batches) == 0:
        raise ValueError(f"language {language!r}: no dev examples to find a subnetwork on")
    scorer = _OnePassScorer(model, batches, spec, device, precision)
    shape = (model.num_layers, model.num_heads)
    return prune(scorer.importance, scorer.accuracy, shape, spec.step_fraction, spec.threshold, language)


def make_batches(encoded: dict, batch_size: int) -> list[dict]:
    """Returns `encoded` split into batches of similar length, each cut to its longest example.

    Sorting by length only changes which examples share a batch, which neither per-example
    importance nor accuracy depends on; cutting trailing padding columns (right padding only)
    saves their compute.
    """
    am = encoded["attention_mask"]
    lengths = am.sum(-1)
    right_padded = bool((am == (torch.arange(am.shape[1]) < lengths[:, None]).to(am.dtype)).all())
    order = torch.argsort(lengths, stable=True) if right_padded else torch.arange(am.shape[0])
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max()) if right_padded else am.shape[1]
        out.append(
            {k: (v[idx, :width] if v.dim() == 2 and v.shape[1] == am.shape[1] else v[idx]) for k, v in encoded.items() if torch.is_tensor(v)}
        )
    return out


def find_subnetworks(
    model: SequenceClassifier,
    dev_by_language: dict[str, list],
    tokenizer,
    spec: SubnetworkSpec,
    max_length: int,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    on_step=None,
) -> dict[str, Subnetwork]:
    """Returns {language: Subnetwork} found by pruning `model` on each language's dev examples.

    dev_by_language: language -> list of data.Example (that language's dev split).
    `on_step(done, total)` is called after each language's search (done languages of total).
    Dev accuracy is computed from the importance passes' own forward passes (argmax of the
    logits under the mask, eval mode), the same quantity train.evaluate reports. precision:
    of the importance passes (precision.autocast).
    """
    if not dev_by_language:
        raise ValueError("no languages given: dev_by_language is empty")
    empty = [lang for lang, exs in dev_by_language.items() if not exs]
    if empty:
        raise ValueError(f"no dev examples for language(s) {empty}: a subnetwork is found on that language's dev data")
    step_size(model.num_layers * model.num_heads, spec.step_fraction)  # fail before any compute
    from ..data.tokenization import encode  # here, so the pruning loop itself has no data-loading dependency

    model.to(device)
    out = {}
    for lang, examples in dev_by_language.items():
        batches = [{k: v.to(device) for k, v in b.items()} for b in make_batches(encode(list(examples), tokenizer, max_length), spec.batch_size)]
        out[lang] = find_subnetwork(model, batches, spec, lang, device, precision)
        if on_step:
            on_step(len(out), len(dev_by_language))
    return out


def curve_frame(subnetworks: dict[str, Subnetwork] | Iterable[Subnetwork]) -> pd.DataFrame:
    """Returns all languages' pruning curves as one DataFrame with CURVE_COLUMNS."""
    subs = subnetworks.values() if isinstance(subnetworks, dict) else subnetworks
    return pd.DataFrame([row for s in subs for row in s.curve], columns=list(CURVE_COLUMNS))
