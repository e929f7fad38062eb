import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from subnet_ray.sweep.config import SubnetworkSpec
from subnet_ray.models.classifier import HeadMask
from subnet_ray.subnetworks import (
    cosine_similarity,
    disabled_heads_table,
    heads_shared_by,
    intersection,
    layer_similarity,
    load_mask,
    overlap,
    random_mask,
    save_mask,
    similarity_matrix,
    suboptimal_mask,
    union,
)
from subnet_ray.subnetworks.importance import head_importance, importance_pass, normalize_importance
from subnet_ray.subnetworks.pruning import Subnetwork, curve_frame, find_subnetwork, find_subnetworks, make_batches, prune, step_size
from tiny import tiny_batch, tiny_model

# ---- importance ------------------------------------------------------------------------------


def split(batch, sizes):
    out, start = [], 0
    for n in sizes:
        out.append({k: v[start : start + n] for k, v in batch.items()})
        start += n
    return out


def logits(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def brute_force_importance(model, batch, mask):
    """Mean over examples of |dL(x)/dxi|, one example and one autograd call at a time."""
    total = torch.zeros(mask.shape, dtype=torch.float64)
    n = batch["labels"].shape[0]
    for i in range(n):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        xi = mask.double().clone().requires_grad_(True)
        with HeadMask(model, xi):
            loss = F.cross_entropy(logits(model, one), one["labels"])
        (g,) = torch.autograd.grad(loss, xi)
        total += g.abs()
    return total / n


def test_zeroed_head_has_exactly_zero_importance_and_is_disabled_first():
    model = tiny_model()
    layer, head, dh = 1, 2, 8
    attn = model.attention_layers()[layer]
    with torch.no_grad():
        attn.self.value.weight[head * dh : (head + 1) * dh] = 0
        attn.self.value.bias[head * dh : (head + 1) * dh] = 0
        attn.output.dense.weight[:, head * dh : (head + 1) * dh] = 0
    batches = split(tiny_batch(n=12), [5, 7])
    for per in ("example", "batch"):
        raw = head_importance(model, batches, per=per)
        assert raw[layer, head].item() == 0.0
        assert (raw.flatten().gt(0).sum()) == 7  # every other head matters
    for spec in (SubnetworkSpec(), SubnetworkSpec(normalize_layers=False, global_scaling=True)):
        normed = normalize_importance(head_importance(model, batches), layers=spec.normalize_layers, global_scaling=spec.global_scaling)
        assert normed[layer, head].item() == 0.0

    candidates = []

    def accuracy_fn(mask):
        candidates.append(mask.clone())
        return 1.0

    def importance_fn(mask):
        return normalize_importance(head_importance(model, batches, mask), mask)

    prune(importance_fn, accuracy_fn, (2, 4), step_fraction=0.125, threshold=0.95)
    first = candidates[1]  # candidates[0] is the full model
    assert int((~first).sum()) == 1 and not first[layer, head]


def test_per_example_importance_is_eq1_and_independent_of_batching():
    model = tiny_model().double()
    batch = tiny_batch(n=6)
    mask = torch.ones(2, 4)
    mask[0, 1] = 0  # importance is taken under the current mask
    ref = brute_force_importance(model, batch, mask)
    for sizes in ([6], [2, 4], [1, 1, 1, 1, 1, 1]):
        got = head_importance(model, split(batch, sizes), mask)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_per_batch_importance_is_mean_of_abs_batch_gradients():
    model = tiny_model().double()
    batch = tiny_batch(n=6)
    parts = split(batch, [2, 4])
    expected = torch.zeros(2, 4, dtype=torch.float64)
    for part in parts:
        xi = torch.ones(2, 4, dtype=torch.float64, requires_grad=True)
        with HeadMask(model, xi):
            loss = F.cross_entropy(logits(model, part), part["labels"])  # batch-mean loss
        expected += torch.autograd.grad(loss, xi)[0].abs()
    torch.testing.assert_close(head_importance(model, parts, per="batch"), expected / 2, rtol=1e-9, atol=1e-12)
    # one batch: |mean of gradients| <= mean of |gradients|, strictly where signs differ
    one_batch = head_importance(model, [batch], per="batch")
    per_example = head_importance(model, [batch])
    assert (one_batch <= per_example + 1e-15).all() and (one_batch < per_example - 1e-9).any()


def test_importance_pass_reports_accuracy_and_leaves_model_as_it_was():
    model = tiny_model().train()
    batch = tiny_batch(n=9)
    mask = torch.ones(2, 4)
    mask[1, :3] = 0
    result = importance_pass(model, split(batch, [4, 5]), mask)
    model.eval()
    with torch.no_grad(), HeadMask(model, mask):
        want = (logits(model, batch).argmax(-1) == batch["labels"]).sum().item()
    assert (result.correct, result.count) == (want, 9)
    assert result.accuracy == want / 9
    model2 = tiny_model().train()
    importance_pass(model2, [batch])
    assert model2.training and all(p.requires_grad for p in model2.parameters())


def test_layer_normalisation_and_global_scaling_match_hand_values():
    imp = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    torch.testing.assert_close(
        normalize_importance(imp), torch.tensor([[0.6, 0.8], [2**-0.5, 2**-0.5]], dtype=torch.float64)
    )
    s = 2**-0.5
    torch.testing.assert_close(
        normalize_importance(imp, global_scaling=True),
        torch.tensor([[0.0, 1.0], [(s - 0.6) / 0.2, (s - 0.6) / 0.2]], dtype=torch.float64),
    )
    # a disabled head takes no part: layer 1 is just its enabled head, and 100 is ignored
    on = torch.tensor([[True, True], [True, False]])
    imp2 = torch.tensor([[3.0, 4.0], [1.0, 100.0]])
    torch.testing.assert_close(normalize_importance(imp2, on), torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(
        normalize_importance(imp2, on, global_scaling=True), torch.tensor([[0.0, 0.5], [1.0, 0.0]], dtype=torch.float64)
    )
    # global scaling alone, min-max over enabled heads: (3,4,1) -> (2/3, 1, 0)
    torch.testing.assert_close(
        normalize_importance(imp2, on, layers=False, global_scaling=True),
        torch.tensor([[2 / 3, 1.0], [0.0, 0.0]], dtype=torch.float64),
    )
    # a layer with all-zero importance stays zero instead of dividing by zero
    assert normalize_importance(torch.zeros(2, 2)).eq(0).all()


# ---- pruning ---------------------------------------------------------------------------------


def scripted(accuracies):
    """accuracy_fn returning the scripted values in order, recording the masks it was asked about."""
    seen = []

    def fn(mask):
        seen.append(mask.clone())
        return accuracies[len(seen) - 1]

    return fn, seen


def test_stop_rule_returns_last_mask_at_or_above_threshold():
    order = torch.arange(8.0).view(2, 4)  # heads disabled in index order
    asked = []

    def importance_fn(mask):
        asked.append(mask.clone())
        return order

    # full 0.80 -> bar 0.76; 0.76 ties the bar (met), 0.75 falls below
    acc_fn, seen = scripted([0.80, 0.79, 0.77, 0.76, 0.75, 0.99])
    sub = prune(importance_fn, acc_fn, (2, 4), step_fraction=0.25, threshold=0.95, language="de")
    assert sub.mask.flatten().tolist() == [False] * 6 + [True] * 2
    assert (sub.accuracy, sub.full_accuracy, sub.heads_disabled) == (0.76, 0.80, 6)
    assert [r["heads_disabled"] for r in sub.curve] == [0, 2, 4, 6, 7]  # last step stops short of all 8
    assert [r["accuracy"] for r in sub.curve] == [0.80, 0.79, 0.77, 0.76, 0.75]
    assert all(r["language"] == "de" and r["full_accuracy"] == 0.80 for r in sub.curve)
    assert len(seen) == 5  # stopped at the first drop below the bar
    # importance is recomputed under each current (kept) mask
    assert [int((~m).sum()) for m in asked] == [0, 2, 4, 6]
    assert list(curve_frame({"de": sub}).columns) == ["language", "step", "heads_disabled", "accuracy", "full_accuracy"]


def test_stop_rule_first_step_below_keeps_full_mask_and_never_disables_all():
    acc_fn, _ = scripted([0.9, 0.5])
    sub = prune(lambda m: torch.zeros(2, 4), acc_fn, (2, 4), 0.25, 0.95)
    assert sub.mask.all() and sub.accuracy == 0.9 and len(sub.curve) == 2
    acc_fn, seen = scripted([0.9] * 20)
    sub = prune(lambda m: torch.rand(2, 4), acc_fn, (2, 4), 0.375, 0.95)  # 3 per step: 3, 6, 7
    assert int(sub.mask.sum()) == 1 and [r["heads_disabled"] for r in sub.curve] == [0, 3, 6, 7]


def test_step_size_rounds_half_up_like_the_paper():
    assert step_size(144, 0.1) == 14
    assert step_size(8, 0.1) == 1
    assert step_size(8, 0.0625) == 1  # 0.5 rounds up
    assert step_size(8, 1.0) == 8


def test_find_subnetwork_on_tiny_batches_is_consistent():
    model = tiny_model()
    batch = tiny_batch(n=20, seed=3)
    batches = make_batches(batch, 8)
    sub = find_subnetwork(model, batches, SubnetworkSpec(threshold=0.5, step_fraction=0.25), "xx")
    with torch.no_grad(), HeadMask(model, sub.mask):
        acc = (logits(model, batch).argmax(-1) == batch["labels"]).float().mean().item()
    assert sub.accuracy == pytest.approx(acc, abs=1e-12)
    assert sub.accuracy >= 0.5 * sub.full_accuracy - 1e-12
    kept = [r for r in sub.curve if r["heads_disabled"] == sub.heads_disabled]
    assert kept and kept[0]["accuracy"] == sub.accuracy


def test_make_batches_sorts_and_trims_without_changing_importance():
    model = tiny_model().double()
    batch = tiny_batch(n=9, length=12)
    batches = make_batches(batch, 4)
    assert [b["labels"].shape[0] for b in batches] == [4, 4, 1]
    assert all(b["attention_mask"][:, -1].any() for b in batches)  # no all-padding column left
    assert batches[0]["input_ids"].shape[1] < 12
    ids = sorted(tuple(r.tolist()) for b in batches for r in b["input_ids"][:, :8])
    assert ids == sorted(tuple(r.tolist()) for r in batch["input_ids"][:, :8])
    torch.testing.assert_close(head_importance(model, batches), head_importance(model, [batch]), rtol=1e-9, atol=1e-12)


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.01])
def test_threshold_outside_unit_interval_is_rejected(threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        prune(lambda m: torch.zeros(2, 4), lambda m: 1.0, (2, 4), 0.25, threshold)


def test_step_fraction_that_disables_nothing_is_rejected():
    with pytest.raises(ValueError, match="disable nothing on this model"):
        prune(lambda m: torch.zeros(2, 4), lambda m: 1.0, (2, 4), 0.05, 0.95)
    with pytest.raises(ValueError, match="disable nothing on this model"):
        find_subnetworks(tiny_model(), {"de": [object()]}, None, SubnetworkSpec(step_fraction=0.05), 16)


def test_missing_dev_data_is_rejected_naming_the_language():
    with pytest.raises(ValueError, match=r"no dev examples for language\(s\) \['ko'\]"):
        find_subnetworks(tiny_model(), {"de": [object()], "ko": []}, None, SubnetworkSpec(), 16)
    with pytest.raises(ValueError, match="no dev examples"):
        find_subnetwork(tiny_model(), [], SubnetworkSpec(), "ko")


# ---- mask toolkit ----------------------------------------------------------------------------

A = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)  # 3 enabled
B = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)  # 4 enabled
C = torch.tensor([[0, 0, 1], [0, 1, 1]], dtype=torch.bool)  # 3 enabled


