"""Full fine-tuning vs SFT step throughput on the same batch, measured side by side.

Prints one JSON line per model size: full_examples_per_s, sft_examples_per_s and
sft_overhead = SFT seconds per example / full seconds per example (target <= 1.10).
"""
import json
import sys

import torch

from common import THREADS, interleaved, model_of, padded_batch
from subnet_ray.models.classifier import HeadMask, head_parameter_masks
from subnet_ray.train.finetune import train_step


def main(repeats: int = 7) -> None:
    for size in ("tiny", "12x12-h384"):
        batch = padded_batch()
        n = batch["input_ids"].shape[0]
        full_model, sft_model = model_of(size).train(), model_of(size).train()
        full_opt = torch.optim.AdamW(full_model.parameters(), lr=1e-5)
        sft_opt = torch.optim.AdamW(sft_model.parameters(), lr=1e-5)
        layers, heads = sft_model.num_layers, sft_model.num_heads
        mask = (torch.rand(layers, heads, generator=torch.Generator().manual_seed(0)) > 0.3).float()
        hm = HeadMask(sft_model, mask)
        pmasks = head_parameter_masks(sft_model, mask)
        t = interleaved({
            "full": lambda: train_step(full_model, batch, full_opt),
            "sft": lambda: train_step(sft_model, batch, sft_opt, pmasks),
        }, repeats=repeats)
        hm.remove()
        print(json.dumps({
            "benchmark": "train_throughput", "model": size, "batch": n, "length": batch["input_ids"].shape[1],
            "threads": THREADS, "repeats": repeats,
            "full_examples_per_s": round(n / t["full"], 1), "sft_examples_per_s": round(n / t["sft"], 1),
            "sft_overhead": round(t["sft"] / t["full"], 3), "target_sft_overhead": 1.10,
        }), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
