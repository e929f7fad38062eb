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
- real lengths (the demo's babel task, and a local task file of log-normal lengths), examples
  in a shuffled order: sketch_examples batched by token length against the given order,
  bucketed_vs_unbucketed (target 1.3; CPU time, min of 2 interleaved runs), and the padded
  tokens each computes on;
- dattri 0.3's TracInAttributor on the 12x12 model (its own projection, d=256, same layers), or
  the exact reason it cannot run a Hugging Face encoder;
Every timing is the median of interleaved repeats (common.interleaved).
"""
import json
import subprocess
import sys
import tempfile
import time

import torch
from torch.nn import functional as F

from common import THREADS, interleaved, model_of, padded_batch
from subnet_ray.influence.projection import Projector
from subnet_ray.influence.sketch import Sketches, select_linears, sketch_batch
from subnet_ray.influence.tracin import top_influences
from subnet_ray.influence.sketch import layer_dims
from subnet_ray.models.classifier import save_checkpoint
from subnet_ray.train.finetune import train_step

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


def length_tasks(folder: str) -> dict:
    """Returns {name: (task, description)}: the demo's babel task, and a local task of log-normal sentence lengths.

    The local file stands in for natural text (no hub here): words per example drawn from a
    log-normal with median 30 and sigma 0.6, cut to [4, 120] (about XNLI's premise + hypothesis
    spread in subword tokens), over a vocabulary of 2,000 words, 5 languages.
    """
    import numpy as np

    from subnet_ray.sweep.config import BabelSpec, TaskSpec

    rng = np.random.default_rng(0)
    path = f"{folder}/lengths.jsonl"
    with open(path, "w") as f:
        for i in range(5 * 120):
            n = int(np.clip(rng.lognormal(np.log(30), 0.6), 4, 120))
            words = " ".join(f"w{j}" for j in rng.integers(0, 2000, n))
            f.write(json.dumps({"text": words, "label": int(rng.integers(0, 2)), "language": f"l{i % 5}"}) + "\n")
    babel = TaskSpec(id="babel", languages=["xa", "xb", "ya", "yb"], train_size=48, dev_size=8, test_size=8,
                     babel=BabelSpec(families=[["xa", "xb"], ["ya", "yb"]]))
    local = TaskSpec(id="local", languages=[f"l{i}" for i in range(5)], source=path, train_size=32, dev_size=8, test_size=8)
    return {"babel_demo": (babel, "demo's babel languages: 14 or 26 tokens by family"),
            "local_lognormal": (local, "log-normal lengths, median 30 words, 4-120")}


def bucket_line(name: str, task, about: str, repeats: int) -> dict:
    """Returns sketch throughput of sketch_examples on a task's examples, batched by length against in a shuffled order."""
    import random

    from subnet_ray.sweep.config import InfluenceSpec
    from subnet_ray.data.examples import load_examples, tokenizer_for
    from subnet_ray.influence.pipeline import sketch_examples
    from subnet_ray.data.tokenization import token_lengths

    tok = tokenizer_for(task)
    examples = load_examples(task, "train")
    random.Random(0).shuffle(examples)  # a mixed-language set in no particular order, as a training set is sampled
    max_length = 128
    model = model_of("12x12-h384").eval()
    spec = InfluenceSpec(proj_dim=PROJ_DIM, layers=LAYERS, batch_size=32)
    projector = Projector(PROJ_DIM, seed=0)
    t, out = {True: [], False: []}, {}
    for _ in range(repeats):  # interleaved; CPU time of this process, so other work on a shared machine does not count
        for b in (True, False):
            start = time.process_time()
            out[b] = sketch_examples(model, examples, tok, spec, max_length, projector=projector, bucket=b)
            t[b].append(time.process_time() - start)
    (ob, vb), (ou, vu) = out[True], out[False]
    row = {e.id: i for i, e in enumerate(ob)}
    torch.testing.assert_close(vb[[row[e.id] for e in ou]], vu, rtol=1e-4, atol=1e-5)  # same sketches either way, by id
    t = {"bucketed": min(t[True]), "unbucketed": min(t[False])}
    lengths = token_lengths(examples, tok, max_length)
    padded = sum(max(lengths[i : i + 32]) * len(lengths[i : i + 32]) for i in range(0, len(lengths), 32))
    ordered = sorted(lengths)
    padded_b = sum(max(ordered[i : i + 32]) * len(ordered[i : i + 32]) for i in range(0, len(ordered), 32))
    n = len(examples)
    return {
        "benchmark": "influence_bucketing", "data": name, "lengths": about, "model": "12x12-h384", "examples": n, "batch": 32,
        "mean_tokens": round(sum(lengths) / n, 1), "max_tokens": max(lengths), "threads": THREADS, "repeats": repeats,
        "padded_tokens_unbucketed": padded, "padded_tokens_bucketed": padded_b,
        "bucketed_examples_per_cpu_s": round(n / t["bucketed"], 1), "unbucketed_examples_per_cpu_s": round(n / t["unbucketed"], 1),
        "bucketed_vs_unbucketed": round(t["unbucketed"] / t["bucketed"], 2), "target": 1.3,
    }


def dattri_line(size: str = "12x12-h384") -> dict:
    """Returns dattri 0.3's TracInAttributor (its own random projection to d=256, same layers) on one padded batch, or why it cannot run.

    dattri takes per-example gradients with torch.func.vmap over a functional call of the model.
    """
    try:
        from dattri.algorithm.tracin import TracInAttributor
        from dattri.task import AttributionTask
    except ImportError as e:
        return {"benchmark": "influence_dattri", "skipped": f"dattri is not installed ({e})"}
    from torch.utils.data import DataLoader, TensorDataset

    model = model_of(size).eval()
    names = [f"{n}.{p}" for n, _ in select_linears(model, LAYERS) for p in ("weight", "bias")]

    def loss(params, data):
        ids, mask, types, y = data
        logits = torch.func.functional_call(model, params, (ids.unsqueeze(0), mask.unsqueeze(0), types.unsqueeze(0)))
        return F.cross_entropy(logits, y.unsqueeze(0))

    batch = padded_batch(batch=32, length=64)
    data = TensorDataset(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"])
    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    tracin = TracInAttributor(task=task, weight_list=torch.ones(1), normalized_grad=True, layer_name=names,
                              projector_kwargs={"proj_dim": PROJ_DIM, "proj_max_batch_size": 32, "proj_seed": 0, "device": "cpu"})
    line = {"benchmark": "influence_dattri", "model": size, "batch": 32, "length": 64, "layers": len(names) // 2, "proj_dim": PROJ_DIM}
    try:
        start = time.perf_counter()
        tracin.attribute(DataLoader(data, batch_size=32), DataLoader(TensorDataset(*[t[:1] for t in data.tensors]), batch_size=1))
        return line | {"examples_per_s": round(32 / (time.perf_counter() - start), 1)}
    except RuntimeError as e:
        return line | {"error": str(e).splitlines()[0][:300],
                       "why": "dattri's per-example gradients use torch.func.vmap; transformers' attention-mask builder "
                              "(masking_utils._ignore_bidirectional_mask_sdpa) calls padding_mask.all(), data-dependent control flow vmap refuses"}


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
    with tempfile.TemporaryDirectory() as folder:
        for name, (task, about) in length_tasks(folder).items():
            print(json.dumps(bucket_line(name, task, about, 2)), flush=True)
    print(json.dumps(dattri_line()), flush=True)
    print(json.dumps(score_line(max(3, repeats // 2))), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--peak":
        peak_child(sys.argv[2], *map(int, sys.argv[3:6]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
