"""subnet-ray estimate: bytes counted exactly, hours calibrated within 30% of a measured smoke sweep."""
import json
import time

import pytest
import torch

from subnet_ray.cli import main
from subnet_ray.config import load_sweep
from subnet_ray.estimate import estimate, param_count
from subnet_ray.influence.sketch import layer_dims, select_linears
from subnet_ray.graph import graph
from subnet_ray.stages import execute, model_factory, task_data
from subnet_ray.store import store_for
from tiny import SMOKE


def test_static_estimate_counts_checkpoint_and_sketch_bytes_exactly():
    spec = load_sweep(SMOKE)
    est = estimate(spec, timed=False)
    task, data, tok = task_data(spec, "babel")
    model = model_factory(spec, task, tok, 0)()
    assert len(est.nodes) == len(graph(spec)) and all(n.seconds == 0 for n in est.nodes)
    per_ckpt = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert param_count(model) * 4 == per_ckpt
    stages = est.by_stage(1, 0)
    assert stages["finetune"]["checkpoint_bytes"] == 3 * spec.training.epochs * per_ckpt  # full, sft, random-sft x1
    dim = sum(d for _, d in layer_dims(select_linears(model, spec.influence.layers), spec.influence.proj_dim))
    full = next(n for n, g in zip(est.nodes, [x for x in graph(spec)]) if getattr(g.params, "variant", None) == "full")
    n_test = 3 * spec.influence.test_per_language  # one group: the full model for all three languages
    assert full.sketch_bytes == spec.training.epochs * (len(data["train"]) + n_test) * dim * 4


def test_estimate_prints_a_table_and_json(capsys):
    assert main(["estimate", str(SMOKE)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["stage", "outputs"] and out[-1].startswith("{")
    got = json.loads(out[-1])
    assert set(got["stages"]) == {"finetune", "subnetworks", "random_masks", "influence", "total"}
    assert got["stages"]["total"]["hours"] > 0 and got["stages"]["total"]["outputs"] == 14


def _measure(spec, root) -> dict[str, float]:
    """Returns the CPU seconds each stage of the sweep took, every node computed in this process."""
    store, per = store_for(root), {}
    for wave in (1, 2, 3):
        for n in graph(spec):
            if n.wave == wave:
                t = time.process_time()
                assert execute(n, spec, store, progress=False)
                per[n.stage] = per.get(n.stage, 0.0) + time.process_time() - t
    return per


@pytest.mark.slow
def test_estimate_is_within_30_percent_of_a_measured_smoke_sweep_per_stage(tmp_path):
    spec = load_sweep(SMOKE)
    torch.set_num_threads(1)  # as the sweep's trials (resources.cpus: 1)
    _measure(spec, tmp_path / "warm")  # first-use costs of a process (imports, allocator) are not the sweep's
    ratios = []
    for attempt in range(3):  # the machine is shared: an attempt may be disturbed; the model must hold in one
        measured = _measure(spec, tmp_path / f"run{attempt}")
        est = estimate(spec).by_stage(1, 0)
        ratios.append({s: (round(est[s]["hours"] * 3600, 4), round(measured[s], 4)) for s in measured})
        print("estimate, measured CPU seconds:", ratios[-1])
        # within 30%; a stage of a few milliseconds (random masks: shuffle and save three masks) is below
        # what CPU time resolves on a shared machine, so it must be within 20 ms instead
        if all(0.7 <= e / m <= 1.3 or (m < 0.05 and abs(e - m) < 0.02) for e, m in ratios[-1].values()):
            return
    pytest.fail(f"(estimate, measured) CPU seconds per stage, 3 attempts: {ratios}")


@pytest.mark.parametrize("layers,proj_dim", [(["encoder", "classifier"], 16), (["classifier"], 0), (["encoder.encoder.layer.0", "attention"], 0)])
def test_torch_free_sizes_equal_the_real_models(layers, proj_dim):
    from subnet_ray.models import build_model
    from subnet_ray.sizes import KNOWN_SHAPES, parameters, shape_of, sketch_dim

    spec = load_sweep(SMOKE)
    spec = spec.model_copy(update={"influence": spec.influence.model_copy(update={"layers": layers, "proj_dim": proj_dim})})
    task, _, tok = task_data(spec, "babel")
    model = model_factory(spec, task, tok, 0)()
    shape, exact = shape_of(spec, task)
    assert exact and parameters(shape, 2) == param_count(model)
    assert sketch_dim(spec, shape, 2) == sum(d for _, d in layer_dims(select_linears(model, layers), proj_dim))
    l, h, hid, inter, pos, vocab, types = KNOWN_SHAPES["bert-base-multilingual-cased"]
    with torch.device("meta"):
        from subnet_ray.config import ModelSpec, TinySpec

        big = build_model(ModelSpec(name="tiny", tiny=TinySpec(layers=l, heads=h, hidden=hid, intermediate=inter, max_positions=pos)), 3, vocab)
    assert parameters(KNOWN_SHAPES["bert-base-multilingual-cased"], 3) == param_count(big)


def test_validate_prints_the_cost_headline(capsys):
    assert main(["validate", str(SMOKE)]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if "cost:" in l][0]
    # 3 fine-tuned models x 2 epochs x 22,850 values x 4 B; 120 training examples x 2 epochs x 14 layers x d=16 x 4 B
    assert "checkpoints 535.5 KB (3 models x 2 epochs x 89.3 KB)" in line and "training sketches 210.0 KB per mask" in line
