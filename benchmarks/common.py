"""Shared benchmark set-up: thread settings, the two model sizes and a realistically padded batch."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import statistics
import time

import torch

from subnet_ray.sweep.config import ModelSpec, TinySpec
from subnet_ray.models.classifier import build_model

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)

SIZES = {
    "tiny": TinySpec(layers=2, heads=4, hidden=32, intermediate=64, max_positions=128),
    "12x12-h384": TinySpec(layers=12, heads=12, hidden=384, intermediate=1536, max_positions=128),
}
VOCAB = 8000


def model_of(size: str, seed: int = 0):
    """Returns a random-init classifier of the named size, dropout off so repeats do the same work."""
    return build_model(ModelSpec(name="tiny", tiny=SIZES[size], dropout=0.0), num_labels=2, vocab_size=VOCAB, seed=seed)


def padded_batch(batch: int = 32, length: int = 64, seed: int = 0) -> dict:
    """Returns a batch whose lengths are spread uniformly between length/4 and length (realistic padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 2, (batch,), generator=g)}


def interleaved(fns: dict, repeats: int = 7, warmup: int = 2) -> dict[str, float]:
    """Returns the median seconds of each function, the functions run in turn every repeat."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}
