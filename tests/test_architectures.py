"""Every architecture record, on tiny random-init models built from its config class, against
references that do not use the masking code: zeroed output-projection columns, finite
differences, parameters before and after strict SFT, and per-example autograd gradients."""
import copy
import dataclasses

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModel

from subnet_ray.influence.sketch import select_linears, sketch_batch
from subnet_ray.models.architectures import ARCHITECTURES, architecture, pad_with_eos, tiny_config
from subnet_ray.models.classifier import HeadMask, SequenceClassifier, build_model, head_parameter_masks
from subnet_ray.models.precision import autocast
from subnet_ray.sweep.config import ModelSpec
from subnet_ray.train.finetune import train_step

VOCAB = 40
TYPES = sorted(ARCHITECTURES)
SDPA = [t for t in TYPES if ARCHITECTURES[t].sdpa]  # DeBERTa-v2 runs eager only in transformers
# layer 0: heads 0 and 1 off (a whole key/value group under GQA); layer 1: head 2 off (its group partner 3 stays on)
MASK = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]])


def arch_model(model_type: str, attn: str = "eager", seed: int = 0, kv_heads: int = 2, **config) -> SequenceClassifier:
    """Returns a tiny classifier of `model_type`: 2 layers, 4 query heads (2 key/value heads where GQA exists), hidden 32."""
    config = tiny_config(model_type, VOCAB, layers=2, heads=4, kv_heads=kv_heads, hidden=32, intermediate=64, max_positions=64,
                         **config)
    torch.manual_seed(seed)
    base = AutoModel.from_config(config, attn_implementation=attn)
    return SequenceClassifier(base, 2, dropout=0.0).eval()


def arch_batch(n: int = 5, length: int = 9, seed: int = 0, left: bool = False) -> dict:
    """Returns a batch with rows of 3 lengths, padded on the right (or left: the same tokens, shifted)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    for i in range(n):
        cut = length - (i % 3) * 2
        if left:
            ids[i] = torch.cat([torch.zeros(length - cut, dtype=ids.dtype), ids[i, :cut]])
            mask[i, : length - cut] = 0
        else:
            ids[i, cut:], mask[i, cut:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 2, (n,), generator=g)}


def logits(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def zeroed_copy(model: SequenceClassifier, mask: torch.Tensor) -> SequenceClassifier:
    """Returns a deep copy whose output projections ignore the disabled heads' input columns (no hooks)."""
    other = copy.deepcopy(model)
    dh = model.head_dim
    with torch.no_grad():
        for layer, proj in enumerate(other.output_projections()):
            for head in (mask[layer] == 0).nonzero().flatten().tolist():
                proj.weight[:, head * dh:(head + 1) * dh] = 0
    return other


def test_every_issue_architecture_has_a_record():
    assert set(TYPES) == {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2", "modernbert", "eurobert",
                          "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"}


@pytest.mark.parametrize("model_type,attn", [(t, "eager") for t in TYPES] + [(t, "sdpa") for t in SDPA])
def test_masked_forward_equals_zeroed_output_columns(model_type, attn):
    model = arch_model(model_type, attn)
    assert model.output_projections()[0].in_features == 4 * model.head_dim
    batch = arch_batch()
    ref = zeroed_copy(model, MASK)
    for precision, tol in (("fp32", 1e-5), ("bf16", 8e-3)):  # bf16: two ulps at the logits' size
        with autocast("cpu", precision), torch.no_grad():
            with HeadMask(model, MASK):
                masked = logits(model, batch)
            want, full = logits(ref, batch), logits(model, batch)
        assert torch.isfinite(masked).all()
        torch.testing.assert_close(masked.float(), want.float(), rtol=0, atol=tol)
        if precision == "fp32":
            assert (masked - full).abs().max() > 1e-4  # the mask changed something


def float64_norms(model: SequenceClassifier) -> int:
    """Makes every RMSNorm of `model` compute in its input's dtype; returns how many.

    Llama-style RMSNorms upcast to float32 whatever the model's dtype, so a float64 model's loss
    carries float32 rounding, too coarse for tight finite differences. The replacement is
    checked against the original on a float32 input first.
    """
    count = 0
    for m in model.modules():
        if "RMSNorm" not in type(m).__name__:
            continue
        eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
        gemma = "Gemma" in type(m).__name__  # Gemma scales by (1 + weight)

        def forward(x, m=m, eps=eps, gemma=gemma):
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            return y * ((1.0 + m.weight) if gemma else m.weight).to(x.dtype)

        probe = torch.randn(3, m.weight.shape[0], dtype=torch.float64)
        torch.testing.assert_close(forward(probe).float(), m.forward(probe.float()).float(), rtol=1e-5, atol=1e-6)
        m.forward = forward
        count += 1
    return count


