"""Influence engine: sketches against brute-force per-example gradients, projection statistics,
Captum's TracInCP, head masks, top-k against argsort, bad input, and the Ray Data path."""
import functools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from torch.nn import functional as F

from subnet_ray.sweep.config import InfluenceSpec
from subnet_ray.data.examples import Example
from subnet_ray.influence.pipeline import influence
from subnet_ray.influence.projection import Projector
from subnet_ray.influence.sketch import Sketches, select_linears, sketch_batch
from subnet_ray.influence.tracin import dense_scores, top_influences
from subnet_ray.influence.pipeline import checkpoint_metas, mask_groups
from subnet_ray.influence.sketch import layer_dims
from subnet_ray.models.classifier import HeadMask, build_model, save_checkpoint
from tiny import TINY, VOCAB, tiny_batch, tiny_model

LAYERS = ["encoder", "classifier"]


def brute_grads(model, batch, linears, mask=None):
    """Per-example [weight | bias] gradients by autograd, one unpadded example at a time."""
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        one = {k: v[i : i + 1, :n] if v.dim() == 2 else v[i : i + 1] for k, v in batch.items()}
        m = None if mask is None else (mask[i] if mask.dim() == 3 else mask)
        with HeadMask(model, m):
            loss = F.cross_entropy(model(one["input_ids"], one["attention_mask"], one["token_type_ids"]), one["labels"])
        params = [p for _, lin in linears for p in (lin.weight, lin.bias)]
        g = torch.autograd.grad(loss, params)
        rows.append(torch.cat([torch.cat([g[2 * j], g[2 * j + 1][:, None]], 1).flatten() for j in range(len(linears))]))
    return torch.stack(rows)


def cosine(a):
    u = a / a.norm(dim=1, keepdim=True)
    return u @ u.T


