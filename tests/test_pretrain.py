"""Masked-LM pre-training of the tiny encoder: masking, the stage's keys, and what fine-tuning starts from."""
import json

import numpy as np
import pytest
import torch

from subnet_ray.data import babel as babel_mod
from subnet_ray.sweep.config import PretrainSpec, SweepSpec, TaskSpec
from subnet_ray.data.examples import babel_languages, load_examples, tokenizer_for
from subnet_ray.sweep.graph import Stage, graph
from subnet_ray.models.classifier import build_model
from subnet_ray.train.pretrain import ENCODER, HISTORY, corpus, load_pretrained, mask_tokens, pretrain

SWEEP = {
    "name": "pt",
    "tasks": [{"id": "babel", "languages": ["xa", "ya"], "train_size": 40, "dev_size": 20, "test_size": 10,
               "babel": {"families": [["xa"], ["ya"]], "length": 8, "counted": 0.5, "morphology": "isolating"}}],
    "model": {"name": "tiny", "tiny": {"layers": 2, "heads": 4, "hidden": 16, "intermediate": 32, "max_positions": 32},
              "pretrain": {"sentences": 60, "epochs": 1}},
    "training": {"lr": 1e-3, "epochs": 2, "batch_size": 8, "max_length": 16, "seeds": [1, 2]},
    "influence": {"proj_dim": 16, "top_k": 5, "test_per_language": 5},
    "methods": ["full", "sft", "random-sft"],
    "random_seeds": [1],
}


def sweep(**changes) -> SweepSpec:
    raw = json.loads(json.dumps(SWEEP))
    for path, value in changes.items():
        *head, last = path.split("__")
        d = raw
        for k in head:
            d = d[int(k)] if isinstance(d, list) else d[k]
        d[last] = value
    return SweepSpec.model_validate(raw)


