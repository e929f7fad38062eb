"""Step progress of long stages: what fine-tuning reports per step, and the throttled line with an ETA."""
from subnet_ray.sweep.config import TrainSpec
from subnet_ray.orchestration.progress import StepProgress, eta_text
from subnet_ray.train.finetune import epoch_plan, finetune
from tiny import tiny_babel_model, tiny_data


def test_finetune_reports_every_step_of_every_epoch(tmp_path):
    _, train, dev, _, tok = tiny_data()
    cfg = TrainSpec(lr=5e-3, epochs=2, batch_size=8, max_length=16, seeds=[1])
    calls = []
    finetune(tiny_babel_model(tok), train, dev, tok, cfg, tmp_path, seed=1, progress=False,
             on_step=lambda *a: calls.append(a))
    per_epoch = len(epoch_plan(train, 8, 1, 0, False))
    total = 2 * per_epoch
    assert calls == [(s, total, 1 + (s - 1) // per_epoch, 2) for s in range(1, total + 1)]


def test_progress_line_is_throttled_and_has_an_eta():
    now = [0.0]
    sent = []
    p = StepProgress("babel/full/seed1 finetune", sent.append, interval=10, clock=lambda: now[0])
    for step in range(1, 101):
        now[0] = step * 0.5  # 2 steps a second
        p(step, 100, 1 + (step - 1) // 50, 2)
    # at most one line per 10 s of 50 s, and always the last step
    assert len(sent) == 6 and sent[-1].endswith("step 100/100 (100%), ETA 0s")
    # sent at 10.5 s (step 21): 2 steps a second since step 1, 79 steps left
    assert sent[0] == "babel/full/seed1 finetune: epoch 1/2, step 1/100 (1%)"
    assert sent[1] == "babel/full/seed1 finetune: epoch 1/2, step 21/100 (21%), ETA 40s"
    assert eta_text(3725) == "1h02m" and eta_text(185) == "3m05s" and eta_text(42) == "42s"


def test_pruning_reports_each_language_it_has_searched():
    from subnet_ray.sweep.config import SubnetworkSpec
    from subnet_ray.subnetworks.pruning import find_subnetworks
    from subnet_ray.train.finetune import by_language

    _, _, dev, _, tok = tiny_data()
    calls = []
    subs = find_subnetworks(tiny_babel_model(tok), by_language(dev), tok, SubnetworkSpec(threshold=0.8, step_fraction=0.25),
                            max_length=16, on_step=lambda *a: calls.append(a))
    assert calls == [(1, 3), (2, 3), (3, 3)] and len(subs) == 3
    lines = []
    StepProgress("babel/full/seed1 subnetworks", lines.append, interval=0, unit="language")(2, 3)
    assert lines == ["babel/full/seed1 subnetworks: language 2/3 (66%)"]


def test_sketching_reports_examples_sketched_over_groups_and_checkpoints(tmp_path):
    import torch

    from subnet_ray.sweep.config import InfluenceSpec
    from subnet_ray.influence.pipeline import influence
    from test_influence import _checkpoints, examples, word_tokenizer
    from tiny import tiny_model

    dirs = _checkpoints(tmp_path)
    train, test = examples(10, "train", 0), examples(4, "test", 1)
    mask = torch.ones(2, 4)
    mask[1, :2] = 0
    calls = []
    influence(tiny_model, dirs, train, test, word_tokenizer(), InfluenceSpec(proj_dim=16, top_k=3, batch_size=4),
              masks={"aa": None, "bb": mask}, max_length=16, on_step=lambda *a: calls.append(a))
    # two mask groups (aa unmasked, bb masked), each sketches the 10 training and its 2 test examples per checkpoint
    total = len(dirs) * 2 * (10 + 2)
    assert {t for _, t in calls} == {total} and calls[-1] == (total, total)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(done) == len(dirs) * 2 * (3 + 1)  # batches of 4: 3 train + 1 test each
