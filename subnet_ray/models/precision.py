"""Numeric precision of a pass: fp32, tf32, bf16 or fp16, by autocast, with loss scaling for fp16.

Weights stay float32 in every mode (so checkpoints, optimizer state and stored results do
not change format); `autocast` runs matmuls and attention in the half dtype, while softmax,
layer norm and the loss stay float32 (torch's autocast op lists). `tf32` is fp32 storage with
TensorFloat-32 matmuls on GPUs that have them (Ampere and later); the half modes allow TF32 too
for the ops autocast leaves in float32. On CPU, tf32 is plain fp32, and bf16 / fp16 autocast
work (slowly: CPUs without AMX gain nothing from them, but results can be checked there).

fp16 has a narrow exponent range: fine-tuning uses torch.amp.GradScaler (dynamic loss scale,
steps with inf gradients skipped); sketching and head importance, which take one gradient of a
summed loss, multiply the loss by the fixed FP16_LOSS_SCALE and divide the result back (both
are linear in the loss, so that is exact up to rounding).
"""
from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "tf32", "bf16", "fp16"]
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP16_LOSS_SCALE = 1024.0


def device_type(device: str | torch.device) -> str:
    """Returns the device type torch.autocast wants ('cuda', 'cpu', 'mps') of `device`."""
    return torch.device(device).type


def check(precision: str) -> str:
    """Returns `precision` if known, else raises ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def loss_scale(precision: str) -> float:
    """Returns the fixed loss scale for one-shot gradients (sketches, importance): FP16_LOSS_SCALE for fp16, else 1."""
    return FP16_LOSS_SCALE if check(precision) == "fp16" else 1.0


@contextlib.contextmanager
def autocast(device: str | torch.device, precision: str = "fp32"):
    """Runs the block in `precision` on `device`: autocast for bf16/fp16, TF32 matmuls on CUDA for tf32/bf16/fp16."""
    check(precision)
    dev = device_type(device)
    tf32 = dev == "cuda" and precision != "fp32"
    before = torch.get_float32_matmul_precision()
    cudnn_before = torch.backends.cudnn.allow_tf32
    if tf32:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    try:
        if precision in HALF:
            with torch.autocast(device_type=dev, dtype=HALF[precision]):
                yield
        else:
            yield
    finally:
        if tf32:  # restore: another pass in this process may want strict fp32
            torch.set_float32_matmul_precision(before)
            torch.backends.cudnn.allow_tf32 = cudnn_before


def grad_scaler(device: str | torch.device, precision: str) -> torch.amp.GradScaler:
    """Returns a GradScaler, enabled only for fp16 (bf16 has float32's exponent range and needs none)."""
    return torch.amp.GradScaler(device_type(device), enabled=check(precision) == "fp16")
