"""planning.shapes and planning.memory against the real transformers models: parameters, Linear layers, activation bytes."""
import logging

import pytest
import torch
from transformers import AutoConfig, AutoModel

from subnet_ray.models.classifier import SequenceClassifier
from subnet_ray.planning import memory
from subnet_ray.planning.shapes import PUBLISHED, activation_bytes, from_config, linears, parameters, shape_of_model

logging.getLogger("transformers").setLevel(logging.ERROR)
SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
# One small config per family and variant: biases (qwen2's q/k/v), GQA with 1 and several kv heads, head_dim
# apart from hidden / heads, qk-norm (qwen3, gemma3), Gemma's four norms, DeBERTa's relative positions.
TINY = {
    "bert": dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                 vocab_size=90, max_position_embeddings=40, type_vocab_size=2),
    "xlm-roberta": dict(model_type="xlm-roberta", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                        vocab_size=90, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1),
    "deberta-v2": dict(model_type="deberta-v2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                       vocab_size=90, max_position_embeddings=40, relative_attention=True, position_buckets=8,
                       norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"], type_vocab_size=0,
                       position_biased_input=False, max_relative_positions=-1),
    "modernbert": dict(model_type="modernbert", hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
                       vocab_size=90, max_position_embeddings=40, local_attention=8, **SPECIAL),
    "qwen2": dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=40, vocab_size=90),
    "qwen3": dict(model_type="qwen3", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, intermediate_size=40, vocab_size=90),
    "llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                  intermediate_size=40, vocab_size=90),
    "mistral": dict(model_type="mistral", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=40, vocab_size=90),
    "gemma2": dict(model_type="gemma2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, intermediate_size=40, vocab_size=90),
    "gemma3_text": dict(model_type="gemma3_text", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=16, intermediate_size=40, vocab_size=90),
}


def classifier(config: dict, labels: int) -> SequenceClassifier:
    """Returns the sweep's model around transformers' own base model of `config` (random init, current device)."""
    kw = dict(config)
    cfg = AutoConfig.for_model(kw.pop("model_type"), **kw)
    pooler = {"add_pooling_layer": False} if cfg.model_type in ("bert", "roberta", "xlm-roberta") else {}
    return SequenceClassifier(AutoModel.from_config(cfg, **pooler), labels, dropout=0.0)


def real_linears(model) -> list[tuple[str, int, int, bool]]:
    return [(n, m.out_features, m.in_features, m.bias is not None) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("family", list(TINY))
def test_parameters_and_linear_layers_equal_the_real_model(family):
    model = classifier(TINY[family], 3)
    shape = from_config(TINY[family])
    assert parameters(shape, 3) == sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in model.state_dict().values())
    assert linears(shape, 3) == real_linears(model)  # names, sizes, biases and module order: what sketches and masks see


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_count_what_transformers_builds(name):
    with torch.device("meta"):  # the real sizes at no memory
        model = classifier(PUBLISHED[name], 2)
    shape, _ = shape_of_model(name)
    assert parameters(shape, 2) == sum(p.numel() for p in model.parameters())
    assert linears(shape, 2) == real_linears(model)


def test_published_totals_match_the_model_cards():
    # totals the model cards and safetensors indexes state (base model, embeddings tied): a wrong remembered config
    # value (layers, widths, kv heads, vocabulary) would change them
    head = lambda h, labels=2: h * h + h + h * labels + labels  # noqa: E731 (the classifier this project adds)
    assert parameters(shape_of_model("Qwen/Qwen2.5-0.5B")[0], 2) - head(896) == 494_032_768
    assert parameters(shape_of_model("meta-llama/Llama-3.2-1B")[0], 2) - head(2048) == 1_235_814_400
    assert parameters(shape_of_model("google/gemma-3-1b-pt")[0], 2) - head(1152) == 999_885_952


