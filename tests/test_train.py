import pytest
import torch
from safetensors.torch import load_file

from subnet_ray.sweep.config import TrainSpec
from subnet_ray.models.classifier import head_parameter_masks
from subnet_ray.train.finetune import RESUME, NonFiniteLossError, checkpoints, epoch_plan, evaluate, finetune
from tiny import tiny_babel_model, tiny_data

CFG = TrainSpec(lr=5e-3, epochs=2, batch_size=8, max_length=16, seeds=[1])


@pytest.fixture(scope="module")
def data():
    return tiny_data()


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def assert_same_checkpoints(a, b):
    ca, cb = checkpoints(a), checkpoints(b)
    assert [p.name for p in ca] == [p.name for p in cb]
    for pa, pb in zip(ca, cb):
        wa, wb = weights(pa), weights(pb)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_identical_runs_give_identical_checkpoints(data, tmp_path):
    _, train, dev, _, tok = data
    h1 = finetune(tiny_babel_model(tok), train, dev, tok, CFG, tmp_path / "a", seed=1, progress=False)
    h2 = finetune(tiny_babel_model(tok), train, dev, tok, CFG, tmp_path / "b", seed=1, progress=False)
    assert h1 == h2 and len(h1) == 2 and set(h1[0]["dev_accuracy"]) == {"xa", "xb", "ya"}
    assert_same_checkpoints(tmp_path / "a", tmp_path / "b")
    finetune(tiny_babel_model(tok), train, dev, tok, CFG, tmp_path / "c", seed=2, progress=False)
    assert not torch.equal(weights(tmp_path / "a" / "epoch_2")["classifier.dense.weight"],
                           weights(tmp_path / "c" / "epoch_2")["classifier.dense.weight"])


def reference_and_run_interrupted_after_epoch_1(data, tmp_path):
    """Trains the reference into tmp/ref and a run into tmp/run that is interrupted after its first epoch."""
    _, train, dev, _, tok = data
    finetune(tiny_babel_model(tok), train, dev, tok, CFG, tmp_path / "ref", seed=1, progress=False)

    def crash(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_babel_model(tok), train, dev, tok, CFG, tmp_path / "run", seed=1, on_epoch=crash, progress=False)


def test_interrupted_run_resumes_to_the_same_checkpoints(data, tmp_path):
    _, train, dev, _, tok = data
    reference_and_run_interrupted_after_epoch_1(data, tmp_path)
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["epoch_1"]
    finetune(tiny_babel_model(tok), train, dev, tok, CFG, tmp_path / "run", seed=1, progress=False)
    assert_same_checkpoints(tmp_path / "ref", tmp_path / "run")


def test_resume_state_cut_short_starts_the_stage_over(data, tmp_path):
    _, train, dev, _, tok = data
    reference_and_run_interrupted_after_epoch_1(data, tmp_path)
    opt = tmp_path / "run" / RESUME / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])  # killed mid-write, or a full disk
    with pytest.warns(UserWarning, match="cannot resume .*fine-tuning starts over"):
        finetune(tiny_babel_model(tok), train, dev, tok, CFG, tmp_path / "run", seed=1, progress=False)
    assert_same_checkpoints(tmp_path / "ref", tmp_path / "run")


def test_sft_batches_are_single_language_and_balanced(data):
    _, train, _, _, _ = data
    plan = epoch_plan(train[:-5], 5, seed=3, epoch=1, sparse=True)  # one language has fewer examples
    langs = [b[0].language for b in plan]
    assert all(len({e.language for e in b}) == 1 for b in plan)
    assert len({langs.count(l) for l in set(langs)}) == 1  # every language equally often
    assert langs != sorted(langs)  # random order, not language blocks


def masks_for(langs):
    m = torch.ones(2, 4)
    m[0, 1] = 0
    m[1, 3] = 0
    return {l: m for l in langs}


@pytest.mark.parametrize("mode", ["strict", "paper"])
def test_sft_disabled_heads(data, tmp_path, mode):
    _, train, dev, _, tok = data
    model = tiny_babel_model(tok)
    masks = masks_for(["xa", "xb", "ya"])
    before = {id(p): p.detach().clone() for p, _ in head_parameter_masks(model, masks["xa"])}
    cfg = CFG.model_copy(update={"sft_mode": mode, "epochs": 1})
    finetune(model, train, dev, tok, cfg, tmp_path, seed=1, masks=masks, progress=False)
    moved_disabled = moved_enabled = 0
    for p, m in head_parameter_masks(model, masks["xa"]):
        off = (m.expand_as(p) == 0)
        moved_disabled += (p.detach() != before[id(p)])[off].sum().item()
        moved_enabled += (p.detach() != before[id(p)])[~off].sum().item()
    assert moved_enabled > 0
    if mode == "strict":
        assert moved_disabled == 0  # bit-identical
    else:
        assert moved_disabled > 0  # AdamW weight decay still moves them: the paper's behaviour


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    _, train, dev, _, tok = data

    def poison(record):
        with torch.no_grad():
            model.classifier["out_proj"].weight.fill_(float("nan"))

    model = tiny_babel_model(tok)
    with pytest.raises(NonFiniteLossError, match="epoch 2.*last good checkpoint"):
        finetune(model, train, dev, tok, CFG, tmp_path, seed=1, on_epoch=poison, progress=False)
    assert [p.name for p in checkpoints(tmp_path)] == ["epoch_1"]
    assert torch.isfinite(weights(tmp_path / "epoch_1")["classifier.out_proj.weight"]).all()