@pytest.mark.parametrize("model_type", TYPES)
def test_importance_equals_finite_differences(model_type, monkeypatch):
    softmax = F.softmax

    def float64_softmax(x, dim=None, _stacklevel=3, dtype=None):  # eager attention upcasts to float32 otherwise
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)

    monkeypatch.setattr(torch.nn.functional, "softmax", float64_softmax)
    model = arch_model(model_type).double()
    assert (float64_norms(model) > 0) == (ARCHITECTURES[model_type].decoder or model_type == "eurobert")
    batch = arch_batch(n=3)
    xi = torch.ones(2, 4, dtype=torch.float64, requires_grad=True)

    def loss_at(m):
        with HeadMask(model, m):
            return F.cross_entropy(logits(model, batch), batch["labels"])

    (grad,) = torch.autograd.grad(loss_at(xi), xi)
    eps = 1e-3  # central differences: error ~eps^2, float64 rounding ~1e-16 / eps
    fd = torch.zeros(2, 4, dtype=torch.float64)
    with torch.no_grad():
        for layer in range(2):
            for head in range(4):
                e = torch.zeros(2, 4, dtype=torch.float64)
                e[layer, head] = eps
                fd[layer, head] = (loss_at(xi + e) - loss_at(xi - e)) / (2 * eps)
    assert grad.abs().max() > 1e-6
    # ModernBERT keeps some float32 inside (2e-9 here): atol covers it, far below any head gradient
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)  # Gemma: larger curvature, eps^2 truncation ~2e-6


def _head_blocks(model: SequenceClassifier, layer: int) -> dict:
    """Returns {(name, head or kv head): tensor view} of one layer's head-owned slices, read from the modules directly."""
    arch, g, dh = model.arch, model.geometry, model.head_dim
    attn = model.attention_layers()[layer]
    get = lambda path: getattr(attn, path) if "." not in path else getattr(getattr(attn, path.split(".")[0]), path.split(".")[1])
    blocks = {}
    o = model.output_projections()[layer].weight
    if arch.qkv:
        w = get(arch.qkv).weight
        q, k, v = w[: g.heads * dh], w[g.heads * dh: (g.heads + g.kv_heads) * dh], w[(g.heads + g.kv_heads) * dh:]
    else:
        q, k, v = get(arch.query).weight, get(arch.key).weight, get(arch.value).weight
    for h in range(g.heads):
        blocks["q", h], blocks["o", h] = q[h * dh:(h + 1) * dh], o[:, h * dh:(h + 1) * dh]
    for j in range(g.kv_heads):
        blocks["k", j], blocks["v", j] = k[j * dh:(j + 1) * dh], v[j * dh:(j + 1) * dh]
    for path in arch.head_rows:  # DeBERTa's position projections, where not shared
        w = get(path).weight
        for h in range(g.heads):
            blocks[path, h] = w[h * dh:(h + 1) * dh]
    return blocks