def test_mask_tokens_follows_berts_recipe():
    g = torch.Generator().manual_seed(0)
    vocab = 50
    special = torch.zeros(vocab, dtype=torch.bool)
    special[:5] = True
    ids = torch.randint(5, vocab, (400, 50), generator=g)
    ids[:, 0], ids[:, -1], ids[:10, 30:] = 2, 3, 0  # [CLS], [SEP], padding
    ordinary = torch.arange(5, vocab)
    inputs, labels = mask_tokens(ids, special, 4, ordinary, 0.15, g)
    chosen = labels != -100
    assert not chosen[special[ids]].any()  # never a special token, padding included
    assert (labels[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
    assert abs(chosen.float().sum() / (~special[ids]).sum() - 0.15) < 0.01
    n = chosen.sum().item()
    masked, kept = (inputs[chosen] == 4).sum().item() / n, (inputs[chosen] == ids[chosen]).sum().item() / n
    assert abs(masked - 0.8) < 0.03 and 0.07 < kept < 0.14  # kept: the 10% unchanged plus random draws of the same id
    assert not special[inputs[chosen & (inputs != 4)]].any()  # random replacements are ordinary tokens


def test_corpus_is_every_language_rendering_its_own_unseen_items():
    task = TaskSpec.model_validate(SWEEP["tasks"][0])
    texts = corpus(task, 30)
    world = babel_languages(task)
    concepts, _, _ = babel_mod.latent_sample(world, "pretrain", 30)
    assert texts == babel_mod.render(world, "xa", concepts) + babel_mod.render(world, "ya", concepts)
    seen = {e.text for split in ("train", "dev", "test") for e in load_examples(task, split)}
    assert not seen & set(texts)


def test_corpus_of_a_file_task_is_its_training_texts_and_pairs(tmp_path):
    from test_data import task, write, xnli_rows

    for lang in ("en", "de"):
        write(tmp_path / lang / "train.jsonl", xnli_rows(9, lang))
    t = task("xnli", tmp_path, languages=["en", "de"], sizes=(5, 2, 2))
    train = load_examples(t, "train")
    texts = corpus(t, 3)
    want = [s for lang in ("en", "de") for e in [x for x in train if x.language == lang][:3] for s in (e.text, e.text_pair)]
    assert texts == want and len(texts) == 12


def test_pretraining_lowers_the_loss_and_the_encoder_goes_into_a_fresh_classifier(tmp_path):
    spec = sweep()
    task = spec.tasks[0]
    tok = tokenizer_for(task)
    cfg = PretrainSpec(sentences=200, epochs=3, lr=3e-3, batch_size=16)
    history = pretrain(spec.model.tiny, tok, corpus(task, cfg.sentences), cfg, 16, tmp_path / "a", progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[2]["mlm_loss"] < history[1]["mlm_loss"] < history[0]["mlm_loss"] - 0.3
    assert json.loads((tmp_path / "a" / HISTORY).read_text()) == history
    pretrain(spec.model.tiny, tok, corpus(task, cfg.sentences), cfg, 16, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / ENCODER).read_bytes() == (tmp_path / "b" / ENCODER).read_bytes()  # one seed, one encoder

    fresh = build_model(spec.model, 2, len(tok), seed=7)
    model = build_model(spec.model, 2, len(tok), seed=7)
    load_pretrained(model, tmp_path / "a")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "a" / ENCODER))
    assert set(saved) == set(model.encoder.state_dict())
    assert all(torch.equal(v, saved[k]) for k, v in model.encoder.state_dict().items())
    # the classifier head keeps the training seed's initialisation
    assert all(torch.equal(v, fresh.classifier.state_dict()[k]) for k, v in model.classifier.state_dict().items())
    with pytest.raises(FileNotFoundError, match="no pre-trained encoder"):
        load_pretrained(model, tmp_path / "nothing")


def test_one_pretraining_node_per_task_shared_by_every_seed_and_method():
    nodes = graph(sweep())
    pre = [n for n in nodes if n.stage == Stage.PRETRAIN]
    assert len(pre) == 1 and pre[0].wave == 0 and pre[0].trial == "babel/pretrain"
    tuned = [n for n in nodes if n.stage == Stage.FINETUNE]
    assert len(tuned) == 6 and all(n.params.init == pre[0].key and pre[0].key in n.inputs for n in tuned)
    # what does not change the text, the sizes or the pre-training settings shares the encoder...
    for other in (sweep(training__lr=3e-3), sweep(training__seeds=[5]), sweep(tasks__0__train_size=80), sweep(random_seeds=[4])):
        assert [n.key for n in graph(other) if n.stage == Stage.PRETRAIN] == [pre[0].key]
    # ...what does, does not, and fine-tuning keys follow
    for other in (sweep(model__pretrain__epochs=2), sweep(model__tiny__hidden=32), sweep(tasks__0__data_seed=1)):
        (key,) = [n.key for n in graph(other) if n.stage == Stage.PRETRAIN]
        assert key != pre[0].key
    # a grid over fine-tuning settings: one encoder for both branches, named without their values
    gridded = [n for n in graph(sweep(grid={"training.lr": [1e-3, 3e-3]})) if n.stage == Stage.PRETRAIN]
    assert [(n.key, n.trial) for n in gridded] == [(pre[0].key, "babel/pretrain")]
    (tiny_grid,) = [[n.trial for n in graph(sweep(grid={"model.tiny.hidden": [16, 32]})) if n.stage == Stage.PRETRAIN]]
    assert tiny_grid == ["babel/pretrain/hidden=16", "babel/pretrain/hidden=32"]
    changed = {n.key for n in graph(sweep(model__pretrain__lr=2e-3)) if n.stage == Stage.FINETUNE}
    assert not changed & {n.key for n in tuned}
    # without pre-training: no such node, and fine-tuning starts from random initialisation
    plain = graph(sweep(model__pretrain=None))
    assert not [n for n in plain if n.stage == Stage.PRETRAIN]
    assert all(n.params.init is None and "init" not in n.params.config for n in plain if n.stage == Stage.FINETUNE)


def test_pretraining_is_for_the_tiny_model_and_pruning_steps_must_disable_a_head():
    with pytest.raises(ValueError, match="model.pretrain is for the tiny model"):
        sweep(model__name="xlm-roberta-base")
    with pytest.raises(ValueError, match="rounds to 0 heads per pruning step"):
        sweep(model__tiny__heads=2, model__tiny__layers=1)


def test_a_pretrained_sweep_runs_and_a_new_seed_reuses_the_encoder(tmp_path):
    from subnet_ray.orchestration.runner import ledger, run_sweep
    from subnet_ray.storage.store import store_for

    spec = sweep(methods=["full"], training__seeds=[1])
    run = run_sweep(spec, tmp_path, executor="local", progress=False)
    store = store_for(str(tmp_path))
    stages = [e["stage"] for e in ledger(store)]
    assert stages.count("pretrain") == 1 and run.reports
    (pre,) = [n for n in graph(spec) if n.stage == Stage.PRETRAIN]
    full = next(n for n in graph(spec) if n.stage == Stage.FINETUNE)
    history = json.loads((store.path(full.key) / "history.json").read_text())
    assert len(history) == 2
    more = sweep(methods=["full"], training__seeds=[1, 2])
    run_sweep(more, tmp_path, executor="local", progress=False)
    assert [e["stage"] for e in ledger(store)].count("pretrain") == 1  # seed 2 started from the same encoder
    assert np.isfinite(json.loads((store.path(pre.key) / HISTORY).read_text())[0]["mlm_loss"])