def test_random_masks_keep_count_are_reproducible_and_differ_across_seeds():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(12, 12, generator=g) < 0.7
    count = int(mask.sum())
    rand = {s: random_mask(mask, s, "t", "de") for s in (1, 2, 3)}
    assert all(int(r.sum()) == count and r.shape == mask.shape and r.dtype == torch.bool for r in rand.values())
    assert torch.equal(random_mask(mask, 2, "t", "de"), rand[2])
    assert not torch.equal(rand[1], rand[2]) and not torch.equal(rand[2], rand[3]) and not torch.equal(rand[1], rand[3])
    assert not torch.equal(rand[1], mask)
    assert torch.equal(random_mask(mask.numpy(), 2, "t", "de"), rand[2])  # numpy input, same result


def test_random_masks_of_languages_are_drawn_independently():
    # Two languages with the same identified mask: a permutation shared by both languages would
    # give them identical random masks (overlap = count) for every seed.
    g = torch.Generator().manual_seed(1)
    a = torch.rand(12, 12, generator=g) < 0.55
    b = torch.rand(12, 12, generator=g) < 0.55
    ra, rb = random_mask(a, 5, "t", "de"), random_mask(a, 5, "t", "en")
    assert int(ra.sum()) == int(rb.sum()) == int(a.sum())
    assert not torch.equal(ra, rb)
    assert torch.equal(random_mask(a, 5, "t", "en"), rb)  # the same stream twice: the same mask
    # Over seeds, the mean overlap of two languages' random masks is that of independent
    # shuffles, E|A n B| = |A| |B| / N (hypergeometric), whatever the identified masks share
    # (here: everything, a with itself). 300 seeds put the standard error near 0.2 heads.
    n = a.numel()
    for x, y in ((a, a), (a, b)):
        overlaps = [int((random_mask(x, s, "t", "de") & random_mask(y, s, "t", "en")).sum()) for s in range(300)]
        expected = int(x.sum()) * int(y.sum()) / n
        assert abs(np.mean(overlaps) - expected) < 1.0, (np.mean(overlaps), expected)


