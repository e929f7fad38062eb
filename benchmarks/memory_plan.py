"""Memory and storage of the paper's influence stage, from the code's own layouts (nothing is trained).

Paper scale: XLM-R base, 10K training examples (2K x 5 languages), 2,500 test examples (500 per
language), sketches of the 74 Linear layers (72 encoder + 2 classifier) at d = 256, 5 epoch
checkpoints, 5 language masks. Prints JSON lines, in bytes and GiB, for float32 and bfloat16
sketch storage:
- `sketch_sets`: one (checkpoint, mask) training set; one mask's 5 checkpoints; all 25;
- `checkpoints`: one XLM-R checkpoint and the 5 a model keeps (what the Ray Data path puts in
  the object store, one ray.put per checkpoint);
- `single_process`: pipeline.influence's peak host memory: one mask group's train and test
  sketches of every checkpoint, plus one checkpoint's sketches being concatenated, plus the model;
- `ray_data`: influence_ray's object store (every sketch of every checkpoint and mask after the
  pass, spilled to disk by Ray beyond its share of RAM; plus the weights), the driver's peak
  (one group's sketches of every checkpoint, the copies taken from it, and the pickled copy
  `ray.put` makes for the scoring tasks) and each scoring task's copy of the train sketches;
- `gpu`: per-stage device memory bounds (weights, gradients, AdamW state; activations are
  measured by benchmarks/gpu_check.py on a GPU);
- `model_plan`, per model of MODELS (the paper's XLM-R, today's multilingual encoders and 0.5-1.7B
  decoders, by hub id: their published configs, planning.shapes) and per precision (fp32; bf16 autocast
  with bf16 sketches): parameters, checkpoint, training peak (AdamW, batch 32 x 128 tokens), influence
  on the device (batch 32), sketches held at once and in all, and the smallest GPU each fits
  (planning.memory). `--table` prints them as a Markdown table too (to stderr).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from subnet_ray.sweep.config import ModelSpec, TinySpec  # noqa: E402
from subnet_ray.planning.cost.estimate import param_count  # noqa: E402
from subnet_ray.planning.sizes import KNOWN_SHAPES  # noqa: E402
from subnet_ray.planning import memory  # noqa: E402
from subnet_ray.planning.shapes import shape_of_model  # noqa: E402
from subnet_ray.influence.sketch import layer_dims, select_linears  # noqa: E402
from subnet_ray.models.classifier import build_model  # noqa: E402

N_TRAIN, N_TEST, CHECKPOINTS, MASKS, D, SHARD = 10_000, 2_500, 5, 5, 256, 256
BATCH, LENGTH = 32, 128  # sweeps/xnli.yaml's training and sketching batch, max_length
MODELS = ("xlm-roberta-base", "microsoft/mdeberta-v3-base", "jhu-clsp/mmBERT-base", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen3-0.6B",
          "meta-llama/Llama-3.2-1B", "google/gemma-3-1b-pt", "Qwen/Qwen2.5-1.5B", "Qwen/Qwen3-1.7B")
GiB = 2**30


def gib(n: float) -> float:
    return round(n / GiB, 2)


def model_plans(table: bool) -> None:
    rows = []
    for name in MODELS:
        shape, _ = shape_of_model(name)
        for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
            m = memory.plan(shape, 2, batch=BATCH, length=LENGTH, precision=precision, influence_batch=BATCH,
                            influence_precision=precision, prefixes=["encoder", "classifier"], proj_dim=D, sketch_dtype=dtype,
                            n_train=N_TRAIN, n_test=N_TEST, checkpoints=CHECKPOINTS, masks=MASKS)
            row = {"benchmark": "memory_plan", "what": "model_plan", "model": name, "model_type": shape.model_type,
                   "precision": precision, "sketch_dtype": dtype, "batch": BATCH, "max_length": LENGTH, **m.row(),
                   "training_fits": memory.verdicts(m.train_peak), "influence_fits": memory.verdicts(m.influence_device)}
            rows.append(row)
            print(json.dumps(row))
    if table:
        head = ("model", "prec", "params (M)", "ckpt GiB", "train peak GiB", "influence GiB", "sketches held GiB",
                "sketches all GiB", "training fits", "influence fits")
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), file=sys.stderr)
        for r in rows:
            print(f"| {r['model']} | {r['precision']} | {r['params'] / 1e6:,.1f} | {r['checkpoint_gib']} | {r['train_peak_gib']} | "
                  f"{r['influence_device_gib']} | {r['sketches_one_mask_gib']} | {r['sketches_all_gib']} | {r['training_gpu']} | "
                  f"{r['influence_gpu']} |", file=sys.stderr)


def main() -> None:
    layers, heads, hidden, inter, positions, vocab, _ = KNOWN_SHAPES["xlm-roberta-base"]
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = build_model(ModelSpec(name="tiny", tiny=TinySpec(layers=layers, heads=heads, hidden=hidden, intermediate=inter,
                                                                 max_positions=positions)), 2, vocab)
    linears = select_linears(model, ["encoder", "classifier"])
    dim = sum(d for _, d in layer_dims(linears, D))
    params = param_count(model)
    ckpt = 4 * params
    print(json.dumps({"benchmark": "memory_plan", "what": "layout", "layers": len(linears), "proj_dim": D, "sketch_dim": dim,
                      "params": params, "n_train": N_TRAIN, "n_test": N_TEST, "checkpoints": CHECKPOINTS, "masks": MASKS}))
    print(json.dumps({"benchmark": "memory_plan", "what": "checkpoints", "one_gib": gib(ckpt), "per_model_gib": gib(CHECKPOINTS * ckpt)}))
    per_test_mask = N_TEST // MASKS
    for dtype, width in (("float32", 4), ("bfloat16", 2)):
        row = N_TRAIN * dim * width
        test_row = N_TEST * dim * width
        print(json.dumps({"benchmark": "memory_plan", "what": "sketch_sets", "dtype": dtype,
                          "train_one_checkpoint_one_mask_gib": gib(row), "train_one_mask_all_checkpoints_gib": gib(CHECKPOINTS * row),
                          "train_all_gib": gib(CHECKPOINTS * MASKS * row), "test_all_checkpoints_gib": gib(CHECKPOINTS * test_row)}))
        group = CHECKPOINTS * (N_TRAIN + per_test_mask) * dim * width
        single = group + row + ckpt  # + one checkpoint's batches before torch.cat, + the model
        print(json.dumps({"benchmark": "memory_plan", "what": "single_process", "dtype": dtype, "peak_host_gib": gib(single),
                          "note": "per influence output; groups run one after another"}))
        store = CHECKPOINTS * (MASKS * N_TRAIN + N_TEST) * dim * width
        train_group = CHECKPOINTS * N_TRAIN * dim * width
        driver = group + row + train_group  # collected group + one checkpoint's copies + pickled ray.put copy of the train sketches
        shards = -(-per_test_mask // SHARD)
        print(json.dumps({"benchmark": "memory_plan", "what": "ray_data", "dtype": dtype, "object_store_sketches_gib": gib(store),
                          "object_store_weights_gib": gib(CHECKPOINTS * ckpt), "driver_peak_gib": gib(driver),
                          "scoring_task_gib": gib(train_group), "scoring_tasks_per_group": shards,
                          "node_ram_gib_besides_object_store": gib(driver + shards * train_group)}))
    print(json.dumps({"benchmark": "memory_plan", "what": "gpu", "finetune_state_gib": gib(16 * params),
                      "sketch_or_importance_weights_gib": gib(ckpt),
                      "note": "plus activations of one batch, which gpu_check.py measures on a GPU (not yet run on one)"}))


if __name__ == "__main__":
    main()
    model_plans("--table" in sys.argv[1:])
