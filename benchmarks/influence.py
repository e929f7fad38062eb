"""Influence engine: sketching vs a training step, a naive per-example loop and Captum; scoring vs a bare matmul.

Prints JSON lines:
- per model size (batch 32, length 64, lengths spread from 16 to 64): sketch_examples_per_s,
  train_step_examples_per_s, sketch_vs_train_step (a full AdamW step on the same batch);
  naive_examples_per_s and speedup_vs_naive (per example: forward, autograd weight gradient
  of every sketched layer, then G1 grad G2^T; same layers and d); captum_examples_per_s and
  speedup_vs_captum (captum TracInCP, exact, same layers: self_influence over the batch, which
  forms each example's gradient once, as sketching does; its checkpoint loader is a no-op so
  no file I/O is timed) in Captum's fastest mode (sample-wise gradients from one batched
  backward), and captum_loop_* in its default per-example mode; sketch_bytes_per_example
  (float32 storage);
- scoring 10,000 train x 2,500 test sketches (one checkpoint, the 12x12 model's sketch
  length) with top-100 most positive and most negative per test example, to the final
  DataFrame: score_s, matmul_s (the bare test @ train.T product), score_vs_matmul, and the
  peak resident memory each adds above its inputs (score_peak_mb, matmul_peak_mb), each
  measured in a fresh process.
Every timing is the median of interleaved repeats (common.interleaved).
"""
import json
import subprocess
import sys
import tempfile

import torch
from torch.nn import functional as F

from common import THREADS, interleaved, model_of, padded_batch
from subnet_ray.influence import Projector, Sketches, select_linears, sketch_batch, top_influences
from subnet_ray.influence.sketch import layer_dims
from subnet_ray.models import save_checkpoint
from subnet_ray.train import train_step

LAYERS = ["encoder", "classifier"]
PROJ_DIM = 256


def naive_loop(model, batch, linears, projector):
    """Returns sketches made the naive way: one example at a time, full weight gradients, then projected."""
    params = [p for _, lin in linears for p in (lin.weight, lin.bias)]
    out = []
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        one = {k: v[i : i + 1, :n] if v.dim() == 2 else v[i : i + 1] for k, v in batch.items()}
        loss = F.cross_entropy(model(one["input_ids"], one["attention_mask"], one["token_type_ids"]), one["labels"])
        grads = torch.autograd.grad(loss, params)
        out.append(torch.cat([
            projector.project(name, torch.cat([grads[2 * j], grads[2 * j + 1][:, None]], 1), bias=True)
            for j, (name, _) in enumerate(linears)
        ]))
    return torch.stack(out)