def test_union_intersection_and_suboptimal_match_hand_values():
    assert union(A, B).int().tolist() == [[1, 1, 1], [1, 1, 0]]
    assert intersection(A, B).int().tolist() == [[1, 0, 0], [1, 0, 0]]
    assert union(A, B, C).int().tolist() == [[1, 1, 1], [1, 1, 1]]
    assert intersection(A, B, C).int().tolist() == [[0, 0, 0], [0, 0, 0]]
    masks = {"de": A, "en": B}
    assert torch.equal(suboptimal_mask(masks, donor="en", target="de"), B)
    with pytest.raises(ValueError, match="another language"):
        suboptimal_mask(masks, "de", "de")
    with pytest.raises(KeyError, match="ko"):
        suboptimal_mask(masks, "ko", "de")
    with pytest.raises(ValueError, match="different shapes"):
        union(A, torch.ones(3, 3, dtype=torch.bool))


def test_similarity_overlap_and_shared_by_k_match_hand_values():
    masks = {"de": A, "en": B, "ko": C}
    assert cosine_similarity(A, B) == pytest.approx(2 / math.sqrt(12))
    sim = similarity_matrix(masks)
    assert sim.loc["de", "ko"] == 0.0 and sim.loc["en", "ko"] == pytest.approx(2 / math.sqrt(12))
    assert np.allclose(np.diag(sim.values), 1.0) and np.allclose(sim.values, sim.values.T)
    both, pct = overlap(masks)
    assert both.values.tolist() == [[3, 2, 0], [2, 4, 2], [0, 2, 3]]
    assert pct.loc["de", "en"] == pytest.approx(200 / 3) and pct.loc["en", "de"] == pytest.approx(50.0)
    assert pct.loc["ko", "en"] == pytest.approx(200 / 3) and pct.loc["de", "de"] == 100.0
    assert heads_shared_by(masks).tolist() == [[2, 1, 2], [2, 2, 1]]


