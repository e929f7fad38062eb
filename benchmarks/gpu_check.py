"""GPU check: training-step and sketch throughput at XLM-R base shape in fp32, tf32 and bf16, their
peak GPU memory and ranking agreement, then the smoke sweep end to end with `device: cuda`.

Prints JSON lines:
- `gpu_env`: torch / transformers versions, the device, bf16 support;
- `gpu_train_step` per precision: examples/s of a full AdamW step (train.train_step) and peak
  memory, batch 32 with lengths spread from 32 to 128 tokens (a synthetic stand-in for XNLI's
  lengths at max_length 128), and `speedup_vs_fp32`;
- `gpu_sketch` per precision: examples/s of sketch_batch over the paper's 74 Linear layers
  (encoder + classifier) at d=256, peak memory, `speedup_vs_fp32`;
- `gpu_sketch_agreement`: Spearman of the TracIn scores (cosine, one checkpoint) of bf16 and
  tf32 sketches against fp32 ones, per test example (min and median), 512 train x 32 test;
- `gpu_smoke_sweep`: sweeps/smoke.yaml with training.device set to the device, every node run
  in this process (the local executor; with MLflow logging if mlflow is installed), seconds per
  wave; or `skipped` with the reason (pydantic / pyyaml missing).

The model is built from an XLMRobertaConfig (random weights, no hub). The throughput part
needs only torch, transformers and safetensors (the subnet_ray modules it uses import no
pydantic). The GPU machines here have no pydantic: carry its wheels for the sweep part, from
the repository root (see /work/.library/device/README.md):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.4 pydantic-core==2.50.5 \
        annotated-types==0.8.0 typing-inspection==0.4.5
    # run, carrying .whl:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
        PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py

(versions: this project's venv's, downloaded so on 2026-11-30: 2.8 MB.) Ray, MLflow and datasets
are not needed. It should finish in a few minutes on one H200 (not yet run on one). `--cpu --quick` runs the same on CPU at tiny shapes (tests).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import XLMRobertaConfig, XLMRobertaModel  # noqa: E402

from subnet_ray.influence.projection import Projector  # noqa: E402
from subnet_ray.influence.sketch import Sketches, layer_dims, select_linears, sketch_batch  # noqa: E402
from subnet_ray.influence.tracin import dense_scores  # noqa: E402
from subnet_ray.models.classifier import SequenceClassifier  # noqa: E402
from subnet_ray.train.finetune import train_step  # noqa: E402

XLMR_BASE = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=514, type_vocab_size=1)
QUICK = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=130, type_vocab_size=1)
PRECISIONS = ("fp32", "tf32", "bf16")


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def build(shape: dict, device: str, seed: int = 0) -> SequenceClassifier:
    """Returns a random-init XLM-R-architecture classifier of `shape` on `device`, dropout off (repeats do equal work)."""
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(**shape, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)
    return SequenceClassifier(XLMRobertaModel(cfg, add_pooling_layer=False), num_labels=2, dropout=0.0).to(device)


def batch_of(n: int, length: int, vocab: int, device: str, seed: int) -> dict:
    """Returns a right-padded batch with lengths uniform in [length/4, length] (XLM-R's pad id is 1)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 4, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), torch.randint(5, vocab, (n, length), generator=g), torch.ones_like(mask))
    return {k: v.to(device) for k, v in
            {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}.items()}


def timed(fn, device: str, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Returns (median seconds of `fn`, peak device memory in MiB during one run; 0 on CPU)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    peak = 0.0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync()
        peak = torch.cuda.max_memory_allocated() / 2**20
    return statistics.median(times), peak


def throughput(shape: dict, device: str, batch: int, length: int, repeats: int) -> None:
    base = {}
    b = batch_of(batch, length, shape["vocab_size"], device, seed=1)
    for precision in PRECISIONS:
        model = build(shape, device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        t, peak = timed(lambda: train_step(model, b, opt, precision=precision), device, repeats)
        base.setdefault("train", t)
        emit({"benchmark": "gpu_train_step", "precision": precision, "batch": batch, "max_length": length,
              "real_tokens": int(b["attention_mask"].sum()), "examples_per_s": round(batch / t, 1),
              "peak_mem_mib": round(peak), "speedup_vs_fp32": round(base["train"] / t, 2)})
        del model, opt
    model = build(shape, device).eval()
    linears = select_linears(model, ["encoder", "classifier"])
    projector = Projector(256, seed=0)
    for precision in PRECISIONS:
        t, peak = timed(lambda: sketch_batch(model, b, linears, projector, precision=precision), device, repeats)
        base.setdefault("sketch", t)
        emit({"benchmark": "gpu_sketch", "precision": precision, "batch": batch, "max_length": length, "layers": len(linears),
              "proj_dim": 256, "examples_per_s": round(batch / t, 1), "peak_mem_mib": round(peak),
              "speedup_vs_fp32": round(base["sketch"] / t, 2), "vs_train_step_fp32": round(base["train"] / t, 2)})


def agreement(shape: dict, device: str, batch: int, length: int, n_train: int, n_test: int) -> None:
    from scipy.stats import spearmanr

    model = build(shape, device, seed=3).eval()
    linears = select_linears(model, ["encoder", "classifier"])
    layout = layer_dims(linears, 256)
    projector = Projector(256, seed=0)

    def sketches(n, seed, precision, what):
        parts = [sketch_batch(model, batch_of(min(batch, n - i), length, shape["vocab_size"], device, seed + i), linears,
                              projector, precision=precision).float().cpu() for i in range(0, n, batch)]
        return [Sketches(ids=[f"{what}{i}" for i in range(n)], languages=["x"] * n, values=torch.cat(parts), layout=layout,
                         proj_dim=256, seed=0, checkpoint=1)]

    scores = {p: dense_scores(sketches(n_test, 10_000, p, "te"), sketches(n_train, 0, p, "tr"))[-1] for p in PRECISIONS}
    for p in ("tf32", "bf16"):
        rho = [spearmanr(scores["fp32"][i].numpy(), scores[p][i].numpy())[0] for i in range(n_test)]
        emit({"benchmark": "gpu_sketch_agreement", "precision": p, "vs": "fp32", "n_train": n_train, "n_test": n_test,
              "spearman_min": round(float(min(rho)), 4), "spearman_median": round(float(statistics.median(rho)), 4),
              "target": 0.99})


def smoke_sweep(device: str) -> None:
    try:
        import pydantic  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as e:
        emit({"benchmark": "gpu_smoke_sweep", "skipped": f"{e.name} is not installed (carry its wheels: see this script's docstring)"})
        return
    from subnet_ray.sweep.config import load_sweep
    from subnet_ray.sweep.graph import graph
    from subnet_ray.stages import execute
    from subnet_ray.storage.store import store_for

    spec = load_sweep(ROOT / "sweeps" / "smoke.yaml")
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"device": device})})
    with tempfile.TemporaryDirectory() as root:
        t0, seconds, computed = time.perf_counter(), {}, 0
        try:
            import mlflow  # noqa: F401
            from subnet_ray.orchestration.runner import run_sweep

            run = run_sweep(spec, root, executor="local", progress=False)
            seconds, computed, reports = {k: round(v, 1) for k, v in run.seconds.items()}, len(run.computed), run.reports
        except ImportError:  # no MLflow: the same node loop as the local executor, without tracking
            store = store_for(root)
            nodes = graph(spec)
            for wave, label in ((1, "train"), (2, "sft"), (3, "influence")):
                t = time.perf_counter()
                for n in nodes:
                    if n.wave == wave:
                        computed += execute(n, spec, store, progress=False)
                seconds[label] = round(time.perf_counter() - t, 1)
            reports = None  # the report writer lives in the runner, which imports MLflow
        emit({"benchmark": "gpu_smoke_sweep", "device": device, "nodes_computed": computed, "seconds": seconds,
              "total_s": round(time.perf_counter() - t0, 1),
              "report": None if reports is None else bool(reports) and all((f / "report.html").exists() for f in reports)})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU (no GPU needed)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (tests)")
    p.add_argument("--skip-sweep", action="store_true", help="no smoke sweep")
    args = p.parse_args(argv)
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --cpu to run on CPU")
    import transformers

    shape, batch, length = (QUICK, 8, 32) if args.quick else (XLMR_BASE, 32, 128)
    emit({"benchmark": "gpu_env", "torch": torch.__version__, "transformers": transformers.__version__, "device": device,
          "name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
          "bf16_supported": torch.cuda.is_bf16_supported() if device == "cuda" else True,
          "shape": "quick" if args.quick else "xlm-roberta-base"})
    throughput(shape, device, batch, length, repeats=3 if args.quick else 10)
    agreement(shape, device, batch, length, n_train=32 if args.quick else 512, n_test=4 if args.quick else 32)
    if not args.skip_sweep:
        smoke_sweep(device)


if __name__ == "__main__":
    main()
