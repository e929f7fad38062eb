"""What memory a sweep's model needs, from its shape alone (no torch): training, influence, stored sketches, which GPU.

- training (train.train_step, AdamW): float32 weights, float32 gradients, AdamW's two float32
  moments (16 bytes per parameter, `train_state`), plus the activations one step keeps for backward
  at the sweep's batch and max_length (shapes.activation_bytes: padded to max_length, an upper
  bound). The backward's peak is weights + moments + every activation + one layer's activations
  again for the gradients flowing back (the parameter gradients are allocated as activations are
  freed); torch's foreach AdamW step on CUDA briefly adds one more float32 copy of the parameters
  (its sqrt of the second moment): the peak is the larger of the two;
- influence on the device: the float32 model, a sketching batch's activations (the training
  step's at influence.batch_size: an upper bound, the weights are frozen so Linear inputs are not
  all kept), the projection factors and the batch's sketches;
- sketches: d values per sketched Linear layer (or its exact gradient size with d = 0) per example
  and checkpoint, in influence.dtype, held on the host: one mask's training and test sketches of
  every checkpoint at once (pipeline.influence_jobs), all masks' in total;
- a GPU fits when the peak plus CUDA's own context (~1 GiB) and 10% allocator slack stays under
  the memory the card reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..influence.layers import matches
from .shapes import Shape, activation_bytes, linears, parameters

GiB = 2**30
# (name, GiB the card reports to torch), smallest first
GPUS = (("L4 24GB", 22.0), ("A100 40GB", 39.4), ("A100/H100 80GB", 79.1), ("H200 141GB", 139.8))
CUDA_CONTEXT = 1 * GiB
SLACK = 1.10
WIDTH = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class Plan:
    """Memory of one model at one sweep's settings, in bytes."""

    params: int
    checkpoint: int  # one epoch checkpoint (float32 state)
    train_state: int  # weights + gradients + AdamW moments
    train_activations: int
    train_peak: int
    influence_device: int
    sketch_dim: int  # values per example per checkpoint
    sketches_one_mask: int  # train + test sketches of one mask, every checkpoint (held at once)
    sketches_all: int  # every mask's

    def row(self) -> dict:
        """Returns the plan in GiB (rounded to 0.01) with each peak's GPU verdict."""
        g = {k: round(v / GiB, 2) for k, v in vars(self).items() if k not in ("params", "sketch_dim")}
        return {"params": self.params, "sketch_dim": self.sketch_dim, **{f"{k}_gib": v for k, v in g.items()},
                "training_gpu": fits(self.train_peak), "influence_gpu": fits(self.influence_device)}


def fits(peak: int) -> str:
    """Returns the smallest listed GPU whose memory holds `peak` bytes (plus CUDA's context and slack), or 'none listed'."""
    need = peak * SLACK + CUDA_CONTEXT
    for name, gib in GPUS:
        if need <= gib * GiB:
            return name
    return f"none listed (needs {need / GiB:.0f} GiB)"


def verdicts(peak: int) -> dict[str, bool]:
    """Returns GPU name -> whether `peak` bytes fit it."""
    need = peak * SLACK + CUDA_CONTEXT
    return {name: need <= gib * GiB for name, gib in GPUS}


def sketch_dim(s: Shape, num_labels: int, prefixes: list[str], proj_dim: int) -> int:
    """Returns one example's sketch length: d per Linear layer matching `prefixes`, or out x (in + bias) each with d = 0."""
    return sum(proj_dim if proj_dim else o * (i + int(b)) for n, o, i, b in linears(s, num_labels) if any(matches(n, p) for p in prefixes))


def plan(s: Shape, num_labels: int, *, batch: int, length: int, precision: str, influence_batch: int, influence_precision: str,
         prefixes: list[str], proj_dim: int, sketch_dtype: str, n_train: int, n_test: int, checkpoints: int, masks: int,
         device: str = "cuda") -> Plan:
    """Returns the memory Plan of a classifier of shape `s` at these settings (see the module docstring)."""
    p = parameters(s, num_labels)
    acts = activation_bytes(s, batch * length, length, precision, device)
    one_layer = (acts - _weight_copies(s, precision)) // max(1, s.layers)
    state = 16 * p
    # backward: weights and moments, every kept activation and one layer's gradients flowing back; the gradients (4P)
    # are allocated as the activations are freed; the optimizer step: all 16P, plus foreach AdamW's 4P sqrt on CUDA
    peak = max(12 * p + acts + one_layer, 20 * p if device.startswith("cuda") else 16 * p)
    dim = sketch_dim(s, num_labels, prefixes, proj_dim)
    sketched = [(o, i) for n, o, i, _ in linears(s, num_labels) if any(matches(n, q) for q in prefixes)]
    root = math.isqrt(proj_dim) if proj_dim else 0
    factors = sum(root * (o + i + 1) * 4 for o, i in sketched)  # G1 (sqrt d x out), G2 (sqrt d x (in + 1)) per layer
    work = activation_bytes(s, influence_batch * length, length, influence_precision, device)
    infl = 4 * p + work + factors + influence_batch * dim * 4
    row = dim * WIDTH[sketch_dtype] * checkpoints
    per_mask_test = -(-n_test // max(1, masks))
    return Plan(params=p, checkpoint=4 * p, train_state=state, train_activations=acts, train_peak=peak, influence_device=infl,
                sketch_dim=dim, sketches_one_mask=row * (n_train + per_mask_test), sketches_all=row * masks * (n_train + per_mask_test))


def _weight_copies(s: Shape, precision: str) -> int:
    return sum(o * i for _, o, i, _ in linears(s, 2)) * 2 if precision in ("bf16", "fp16") else 0


def sweep_plan(spec, task, s: Shape) -> Plan:
    """Returns the Plan of `spec`'s model of shape `s` for `task`: its batch, max_length, precisions, sketch layers and sizes,
    the paper's 5 masks per model (full model plus one per language) unless the task has other counts."""
    from ..data.examples import num_labels

    tr, inf = spec.training, spec.influence
    n_test = min(inf.test_per_language, task.test_size) * len(task.languages)
    return plan(s, num_labels(task), batch=tr.batch_size, length=tr.max_length, precision=tr.precision,
                influence_batch=inf.batch_size, influence_precision=inf.precision or tr.precision, prefixes=inf.layers,
                proj_dim=inf.proj_dim, sketch_dtype=inf.dtype, n_train=task.train_size * len(task.languages), n_test=n_test,
                checkpoints=tr.epochs, masks=len(task.languages), device=tr.device)


def gib(n: float) -> str:
    """Returns `n` bytes in GiB with one decimal (two below 1 GiB)."""
    return f"{n / GiB:.2f} GiB" if n < GiB else f"{n / GiB:.1f} GiB"

