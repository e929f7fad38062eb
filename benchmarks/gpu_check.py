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
- `gpu_decoder`: the code users run on a decoder: SequenceClassifier of a Qwen2 model (the qwen2 architecture
  record: GQA, gated MLP, q/k/v biases; Qwen2.5-0.5B's widths with 4 layers, random init; `--quick`: tiny; built from
  models.architectures.tiny_config) with the classifier on the last non-pad token, heads masked by HeadMask: per
  precision (fp32, bf16) the masked logits against a deep copy whose disabled heads' o_proj columns are zeroed (same
  device) and against the CPU in fp32; one strict SFT step (train.train_step with head_parameter_masks) checked
  against the paper's rule written here (disabled heads' q rows and o_proj columns, and the k/v rows of wholly
  disabled key/value groups, bit-identical; every row the enabled heads own moved) and against the same step on the
  CPU; sketch_batch with the head mask (cosine to the CPU's, and to the zeroed copy's outside the o_proj layers);
  then on CUDA the measured peak memory of a bf16 and an fp32 training step of Qwen2.5-0.5B's full shape at batch
  32 x 128 against planning.memory's prediction (`predicted_over_measured`);
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
import copy
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
from transformers import AutoModel, Qwen2Config, XLMRobertaConfig, XLMRobertaModel  # noqa: E402

from subnet_ray.influence.projection import Projector  # noqa: E402
from subnet_ray.influence.sketch import Sketches, layer_dims, select_linears, sketch_batch  # noqa: E402
from subnet_ray.influence.tracin import dense_scores  # noqa: E402
from subnet_ray.models.architectures import tiny_config  # noqa: E402
from subnet_ray.models.classifier import HeadMask, SequenceClassifier, head_parameter_masks  # noqa: E402
from subnet_ray.models.precision import autocast  # noqa: E402
from subnet_ray.train.finetune import train_step  # noqa: E402

XLMR_BASE = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=514, type_vocab_size=1)
QUICK = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=130, type_vocab_size=1)
PRECISIONS = ("fp32", "tf32", "bf16")
QWEN25_05 = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True)  # Qwen/Qwen2.5-0.5B's published config.json
DECODER = dict(QWEN25_05, num_hidden_layers=4)
DECODER_QUICK = dict(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)


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


def decoder_classifier(config, seed: int = 0) -> SequenceClassifier:
    """Returns the SequenceClassifier users train of a random-init decoder of `config` (its architecture record's pooling)."""
    torch.manual_seed(seed)
    return SequenceClassifier(AutoModel.from_config(config), num_labels=2, dropout=0.0)


def decoder_mask(layers: int, heads: int, kv_heads: int) -> torch.Tensor:
    """Returns a [layers, heads] mask that exercises grouped-query attention: in every layer the first key/value group is
    partly on (head 0 on, head 1 off) and in every other layer the second group is wholly off."""
    group = heads // kv_heads
    mask = (torch.rand(layers, heads, generator=torch.Generator().manual_seed(1)) > 0.4).float()
    mask[:, 0], mask[:, 1] = 1.0, 0.0
    mask[::2, group:2 * group] = 0.0
    return mask


def zeroed_copy(model: SequenceClassifier, mask: torch.Tensor) -> SequenceClassifier:
    """Returns a deep copy with the disabled heads' o_proj columns zeroed: the masked model's reference, written without
    HeadMask (copy before any HeadMask is attached: a deep copy keeps hooks that read the original's mask)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for layer, m in zip(twin.encoder.layers, mask):
            a = layer.self_attn
            a.o_proj.weight[:, m.repeat_interleave(a.head_dim) == 0] = 0.0
    return twin


def head_owned(model: SequenceClassifier, mask: torch.Tensor) -> tuple[list, list]:
    """Returns ([(parameter, bool selector)] that strict SFT must leave bit-identical, [(parameter, selector of rows or
    columns)] it must change), written from the paper's rule independently of head_parameter_masks: a disabled query head's
    q rows and o_proj columns, and a key/value head's k/v rows only when every query head of its group is disabled."""
    frozen, trained = [], []
    for layer, m in zip(model.encoder.layers, mask.cpu().bool()):
        a = layer.self_attn
        d, group = a.head_dim, a.num_key_value_groups
        off = ~m.repeat_interleave(d)
        kv_off = ~m.view(-1, group).any(1).repeat_interleave(d)
        for sel, projs in ((off, (a.q_proj,)), (kv_off, (a.k_proj, a.v_proj))):
            for lin in projs:
                frozen += [(lin.weight, sel[:, None].expand_as(lin.weight)), (lin.bias, sel)]
                trained += [(lin.weight, ~sel)]
        frozen.append((a.o_proj.weight, off[None, :].expand_as(a.o_proj.weight)))
        trained.append((a.o_proj.weight.t(), ~off))
    return frozen, trained


