"""Mixed precision (bf16, fp16 autocast on CPU) and length-bucketed passes."""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from subnet_ray.sweep.config import InfluenceSpec, SweepSpec
from subnet_ray.influence.projection import Projector
from subnet_ray.influence.sketch import Sketches, select_linears, sketch_batch
from subnet_ray.influence.tracin import dense_scores
from subnet_ray.influence.pipeline import sketch_examples
from subnet_ray.influence.sketch import layer_dims
from subnet_ray.models.precision import autocast, grad_scaler
from subnet_ray.sweep.graph import graph
from subnet_ray.subnetworks.importance import importance_pass
from subnet_ray.train.finetune import evaluate, train_step
from test_influence import examples, word_tokenizer
from tiny import tiny_batch, tiny_model

LAYERS = ["encoder", "classifier"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training_steps_lower_the_loss_and_keep_float32_weights(precision):
    model = tiny_model(seed=1).train()
    batch = tiny_batch(n=8, length=12, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = grad_scaler("cpu", precision)
    assert scaler.is_enabled() == (precision == "fp16")
    losses = [float(train_step(model, batch, opt, precision=precision, scaler=scaler)) for _ in range(25)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the forward really ran in half: its logits differ from fp32's
    fresh = tiny_model(seed=1)
    with autocast("cpu", precision):
        half = fresh(**batch)
    assert not torch.equal(half, fresh(**batch))


def _scores(model, train, test, precision):
    linears = select_linears(model, LAYERS)
    layout = layer_dims(linears, 64)
    proj = Projector(64, seed=0)
    sk = lambda b, what: Sketches(ids=[f"{what}{i}" for i in range(b["labels"].shape[0])], languages=["x"] * b["labels"].shape[0],
                                  values=sketch_batch(model, b, linears, proj, precision=precision), layout=layout,
                                  proj_dim=64, seed=0, checkpoint=1)
    return dense_scores([sk(test, "te")], [sk(train, "tr")])[-1]


def test_bf16_sketch_rankings_agree_with_fp32():
    model = tiny_model(seed=2)
    train, test = tiny_batch(n=48, length=16, seed=4), tiny_batch(n=6, length=16, seed=5)
    ref, half = _scores(model, train, test, "fp32"), _scores(model, train, test, "bf16")
    assert not torch.equal(ref, half)  # bf16 really changed the arithmetic
    rhos = [spearmanr(ref[i].numpy(), half[i].numpy())[0] for i in range(ref.shape[0])]
    assert min(rhos) >= 0.99, rhos


def test_fp16_sketch_scale_is_undone():
    model = tiny_model(seed=2)
    batch = tiny_batch(n=8, length=12, seed=6)
    linears = select_linears(model, LAYERS)
    ref = sketch_batch(model, batch, linears, Projector(16, seed=0))
    got = sketch_batch(model, batch, linears, Projector(16, seed=0), precision="fp16")
    # the fixed loss scale is divided back out: same magnitude as fp32, close in value
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.02 * ref.abs().max().item())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_no_nan_with_heavy_padding_in_half_precision(precision):
    model = tiny_model(seed=0)
    batch = tiny_batch(n=6, length=60, seed=1, pad=False)
    batch["attention_mask"][:, 2:] = 0  # [CLS] and one token, 58 pads (transformers #31035: NaN under sdpa)
    batch["attention_mask"][0] = 1  # one full row, so the padded rows really are padded to 60
    batch["input_ids"] = batch["input_ids"] * batch["attention_mask"]
    with autocast("cpu", precision):
        logits = model(**batch)
    assert torch.isfinite(logits).all()
    sk = sketch_batch(model, batch, select_linears(model, LAYERS), Projector(16, seed=0), precision=precision)
    assert torch.isfinite(sk).all() and sk.abs().sum() > 0
    imp = importance_pass(model, [batch], precision=precision).importance
    assert torch.isfinite(imp).all() and (imp > 0).any()


def test_bucketed_sketching_equals_unbucketed():
    model, tok = tiny_model(seed=3), word_tokenizer()
    exs = examples(30, "train", 7)
    spec = InfluenceSpec(proj_dim=16, batch_size=4, layers=LAYERS)
    ordered, values = sketch_examples(model, exs, tok, spec, 32, bucket=True)
    plain, ref = sketch_examples(model, exs, tok, spec, 32, bucket=False)
    assert [e.id for e in plain] == [e.id for e in exs]
    assert [e.id for e in ordered] != [e.id for e in exs]  # bucketing really reordered them
    row = {e.id: i for i, e in enumerate(ordered)}
    torch.testing.assert_close(values[[row[e.id] for e in exs]], ref, rtol=1e-5, atol=1e-5)


def test_bucketed_evaluation_equals_unbucketed_in_input_order():
    model, tok = tiny_model(seed=4), word_tokenizer()
    exs = examples(30, "dev", 8)
    a = evaluate(model, exs, tok, 32, batch_size=4, bucket=True)
    b = evaluate(model, exs, tok, 32, batch_size=4, bucket=False)
    assert a["preds"] == b["preds"] and a["accuracy"] == b["accuracy"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    # preds follow the input order: each equals the model's prediction on that example alone
    from subnet_ray.data.tokenization import encode

    for e, p in list(zip(exs, a["preds"]))[:6]:
        assert int(model(**encode([e], tok, 32)).argmax(-1)) == p


def _keys(training=None, influence=None):
    raw = {"name": "k", "tasks": [{"id": "babel", "languages": ["xa", "ya"], "train_size": 4, "dev_size": 4, "test_size": 4}],
           "methods": ["full"], "random_seeds": [], "training": training or {}, "influence": influence or {}}
    return {n.key.split("/")[0] + "/" + (getattr(n.params, "variant", None) or ""): n.key for n in graph(SweepSpec.model_validate(raw))}


def test_precision_is_in_the_stage_keys_except_fp32():
    base, fp32 = _keys(), _keys({"precision": "fp32"}, {"precision": "fp32"})
    assert base == fp32  # fp32 leaves every key as it was before the setting existed
    bf16 = _keys({"precision": "bf16"})
    assert all(bf16[k] != base[k] for k in base)  # training precision changes every stage's results
    sketch_only = _keys(None, {"precision": "bf16"})
    assert all((sketch_only[k] != base[k]) == k.startswith("influence") for k in base)
    # influence follows training unless told otherwise
    assert _keys({"precision": "bf16"}, {"precision": "bf16"}) == bf16