def test_a_local_directory_is_read_and_an_unknown_type_named(tmp_path):
    import json

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(TINY["qwen3"]))
    shape, where = shape_of_model(str(tmp_path / "m"))
    assert shape.family == "decoder" and shape.qk_norm and shape.kv_heads == 2 and where.endswith("config.json")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**TINY["qwen3"], "model_type": "t5"}))
    shape, why = shape_of_model(str(tmp_path / "m"))
    assert shape is None and "'t5'" in why
    assert shape_of_model("nobody/unknown-model") == (None, "'nobody/unknown-model' is neither a local model directory nor in planning.shapes.PUBLISHED")


def saved_bytes(model, batch: dict, precision: str) -> tuple[int, int]:
    """Returns (bytes of activations the forward keeps for backward, of which half-precision weight copies): every tensor
    autograd saves, counted once per storage, the float32 parameters themselves left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, copies = {}, {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params:
            weight = type(t.grad_fn).__name__ == "TBackward0" and t.dim() == 2 and t.dtype != torch.float32
            (copies if weight else seen)[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return sum(seen.values()) + sum(copies.values()), sum(copies.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", ["bert", "deberta-v2", "modernbert", "qwen2", "qwen3", "llama", "mistral", "gemma3_text"])
def test_activation_bytes_equal_what_autograd_keeps(family, precision):
    # per layer: the difference between the model at L + 1 and L layers (embeddings and the final norm cancel);
    # dropout off (CPU keeps float masks where CUDA keeps bytes: counted for CUDA only), eager DeBERTa as it runs
    torch.manual_seed(0)
    config = {**TINY[family], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if not family.startswith(("bert", "deberta")):
        config = TINY[family]
    batch, length = 3, 20
    ids = torch.randint(3, 90, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 12:] = 0
    got, want = [], []
    for layers in (2, 3):
        c = {**config, "num_hidden_layers": layers}
        model = classifier(c, 2).train()
        got.append(saved_bytes(model, {"input_ids": ids, "attention_mask": mask}, precision))
        want.append(activation_bytes(from_config(c), batch * length, length, precision, device="cpu"))
    per_layer_got = got[1][0] - got[0][0]
    per_layer_want = want[1] - want[0]
    assert per_layer_want == pytest.approx(per_layer_got, rel=1e-3), (per_layer_got, per_layer_want)  # exact but DeBERTa's ~12 B
    if precision == "bf16":  # the half copies of the Linear weights autocast keeps until backward
        shape = from_config({**config, "num_hidden_layers": 3})
        assert got[1][1] == sum(o * i for n, o, i, _ in linears(shape, 2) if n.startswith("encoder")) * 2


def test_plan_adds_up_and_fits_the_gpus_in_order():
    shape, _ = shape_of_model("Qwen/Qwen2.5-0.5B")
    kw = dict(batch=32, length=128, influence_batch=32, prefixes=["encoder", "classifier"], proj_dim=256, n_train=10_000,
              n_test=2_500, checkpoints=5, masks=5)
    fp32 = memory.plan(shape, 2, precision="fp32", influence_precision="fp32", sketch_dtype="float32", **kw)
    bf16 = memory.plan(shape, 2, precision="bf16", influence_precision="bf16", sketch_dtype="bfloat16", **kw)
    p = parameters(shape, 2)
    assert fp32.train_state == bf16.train_state == 16 * p and fp32.checkpoint == 4 * p  # weights stay float32 under autocast
    assert fp32.train_peak >= 12 * p + fp32.train_activations and fp32.train_peak >= 20 * p  # backward; CUDA's foreach AdamW step
    assert bf16.train_activations < fp32.train_activations
    assert fp32.sketch_dim == 24 * 7 * 256 + 2 * 256  # 7 Linear layers per decoder layer + the classifier's 2, d each
    assert fp32.sketches_all == 5 * fp32.sketches_one_mask == 5 * 5 * (10_000 + 500) * fp32.sketch_dim * 4
    assert bf16.sketches_all * 2 == fp32.sketches_all
    order = list(memory.verdicts(fp32.train_peak).values())
    assert order == sorted(order)  # a card that holds it means every larger card does
    assert memory.fits(10**15).startswith("none listed")


@pytest.mark.parametrize("sweep", ["xnli-mdeberta", "xnli-mmbert", "xnli-qwen"])
def test_current_model_sweeps_validate_remotely_with_a_memory_line(sweep, capsys):
    import json
    from pathlib import Path

    from subnet_ray.cli import main

    path = str(Path(__file__).resolve().parents[1] / "sweeps" / f"{sweep}.yaml")
    assert main(["validate", "--remote", path]) == 0  # the hub is unreachable here: model checks are warnings
    out = capsys.readouterr().out
    cost = next(line for line in out.splitlines() if "cost:" in line)
    assert "memory: training" in cost and "GPU: training fits" in cost
    assert main(["estimate", "--memory", path]) == 0  # no calibration: sizes and memory from the published config
    lines = capsys.readouterr().out.splitlines()
    got = json.loads(lines[-1])["memory"]["xnli"]
    from subnet_ray.sweep.config import load_sweep

    spec = load_sweep(path)
    shape, _ = shape_of_model(spec.model.name)
    want = memory.sweep_plan(spec, spec.tasks[0], shape)
    assert got["params"] == parameters(shape, 2) and got["train_peak_gib"] == round(want.train_peak / 2**30, 2)
    assert any(line.startswith("  training") and spec.training.precision in line for line in lines)


PEAK = """
import os, sys, torch
sys.path.insert(0, {bench!r}); sys.argv = ["x"]
import gpu_check as g
from subnet_ray.planning import memory
from subnet_ray.planning.shapes import from_config
from subnet_ray.train.finetune import train_step
cfg = dict(vocab_size=4000, hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
torch.manual_seed(0)
model = g.decoder_classifier(g.Qwen2Config(**cfg, attention_dropout=0.0)).train()  # what gpu_check measures on CUDA
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
b = g.batch_of(16, 128, 4000, "cpu", seed=3)
b["attention_mask"][:] = 1
train_step(model, b, opt, precision={precision!r})  # AdamW's moments exist from the first step on
grads = sum(p.grad.numel() * 4 for p in model.parameters())
moments = sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items() if k != "step")
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # resident now: weights, gradients, moments
train_step(model, b, opt, precision={precision!r})
# VmHWM, not ru_maxrss: a process started by fork + exec keeps its parent's maximum RSS in ru_maxrss (the
# pytest process's, once it has imported torch), while VmHWM is this address space's own high-water mark
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
rise = hwm - before
plan = memory.plan(from_config(dict(model_type="qwen2", **cfg)), 2, batch=16, length=128, precision={precision!r}, influence_batch=16,
                   influence_precision={precision!r}, prefixes=["encoder"], proj_dim=256, sketch_dtype="float32", n_train=1, n_test=1,
                   checkpoints=1, masks=1, device="cpu")
print(plan.params, grads, moments, rise, plan.train_activations, plan.train_peak)
"""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_state_and_peak_against_a_real_step_on_cpu(precision):
    # a fresh process (its own peak RSS), every allocation of 16 KB and more mmapped and returned when freed (so the
    # resident size is what is live): after one AdamW step, gradients and moments are the plan's 4P and 8P bytes; the
    # second step's peak rises above the resident weights, gradients and moments by about the activations the plan
    # counts (measured 0.95x in fp32, 1.00x in bf16: gradients are allocated as activations are freed), never above
    # the plan's peak minus weights and moments
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, "-c", PEAK.format(bench=str(root / "benchmarks"), precision=precision)], capture_output=True,
                         text=True, cwd=root, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    params, grads, moments, rise, acts, peak = map(int, out.stdout.split()[-6:])
    assert grads == 4 * params and moments == 8 * params
    assert 0.9 * acts <= rise <= peak - 12 * params, (rise, acts, peak - 12 * params)