@pytest.mark.parametrize("model_type", TYPES)
def test_strict_sft_keeps_disabled_heads_and_whole_disabled_kv_groups(model_type):
    # DeBERTa with its own position projections (share_att_key off, as DeBERTa-v2 xlarge), so they are checked too
    model = arch_model(model_type, seed=1, **({"share_att_key": False} if model_type == "deberta-v2" else {})).train()
    g = model.geometry
    before = [{k: t.clone() for k, t in _head_blocks(model, layer).items()} for layer in range(2)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    pm = head_parameter_masks(model, MASK)
    with HeadMask(model, MASK):
        for step in range(3):
            train_step(model, arch_batch(seed=step), opt, pm, strict=True)
    for layer in range(2):
        after = _head_blocks(model, layer)
        for (name, i), was in before[layer].items():
            if name not in ("k", "v"):
                owner_on = bool(MASK[layer, i])
            else:  # a key/value block: on while any query head of its group is on
                owner_on = bool(MASK[layer, i * g.group:(i + 1) * g.group].any())
            assert torch.equal(after[name, i], was) != owner_on, (layer, name, i, owner_on)
    if ARCHITECTURES[model_type].decoder:
        assert g.kv_heads == 2  # the GQA case above was exercised: layer 1's group (2, 3) kept training
    if model_type == "deberta-v2":
        assert ("self.pos_key_proj", 0) in before[0]


def test_layers_without_per_example_inputs_are_refused_by_the_sketch():
    """DeBERTa's record sketches one example at a time; were it batched, the guard would refuse, not mix examples."""
    model = arch_model("deberta-v2", share_att_key=False).double()
    model.arch = dataclasses.replace(model.arch, batched_sketch=True)
    linears = select_linears(model, ["pos_key_proj"])
    with pytest.raises(ValueError, match="pos_key_proj' sees no per-example input"):
        sketch_batch(model, arch_batch(n=4, length=7), linears, None)


@pytest.mark.parametrize("model_type", TYPES)
def test_exact_sketch_equals_brute_force_per_example_gradients(model_type):
    model = arch_model(model_type, attn="sdpa" if ARCHITECTURES[model_type].sdpa else "eager").double()
    batch = arch_batch(n=4, length=7)
    linears = select_linears(model, ["encoder", "classifier"])
    got = sketch_batch(model, batch, linears, None, head_mask=MASK.double())
    rows = []
    for i in range(4):  # one unpadded example at a time, plain autograd
        n = int(batch["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :n] if v.dim() == 2 else v[i:i + 1] for k, v in batch.items()}
        with HeadMask(model, MASK.double()):
            loss = F.cross_entropy(logits(model, one), one["labels"])
        params = [p for _, lin in linears for p in ((lin.weight, lin.bias) if lin.bias is not None else (lin.weight,))]
        grads = iter(torch.autograd.grad(loss, params, allow_unused=True))
        parts = []
        for _, lin in linears:
            w = next(grads)
            w = torch.zeros_like(lin.weight) if w is None else w
            if lin.bias is not None:
                b = next(grads)
                w = torch.cat([w, (torch.zeros_like(lin.bias) if b is None else b)[:, None]], 1)
            parts.append(w.flatten())
        rows.append(torch.cat(parts))
    ref = torch.stack(rows)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("model_type", [t for t in TYPES if ARCHITECTURES[t].decoder])
def test_decoders_pool_the_last_real_token_on_either_padding_side(model_type):
    model = arch_model(model_type, attn="sdpa" if ARCHITECTURES[model_type].sdpa else "eager")
    right, left = arch_batch(), arch_batch(left=True)
    a, b = logits(model, right), logits(model, left)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for i in range(right["input_ids"].shape[0]):
        n = int(right["attention_mask"][i].sum())
        one = {k: v[i:i + 1, :n] for k, v in right.items() if k != "labels"}
        torch.testing.assert_close(logits(model, one)[0], a[i], rtol=0, atol=1e-5)
    # the pooled token is the last real one: changing it changes the logits, changing a pad does not
    changed = {k: v.clone() for k, v in right.items()}
    changed["input_ids"][2, int(right["attention_mask"][2].sum()) - 1] = 7 if changed["input_ids"][2, 4] != 7 else 8
    changed["input_ids"][1, -1] = 9  # a pad position of row 1
    c = logits(model, changed)
    assert not torch.allclose(c[2], a[2]) and torch.equal(c[1], a[1])


def test_tokenizer_without_pad_pads_with_eos():
    from subnet_ray.data.tokenization import wordlevel_tokenizer

    tok = wordlevel_tokenizer(["a", "b"])
    tok.add_special_tokens({"eos_token": "[SEP]"})
    tok.pad_token = None
    assert pad_with_eos(tok).pad_token == "[SEP]"
    tok.eos_token = None
    tok.pad_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an eos token"):
        pad_with_eos(tok)


def test_unknown_model_type_is_refused_naming_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    with pytest.raises(ValueError, match=r"model_type 'gpt2' has no architecture record; supported model_types: bert, .*qwen3"):
        build_model(ModelSpec(name=str(tmp_path)), num_labels=2)
    with pytest.raises(ValueError, match="supported model_types"):
        architecture("t5")


@pytest.mark.parametrize("model_type", TYPES)
def test_every_record_loads_from_a_saved_model_directory(model_type, tmp_path):
    from subnet_ray.data.tokenization import wordlevel_tokenizer
    from subnet_ray.models.architectures import save_tiny_model
    from subnet_ray.planning.preflight import check_model_dir

    tok = wordlevel_tokenizer([f"w{i}" for i in range(VOCAB - 5)])
    folder = save_tiny_model(model_type, tok, tmp_path / "m", kv_heads=2)
    assert check_model_dir(folder, "model directory") == []
    model = build_model(ModelSpec(name=str(folder), dropout=0.0), num_labels=2).eval()
    ref = arch_model(model_type, attn="sdpa" if ARCHITECTURES[model_type].sdpa else "eager")  # same seed, same config
    assert model.geometry == ref.geometry
    want = ref.encoder.state_dict()
    got = model.encoder.state_dict()
    assert set(want) - set(got) <= {"pooler.dense.weight", "pooler.dense.bias"}  # BERT-likes load without their pooler
    assert all(torch.equal(v, want[k]) and v.dtype == torch.float32 for k, v in got.items())


@pytest.mark.parametrize("model_type,ok", [("qwen3", True), ("gemma3_text", True), ("t5", False)])
def test_hub_check_reads_the_model_type_against_the_records(model_type, ok, tmp_path, monkeypatch):
    import huggingface_hub

    from subnet_ray.planning.preflight import check_model

    (tmp_path / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda name: ["config.json", "tokenizer.json"])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda name, f: str(tmp_path / f))
    errors, _, how = check_model("org/some-model", hub_offline=lambda: None, local_run=True)
    assert how == "model (hub)"
    if ok:
        assert errors == []
    else:
        assert len(errors) == 1 and "model 'org/some-model': model_type 't5' has no architecture record" in errors[0]
        assert "supported model_types: bert, roberta" in errors[0] and errors[0].endswith("model.name; expected a model of a supported architecture")