def test_layer_similarity_matches_hand_values_and_is_nan_for_an_empty_layer():
    D = torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    df = layer_similarity({"de": A, "en": B, "xx": D})
    got = {(r.language_a, r.language_b, r.layer): r.cosine for r in df.itertuples()}
    assert got[("de", "en", 0)] == pytest.approx(0.5)
    assert got[("de", "en", 1)] == pytest.approx(1 / math.sqrt(2))
    assert got[("de", "xx", 0)] == pytest.approx(1 / math.sqrt(2))
    assert math.isnan(got[("de", "xx", 1)]) and math.isnan(got[("en", "xx", 1)])
    assert len(df) == 3 * 2


def test_disabled_heads_table_is_table_1():
    table = disabled_heads_table({"pawsx": {"de": A, "en": B}, "xnli": {"en": C}})
    assert list(table.index) == ["pawsx", "xnli"] and list(table.columns) == ["de", "en"]
    assert table.loc["pawsx", "de"] == 3 and table.loc["pawsx", "en"] == 2 and table.loc["xnli", "en"] == 3
    assert pd.isna(table.loc["xnli", "de"])


def test_cosine_of_an_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="no enabled head"):
        cosine_similarity(A, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="binary"):
        cosine_similarity(A, torch.full((2, 3), 0.5))


