"""Per-example gradient sketches of selected Linear layers from one batched forward and backward.

For a Linear layer the per-example weight gradient is sum_t delta_t [x_t; 1]^T (bias folded in
as a last column), where x_t is the layer's input and delta_t = dL/dy_t its output gradient at
token t. Hooks capture both during one forward and backward of the *sum* of the per-example
losses (examples in a batch do not interact, so each example's delta_t is its own loss's
gradient) and reduce them at once to sum_t (G1 delta_t)(G2 [x_t; 1])^T, k x k per layer.

Weight gradients are never formed: every weight's requires_grad is off during sketching, and
the first hooked layer's output is made a leaf that requires grad, so autograd only computes
activation gradients (which the sketch needs) and none for the frozen weights. In exact mode
(proj_dim 0) the per-example gradient itself, m x (n+1), is kept: for validation on small
models.

Padding: a padded token's output gradient is exactly zero (attention never reads it and the
classifier reads the first token, or a decoder's last real token), but the input side is still multiplied by the
attention mask so the sketch does not depend on the attention implementation. Layers that see
one vector per example (the classifier on the first token) have no token axis to mask.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..models.classifier import HeadMask
from ..models.precision import autocast, loss_scale
from .layers import matches
from .projection import Projector

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# A prefix matches a module path from its start or as a run of whole components, so
# 'classifier', 'encoder.encoder.layer.0', 'embeddings' and 'attention' all work.
_matches = matches


def select_linears(model: nn.Module, prefixes: list[str]) -> list[tuple[str, nn.Linear]]:
    """Returns (name, module) of every nn.Linear whose name matches one of `prefixes`, in module order."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(_matches(n, p) for p in prefixes)]
    for p in prefixes:
        if not any(_matches(n, p) for n, _ in found):
            tops = sorted({n.split(".")[0] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise ValueError(f"influence layer prefix {p!r} matches no Linear layer of the model (Linear layers live under {tops})")
    return found


def layer_dims(linears: list[tuple[str, nn.Linear]], proj_dim: int) -> tuple[tuple[str, int], ...]:
    """Returns (layer name, sketch length) per layer: d, or out x (in + bias) in exact mode."""
    if proj_dim:
        return tuple((n, proj_dim) for n, _ in linears)
    return tuple((n, m.out_features * (m.in_features + int(m.bias is not None))) for n, m in linears)


@contextlib.contextmanager
def frozen_weights(model: nn.Module):
    """Turns requires_grad off on every parameter for the duration, then restores it."""
    before = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in before:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in before:
            p.requires_grad_(r)


def sketch_batch(
    model: nn.Module,
    batch: dict,
    linears: list[tuple[str, nn.Linear]],
    projector: Projector | None,
    head_mask: torch.Tensor | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Returns per-example sketches [batch, sum of layer dims] in the model's dtype (exact gradients if projector is None).

    batch: input_ids, attention_mask, labels (token_type_ids optional) on the model's device.
    head_mask: [layers, heads], or [batch, layers, heads] for one mask per example; None = all heads.
    precision: fp32, tf32, bf16 or fp16 (precision.autocast): under bf16 / fp16 the forward, the
    backward and the projections run in the half dtype (each layer's output dtype), and every
    layer's sketch is summed in float32.
    The model must be in eval mode (dropout would make the sketch random); it is not changed.
    """
    if model.training:
        raise ValueError("sketch_batch needs the model in eval mode (dropout makes gradients random)")
    tokens = batch["attention_mask"]
    size, length = tokens.shape
    arch = getattr(model, "arch", None)
    if size > 1 and arch is not None and not arch.batched_sketch:
        # A layer also applied to a table shared by the batch (DeBERTa's query / key projections
        # on the relative positions) mixes the examples' gradients: sketch one example at a time.
        rows = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(size)]
        masks = [head_mask[i] if head_mask is not None and head_mask.dim() == 3 else head_mask for i in range(size)]
        return torch.cat([sketch_batch(model, r, linears, projector, m, precision) for r, m in zip(rows, masks)])
    if not linears:
        raise ValueError("sketch_batch: no layers to sketch")
    parts: dict[str, torch.Tensor] = {}
    leaves: list[torch.Tensor] = []

    def forward_hook(name: str, lin: nn.Linear):
        bias = lin.bias is not None

        def hook(module, args, out):
            # the layer's output dtype is its compute dtype: the half dtype under autocast
            x = args[0].to(out.dtype)
            if x.shape[0] != size:
                # e.g. DeBERTa's pos_key_proj, applied once to the relative-position table for the whole
                # batch: its per-example gradients cannot be told apart from one batched backward
                raise ValueError(f"influence layer {name!r} sees no per-example input (leading size {x.shape[0]}, batch {size}), "
                                 "influence.layers; expected layers applied to each example's tokens (leave it out of the prefixes)")
            if projector is None:
                px = torch.cat([x, x.new_ones(x.shape[:-1] + (1,))], -1) if bias else x
            else:
                g1, g2, g2_bias = projector.factors(name, lin.out_features, lin.in_features, bias, x.device, x.dtype)
                px = F.linear(x, g2, g2_bias)  # G2 [x; 1]
            if x.dim() == 3 and x.shape[:2] == (size, length):
                px = px * token_weight.to(px.dtype)
            px = px.reshape(size, -1, px.shape[-1])
            if not out.requires_grad:
                out = out.detach().requires_grad_()
                leaves.append(out)

            def grad_hook(delta):
                # backward runs outside autocast (on CUDA in another thread): dtypes are set here
                delta = delta.reshape(size, -1, delta.shape[-1]).to(px.dtype)
                pd = delta if projector is None else F.linear(delta, g1)  # G1 delta
                s = torch.bmm(pd.transpose(1, 2), px).flatten(1).to(dtype)  # sum over tokens of (G1 delta)(G2 x)^T
                parts[name] = parts[name] + s if name in parts else s

            out.register_hook(grad_hook)
            return out

        return hook

    dtype = linears[0][1].weight.dtype
    scale = loss_scale(precision)
    token_weight = tokens.unsqueeze(-1).to(dtype)
    handles = [lin.register_forward_hook(forward_hook(n, lin)) for n, lin in linears]
    masker = HeadMask(model, head_mask) if head_mask is not None else None
    try:
        with frozen_weights(model), torch.enable_grad(), autocast(tokens.device, precision):
            kwargs = {"token_type_ids": batch["token_type_ids"]} if batch.get("token_type_ids") is not None else {}
            logits = model(input_ids=batch["input_ids"], attention_mask=tokens, **kwargs)
            # Sum, not mean: each example's output gradients are then exactly its own loss's.
            # fp16: a fixed loss scale keeps small output gradients above fp16's underflow.
            loss = F.cross_entropy(logits, batch["labels"], reduction="sum") * scale  # float32 under autocast
            if leaves:
                torch.autograd.grad(loss, leaves)  # grads of the leaves are discarded: the hooks did the work
    finally:
        for h in handles:
            h.remove()
        if masker is not None:
            masker.remove()
    dims = layer_dims(linears, projector.proj_dim if projector else 0)
    # A layer the loss does not reach has a zero gradient.
    out = torch.cat([parts.get(n, torch.zeros(size, d, dtype=dtype, device=tokens.device)) for n, d in dims], 1)
    return out / scale if scale != 1.0 else out


@dataclass
class Sketches:
    """Sketches of a set of examples at one checkpoint under one head mask.

    values: [examples, dim] in the storage dtype; row i belongs to ids[i].
    layout: (layer name, length) per sketched layer, in order; rows are their concatenation.
    proj_dim: d per layer, 0 = exact gradients. seed: projection seed.
    checkpoint: the epoch of the checkpoint. lr: its learning rate (None if unknown).
    mask: a key naming the head mask ('none' = all heads).
    """

    ids: list[str]
    languages: list[str]
    values: torch.Tensor
    layout: tuple[tuple[str, int], ...]
    proj_dim: int
    seed: int
    checkpoint: int
    lr: float | None = None
    mask: str = "none"
    _index: dict[str, int] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        n = len(self.ids)
        if n == 0:
            raise ValueError(f"empty sketches (checkpoint {self.checkpoint}, mask {self.mask!r}): no examples")
        if len(self.languages) != n or self.values.dim() != 2 or self.values.shape[0] != n:
            raise ValueError(f"sketches: {n} ids, {len(self.languages)} languages, values of shape {tuple(self.values.shape)}")
        if self.values.shape[1] != sum(d for _, d in self.layout):
            raise ValueError(f"sketches: rows of length {self.values.shape[1]} do not match the layout (sum {sum(d for _, d in self.layout)})")
        if len(set(self.ids)) != n:
            dup = sorted(i for i, c in Counter(self.ids).items() if c > 1)
            raise ValueError(f"sketches (checkpoint {self.checkpoint}): {len(dup)} duplicate example ids, e.g. {dup[:3]}")

    def index(self) -> dict[str, int]:
        """Returns id -> row."""
        if self._index is None:
            self._index = {i: r for r, i in enumerate(self.ids)}
        return self._index

    def take(self, ids: list[str]) -> "Sketches":
        """Returns these sketches restricted and reordered to `ids`; raises naming missing ids."""
        idx = self.index()
        missing = [i for i in ids if i not in idx]
        if missing:
            raise ValueError(f"sketches (checkpoint {self.checkpoint}, mask {self.mask!r}) lack {len(missing)} ids, e.g. {missing[:3]}")
        rows = torch.tensor([idx[i] for i in ids], dtype=torch.long)
        return Sketches(ids=list(ids), languages=[self.languages[r] for r in rows.tolist()], values=self.values[rows],
                        layout=self.layout, proj_dim=self.proj_dim, seed=self.seed, checkpoint=self.checkpoint,
                        lr=self.lr, mask=self.mask)

    def check_comparable(self, other: "Sketches", what: str = "test and train") -> None:
        """Raises ValueError naming the difference unless `other` was sketched the same way (layers, d, seed, checkpoint, mask)."""
        for attr in ("proj_dim", "seed", "layout", "checkpoint", "mask"):
            a, b = getattr(self, attr), getattr(other, attr)
            if a != b:
                shown = (a, b) if attr != "layout" else (f"{len(a)} layers, dim {sum(d for _, d in a)}", f"{len(b)} layers, dim {sum(d for _, d in b)}")
                raise ValueError(f"{what} sketches differ in {attr}: {shown[0]} vs {shown[1]}; they cannot be compared")


def to_numpy(values: torch.Tensor) -> np.ndarray:
    """Returns values as numpy for transport; bfloat16 (which numpy lacks) travels as its int16 bits."""
    values = values.detach().cpu()
    return values.view(torch.int16).numpy() if values.dtype == torch.bfloat16 else values.numpy()


def from_numpy(array: np.ndarray, dtype: str) -> torch.Tensor:
    """Returns the tensor `to_numpy` made, in storage dtype `dtype`."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t.to(DTYPES[dtype])