def test_sft_needs_a_mask_for_every_language(data, tmp_path):
    _, train, dev, _, tok = data
    with pytest.raises(ValueError, match=r"missing \['ya'\]"):
        finetune(tiny_babel_model(tok), train, dev, tok, CFG, tmp_path, seed=1, masks=masks_for(["xa", "xb"]))
    assert not any(tmp_path.glob("epoch_*"))


def test_evaluate_accuracy_is_fraction_of_correct_predictions(data):
    _, _, dev, _, tok = data
    model = tiny_babel_model(tok)
    r = evaluate(model, dev, tok, 16, batch_size=5)
    assert r["accuracy"] == sum(p == e.label for p, e in zip(r["preds"], dev)) / len(dev)
    assert len(r["preds"]) == len(dev)


def test_checkpoint_lr_weight_is_the_mean_step_size_of_its_epoch(data, tmp_path, monkeypatch):
    # TracInCP weights a checkpoint by the step sizes taken since the previous one: the mean
    # rate over its epoch's steps, not the rate at its last step (~0 for the last epoch).
    import subnet_ray.train.finetune as train_mod

    _, train, dev, _, tok = data
    used = []
    real_step = train_mod.train_step

    def spy(model, batch, optimizer, *a, **kw):
        used.append(optimizer.param_groups[0]["lr"])
        return real_step(model, batch, optimizer, *a, **kw)

    monkeypatch.setattr(train_mod, "train_step", spy)
    cfg = CFG.model_copy(update={"epochs": 3, "warmup": 0.2})
    history = finetune(tiny_babel_model(tok), train, dev, tok, cfg, tmp_path / "w", seed=1, progress=False)
    S = len(epoch_plan(train, cfg.batch_size, 1, 1, False))
    assert len(used) == 3 * S
    # the schedule by hand: linear warm-up over the first int(0.2 T) steps, then linear decay to 0
    T, warm = 3 * S, int(0.2 * 3 * S)
    by_hand = [cfg.lr * ((s + 1) / warm if s < warm else (T - s) / (T - warm)) for s in range(T)]
    assert used == pytest.approx(by_hand, rel=1e-12)
    for e, rec in enumerate(history):
        assert rec["lr_mean"] == pytest.approx(sum(by_hand[e * S:(e + 1) * S]) / S, rel=1e-12)
    assert history[-1]["lr"] == pytest.approx(cfg.lr / (T - warm))  # the last step's rate: tiny
    assert history[-1]["lr_mean"] > 3 * history[-1]["lr"]  # (S + 1) / 2 times it


def test_train_step_clips_the_masked_gradients_to_max_grad_norm():
    from subnet_ray.train.finetune import train_step
    from tiny import tiny_batch, tiny_model

    def grad_norm_after(max_grad_norm, masked):
        model = tiny_model(seed=0).train()
        batch = tiny_batch()
        batch["labels"] = torch.tensor([0, 1, 0, 1, 0, 1])
        opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: only the gradients change
        mask = torch.ones(model.num_layers, model.num_heads)
        mask[0, :2] = 0
        pmasks = head_parameter_masks(model, mask) if masked else None
        train_step(model, batch, opt, pmasks, max_grad_norm=max_grad_norm)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item(), pmasks

    free, _ = grad_norm_after(None, False)
    assert free > 0.05
    clipped, _ = grad_norm_after(0.05, False)
    assert clipped == pytest.approx(0.05, rel=1e-4)
    assert grad_norm_after(10 * free, False)[0] == pytest.approx(free, rel=1e-6)  # under the bound: untouched
    # SFT: the disabled heads' gradients are zeroed first and stay zero after clipping
    clipped, pmasks = grad_norm_after(0.05, True)
    assert clipped == pytest.approx(0.05, rel=1e-4)
    assert any((m == 0).any() for _, m in pmasks) and all(((1 - m) * p.grad).abs().sum() == 0 for p, m in pmasks)


def test_a_resumed_fine_tuning_stage_publishes_the_same_bytes_as_an_uninterrupted_one(tmp_path):
    """The smoke sweep's full fine-tuning node through stages.execute: once straight through, once stopped after
    epoch 1 (its partial folder kept, as after a crash or a full disk) and run again, which resumes from the epoch
    checkpoint. Every published file, history.json and the manifest included, is byte-identical."""
    from subnet_ray.sweep.config import load_sweep
    from subnet_ray.sweep.graph import graph
    from subnet_ray.stages import execute
    from subnet_ray.storage.store import store_for
    from tiny import smoke_sweep

    path = tmp_path / "resume.yaml"
    path.write_text(smoke_sweep("resume", ("methods: [full, sft, random-sft]", "methods: [full]"), ("epochs: 2", "epochs: 3")))
    spec = load_sweep(path)
    node = next(n for n in graph(spec) if n.stage == "finetune")
    straight, resumed = store_for(tmp_path / "straight"), store_for(tmp_path / "resumed")
    assert execute(node, spec, straight, progress=False)

    def stop(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(node, spec, resumed, progress=False, on_epoch=stop)
    assert not resumed.done(node.key) and (resumed.partial(node.key) / RESUME).is_dir()
    epochs = []
    assert execute(node, spec, resumed, progress=False, on_epoch=lambda r: epochs.append(r["epoch"]))
    assert epochs == [2, 3]  # it resumed: epoch 1 was not trained again
    a, b = straight.path(node.key), resumed.path(node.key)
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert "history.json" in files and "_manifest.json" in files and "epoch_3/model.safetensors" in files
    differ = [f for f in files if (a / f).read_bytes() != (b / f).read_bytes()]
    assert not differ, differ