def decoder_run(device: str, quick: bool) -> None:
    """Emits gpu_decoder lines: masked forward, strict SFT step and sketches on `device` against references (see docstring).

    Everything runs through the code users run: SequenceClassifier of the qwen2 architecture record, HeadMask,
    head_parameter_masks into train.train_step (strict SFT) and sketch_batch with the head mask; the references are
    not: a copy with zeroed o_proj columns, head_owned's rule, and the same calls on the CPU in fp32.
    """
    config = DECODER_QUICK if quick else DECODER
    config = tiny_config("qwen2", config["vocab_size"], layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                         kv_heads=config["num_key_value_heads"], hidden=config["hidden_size"],
                         intermediate=config["intermediate_size"], max_positions=128, attention_dropout=0.0,
                         tie_word_embeddings=config.get("tie_word_embeddings", False))
    batch, length = (4, 16) if quick else (8, 64)
    cpu_model = decoder_classifier(config).eval()
    mask = decoder_mask(cpu_model.num_layers, cpu_model.num_heads, cpu_model.num_kv_heads)
    b = batch_of(batch, length, config.vocab_size, "cpu", seed=2)
    b["input_ids"] = torch.where(b["attention_mask"].bool(), b["input_ids"], torch.zeros_like(b["input_ids"]))
    projector = Projector(256, seed=0)
    linears = select_linears(cpu_model, ["encoder", "classifier"])
    layout = layer_dims(linears, 256)
    not_o = torch.cat([torch.full((dim,), not name.endswith("o_proj"), dtype=torch.bool) for name, dim in layout])
    ref_zeroed = zeroed_copy(cpu_model, mask)
    zero_sketch = sketch_batch(ref_zeroed, b, select_linears(ref_zeroed, ["encoder", "classifier"]), projector)
    with HeadMask(cpu_model, mask), torch.no_grad():
        ref_logits = cpu_model(**b)
    ref_sketch = sketch_batch(cpu_model, b, linears, projector, head_mask=mask, precision="fp32")
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(cpu_model).to(device)
        zeroed = zeroed_copy(model, mask)
        dmask = mask.to(device)
        db = {k: v.to(device) for k, v in b.items()}
        hm = HeadMask(model)
        with torch.no_grad(), autocast(device, precision):
            unmasked = model(**db).float()
            hm.set(dmask)
            logits, zero_logits = model(**db).float(), zeroed(**db).float()
        hm.set(None)  # sketch_batch applies the mask itself, as the influence stage calls it
        sk = sketch_batch(model, db, select_linears(model, ["encoder", "classifier"]), projector, head_mask=dmask,
                          precision=precision).float().cpu()
        cos = torch.nn.functional.cosine_similarity(sk, ref_sketch.float(), dim=1)
        cos_zeroed = torch.nn.functional.cosine_similarity(sk[:, not_o], zero_sketch[:, not_o], dim=1)
        model.train()
        hm.set(dmask)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        frozen, trained = head_owned(model, dmask)
        before = [p.detach().clone() for p, _ in frozen], [p.detach().clone() for p, _ in trained]
        loss = train_step(model, db, opt, param_masks=head_parameter_masks(model, dmask), strict=True, precision=precision)
        frozen_ok = all(torch.equal(p.detach()[s], old[s]) for (p, s), old in zip(frozen, before[0]))
        # every row (q/k/v) or column (o_proj) an enabled head owns moved: the SFT step trains what it should
        trained_ok = all(bool((p.detach() != old).any(1)[s].all()) for (p, s), old in zip(trained, before[1]))
        hm.remove()
        line = {"benchmark": "gpu_decoder", "device": device, "precision": precision, "shape": "quick" if quick else "qwen2.5-0.5b x4 layers",
                "heads_off": int((mask == 0).sum()), "masked_vs_unmasked_max_abs": float((logits - unmasked).abs().max()),
                "masked_vs_zeroed_max_abs": float((logits - zero_logits).abs().max()),
                "logits_vs_cpu_fp32_max_abs": float((logits.cpu() - ref_logits).abs().max()),
                "sketch_cos_vs_cpu_min": round(float(cos.min()), 5), "sketch_cos_vs_zeroed_min": round(float(cos_zeroed.min()), 5),
                "sft_loss": float(loss), "sft_disabled_heads_unchanged": frozen_ok, "sft_enabled_heads_changed": trained_ok}
        if precision == "fp32":  # the same strict SFT step on the CPU: the parameters after it must agree
            cpu_copy = copy.deepcopy(cpu_model).train()
            with HeadMask(cpu_copy, mask):
                train_step(cpu_copy, b, torch.optim.AdamW(cpu_copy.parameters(), lr=1e-4),
                           param_masks=head_parameter_masks(cpu_copy, mask), strict=True)
            line["sft_params_vs_cpu_max_abs"] = max(float((p.detach().cpu() - q.detach()).abs().max())
                                                    for p, q in zip(model.parameters(), cpu_copy.parameters()))
        emit(line)
        del model, zeroed, opt
    if device.startswith("cuda"):
        decoder_memory(device)


def decoder_memory(device: str) -> None:
    """Emits gpu_decoder_memory: measured peak of a training step of Qwen2.5-0.5B's shape against planning.memory."""
    from subnet_ray.planning import memory
    from subnet_ray.planning.shapes import from_config

    shape = from_config({"model_type": "qwen2", **QWEN25_05})
    for precision in ("bf16", "fp32"):
        torch.cuda.empty_cache()
        model = decoder_classifier(Qwen2Config(**QWEN25_05, attention_dropout=0.0)).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        b = batch_of(32, 128, QWEN25_05["vocab_size"], device, seed=3)
        b["attention_mask"][:] = 1  # every example max_length long: the plan's bound
        step = lambda: train_step(model, b, opt, precision=precision, max_grad_norm=1.0)  # noqa: E731
        step()  # AdamW's moments exist from the first step on
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        plan = memory.plan(shape, 2, batch=32, length=128, precision=precision, influence_batch=32, influence_precision=precision,
                           prefixes=["encoder", "classifier"], proj_dim=256, sketch_dtype="float32", n_train=1, n_test=1,
                           checkpoints=1, masks=1)
        emit({"benchmark": "gpu_decoder_memory", "precision": precision, "batch": 32, "max_length": 128,
              "measured_peak_gib": round(peak / 2**30, 2), "predicted_peak_gib": round(plan.train_peak / 2**30, 2),
              "predicted_over_measured": round(plan.train_peak / peak, 3)})
        del model, opt


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
    decoder_run(device, args.quick)
    if not args.skip_sweep:
        smoke_sweep(device)


if __name__ == "__main__":
    main()