# ---- storage ---------------------------------------------------------------------------------

META = dict(task="babel", language="de", seed=1, checkpoint="finetune/abc", full_accuracy=0.8, masked_accuracy=0.77,
            threshold=0.95, step_fraction=0.1)


def test_save_and_load_mask_round_trip(tmp_path):
    save_mask(tmp_path / "de", A, META | {"kind": "identified"})
    arr = np.load(tmp_path / "de" / "mask.npy", allow_pickle=False)
    assert arr.dtype == np.bool_ and arr.tolist() == A.tolist()
    record = json.loads((tmp_path / "de" / "mask.json").read_text())
    assert record["shape"] == [2, 3] and record["heads_enabled"] == 3 and record["kind"] == "identified"
    mask, meta = load_mask(tmp_path / "de", expect_shape=(2, 3))
    assert torch.equal(mask, A) and meta.masked_accuracy == 0.77 and meta.checkpoint == "finetune/abc"
    assert not any(p.name.startswith(".") for p in (tmp_path / "de").iterdir())  # no temp files left


def test_load_mask_checks_shape_and_refuses_pickles(tmp_path):
    save_mask(tmp_path / "m", A, META)
    with pytest.raises(ValueError, match=r"\(2, 3\) does not fit the model: expected \(12, 12\)"):
        load_mask(tmp_path / "m", expect_shape=(12, 12))
    # a hostile artifact: a .npy whose header declares an object array (its body would be a pickle);
    # written by hand, so the test pickles nothing; load_mask must refuse it, never unpickle
    with open(tmp_path / "m" / "mask.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (1, 1)})
        f.write(b"not a pickle")
    with pytest.raises(ValueError, match="allow_pickle"):
        load_mask(tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "nothing")


def test_save_mask_names_missing_metadata(tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        save_mask(tmp_path / "m", A, {k: v for k, v in META.items() if k != "checkpoint"})


# ---- on the babel task (data.py, train.py) ---------------------------------------------------

BABEL_LANGS = ["a1", "a2", "b1", "b2"]  # two families: a1/a2 share 80% of their words, as do b1/b2


def babel_task(train_size=300, dev_size=100):
    from subnet_ray.sweep.config import BabelSpec, TaskSpec

    return TaskSpec(id="babel", languages=BABEL_LANGS, train_size=train_size, dev_size=dev_size, test_size=10,
                    babel=BabelSpec(families=[["a1", "a2"], ["b1", "b2"]]))


def test_find_subnetworks_accuracies_agree_with_train_evaluate():
    from subnet_ray.data.examples import load_examples, tokenizer_for
    from subnet_ray.models.classifier import build_model
    from subnet_ray.train.finetune import by_language, evaluate
    from tiny import TINY

    task = babel_task(train_size=20, dev_size=40)
    dev, tok = by_language(load_examples(task, "dev")), tokenizer_for(task)
    model = build_model(TINY, num_labels=2, vocab_size=len(tok), seed=0).eval()
    subs = find_subnetworks(model, dev, tok, SubnetworkSpec(threshold=0.8, batch_size=16), max_length=32)
    assert list(subs) == BABEL_LANGS
    for lang, s in subs.items():
        assert s.full_accuracy == evaluate(model, dev[lang], tok, 32)["accuracy"]
        assert s.accuracy == evaluate(model, dev[lang], tok, 32, mask=s.mask)["accuracy"]
        assert s.accuracy >= 0.8 * s.full_accuracy - 1e-12 and s.mask.any()


BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "mask_families.py"
CONTROL_SEED = 1


@pytest.mark.slow  # ~30 s idle: one pre-training and one fine-tuning of the control world
def test_babel_masks_do_not_follow_families_nothing_relates():
    """The guard of benchmarks/mask_families.py's control world, on one model seed: the demo's settings and family
    labels, but members share no word and no word order, so masks must not be more alike within the labelled
    families than across them (within no more than 0.1 above across; the benchmark's demo world requires 0.15 more).

    The property over model seeds 1-5 is the benchmark's: control within 0.502 vs across 0.613 (per seed 0.625/0.750,
    0.408/0.662, 0.750/0.812, 0.729/0.716, 0.000/0.125; measured 2026-12-07), demo world 0.826 vs 0.611
    (notes/NOTES.md); tests/test_demo.py guards the demo world on the demo run's own masks.
    """
    spec = importlib.util.spec_from_file_location("mask_families", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ((within, across),) = bench.family_mask_similarity(bench.WORLDS["control"], [CONTROL_SEED])
    assert within - across < bench.MAX_CONTROL_GAP, f"within-family {within:.3f} vs across {across:.3f} on seed {CONTROL_SEED}"


def test_a_random_masks_metadata_describes_the_random_mask_not_its_source(tmp_path):
    """The random_masks stage on the smoke sweep's fine-tuned model: each random mask's mask.json records its own
    dev accuracy (recomputed here with train.evaluate under that mask on the model's last checkpoint), how it was
    made and its source; the identified mask's accuracy and pruning settings appear only under `source`."""
    from subnet_ray.sweep.config import load_sweep
    from subnet_ray.sweep.graph import graph
    from subnet_ray.models.classifier import load_checkpoint
    from subnet_ray.stages import execute, model_factory, task_data
    from subnet_ray.storage.store import store_for
    from subnet_ray.subnetworks import load_mask
    from subnet_ray.train.finetune import by_language, checkpoints, evaluate
    from tiny import smoke_sweep

    path = tmp_path / "masks.yaml"
    # more dev data and a lower threshold than smoke's, so random masks (as many heads on, placed anywhere) score
    # differently from the subnetwork: a copied accuracy would then fail the recomputation below
    path.write_text(smoke_sweep("maskmeta", ("methods: [full, sft, random-sft]", "methods: [full]"), ("random_seeds: [1]", "random_seeds: [1, 2]"),
                                ("dev_size: 24", "dev_size: 60"), ("threshold: 0.9", "threshold: 0.7"), ("epochs: 2", "epochs: 4")))
    spec, store = load_sweep(path), store_for(tmp_path / "root")
    nodes = [n for n in graph(spec) if n.wave == 1]
    for n in nodes:
        assert execute(n, spec, store, progress=False)
    full, sub = (next(n for n in nodes if n.stage == s) for s in ("finetune", "subnetworks"))
    randoms = [n for n in nodes if n.stage == "random_masks"]
    assert len(randoms) == 2 and all(n.inputs == (sub.key, full.key) for n in randoms)  # the model is an input now
    task, data, tok = task_data(spec, "babel")
    model = model_factory(spec, task, tok, 1)()
    load_checkpoint(model, checkpoints(store.path(full.key))[-1])
    dev = by_language(data["dev"])
    own_accuracy = []
    for lang in task.languages:
        ident, ident_meta = load_mask(store.path(sub.key) / lang)
        assert ident_meta.kind == "identified" and ident_meta.threshold == 0.7 and ident_meta.source is None
        for n in randoms:
            mask, meta = load_mask(store.path(n.key) / lang)
            got = evaluate(model, dev[lang], tok, spec.training.max_length, spec.training.batch_size, mask)["accuracy"]
            assert meta.masked_accuracy == got, (lang, n.params.random_seed)
            assert meta.kind == "random" and meta.random_seed == n.params.random_seed and meta.checkpoint == full.key
            assert meta.threshold is None and meta.step_fraction is None and meta.made_by
            assert meta.source == {"key": sub.key, "kind": "identified", "masked_accuracy": ident_meta.masked_accuracy,
                                   "heads_enabled": int(ident.sum()), "threshold": 0.7, "step_fraction": 0.25}
            assert int(mask.sum()) == int(ident.sum()) and meta.full_accuracy == ident_meta.full_accuracy
            own_accuracy.append(meta.masked_accuracy != ident_meta.masked_accuracy)
    assert any(own_accuracy), own_accuracy  # not the source's number under another name