def captum_runner(size, batch, names, folder, batched: bool):
    """Returns a function running captum TracInCP.self_influence over `batch` (exact, same layers).

    batched: Captum's sample-wise gradients from one batched backward (Linear layers only, a
    sum loss), else its default per-example loop, given one example per batch (a bigger batch
    makes that loop quadratic: each example's backward runs through the whole batch's graph).
    """
    from captum.influence import TracInCP
    from torch.utils.data import DataLoader, TensorDataset

    model = model_of(size).eval()
    save_checkpoint(model, folder, {"epoch": 1, "lr": 1.0})
    data = TensorDataset(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"])
    per_batch = len(data) if batched else 1
    tracin = TracInCP(model, DataLoader(data, batch_size=per_batch), [str(folder)],
                      checkpoints_load_func=lambda m, path: 1.0,  # weights already in place: time gradients, not I/O
                      layers=names, loss_fn=torch.nn.CrossEntropyLoss(reduction="sum" if batched else "none"),
                      batch_size=per_batch, sample_wise_grads_per_batch=batched)
    return lambda: tracin.self_influence()


def sketch_line(size: str, repeats: int) -> dict:
    batch = padded_batch(batch=32, length=64)
    n = batch["input_ids"].shape[0]
    model = model_of(size).eval()
    linears = select_linears(model, LAYERS)
    projector = Projector(PROJ_DIM, seed=0)
    train_model = model_of(size).train()
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-5)
    naive_model = model_of(size).eval()
    naive_linears = select_linears(naive_model, LAYERS)
    # The naive loop must produce the same sketches, or the comparison means nothing.
    ref = sketch_batch(model, batch, linears, projector)
    torch.testing.assert_close(naive_loop(naive_model, batch, naive_linears, projector), ref, rtol=1e-3, atol=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        names = [name for name, _ in linears]
        t = interleaved({
            "sketch": lambda: sketch_batch(model, batch, linears, projector),
            "train_step": lambda: train_step(train_model, batch, opt),
            "naive": lambda: naive_loop(naive_model, batch, naive_linears, projector),
            "captum": captum_runner(size, batch, names, tmp, batched=True),
            "captum_loop": captum_runner(size, batch, names, tmp, batched=False),
        }, repeats=repeats, warmup=1)
    dim = sum(d for _, d in layer_dims(linears, PROJ_DIM))
    return {
        "benchmark": "influence_sketch", "model": size, "batch": n, "length": batch["input_ids"].shape[1],
        "real_tokens": int(batch["attention_mask"].sum()), "threads": THREADS, "repeats": repeats,
        "layers": len(linears), "proj_dim": PROJ_DIM,
        "sketch_examples_per_s": round(n / t["sketch"], 1),
        "train_step_examples_per_s": round(n / t["train_step"], 1),
        "sketch_vs_train_step": round(t["train_step"] / t["sketch"], 2),
        "naive_examples_per_s": round(n / t["naive"], 1),
        "speedup_vs_naive": round(t["naive"] / t["sketch"], 2),
        "captum_examples_per_s": round(n / t["captum"], 1),
        "speedup_vs_captum": round(t["captum"] / t["sketch"], 2),
        "captum_loop_examples_per_s": round(n / t["captum_loop"], 1),
        "speedup_vs_captum_loop": round(t["captum_loop"] / t["sketch"], 2),
        "sketch_bytes_per_example": dim * 4,
        "targets": {"sketch_vs_train_step": 1.4 if size != "tiny" else 1.0, "speedup_vs_naive": 2.0, "speedup_vs_captum": 3.0},
    }


def _rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def score_inputs(n_train: int, n_test: int) -> tuple[list[Sketches], list[Sketches]]:
    """Returns one checkpoint of random test and train sketches of the 12x12 model's layout."""
    layout = layer_dims(select_linears(model_of("12x12-h384"), LAYERS), PROJ_DIM)
    dim = sum(d for _, d in layout)
    g = torch.Generator().manual_seed(0)

    def sketches(n, what):
        return [Sketches(ids=[f"{what}{i}" for i in range(n)], languages=["l%d" % (i % 5) for i in range(n)],
                         values=torch.randn(n, dim, generator=g), layout=layout, proj_dim=PROJ_DIM, seed=0, checkpoint=1)]

    return sketches(n_test, "test"), sketches(n_train, "train")


def score_fns(test, train, top_k):
    return {"score": lambda: top_influences(test, train, top_k), "matmul": lambda: test[0].values @ train[0].values.T}


def peak_child(which: str, n_train: int, n_test: int, top_k: int) -> None:
    """Prints the peak resident memory (MB) one run of `which` adds above its inputs, in this fresh process."""
    test, train = score_inputs(n_train, n_test)
    fn = score_fns(test, train, top_k)[which]
    base = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the high-water mark to the current RSS (Linux)
    fn()
    print(json.dumps({"peak_mb": round((_rss_kb("VmHWM") - base) / 1024, 1)}))


def peak_mb(which: str, n_train: int, n_test: int, top_k: int) -> float:
    """Returns the peak memory `which` adds, measured in a fresh process (so no freed-but-kept heap hides it)."""
    out = subprocess.run([sys.executable, __file__, "--peak", which, str(n_train), str(n_test), str(top_k)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def score_line(repeats: int, n_train: int = 10_000, n_test: int = 2_500, top_k: int = 100) -> dict:
    test, train = score_inputs(n_train, n_test)
    dim = test[0].values.shape[1]
    t = interleaved(score_fns(test, train, top_k), repeats=repeats, warmup=1)
    del test, train
    return {
        "benchmark": "influence_score", "n_train": n_train, "n_test": n_test, "dim": dim, "top_k": top_k,
        "checkpoints": 1, "threads": THREADS, "repeats": repeats,
        "score_s": round(t["score"], 2), "matmul_s": round(t["matmul"], 2),
        "score_vs_matmul": round(t["score"] / t["matmul"], 2),
        "score_peak_mb": peak_mb("score", n_train, n_test, top_k), "matmul_peak_mb": peak_mb("matmul", n_train, n_test, top_k),
        "sketches_mb": round((n_train + n_test) * dim * 4 / 2**20, 1),
        "target_score_vs_matmul": 2.0,
    }


def main(repeats: int = 5) -> None:
    for size in ("tiny", "12x12-h384"):
        print(json.dumps(sketch_line(size, repeats)), flush=True)
    print(json.dumps(score_line(max(3, repeats // 2))), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--peak":
        peak_child(sys.argv[2], *map(int, sys.argv[3:6]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
