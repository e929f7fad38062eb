"""subnet-ray estimate: bytes counted exactly, the cost model's sums and schedules (its hours against CPU time measured
here: test_estimate_timing.py)."""
import json
import time
from dataclasses import fields

import numpy as np
import pytest
import torch

from subnet_ray.cli import main
from subnet_ray.sweep.config import load_sweep
from subnet_ray.planning.cost.estimate import Calibration, estimate, param_count
from subnet_ray.influence.sketch import layer_dims, select_linears
from subnet_ray.sweep.graph import graph
from subnet_ray.stages import model_factory, task_data
from subnet_ray.planning.cost.walltime import cores, run_slowdown
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


@pytest.mark.slow
def test_estimate_prints_a_table_and_json_with_named_fixed_costs(capsys):
    assert main(["estimate", str(SMOKE), "--executor", "local"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:3] == ["stage", "outputs", "seconds"] and out[-1].startswith("{")
    got = json.loads(out[-1])
    fixed = {"startup", "data", "tracking", "report"}  # measured through the real code paths; no Ray with --executor local
    assert set(got["stages"]) == {"finetune", "subnetworks", "random_masks", "influence", "total"} | fixed
    assert set(got["fixed"]) == fixed and got["fixed"]["startup"] > 0.5 and got["fixed"]["report"] > 0.5
    total = got["stages"]["total"]
    assert total["outputs"] == 14 and got["total_seconds"] == pytest.approx(total["seconds"])
    assert got["total_hours"] == pytest.approx(got["total_seconds"] / 3600)
    assert total["seconds"] == pytest.approx(sum(r["seconds"] for k, r in got["stages"].items() if k != "total"))
    assert got["at_load"]["total_seconds"] >= got["total_seconds"]  # a load only ever slows a run down


@pytest.mark.parametrize("layers,proj_dim", [(["encoder", "classifier"], 16), (["classifier"], 0), (["encoder.encoder.layer.0", "attention"], 0)])
def test_torch_free_sizes_equal_the_real_models(layers, proj_dim):
    from subnet_ray.models.classifier import build_model
    from subnet_ray.planning.sizes import KNOWN_SHAPES, parameters, shape_of, shape_of_model, sketch_dim

    spec = load_sweep(SMOKE)
    spec = spec.model_copy(update={"influence": spec.influence.model_copy(update={"layers": layers, "proj_dim": proj_dim})})
    task, _, tok = task_data(spec, "babel")
    model = model_factory(spec, task, tok, 0)()
    shape, exact = shape_of(spec, task)
    assert exact and parameters(shape, 2) == param_count(model)
    assert sketch_dim(spec, shape, 2) == sum(d for _, d in layer_dims(select_linears(model, layers), proj_dim))
    l, h, hid, inter, pos, vocab, types = KNOWN_SHAPES["bert-base-multilingual-cased"]
    with torch.device("meta"):
        from subnet_ray.sweep.config import ModelSpec, TinySpec

        big = build_model(ModelSpec(name="tiny", tiny=TinySpec(layers=l, heads=h, hidden=hid, intermediate=inter, max_positions=pos)), 3, vocab)
    assert parameters(shape_of_model("bert-base-multilingual-cased")[0], 3) == param_count(big)


def test_validate_prints_the_cost_headline(capsys):
    assert main(["validate", str(SMOKE)]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if "cost:" in l][0]
    # 3 fine-tuned models x 2 epochs x 22,850 values x 4 B; 120 training examples x 2 epochs x 14 layers x d=16 x 4 B
    assert "checkpoints 535.5 KB (3 models x 2 epochs x 89.3 KB)" in line and "training sketches 210.0 KB per mask" in line


def _calibration(**times) -> Calibration:
    """Returns a calibration of round made-up costs: every pass 0.01 s unless given."""
    base = {f.name: 0.01 for f in fields(Calibration) if f.type == "float" and f.name != "slowdown"}
    return Calibration(device="cpu", eval_example={8: 0.001, 16: 0.001}, peak_train_bytes=None, peak_sketch_bytes=None,
                       **(base | times))


FIXED = {"startup": 7.0, "data": 0.5, "ray_start": 6.0, "tracking": 2.0, "report": 9.0, "tune_wave": 1.5, "tune_trial": 4.0}


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_rows_add_up_to_the_wall_total_and_fixed_costs_are_paid_once_per_invocation(executor):
    spec = load_sweep(SMOKE)
    more = spec.model_copy(update={"random_seeds": [1, 2, 3]})  # 2 more random-mask branches: more nodes and trials
    a = estimate(spec, calibration={"babel": _calibration()}, executor=executor, fixed=FIXED, cluster_cpus=2)
    b = estimate(more, calibration={"babel": _calibration()}, executor=executor, fixed=FIXED, cluster_cpus=2)
    for est in (a, b):
        rows = est.by_stage(1, 0)
        assert rows["total"]["seconds"] == pytest.approx(sum(r["seconds"] for k, r in rows.items() if k != "total"))
        assert rows["total"]["seconds"] == pytest.approx(est.total_seconds())
        assert rows["total"]["seconds"] == pytest.approx(sum(est.fixed.values()) + sum(est.waves().values()))
    ra, rb = a.by_stage(1, 0), b.by_stage(1, 0)
    names = {"startup", "data", "tracking", "report"} | ({"ray_start"} if executor == "ray" else set())
    assert set(a.fixed) == names and all(ra[k]["seconds"] == rb[k]["seconds"] == FIXED[k] for k in names)  # not per node
    assert rb["influence"]["outputs"] > ra["influence"]["outputs"] and rb["finetune"]["seconds"] > ra["finetune"]["seconds"]
    if executor == "ray":
        trials = {e: sum(len(t) for t in x.trials.values()) for e, x in (("a", a), ("b", b))}
        assert trials == {"a": 1 + 2 + 3, "b": 1 + 4 + 5}  # full trial; sft + random-sft per seed; influence: one per fine-tuned model
        for x, n in ((ra, trials["a"]), (rb, trials["b"])):
            assert x["tune"]["seconds"] == pytest.approx(n * FIXED["tune_trial"] + 3 * FIXED["tune_wave"])  # per trial, per wave
            assert x["parallel"]["seconds"] < 0  # two trials at a time on 2 CPUs with resources.cpus 1
    else:
        assert "tune" not in ra and "parallel" not in ra
        assert sum(a.waves().values()) == pytest.approx(sum(n.seconds for n in a.nodes))


def test_waves_schedule_trials_like_tune_fifo_on_free_slots():
    from subnet_ray.planning.cost.walltime import makespan, wave_seconds

    assert makespan([3, 1, 1, 1], 2) == 3 and makespan([1, 1, 1, 3], 2) == 4 and makespan([2, 2, 2], 1) == 6
    g = np.random.default_rng(0)
    for _ in range(50):  # brute force: an event simulation of n workers taking the next job when free
        jobs, n = list(g.uniform(0.1, 5, g.integers(1, 9))), int(g.integers(1, 4))
        ends, clock, queue, running = [], 0.0, list(jobs), []
        while queue or running:
            while queue and len(running) < n:
                running.append(clock + queue.pop(0))
            clock = min(running)
            running.remove(clock)
            ends.append(clock)
        assert makespan(jobs, n) == pytest.approx(max(ends))
    plan = {1: {"b": [2.0], "a": [1.0, 1.0]}, 3: {"x": [1.0], "y": [1.0], "z": [1.0]}}
    assert wave_seconds(plan, "local", 2) == {"train": 4.0, "influence": 3.0}
    assert wave_seconds(plan, "ray", 2, tune_wave=1.0, tune_trial=0.5) == {"train": 1.0 + 2.5, "influence": 1.0 + 3.0}


def test_run_slowdown_follows_the_load_the_calibration_saw():
    from subnet_ray.planning.cost.walltime import run_slowdown

    assert run_slowdown(1.0, 1, 2, 2) == 1.0  # idle machine: two one-thread trials on two cores do not slow each other
    assert run_slowdown(1.0, 1, 4, 2) == 2.0  # four busy threads on two cores
    assert run_slowdown(2.0, 1, 1, 2) == 2.0  # the same single thread as the calibration: its slowdown
    assert run_slowdown(2.0, 1, 2, 2) == pytest.approx(2.5)  # others wanted 3 cores; with our 2 threads, 5 on 2
    # one busy process on two cores: a one-thread calibration ran at full speed on the free core, but two trials
    # side by side share the cores with it (the load counted before calibrating says so)
    assert run_slowdown(1.0, 1, 2, 2, others=1) == pytest.approx(1.5)
    assert run_slowdown(1.0, 1, 1, 2, others=1) == 1.0 and run_slowdown(1.0, 1, 2, 2, others=0) == 1.0
    assert run_slowdown(2.0, 1, 2, 2, others=1) == pytest.approx(2.5)  # the larger of the two counts of others


def test_others_running_counts_busy_processes_of_this_machine():
    import multiprocessing as mp

    from subnet_ray.planning.cost.walltime import others_running

    if others_running() is None:
        pytest.skip("no /proc/stat of this machine's cores")
    ctx = mp.get_context("spawn")
    busy = [ctx.Process(target=_spin, args=(30,), daemon=True) for _ in range(3)]
    for p in busy:
        p.start()
    try:
        time.sleep(1.0)  # spawned interpreters started and spinning
        assert others_running() >= 3  # more where other work runs too; never fewer
    finally:
        for p in busy:
            p.kill()


def test_every_fine_tuning_pays_its_first_steps_once_and_importance_is_per_dev_example():
    from subnet_ray.train.finetune import by_language

    spec = load_sweep(SMOKE)
    _, data, _ = task_data(spec, "babel")
    base = estimate(spec, calibration={"babel": _calibration()}).by_stage(1, 0)
    first = estimate(spec, calibration={"babel": _calibration(first_steps=10.01)}).by_stage(1, 0)
    assert first["finetune"]["seconds"] - base["finetune"]["seconds"] == pytest.approx(10 * first["finetune"]["outputs"])
    assert {k: r["seconds"] for k, r in first.items() if k not in ("finetune", "total")} == \
        {k: r["seconds"] for k, r in base.items() if k not in ("finetune", "total")}
    # a language's dev set in passes of subnetworks.batch_size: the last one short, so the cost is per example
    imp = estimate(spec, calibration={"babel": _calibration(importance_example=1.01)}).by_stage(1, 0)
    passes = 1 + 4  # smoke: 2 layers x 4 heads, step_fraction 0.25: 2 heads a step, 4 steps until one is left (pruned 1.0)
    dev = sum(len(v) for v in by_language(data["dev"]).values())
    assert imp["subnetworks"]["seconds"] - base["subnetworks"]["seconds"] == pytest.approx(passes * dev * 1.0)
    # and per batch: each language's dev set in ceil(n / batch_size) batches, every pass
    per_batch = estimate(spec, calibration={"babel": _calibration(importance_batch=1.01)}).by_stage(1, 0)
    batches = sum(-(-len(v) // spec.subnetworks.batch_size) for v in by_language(data["dev"]).values())
    assert batches == len(spec.tasks[0].languages)  # smoke: each language's dev set fits one (short) batch
    assert per_batch["subnetworks"]["seconds"] - base["subnetworks"]["seconds"] == pytest.approx(passes * batches * 1.0)
    per_call = estimate(spec, calibration={"babel": _calibration(importance_call=1.01)}).by_stage(1, 0)
    assert per_call["subnetworks"]["seconds"] - base["subnetworks"]["seconds"] == pytest.approx(passes * len(spec.tasks[0].languages))


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_clock_takes_wall_time_where_threads_run_in_parallel_and_cpu_time_where_the_call_waits():
    from subnet_ray.planning.cost.calibration import Clock

    c = Clock("cpu")
    assert c(lambda: time.sleep(0.3)) < 0.05  # waiting for a core (or anything) is not the pass's cost
    assert c.slowdown > 5
    c = Clock("cpu")
    assert c(lambda: _spin(0.2)) == pytest.approx(0.2, abs=0.05)  # a busy single thread: its CPU time


def test_influence_sketches_are_counted_once_per_set_the_pipeline_plans():
    """Per fine-tuned model, the estimate's sketch rows are those pipeline.JobPlan makes: the training set once per
    distinct mask, each (mask, test examples) set once, not once per variant."""
    from subnet_ray.influence.pipeline import Job, JobPlan

    spec = load_sweep(SMOKE)
    est = estimate(spec, timed=False)
    task, data, tok = task_data(spec, "babel")
    model = model_factory(spec, task, tok, 0)()
    dim = sum(d for _, d in layer_dims(select_linears(model, spec.influence.layers), spec.influence.proj_dim))
    g, drawn = torch.Generator().manual_seed(0), {}

    def mask(ref):
        if ref is None:
            return None
        key = (ref["key"], tuple(ref["languages"]), ref["op"])
        drawn.setdefault(key, (torch.rand(model.num_layers, model.num_heads, generator=g) < 0.6).float())
        return drawn[key]

    cost, groups = {n.key: n for n in est.nodes}, {}
    for n in graph(spec):
        if n.stage == "influence":
            groups.setdefault(n.params.model, []).append(n)
    assert len(groups) == 3  # full, sft, random-sft:1
    k = spec.influence.test_per_language
    for group in groups.values():
        jobs = [Job(n.key, [e for lang in n.params.masks for e in [x for x in data["test"] if x.language == lang][:k]],
                    {lang: mask(r) for lang, r in n.params.masks.items()}) for n in group]
        plan = JobPlan(model, data["train"], jobs)
        rows = len(plan.masks) * len(data["train"]) + sum(len(v) for v in plan.test_sets.values())
        assert sum(cost[n.key].sketch_bytes for n in group) == rows * dim * 4 * spec.training.epochs
    full = groups[next(iter(groups))]
    assert len(full) == 5 and len({m for n in full for m in map(str, n.params.masks.values())}) == 5  # 5 variants, 5 masks


def test_freeze_heap_collects_garbage_first_and_still_collects_what_comes_after():
    # in a fresh interpreter: a frozen pytest process would keep every later test's garbage cycles
    import subprocess
    import sys

    code = """
import gc, weakref
from subnet_ray.orchestration.workers import freeze_heap
class C: pass
def cycle():
    a, b = C(), C(); a.b, b.a = b, a
    return weakref.ref(a)
kept = C()
before = cycle()  # garbage when the heap is frozen: collected by freeze_heap, not kept forever
freeze_heap()
assert before() is None, "a cycle that was garbage at the freeze was frozen"
assert gc.get_freeze_count() > 0 and kept not in gc.get_objects(), "live objects were not frozen"
after = cycle()
gc.collect()
assert after() is None, "a cycle made after the freeze was not collected"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_mlflow_epochs_a_fine_tuning_waits_for_count_in_its_stage_output_not_as_fixed():
    spec = load_sweep(SMOKE)
    costs = {}
    for executor in ("local", "ray"):
        for log in (0.0, 0.5):
            est = estimate(spec, calibration={"babel": _calibration()}, executor=executor, fixed=FIXED | {"finetune_log": log})
            costs[executor, log] = est
            assert "finetune_log" not in est.fixed
    for executor in ("local", "ray"):  # a Tune trial's tune.report returns after the driver's callback logged the epoch
        a, b = ({n.key: n for n in costs[executor, log].nodes} for log in (0.0, 0.5))
        assert {k: b[k].seconds - a[k].seconds for k in a} == pytest.approx({k: 0.5 * (a[k].stage == "finetune") for k in a})


def test_at_load_slows_each_trial_by_how_many_run_at_once():
    from subnet_ray.planning.cost.result import Estimate, StageCost

    nodes = [StageCost("a", "finetune", 10.0, 0), StageCost("b", "finetune", 10.0, 0), StageCost("c", "finetune", 4.0, 0),
             StageCost("i", "influence", 6.0, 0)]
    measured = {1: {"train": 1.0, "sketch": 1.5}, 2: {"train": 2.0, "sketch": 3.0}}
    est = Estimate("s", "cpu", nodes=nodes, executor="ray", slots=2, trials={2: {"a": ["a"], "b": ["b"], "c": ["c"]}, 3: {"i": ["i"]}},
                   fixed={"startup": 5.0}, tune={"tune_wave": 0.0, "tune_trial": 0.0}, side_by_side=measured)
    assert est.waves() == {"sft": 14.0, "influence": 6.0}  # idle: a and b together, then c
    load = est.at_load()
    # a and b side by side, each at half pace: both end at 20; then c alone at full pace: 24. One influence trial: 1.5x
    assert load["waves"] == pytest.approx({"sft": 24.0, "influence": 9.0})
    assert load["stages"] == pytest.approx({"finetune": 20.0 + 20.0 + 4.0, "influence": 9.0})
    assert load["fixed_slowdown"] == 1.0 and load["total_seconds"] == pytest.approx(5.0 + 33.0)
    assert load["wave_slowdown"] == pytest.approx({"sft": 24.0 / 14.0, "influence": 1.5})
    # counts between those measured: linear between them
    est.slots, est.side_by_side = 3, {1: {"train": 1.0, "sketch": 1.0}, 3: {"train": 3.0, "sketch": 2.0}}
    assert est.slowdown_at(2) == pytest.approx(2.0) and est.slowdown_at(2, "sketch") == pytest.approx(1.5)
    # nothing measured: each process's fair share of the cores
    est.side_by_side, est.others = {}, 1.0
    assert est.slowdown_at(2) == pytest.approx(run_slowdown(1.0, 1, 2, cores(), 1.0))


def test_shared_schedule_agrees_with_a_step_by_step_simulation():
    from subnet_ray.planning.cost.walltime import makespan, shared_schedule

    g = np.random.default_rng(1)
    for _ in range(30):
        jobs, n = [float(x) for x in g.uniform(0.5, 5, g.integers(1, 7))], int(g.integers(1, 4))
        f = {m: float(g.uniform(1, 3)) for m in range(1, n + 1)}
        span, elapsed = shared_schedule(jobs, n, f.__getitem__)
        assert shared_schedule(jobs, n, lambda m: 1.0) == (pytest.approx(makespan(jobs, n)), pytest.approx(jobs))
        dt, clock, left, started, ends, queue = 1e-3, 0.0, {}, {}, {}, list(range(len(jobs)))
        while queue or left:  # every dt, each running job does dt / f(running) of its work
            while queue and len(left) < n:
                i = queue.pop(0)
                left[i], started[i] = jobs[i], clock
            rate = 1 / f[len(left)]
            clock += dt
            for i in list(left):
                left[i] -= dt * rate
                if left[i] <= 0:
                    ends[i] = clock
                    del left[i]
        assert span == pytest.approx(clock, abs=0.02 * len(jobs))
        assert elapsed == pytest.approx([ends[i] - started[i] for i in range(len(jobs))], abs=0.02 * len(jobs))


def test_estimate_takes_the_side_by_side_measurement_for_ray_only():
    spec = load_sweep(SMOKE)
    measured = {1: {"train": 1.5, "sketch": 1.75}, 2: {"train": 2.0, "sketch": 3.0}}
    est = estimate(spec, calibration={"babel": _calibration()}, executor="ray", fixed=FIXED, cluster_cpus=2, side_by_side=measured)
    assert est.side_by_side == measured and est.slowdown == 1.0 and est.others is None  # nothing measured here
    one = [w for w, t in est.trials.items() if len(t) == 1]
    assert one  # smoke: one full trial in the training wave
    idle, load = est.waves(), est.at_load()
    from subnet_ray.planning.cost.walltime import WAVES

    for w in one:  # a wave of one trial: its idle time at one trial's measured slowdown (Tune's wave start in the driver)
        assert load["waves"][WAVES[w]] == pytest.approx(est.tune["tune_wave"] + (idle[WAVES[w]] - est.tune["tune_wave"]) * 1.5)
    assert all(load["waves"][w] > s for w, s in idle.items())
    # the local executor runs every node in one process: a Ray measurement does not apply
    local = estimate(spec, calibration={"babel": _calibration()}, executor="local", fixed=FIXED, side_by_side=measured)
    assert local.side_by_side == {} and local.at_load()["waves"] == pytest.approx(local.waves())


def test_estimate_times_a_hub_decoder_from_its_published_config_with_its_real_architecture(monkeypatch):
    # A hub id not cached here whose config.json values planning.shapes publishes: Qwen2.5's family (GQA, biases on
    # q/k/v, last-token pooling) at tiny widths so that calibration is quick on 2 cores; nothing of the model code patched.
    from subnet_ray.planning import shapes
    from subnet_ray.planning.cost.inputs import setup
    from subnet_ray.planning.cost.result import table
    from subnet_ray.sweep.config import ModelSpec

    entry = dict(model_type="qwen2", num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                 intermediate_size=48, vocab_size=8000)  # holds the stand-in tokenizer's ids (at most 8000)
    monkeypatch.setitem(shapes.PUBLISHED, "test-org/tiny-qwen2", entry)
    spec = load_sweep(SMOKE)
    spec = spec.model_copy(update={"model": ModelSpec(name="test-org/tiny-qwen2", dropout=0.0)})
    _, _, make, notes = setup(spec, "babel")
    model = make()
    assert model.encoder.config.model_type == "qwen2" and model.arch.decoder and model.num_kv_heads == 2
    assert param_count(model) == shapes.parameters(shapes.from_config(entry), 2)  # the published shape, exactly
    est = estimate(spec, executor="local", fixed=FIXED, cluster_cpus=2)
    assert any("random weights of its published shape" in a for a in est.assumptions), est.assumptions
    stages = est.by_stage(1, 0)
    assert stages["total"]["seconds"] > 0 and all(stages[s]["seconds"] > 0 for s in ("finetune", "subnetworks", "influence")), stages
    assert "random weights of its published shape" in table(est, 1, 0)


def test_estimate_without_the_sweeps_data_says_so_in_one_line_before_any_compute(tmp_path, capsys, monkeypatch):
    from tiny import smoke_sweep

    import subnet_ray.planning.cost as cost

    def no_compute(*a, **k):
        raise AssertionError("estimate computed before checking its inputs")
    monkeypatch.setattr(cost, "project", no_compute)
    from subnet_ray.orchestration.workers import WORKER_ENV

    for k, v in WORKER_ENV.items():  # main() sets them for estimate: restored after this test, not left to later ones
        monkeypatch.setenv(k, v)
    sweep = tmp_path / "s.yaml"
    missing = tmp_path / "mine"  # a data folder that is not there (nor is it a cached hub dataset)
    sweep.write_text(smoke_sweep("s", ("  - id: babel\n", f"  - id: local\n    source: {missing}\n"),
                                 ("    babel: {families: [[xa, xb], [ya]], vocab_size: 60, length: 8}\n", "")))
    assert main(["estimate", str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: estimate: task 'local': its data is not on this machine"), err
    assert str(missing) in err[0] and f"subnet-ray estimate --memory {sweep}" in err[0]


@pytest.mark.parametrize("model_type", sorted(__import__("subnet_ray.models.architectures", fromlist=["x"]).ARCHITECTURES))
def test_report_overhead_reads_layers_and_heads_of_every_records_config_json(model_type, tmp_path):
    # DistilBERT's config.json says n_layers / n_heads: a read of num_hidden_layers would fall back to 12 x 12
    from subnet_ray.models.architectures import tiny_config
    from subnet_ray.planning.cost.overheads import _heads
    from subnet_ray.sweep.config import ModelSpec

    tiny_config(model_type, 100, layers=3, heads=4, kv_heads=2, hidden=32).save_pretrained(tmp_path)
    spec = load_sweep(SMOKE)
    spec = spec.model_copy(update={"model": ModelSpec(name=str(tmp_path))})
    assert _heads(spec, spec.tasks[0]) == (3, 4)
