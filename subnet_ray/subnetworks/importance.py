"""Head importance (Michel et al. 2019): HI(head) = E_x |dL(x) / d xi_head|, and its normalisation.

Eq. 1 of the paper puts the absolute value inside the expectation, per example x. That is
what `per="example"` (the default) computes, at the cost of one backward pass per batch:
the head mask is given one row per example ([batch, layers, heads], each a copy of the
current mask), so the gradient of the summed per-example loss w.r.t. row b is exactly
dL(x_b)/dxi -- in eval mode the examples of a batch do not interact. The result does not
depend on how the data is batched.

Michel et al.'s code and the bertology script accumulate |dL(batch)/dxi| of the batch's
mean loss instead, so examples whose gradients have opposite signs cancel, and the value
depends on the batch size. `per="batch"` reproduces that estimator for comparison, with the
gradient taken fresh for every batch (the bertology script never zeroes it; we do not copy
that).

Disabled heads still have a gradient (the sensitivity to switching them back on); the raw
importance keeps it, and `normalize_importance` drops it, as if the head had been removed:
Michel et al. prune heads physically, so removed heads take no part in later normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from torch.nn import functional as F

from ..models.classifier import HeadMask, SequenceClassifier, check_mask
from ..models.precision import autocast, loss_scale

Per = Literal["example", "batch"]
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class ImportancePass:
    """One pass over a language's dev batches under one head mask."""

    importance: torch.Tensor  # float64 [layers, heads], raw E|dL/dxi| (not normalised)
    correct: int  # examples whose argmax prediction equals the label
    count: int  # examples seen

    @property
    def accuracy(self) -> float:
        """Returns correct / count."""
        return self.correct / self.count


def importance_pass(
    model: SequenceClassifier,
    batches: Iterable[dict],
    mask: torch.Tensor | None = None,
    per: Per = "example",
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> ImportancePass:
    """Returns raw head importance under `mask` (default all on) and the accuracy of the same forward passes.

    batches: encoded dicts with input_ids, attention_mask, (token_type_ids,) labels.
    per: "example" = mean over examples of |dL(x)/dxi| (Eq. 1); "batch" = mean over batches
    of |d mean-loss(batch) / dxi| (Michel et al.'s code).
    precision: fp32, tf32, bf16 or fp16 forward and backward (precision.autocast); the mask and
    the accumulated importance stay float32 / float64.
    """
    if per not in ("example", "batch"):
        raise ValueError(f"per must be 'example' or 'batch', got {per!r}")
    shape = (model.num_layers, model.num_heads)
    mask = torch.ones(shape) if mask is None else torch.as_tensor(mask)
    check_mask(model, mask)
    if mask.dim() != 2:
        raise ValueError(f"importance needs one [layers, heads] mask, got shape {tuple(mask.shape)}")
    # float32 mask (float64 for a float64 model, so tests can check gradients tightly)
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    base = mask.to(device=device, dtype=dtype)
    scale = loss_scale(precision)

    was_training = model.training
    # Only the mask needs a gradient: freezing the weights for the pass spares autograd from
    # saving inputs for weight gradients (restored afterwards, so the caller's model is unchanged).
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in frozen:
        p.requires_grad_(False)
    total = torch.zeros(shape, dtype=torch.float64, device=device)
    correct = count = batches_seen = 0
    try:
        with HeadMask(model) as hm:
            for batch in batches:
                labels = batch["labels"].to(device)
                n = labels.shape[0]
                if n == 0:
                    continue
                xi = (base.expand(n, *shape) if per == "example" else base).clone().requires_grad_(True)
                hm.set(xi)
                with autocast(device, precision):
                    logits = model(**{k: batch[k].to(device) for k in MODEL_INPUTS if k in batch})
                    losses = F.cross_entropy(logits.to(dtype), labels, reduction="none")
                    loss = (losses.sum() if per == "example" else losses.mean()) * scale
                    (grad,) = torch.autograd.grad(loss, xi)
                grad = grad / scale  # fp16: undo the fixed loss scale (the gradient is linear in the loss)
                # per example: sum_b |dL(x_b)/dxi| ; per batch: |dL(batch)/dxi|
                total += grad.abs().double().sum(0) if per == "example" else grad.abs().double()
                correct += int((logits.argmax(-1) == labels).sum())
                count += n
                batches_seen += 1
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    if count == 0:
        raise ValueError("no examples: head importance needs at least one non-empty dev batch")
    importance = total / (count if per == "example" else batches_seen)
    return ImportancePass(importance.cpu(), correct, count)


def head_importance(
    model: SequenceClassifier,
    batches: Iterable[dict],
    mask: torch.Tensor | None = None,
    per: Per = "example",
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """Returns raw head importance E_x |dL(x)/dxi| as float64 [layers, heads] (see `importance_pass`)."""
    return importance_pass(model, batches, mask, per, device, precision).importance


def normalize_importance(
    importance: torch.Tensor,
    enabled: torch.Tensor | None = None,
    layers: bool = True,
    global_scaling: bool = False,
) -> torch.Tensor:
    """Returns importance with disabled heads set to 0, L2-normalised per layer and/or min-max scaled.

    enabled: bool [layers, heads] of heads still in the network (default all); disabled heads
    are excluded from both the layer norms and the global min and max.
    layers: divide each layer's importances by their L2 norm (Michel et al.; a layer whose
    enabled heads all have importance 0 stays 0).
    global_scaling: then map the enabled heads' values to [0, 1] by (x - min) / (max - min)
    (all equal -> all 0).
    """
    imp = torch.as_tensor(importance, dtype=torch.float64).clone()
    if imp.dim() != 2:
        raise ValueError(f"importance must be [layers, heads], got shape {tuple(imp.shape)}")
    on = torch.ones_like(imp, dtype=torch.bool) if enabled is None else torch.as_tensor(enabled).bool()
    if on.shape != imp.shape:
        raise ValueError(f"enabled mask of shape {tuple(on.shape)} does not match importance {tuple(imp.shape)}")
    if not torch.isfinite(imp[on]).all():
        raise ValueError("importance has non-finite values (a NaN/inf loss?)")
    imp[~on] = 0.0
    if layers:
        norm = imp.pow(2).sum(-1, keepdim=True).sqrt()
        imp = imp / torch.where(norm > 0, norm, torch.ones_like(norm))
    if global_scaling and on.any():
        lo, hi = imp[on].min(), imp[on].max()
        imp = torch.where(on, (imp - lo) / (hi - lo) if hi > lo else torch.zeros_like(imp), torch.zeros_like(imp))
    return imp