def test_exact_sketch_equals_brute_force_gradients_with_padding():
    model = tiny_model().double()
    batch = tiny_batch(n=6, length=10)
    assert (batch["attention_mask"] == 0).any()
    linears = select_linears(model, LAYERS)
    assert [n for n, _ in linears][-2:] == ["classifier.dense", "classifier.out_proj"]  # one-token layers included
    got = sketch_batch(model, batch, linears, None)
    ref = brute_grads(model, batch, linears)
    assert got.shape == ref.shape == (6, sum(d for _, d in layer_dims(linears, 0)))
    torch.testing.assert_close(got @ got.T, ref @ ref.T, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(cosine(got), cosine(ref), rtol=1e-5, atol=1e-12)
    assert all(p.requires_grad for p in model.parameters())  # restored after sketching


def test_projected_sketch_equals_projection_of_exact_gradient():
    model = tiny_model().double()
    batch = tiny_batch(n=5, length=9, seed=3)
    linears = select_linears(model, LAYERS)
    proj = Projector(16, seed=7)
    got = sketch_batch(model, batch, linears, proj)
    exact = sketch_batch(model, batch, linears, None)
    ref, off = [], 0
    for name, lin in linears:
        size = lin.out_features * (lin.in_features + 1)
        ref.append(proj.project(name, exact[:, off : off + size].view(-1, lin.out_features, lin.in_features + 1), bias=True))
        off += size
    torch.testing.assert_close(got, torch.cat(ref, 1), rtol=1e-9, atol=1e-12)
    # Same seed and layer name give the same matrices in a fresh projector (no shipping needed).
    torch.testing.assert_close(sketch_batch(model, batch, linears, Projector(16, seed=7)), got, rtol=0, atol=0)


def test_projection_is_unbiased_and_its_error_shrinks_with_d():
    """Tolerance: over S=300 seeds the mean estimate of every pairwise inner product lies within
    4.5 standard errors of the exact one (deterministic seeds, so not flaky; a biased estimator
    with bias >= 0.26 sd fails), and the mean cosine error |est - true| / (|a||b|) falls strictly
    as d goes 4, 16, ..., 1024, by more than 3x overall."""
    model = tiny_model().double()
    batch = tiny_batch(n=5, length=8, seed=1)
    linears = select_linears(model, LAYERS)[-6:]  # layer 1 and the classifier: fast, still sequence and one-token layers
    exact = sketch_batch(model, batch, linears, None)
    true = exact @ exact.T
    norms = exact.norm(dim=1)
    grads, off = [], 0
    for name, lin in linears:
        size = lin.out_features * (lin.in_features + 1)
        grads.append((name, exact[:, off : off + size].view(-1, lin.out_features, lin.in_features + 1)))
        off += size

    def estimates(d, seeds):
        out = []
        for s in seeds:
            p = Projector(d, seed=s)
            sk = torch.cat([p.project(name, g, bias=True) for name, g in grads], 1)
            out.append(sk @ sk.T)
        return torch.stack(out)

    errors = []
    for d in (4, 16, 64, 256, 1024):
        est = estimates(d, range(40))
        errors.append(((est - true).abs() / (norms[:, None] * norms[None, :])).mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 3, errors  # theory for one-token layers: d^(-1/4), 4x over 4..1024
    est = estimates(16, range(1000, 1300))
    z = (est.mean(0) - true) / (est.std(0) / est.shape[0] ** 0.5)
    assert z.abs().max() < 4.5, z


def test_sketch_under_head_mask_equals_masked_exact_gradient():
    model = tiny_model().double()
    batch = tiny_batch(n=4, length=10, seed=2)
    linears = select_linears(model, LAYERS)
    mask = torch.ones(2, 4, dtype=torch.float64)
    mask[0, 1] = mask[1, 3] = 0
    got = sketch_batch(model, batch, linears, None, head_mask=mask)
    ref = brute_grads(model, batch, linears, mask)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-12)
    assert not torch.allclose(got, brute_grads(model, batch, linears), atol=1e-4)
    per_example = torch.ones(4, 2, 4, dtype=torch.float64)
    per_example[0, 0, :2] = 0
    per_example[3, 1, 1:] = 0
    got = sketch_batch(model, batch, linears, None, head_mask=per_example)
    torch.testing.assert_close(got, brute_grads(model, batch, linears, per_example), rtol=1e-7, atol=1e-12)
    assert not model.attention_layers()[0].output.dense._forward_pre_hooks  # mask hooks removed
    assert not any(lin._forward_hooks for _, lin in linears)  # sketch hooks removed


def _sketches(values, ids=None, ckpt=1, lr=None, **kw):
    n, d = values.shape
    ids = ids or [f"x{i}" for i in range(n)]
    langs = ["aa" if i % 2 else "bb" for i in range(n)]
    return Sketches(ids=ids, languages=langs, values=values, layout=(("l", d),), proj_dim=kw.get("proj_dim", d),
                    seed=kw.get("seed", 0), checkpoint=ckpt, lr=lr, mask=kw.get("mask", "none"))


def test_dense_scores_are_lr_weighted_sums_of_cosines():
    g = torch.Generator().manual_seed(0)
    tr = [torch.randn(7, 9, generator=g) for _ in range(2)]
    te = [torch.randn(3, 9, generator=g) for _ in range(2)]
    train = [_sketches(tr[e], ckpt=e + 1, lr=[1e-3, 5e-4][e]) for e in range(2)]
    test = [_sketches(te[e], ids=["t0", "t1", "t2"], ckpt=e + 1, lr=[1e-3, 5e-4][e]) for e in range(2)]
    got = dense_scores(test, train, lr_weighting=True)
    cos = [F.cosine_similarity(te[e][:, None], tr[e][None], dim=-1) for e in range(2)]
    torch.testing.assert_close(got[0], 1e-3 * cos[0])
    torch.testing.assert_close(got[2], 1e-3 * cos[0] + 5e-4 * cos[1])
    torch.testing.assert_close(dense_scores(test, train, normalize=False)[1], te[1] @ tr[1].T)


@pytest.mark.parametrize("block_mb", [1e-4, 256.0])  # 1e-4: one train chunk per top-k width, many merges
def test_top_k_equals_brute_force_argsort(block_mb):
    g = torch.Generator().manual_seed(1)
    train = [_sketches(torch.randn(40, 6, generator=g), ckpt=e) for e in (1, 2)]
    test = [_sketches(torch.randn(5, 6, generator=g), ids=[f"t{i}" for i in range(5)], ckpt=e) for e in (1, 2)]
    train[1] = train[1].take(list(reversed(train[1].ids)))  # another row order: aligned by id
    df = top_influences(test, train, top_k=4, max_block_mb=block_mb)
    dense = dense_scores(test, train)
    assert len(df) == 3 * 2 * 5 * 4
    for c, label in enumerate([1, 2, -1]):
        for sign, order in (("pos", -1), ("neg", 1)):
            sub = df[(df.checkpoint == label) & (df.sign == sign)].sort_values(["test_id", "rank"])
            idx = np.argsort(order * dense[c].numpy(), axis=1, kind="stable")[:, :4]
            assert sub.train_id.tolist() == [train[0].ids[j] for row in idx for j in row]
            np.testing.assert_allclose(sub.score.to_numpy(), np.take_along_axis(dense[c].numpy(), idx, 1).ravel(), rtol=1e-6)
            assert sub.train_language.tolist() == [train[0].languages[j] for row in idx for j in row]
    assert (df.groupby(["test_id", "checkpoint", "sign"]).size() == 4).all()


def _checkpoints(tmp_path, n=2):
    """Saves n checkpoints of the tiny model, each a small perturbation of the last."""
    model = tiny_model()
    g = torch.Generator().manual_seed(5)
    dirs = []
    for e in range(1, n + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        # the weight is the epoch's mean rate (lr_mean); lr (the last step's) must not be used
        save_checkpoint(model, tmp_path / f"epoch_{e}", {"epoch": e, "lr": 0.0, "lr_mean": 1e-3 / e})
        dirs.append(tmp_path / f"epoch_{e}")
    return dirs


def test_rankings_agree_with_captum_tracincp(tmp_path):
    from captum.influence import TracInCP
    from torch.utils.data import DataLoader, TensorDataset

    from subnet_ray.models.classifier import load_checkpoint

    dirs = _checkpoints(tmp_path)
    model = tiny_model()
    train_b, test_b = tiny_batch(n=12, length=10, seed=11), tiny_batch(n=4, length=10, seed=12)
    names = ["encoder.encoder.layer.1.output.dense", "encoder.encoder.layer.1.attention.self.value", "classifier.out_proj"]
    linears = select_linears(model, names)
    sk = {"train": [], "test": []}
    for e, d in enumerate(dirs, 1):
        meta = load_checkpoint(model, d)
        for what, b in (("train", train_b), ("test", test_b)):
            v = sketch_batch(model, b, linears, None)
            sk[what].append(Sketches(ids=[f"{what}{i}" for i in range(len(v))], languages=["aa"] * len(v), values=v,
                                     layout=layer_dims(linears, 0), proj_dim=0, seed=0, checkpoint=e, lr=meta["lr_mean"]))
    ours = dense_scores(sk["test"], sk["train"], lr_weighting=True, normalize=False)[-1]

    def tensors(b):
        return (b["input_ids"], b["attention_mask"], b["token_type_ids"], b["labels"])

    tracin = TracInCP(
        tiny_model(), DataLoader(TensorDataset(*tensors(train_b)), batch_size=4), [str(d) for d in dirs],
        checkpoints_load_func=lambda m, path: load_checkpoint(m, path)["lr_mean"],
        layers=names, loss_fn=torch.nn.CrossEntropyLoss(reduction="none"), batch_size=4,
    )
    theirs = tracin.influence(tensors(test_b))
    for i in range(4):
        assert spearmanr(ours[i].numpy(), theirs[i].detach().numpy()).statistic >= 0.99
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-4, atol=1e-7)


def test_bad_input_gets_clear_errors(tmp_path):
    v = torch.randn(4, 16)
    a = _sketches(v)
    with pytest.raises(ValueError, match="seed"):
        top_influences([_sketches(v[:2], seed=1)], [a], 2)
    with pytest.raises(ValueError, match="proj_dim"):
        top_influences([_sketches(v[:2], proj_dim=9)], [a], 2)
    with pytest.raises(ValueError, match="layout"):
        top_influences([_sketches(torch.randn(2, 9), proj_dim=16)], [a], 2)
    with pytest.raises(ValueError, match="mask"):
        top_influences([_sketches(v[:2], mask="mask-1")], [a], 2)
    with pytest.raises(ValueError, match="different examples"):
        top_influences([_sketches(v[:2], ckpt=1), _sketches(v[:2], ckpt=2)], [a, _sketches(v, ids=list("abcd"), ckpt=2)], 2)
    with pytest.raises(ValueError, match="duplicate"):
        _sketches(v, ids=["a", "b", "a", "c"])
    with pytest.raises(ValueError, match="empty"):
        _sketches(torch.zeros(0, 16))
    with pytest.raises(ValueError, match="lack"):
        a.take(["x0", "nope"])
    with pytest.raises(ValueError, match="learning rate"):
        top_influences([_sketches(v[:2])], [a], 2, lr_weighting=True)
    model = tiny_model()
    save_checkpoint(tiny_model(num_labels=3), tmp_path / "other", {"epoch": 1})
    with pytest.raises(ValueError, match="does not match the model.*classifier.out_proj"):
        checkpoint_metas(model, [tmp_path / "other"])
    with pytest.raises(ValueError, match="matches no Linear"):
        select_linears(model, ["encoder", "decoder"])
    with pytest.raises(ValueError, match=r"none for test languages \['bb'\]"):
        mask_groups(model, ["aa", "bb"], {"aa": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="does not fit the model"):
        mask_groups(model, ["aa"], {"aa": torch.ones(3, 4)})
    ex = [Example("same", "aa", "w1 w2", None, 0), Example("same", "aa", "w3", None, 1)]
    with pytest.raises(ValueError, match="duplicate training example ids"):
        influence(model, [tmp_path / "other"], ex, ex[:1], None, InfluenceSpec())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_storage_round_trips_and_scores_close_to_float32(dtype):
    from subnet_ray.influence.sketch import DTYPES, from_numpy, to_numpy

    g = torch.Generator().manual_seed(4)
    v = torch.randn(30, 64, generator=g)
    low = v.to(DTYPES[dtype])
    assert torch.equal(from_numpy(to_numpy(low), dtype), low)  # bit-exact transport, bfloat16 included
    train32, test32 = [_sketches(v[:24])], [_sketches(v[24:], ids=[f"t{i}" for i in range(6)])]
    train_lo, test_lo = [_sketches(low[:24])], [_sketches(low[24:], ids=[f"t{i}" for i in range(6)])]
    ref, got = dense_scores(test32, train32), dense_scores(test_lo, train_lo)
    assert (got - ref).abs().max() < (1e-2 if dtype == "bfloat16" else 2e-3)


def test_sketch_actor_rejects_an_empty_shard():
    from subnet_ray.orchestration.influence_ray import SketchActor

    actor = object.__new__(SketchActor)  # the check comes before any use of the model
    with pytest.raises(ValueError, match="empty shard"):
        actor({"row": np.array([], dtype=np.int64), "id": np.array([], dtype=object)})


def test_ray_rows_cover_each_sketch_set_once_sorted_by_length():
    from subnet_ray.orchestration.influence_ray import pass_rows

    tok = word_tokenizer()
    train, test = examples(6, "train", 0), examples(4, "test", 1)
    aa = [ex for ex in test if ex.language == "aa"]
    sets = [(0, "train", train), (1, "train", train), (0, "test", aa), (1, "test", test)]  # test examples in two sets
    rows = pass_rows(sets, tok, 16)
    assert sorted((r["set"], r["group"], r["role"], r["id"]) for r in rows) == sorted(
        (s, g, role, ex.id) for s, (g, role, exs) in enumerate(sets) for ex in exs)
    lengths = [len(r["text"].split()) for r in rows]
    assert lengths == sorted(lengths) and [r["row"] for r in rows] == list(range(len(rows)))
    assert "text_pair" not in rows[0]  # Arrow would turn an all-None column into NaN floats
    paired = [Example(ex.id, ex.language, ex.text, "w1 w2", ex.label) for ex in train]
    assert {r["text_pair"] for r in pass_rows([(0, "train", paired)], tok, 16)} == {"w1 w2"}


# -- end to end on Examples ------------------------------------------------------------------


def word_tokenizer():
    """A WordLevel tokenizer over w0..w44 with BERT's special tokens: 50 ids, the tiny model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    vocab |= {f"w{i}": i + 5 for i in range(VOCAB - 5)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def examples(n, split, seed, languages=("aa", "bb")):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = " ".join(f"w{j}" for j in rng.integers(0, VOCAB - 5, rng.integers(2, 9)))
        out.append(Example(f"t/{languages[i % len(languages)]}/{split}/{i}", languages[i % len(languages)], words, None, int(rng.integers(0, 2))))
    return out


def test_influence_equals_brute_force_cosine_tracin(tmp_path):
    dirs = _checkpoints(tmp_path)
    tok = word_tokenizer()
    train, test = examples(10, "train", 0), examples(4, "test", 1)
    mask = torch.ones(2, 4)
    mask[1, :2] = 0
    spec = InfluenceSpec(proj_dim=0, top_k=3, batch_size=4, lr_weighting=True)
    df = influence(tiny_model, dirs, train, test, tok, spec, masks={"aa": None, "bb": mask}, max_length=16)
    assert len(df) == 4 * 3 * 2 * 3
    from subnet_ray.data.tokenization import encode
    from subnet_ray.models.classifier import load_checkpoint

    model = tiny_model()
    linears = select_linears(model, LAYERS)
    for t in test:
        m = mask if t.language == "bb" else None
        total = torch.zeros(len(train))
        for d in dirs:
            lr = load_checkpoint(model, d)["lr_mean"]
            g_train = brute_grads(model, encode(train, tok, 16), linears, m)
            g_test = brute_grads(model, encode([t], tok, 16), linears, m)
            total += lr * F.cosine_similarity(g_test, g_train, dim=1)
        got = df[(df.test_id == t.id) & (df.checkpoint == -1) & (df.sign == "pos")].sort_values("rank")
        order = torch.argsort(total, descending=True)[:3]
        assert got.train_id.tolist() == [train[j].id for j in order]
        np.testing.assert_allclose(got.score.to_numpy(), total[order].numpy(), rtol=1e-4)
        assert (got.test_language == t.language).all()


@pytest.mark.slow  # 40-70 s here (load-dependent): Ray start-up and one actor pool for all checkpoints
def test_ray_data_path_equals_single_process_path(tmp_path, tmp_path_factory, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token written under the home folder
    from subnet_ray.influence.pipeline import Job, influence_jobs
    from subnet_ray.influence.pipeline import JobPlan
    from subnet_ray.orchestration.influence_ray import influence_ray, influence_ray_jobs, ray_passes

    dirs = _checkpoints(tmp_path)
    tok = word_tokenizer()
    train, test = examples(24, "train", 2), examples(6, "test", 3)
    mask = torch.ones(2, 4)
    mask[0, 3] = 0
    other = torch.ones(2, 4)
    other[1, 1:3] = 0
    masks = {"aa": mask, "bb": None}
    spec = InfluenceSpec(proj_dim=16, top_k=5, batch_size=4, actors=2, projection_seed=3)
    ref = influence(tiny_model, dirs, train, test, tok, spec, masks=masks, max_length=16)
    temp = str(tmp_path_factory.mktemp("r"))  # short: Ray's socket paths are capped at 107 bytes
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False)
    try:
        # Workers cannot import tests/tiny.py: give them a factory from the installed package.
        factory = functools.partial(build_model, TINY, num_labels=2, vocab_size=VOCAB)
        # all 6 test examples in one shard, scored in the driver (shards scored by Ray tasks: `many` and `mixed`)
        one = influence_ray(factory, dirs, train, test, tok, spec, masks=masks, max_length=16,
                            sketch_dir=str(tmp_path / "sketches"))
        # two jobs (a second mask on the aa examples), one actor pool per mask (budget 0): the jobs' tables
        jobs = [Job("a", test, masks), Job("b", [t for t in test if t.language == "aa"], {"aa": other})]
        done, seen, phases = [], [], []
        pools = _counting_pools(monkeypatch, ray)
        many = influence_ray_jobs(factory, dirs, train, jobs, tok, spec, max_length=16, budget_mb=0, shard_size=2,
                                  on_checkpoint=lambda m, meta: seen.append(meta["epoch"]), on_done=lambda n, t: done.append(n),
                                  on_phase=lambda name, s, counts: phases.append((name, counts)))
        pools_of_many = list(pools)
        # A sweep's variants of one model in one pass (issue 33's shape, small): no mask, one mask per language, another
        # language's mask, random masks; batches of 5 mix masks and straddle blocks and checkpoints, shards of 3 tests.
        langs = ("aa", "bb", "cc")
        tri, tri_test = examples(36, "train", 4, langs), examples(15, "test", 5, langs)
        g = torch.Generator().manual_seed(7)
        own = {lang: (torch.rand(2, 4, generator=g) > 0.4).float() for lang in langs}
        rand = {lang: m.flatten()[torch.randperm(8, generator=g)].view(2, 4) for lang, m in own.items()}
        variants = [Job("full", tri_test, None), Job("subnet", tri_test, own),
                    Job("subopt", [t for t in tri_test if t.language == "aa"], {"aa": own["cc"]}), Job("random", tri_test, rand)]
        spec5 = spec.model_copy(update={"batch_size": 5})
        mixed = influence_ray_jobs(factory, dirs, tri, variants, tok, spec5, max_length=16, shard_size=3)
    finally:
        ray.shutdown()
    assert seen == [1, 2] and sorted(done) == ["a", "b"]
    # what estimate counts (planning/cost/ray_data.py: ray_passes) is what ran: pools started, rows, scoring tasks sent
    planned = ray_passes(JobPlan(tiny_model(), train, jobs), 1, 0, spec.batch_size, spec.actors, 2)
    assert len(pools_of_many) == len(planned) == 3  # budget 0: one pass per distinct mask (mask, none, other)
    assert len(pools) == 4  # and the mixed call's one pass
    assert [c["rows"] for n, c in phases if n == "rows"] == [p.rows for p in planned]
    assert sorted(c["tasks"] for n, c in phases if n == "score") == sorted(t for p in planned for t in p.shards.values())
    want = influence_jobs(tiny_model, dirs, train, jobs, tok, spec, max_length=16)
    want_mixed = influence_jobs(tiny_model, dirs, tri, variants, tok, spec5, max_length=16)
    key = ["test_id", "checkpoint", "sign", "rank"]
    for got, ref in ((one, ref), (many["a"], want["a"]), (many["b"], want["b"]),
                     *((mixed[v.name], want_mixed[v.name]) for v in variants)):
        ref = ref.sort_values(key).reset_index(drop=True)
        got = got.sort_values(key).reset_index(drop=True)
        assert got[key + ["train_id", "train_language", "test_language"]].equals(ref[key + ["train_id", "train_language", "test_language"]])
        np.testing.assert_allclose(got.score.to_numpy(), ref.score.to_numpy(), rtol=1e-4, atol=1e-6)
    assert len(list((tmp_path / "sketches" / "epoch_1").glob("*.parquet"))) >= 1


def _counting_pools(monkeypatch, ray) -> list:
    """Returns a list that gets one entry per Ray Data actor pool the driver asks for (ActorPoolStrategy made)."""
    made, real = [], ray.data.ActorPoolStrategy

    def counting(*args, **kwargs):
        made.append(kwargs.get("size"))
        return real(*args, **kwargs)
    monkeypatch.setattr(ray.data, "ActorPoolStrategy", counting)
    return made


def _fails_once(marker: str, driver: int, factory):
    """A model factory whose first call outside the driver, in whichever process claims `marker`, raises (so that
    actor dies in its creation task, which Ray does not restart)."""
    import os

    if os.getpid() == driver:
        return factory()
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return factory()
    raise RuntimeError("this actor is lost while it starts")


@pytest.mark.slow  # ~20 s: Ray start-up, an actor that dies and its replacement
def test_ray_data_pass_replaces_an_actor_that_dies_while_starting(tmp_path, tmp_path_factory, monkeypatch):
    """A sketching actor lost while it starts (as one was on a busy CI node) is replaced and the tables are
    the single-process ones; Ray Data's default fails the whole pass on the first such death."""
    import os
    import sys

    from ray import cloudpickle  # Ray pickles with its own copy

    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    from subnet_ray.orchestration.influence_ray import influence_ray

    dirs = _checkpoints(tmp_path)
    tok = word_tokenizer()
    train, test = examples(12, "train", 2), examples(4, "test", 2)
    spec = InfluenceSpec(proj_dim=16, top_k=3, batch_size=4, actors=1, projection_seed=1)
    ref = influence(tiny_model, dirs, train, test, tok, spec, max_length=16)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    ray.init(num_cpus=2, _temp_dir=str(tmp_path_factory.mktemp("r")), include_dashboard=False, log_to_driver=False)
    try:
        factory = functools.partial(_fails_once, str(tmp_path / "died"), os.getpid(), functools.partial(build_model, TINY, num_labels=2, vocab_size=VOCAB))
        got = influence_ray(factory, dirs, train, test, tok, spec, max_length=16)
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert (tmp_path / "died").exists()
    key = ["test_id", "checkpoint", "sign", "rank"]
    got, ref = got.sort_values(key).reset_index(drop=True), ref.sort_values(key).reset_index(drop=True)
    assert got[key + ["train_id"]].equals(ref[key + ["train_id"]])
    np.testing.assert_allclose(got.score.to_numpy(), ref.score.to_numpy(), rtol=1e-4, atol=1e-6)


def _old_influence(model, dirs, train, test, tok, spec, masks, max_length):
    """The single-job loop as it was before jobs shared work (mask group, then checkpoint, then train and test)."""
    from subnet_ray.influence.pipeline import as_sketches, sketch_examples
    from subnet_ray.models.classifier import load_checkpoint

    metas = checkpoint_metas(model, dirs)
    linears = select_linears(model, spec.layers)
    layout, frames = layer_dims(linears, spec.proj_dim), []
    for group in mask_groups(model, sorted({ex.language for ex in test}), masks):
        group_test = [ex for ex in test if ex.language in group.languages]
        sk_train, sk_test = [], []
        for meta in metas:
            load_checkpoint(model, meta["dir"])
            for exs, sink in ((train, sk_train), (group_test, sk_test)):
                ordered, values = sketch_examples(model, exs, tok, spec, max_length, group.mask)
                sink.append(as_sketches([e.id for e in ordered], [e.language for e in ordered], values, layout, spec, meta, group.key))
        frames.append(top_influences(sk_test, sk_train, spec.top_k, spec.lr_weighting))
    return pd.concat(frames, ignore_index=True)


def test_influence_jobs_share_loads_and_sketches_and_equal_separate_runs(tmp_path, monkeypatch):
    """Four variants of one model (as a sweep's full, full+subnet, full+subopt, full+random): one load per
    checkpoint, the training set sketched once per distinct mask and checkpoint, and each table equal to
    the old one-variant loop bit for bit and to brute-force double-precision TracIn within 1e-5 relative."""
    import subnet_ray.influence.pipeline as pipeline
    from subnet_ray.influence.pipeline import Job, influence_jobs
    from subnet_ray.models.classifier import load_checkpoint
    from subnet_ray.data.tokenization import encode

    dirs = _checkpoints(tmp_path)
    tok = word_tokenizer()
    train, test = examples(10, "train", 0), examples(6, "test", 1)
    aa = [t for t in test if t.language == "aa"]
    m = {i: torch.ones(2, 4) for i in (1, 2, 3)}
    m[1][1, :2] = 0
    m[2][0, 3] = 0
    m[3][0, :2] = 0
    jobs = [Job("full", test), Job("subnet", test, {"aa": m[1], "bb": m[2]}),
            Job("subopt", aa, {"aa": m[2]}),  # subnet's bb mask on other test examples: its training sketches are shared
            Job("random", aa, {"aa": m[3]})]
    spec = InfluenceSpec(proj_dim=0, top_k=3, batch_size=4, lr_weighting=True)
    loads, sketched = [], []
    monkeypatch.setattr(pipeline, "load_checkpoint", lambda model, d: loads.append(d) or load_checkpoint(model, d))
    real_sketch = pipeline.sketch_examples

    def counting_sketch(model, exs, *a, **kw):
        sketched.append(len(exs))
        return real_sketch(model, exs, *a, **kw)

    monkeypatch.setattr(pipeline, "sketch_examples", counting_sketch)
    double = lambda: tiny_model().double()  # noqa: E731
    seen, done = [], []
    got = influence_jobs(double, dirs, train, jobs, tok, spec, max_length=16,
                         on_checkpoint=lambda model, meta: seen.append(meta["epoch"]), on_done=lambda name, t: done.append(name))
    assert len(loads) == 2 and seen == [1, 2] and sorted(done) == sorted(got) == sorted(j.name for j in jobs)
    assert sketched.count(len(train)) == 2 * 4  # 4 distinct masks (none, m1, m2, m3) x 2 checkpoints, not 2 x 5 groups
    assert len(sketched) == 2 * (4 + 5)  # test sets: full (all), subnet aa, subnet bb, subopt aa, random aa
    loads.clear()
    one_per_pass = influence_jobs(double, dirs, train, jobs, tok, spec, max_length=16, budget_mb=0)
    assert len(loads) == 2 * 4  # a budget too small for two masks: one pass per mask, one load per checkpoint each

    model = tiny_model().double()
    linears = select_linears(model, LAYERS)
    for job in jobs:
        old = _old_influence(tiny_model().double(), dirs, train, job.test, tok, spec, job.masks, 16)
        pd.testing.assert_frame_equal(got[job.name], old)
        pd.testing.assert_frame_equal(one_per_pass[job.name], old)
        for t in job.test:
            mask = (job.masks or {}).get(t.language)
            total = torch.zeros(len(train), dtype=torch.float64)
            for d in dirs:
                lr = load_checkpoint(model, d)["lr_mean"]
                g_train = brute_grads(model, encode(train, tok, 16), linears, mask)
                g_test = brute_grads(model, encode([t], tok, 16), linears, mask)
                total += lr * F.cosine_similarity(g_test, g_train, dim=1)
            for sign, desc in (("pos", True), ("neg", False)):
                rows = got[job.name]
                rows = rows[(rows.test_id == t.id) & (rows.checkpoint == -1) & (rows.sign == sign)].sort_values("rank")
                order = torch.argsort(total, descending=desc)[:3]
                assert rows.train_id.tolist() == [train[j].id for j in order], (job.name, t.id, sign)
                np.testing.assert_allclose(rows.score.to_numpy(), total[order].numpy(), rtol=1e-5)


def test_sketching_never_forms_a_weight_or_embedding_gradient():
    """Weights are frozen and the first sketched layers' outputs are the autograd leaves, so the
    backward pass stops above the embeddings (a 250k-row word embedding never gets a gradient) and
    no parameter's .grad is ever set: only activation gradients are computed."""
    model = tiny_model()
    batch = tiny_batch(n=4, length=10, seed=6)
    seen = []
    handle = model.encoder.embeddings.register_forward_hook(lambda mod, args, out: seen.append(out.requires_grad))
    try:
        sketch_batch(model, batch, select_linears(model, LAYERS), Projector(16, seed=0))
    finally:
        handle.remove()
    assert seen == [False]  # nothing below the first sketched layer is in the autograd graph
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # and the weights are unfrozen again
