"""The whole smoke sweep on a tiny local model directory of every architecture record.

For each record (or those named), writes a tiny random-init model of that architecture
(2 layers, 4 query heads, 2 key/value heads where the family has grouped-query attention,
hidden 32) with babel's tokenizer into a directory, runs sweeps/smoke.yaml with `model.name`
set to it (full, SFT, random-SFT, influence, report, MLflow; local executor, preflight
included), and prints one JSON line per record: ok, seconds, and the largest difference
between a masked forward (HeadMask) and the forward of a copy whose output-projection
columns of the disabled heads are zeroed (no masking code), on dev batches in fp32.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=$PWD .venv/bin/python benchmarks/architectures.py [--only qwen3 llama] [--out DIR]
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import argparse
import contextlib
import copy
import io
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch

from subnet_ray.cli import main
from subnet_ray.data.examples import load_examples, tokenizer_for
from subnet_ray.data.tokenization import encode
from subnet_ray.models.architectures import ARCHITECTURES, save_tiny_model
from subnet_ray.models.classifier import HeadMask, build_model
from subnet_ray.sweep.config import load_sweep

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"
TINY_LINE = "name: tiny\n  tiny: {layers: 2, heads: 4, hidden: 32, intermediate: 64, max_positions: 32}"


def masked_forward_difference(spec, tokenizer) -> float:
    """Returns max |HeadMask forward - zeroed-columns forward| over the dev set, half the heads of each layer off."""
    model = build_model(spec.model, num_labels=2).eval()
    mask = torch.ones(model.num_layers, model.num_heads)
    mask[:, ::2] = 0
    zeroed, dh = copy.deepcopy(model), model.head_dim
    with torch.no_grad():
        for layer, proj in enumerate(zeroed.output_projections()):
            for head in (mask[layer] == 0).nonzero().flatten().tolist():
                proj.weight[:, head * dh:(head + 1) * dh] = 0
    dev = load_examples(spec.tasks[0], "dev")
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(dev), 8):
            batch = {k: v for k, v in encode(dev[i:i + 8], tokenizer, spec.training.max_length).items() if k != "labels"}
            with HeadMask(model, mask):
                a = model(**batch)
            worst = max(worst, (a - zeroed(**batch)).abs().max().item())
    return worst


def run_one(model_type: str, folder: Path) -> dict:
    plain = folder / "plain.yaml"
    plain.write_text(SMOKE.read_text())
    tokenizer = tokenizer_for(load_sweep(plain).tasks[0])
    model_dir = save_tiny_model(model_type, tokenizer, folder / "model", layers=2, heads=4, kv_heads=2, hidden=32,
                                intermediate=64, max_positions=64)
    text = SMOKE.read_text()
    assert TINY_LINE in text, f"{SMOKE} no longer has the tiny model line this benchmark replaces"
    sweep = folder / "sweep.yaml"
    sweep.write_text(text.replace("name: smoke", f"name: arch-{model_type}").replace(TINY_LINE, f"name: {model_dir}"))
    spec = load_sweep(sweep)
    t0 = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        rc = main(["run", str(sweep), "--root", str(folder / "root"), "--executor", "local"])
    seconds = time.perf_counter() - t0
    g = build_model(spec.model, num_labels=2).geometry
    return {"model_type": model_type, "ok": rc == 0, "seconds": round(seconds, 1),
            "masked_forward_max_diff": masked_forward_difference(spec, tokenizer),
            "pooling": ARCHITECTURES[model_type].pooling, "heads": g.heads, "kv_heads": g.kv_heads, "head_dim": g.head_dim}


def main_(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="model_types to run (default: every record)")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args(argv)
    types = args.only or list(ARCHITECTURES)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out or tmp)
        failed = 0
        for model_type in types:
            folder = base / model_type
            folder.mkdir(parents=True, exist_ok=True)
            try:
                row = run_one(model_type, folder)
            except Exception as e:  # one record's failure must not hide the others' results
                row = {"model_type": model_type, "ok": False, "error": f"{type(e).__name__}: {e}",
                       "where": traceback.format_exc().strip().splitlines()[-3:]}
            failed += not row["ok"]
            print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main_())
