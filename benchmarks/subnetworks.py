"""Cost of one head-importance pass vs one plain forward+backward pass over the same dev batches.

Prints one JSON line per model size: importance_pass_s (subnetworks.importance_pass: hooks,
a per-example mask that requires grad, autograd.grad w.r.t. the mask only),
eval_pass_s (no hooks: forward, mean loss, loss.backward() into the weights) and their
ratio; target <= 1.3. Medians over repeats, the two run in turn every repeat.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/subnetworks.py [--repeats 7] [--batches 4]
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as F

from subnet_ray.sweep.config import ModelSpec, TinySpec
from subnet_ray.models.classifier import build_model
from subnet_ray.subnetworks.importance import importance_pass

THREADS = 2
SIZES = {
    "tiny": TinySpec(layers=2, heads=4, hidden=32, intermediate=64, max_positions=128),
    "12x12-h384": TinySpec(layers=12, heads=12, hidden=384, intermediate=1536, max_positions=128),
}
VOCAB = 8000


def dev_batches(n_batches: int, batch: int, length: int, seed: int = 0) -> list[dict]:
    """Returns batches whose lengths spread uniformly over [length/4, length], each padded to its longest."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        lengths = torch.randint(length // 4, length + 1, (batch,), generator=g)
        width = int(lengths.max())
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        ids = torch.randint(5, VOCAB, (batch, width), generator=g) * mask
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, 2, (batch,), generator=g)})
    return out


def plain_pass(model, batches) -> None:
    """One forward+backward of every batch into the weights, no mask machinery."""
    for b in batches:
        model.zero_grad(set_to_none=True)
        logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        F.cross_entropy(logits, b["labels"]).backward()


def measure(size: str, n_batches: int, batch: int, length: int, repeats: int, warmup: int = 1) -> dict:
    model = build_model(ModelSpec(name="tiny", tiny=SIZES[size], dropout=0.0), num_labels=2, vocab_size=VOCAB, seed=0).eval()
    batches = dev_batches(n_batches, batch, length)
    fns = {"importance": lambda: importance_pass(model, batches), "eval": lambda: plain_pass(model, batches)}
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():  # interleaved, so drift in machine load hits both alike
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    imp, ev = statistics.median(times["importance"]), statistics.median(times["eval"])
    t = SIZES[size]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    cells = sum(b["attention_mask"].numel() for b in batches)
    return dict(
        size=size, layers=t.layers, heads=t.heads, hidden=t.hidden, batch=batch, length=length, batches=n_batches,
        real_token_fraction=round(tokens / cells, 3), threads=torch.get_num_threads(), repeats=repeats,
        importance_pass_s=round(imp, 4), eval_pass_s=round(ev, 4), importance_vs_eval_ratio=round(imp / ev, 3),
        importance_pass_min_s=round(min(times["importance"]), 4), eval_pass_min_s=round(min(times["eval"]), 4),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batches", type=int, default=4, help="dev batches per pass")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    a = p.parse_args()
    torch.set_num_threads(THREADS)
    for size in a.sizes:
        print(json.dumps(measure(size, a.batches, a.batch, a.length, a.repeats)), flush=True)


if __name__ == "__main__":
    main()
