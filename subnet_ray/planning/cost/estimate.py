"""What a sweep will cost before it starts: hours per stage, fixed costs, wall time, memory per trial, checkpoint and sketch bytes.

`estimate(timed=False)` counts from the sweep alone (no compute): stage outputs, parameters,
checkpoint and sketch bytes. `calibration.calibrate` times a few real batches of each pass on
the present device; `estimate` multiplies those per-batch costs by each stage's exact batch
counts (epoch plans, dev and test sizes, mask groups, checkpoints), adds the invocation's named
fixed costs (overheads.py measures them) and schedules the stage outputs as the
executor runs them (walltime.py), into an `Estimate` (result.py holds it and its table).

The one quantity not known before running is how many pruning steps the subnetwork search
takes: `pruned` is the fraction of heads it is assumed to disable before stopping (default 1.0,
every step until one head is left: an upper bound).
"""
from __future__ import annotations

import json
import math

import torch

from .calibration import Calibration, calibrate
from .inputs import setup
from .result import Estimate, StageCost
from ..sizes import planned
from ...sweep.config import SweepSpec, branches
from ...sweep.graph import Node, graph
from ...influence.sketch import DTYPES, layer_dims, select_linears
from ...subnetworks.pruning import step_size
from ...train.finetune import by_language, epoch_plan


def param_count(model: torch.nn.Module) -> int:
    """Returns the number of elements of the model's state (parameters and buffers): what a checkpoint holds."""
    return sum(v.numel() for v in model.state_dict().values())


def estimate(spec: SweepSpec, pruned: float = 1.0, calibration: dict[str, Calibration] | None = None, timed: bool = True,
             executor: str = "local", fixed: dict[str, float] | None = None, cluster_cpus: int | None = None,
             others: float | None = None, side_by_side: dict[int, dict[str, float]] | None = None, store=None) -> Estimate:
    """Returns the projected cost of every stage output of the sweep (calibrating per task unless given), and its wall
    time on `executor` ('local' or 'ray') with the named fixed costs `fixed` (overheads.measure).

    Ray's costs in `fixed` (ray_start, tune_wave, tune_trial) are wall times under the load they
    were measured at: they are scaled to an idle machine by the calibration's slowdown.
    timed=False: bytes and counts only, every time 0, no compute (the model is built on torch's
    meta device): what `validate` prints. others: threads of other processes wanting a core
    (walltime.others_running; counted here before calibrating if not given). side_by_side: for the Ray
    executor, trials at a time -> slowdown of a training step and a sketched example against the
    calibration (Estimate.side_by_side); measured here (side_by_side.side_by_side: Tune trials on a
    local Ray of the probe's own) when this call calibrates and none are given. store: a sweep root's store whose
    masks (subnetworks, random masks already computed) tell which of the influence variants' masks are the same, as
    the Ray Data wave groups them (ray_data.job_plan); without it every mask reference counts as a distinct mask.
    """
    from .walltime import FIXED, cores, others_running, slots, trials

    if not 0.0 < pruned <= 1.0:
        raise ValueError(f"pruned must be a fraction of the heads in (0, 1], got {pruned}")
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    notes = []
    if timed and spec.training.device.startswith("cuda") and not torch.cuda.is_available():
        notes.append(f"training.device is {spec.training.device} but this machine has no GPU: calibrated on cpu, so the hours are CPU hours")
        spec = spec.model_copy(update={"training": spec.training.model_copy(update={"device": "cpu"})})
    threads, n_slots = max(1, int(spec.resources.cpus)), slots(spec.resources.cpus, executor, cluster_cpus)
    how = ("every stage output in one process, one after the other" if executor == "local" else
           f"Tune trials {n_slots} at a time ({cluster_cpus or cores()} CPUs / resources.cpus {spec.resources.cpus}), each in a new worker process")
    est = Estimate(spec.name, spec.training.device, executor=executor, slots=n_slots, threads=threads, assumptions=notes + [
        f"subnetwork search disables {pruned:.0%} of the heads before it stops (pruning steps are not known in advance)",
        f"executor {executor}: {how}; seconds are an idle machine's (at_load: under the load seen before and while calibrating)",
    ] + (["a masked-LM pre-training step costs a fine-tuning step of the same batch size (not timed on its own)"]
         if spec.model.pretrain is not None else []))
    if fixed is None:
        est.assumptions.append("fixed costs (startup, data, MLflow, Ray, report) not measured: counted as 0")
    ray_groups: list | None = [] if executor == "ray" and spec.influence.actors > 1 else None
    probe = timed and executor == "ray" and side_by_side is None and not calibration
    seen, calibration = set(), dict(calibration or {})
    est.others = others if others is not None or not timed or calibration else others_running()  # before calibrating
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # as the sweep's trials run (runner.run_sweep, tune._trainable: workers.use_cpus)
    try:
        _estimate_into(est, spec, pruned, calibration, timed, seen, ray_groups)
    finally:
        torch.set_num_threads(before)
    est.slowdown = max([c.slowdown for c in calibration.values()] or [1.0]) if timed else 1.0
    if fixed and "finetune_log" in fixed:  # MLflow epochs logged while each fine-tuning waits (overheads.measure)
        for n in est.nodes:
            if n.stage == "finetune":
                n.seconds += fixed["finetune_log"]
    if ray_groups is not None:  # after the calibration's slowdown is known: Ray's wall times are scaled by it
        from .ray_data import cost_groups

        for nodes, g, cal, params in cost_groups(est, ray_groups, (fixed or {}).get("ray_data"), slots(1.0, executor, cluster_cpus), store):
            for i, n in enumerate(nodes):  # the ledger splits the group's time between its nodes as they publish
                est.nodes.append(StageCost(n.key, "influence", g.seconds / len(nodes) + cal.node_io, max(cal.peak_sketch_bytes or 0, 8 * params),
                                           sketch_bytes=g.sketch_bytes if i == 0 else 0))
    keys = {n.key for n in est.nodes}
    est.trials = {w: {t: [n.key for n in ns if n.key in keys] for t, ns in plan.items()} for w, plan in trials(graph(spec)).items()}
    fixed = dict(fixed or {})
    for name in ("ray_start", "tune_wave", "tune_trial"):  # wall times of several processes: scaled to an idle machine
        if name in fixed:
            fixed[name] /= est.slowdown
    est.fixed = {name: fixed[name] for name in FIXED if name in fixed and (executor == "ray" or name != "ray_start")}
    if executor == "ray":
        est.tune = {name: fixed.get(name, 0.0) for name in ("tune_wave", "tune_trial")}
        est.side_by_side = dict(side_by_side or {})
        if probe:
            est.side_by_side = _side_by_side(est, spec, calibration, fixed.get("worker_nice"))
    return est


def _side_by_side(est: Estimate, spec: SweepSpec, calibration: dict, nice: int | None) -> dict[int, dict[str, float]]:
    """Returns trials at a time -> how much slower than calibrated a training step and a sketched example run in that many
    processes at once, for each count of trials side by side the sweep's waves have (the first branch's first task)."""
    from .side_by_side import side_by_side

    ks = sorted({1, max(min(est.slots, len(t)) for t in est.trials.values() if t)})  # slowdown_at interpolates between
    values, b = branches(spec)[0]
    task = b.tasks[0].id
    cal = calibration[(task, json.dumps(values, sort_keys=True))]
    try:
        measured = side_by_side(b, task, ks)
    except RuntimeError as e:  # the estimate stands without it, said so
        est.assumptions.append(f"trials side by side (at_load): not measured ({e}); each thread's fair share of the cores instead")
        return {}
    out = {k: {"train": m["train"] / cal.train_batch, "sketch": m["sketch"] / cal.sketch_example} for k, m in measured.items()}
    est.assumptions.append("trials side by side (at_load): " + "; ".join(
        f"{k} at a time ran a training step {f['train']:.2f}x and a sketched example {f['sketch']:.2f}x the calibrated time"
        for k, f in sorted(out.items())) + " (measured in Tune trials on a local Ray"
        + (f", at niceness {nice} as Ray runs its workers)" if nice is not None else ")"))
    return out


def _estimate_into(est: Estimate, spec: SweepSpec, pruned: float, calibration: dict, timed: bool, seen: set,
                   ray_groups: list | None = None) -> None:
    for values, b in branches(spec):
        for task in b.tasks:
            at = (task.id, json.dumps(values, sort_keys=True))  # a grid may change the model or batch sizes
            data, tok, make, notes = setup(b, task.id)
            est.assumptions += [n for n in notes if n not in est.assumptions]
            if not timed:
                cal = Calibration.zero(b.training.device, [b.training.batch_size, b.influence.batch_size])
                with torch.device("meta"):
                    model = make()
            else:
                cal = calibration.get(at) or calibration.get(task.id) or calibrate(b, task.id)
                calibration[at] = cal
                model = make()
            params = param_count(model)
            influence: dict[str, list[Node]] = {}  # fine-tuned model key -> its influence nodes (stages.influence_groups)
            for node in graph(b):
                if node.key in seen or node.params.task != task.id:
                    continue
                seen.add(node.key)
                if node.stage == "influence":
                    influence.setdefault(node.params.model, []).append(node)
                    continue
                cost = _node_cost(node, b, cal, data, model, params, pruned)
                cost.seconds += cal.node_io
                est.nodes.append(cost)
            for group in influence.values():
                if ray_groups is not None:  # costed once the Ray costs are scaled (ray_data.cost_groups)
                    ray_groups.append((group, b, cal, data, model, params))
                    continue
                for cost in _influence_costs(group, b, cal, data, model, params):
                    cost.seconds += cal.node_io
                    est.nodes.append(cost)


def _node_cost(node: Node, b: SweepSpec, cal: Calibration, data: dict, model, params: int, pruned: float) -> StageCost:
    tr = b.training
    dev = by_language(data["dev"])
    model_bytes = 4 * params
    plan = planned(b, node.params.task)  # weights, gradients, AdamW's moments, activations (memory.py) where not measured
    train_mem = cal.peak_train_bytes or (plan.train_peak if plan else 16 * params)
    if node.stage == "pretrain":
        # a masked-LM step taken as a fine-tuning step scaled by batch size (same encoder, same lengths; the
        # tiny LM head is small next to the encoder): not calibrated on its own
        pt = b.model.pretrain
        steps = pt.epochs * math.ceil(pt.sentences * len(by_language(data["train"])) / pt.batch_size)
        return StageCost(node.key, "pretrain", cal.build + cal.first_steps + steps * cal.train_batch * pt.batch_size / tr.batch_size, train_mem,
                         checkpoint_bytes=model_bytes)
    if node.stage == "finetune":
        sparse = node.params.method != "full"
        steps = len(epoch_plan(data["train"], tr.batch_size, node.params.seed, 1, sparse))
        per_epoch = steps * (cal.train_batch_sft if sparse else cal.train_batch) + len(data["dev"]) * cal.eval_example[tr.batch_size] + cal.save_epoch
        return StageCost(node.key, "finetune", cal.build + cal.first_steps + tr.epochs * per_epoch, train_mem,
                         checkpoint_bytes=tr.epochs * model_bytes)
    if node.stage == "subnetworks":
        heads = model.num_layers * model.num_heads
        per_step = step_size(heads, b.subnetworks.step_fraction)
        steps = min(math.ceil((heads - 1) / per_step), math.ceil(pruned * (heads - 1) / per_step) + 1)
        bs = b.subnetworks.batch_size
        per_pass = {lang: cal.importance_call + math.ceil(len(v) / bs) * cal.importance_batch + len(v) * cal.importance_example
                    for lang, v in dev.items()}
        seconds = cal.build + cal.load + sum(  # mask_io: about the cost of saving the language's mask
            len(v) * cal.encode_example + (1 + steps) * per_pass[lang] + cal.mask_io for lang, v in dev.items())
        return StageCost(node.key, "subnetworks", seconds, cal.peak_sketch_bytes or 2 * model_bytes)
    if node.stage == "random_masks":  # loads the full model and scores each language's dev data under its random mask
        seconds = cal.build + cal.load + sum(len(v) * cal.eval_example[tr.batch_size] + cal.mask_io for v in dev.values())
        return StageCost(node.key, "random_masks", seconds, 2 * model_bytes)
    raise ValueError(f"stage {node.stage}: influence nodes are costed together per fine-tuned model (_influence_costs)")


def _influence_costs(nodes: list[Node], b: SweepSpec, cal: Calibration, data: dict, model, params: int) -> list[StageCost]:
    """Returns the costs of the influence nodes of one fine-tuned model, computed together as stages.execute_influence does.

    pipeline.influence_jobs: one model build; per pass (as many distinct masks as its sketch budget
    holds) one load per checkpoint; per checkpoint, the training set sketched once per distinct mask
    and each (mask, test examples) set once; the test predictions of every node under its masks
    (first pass); then one top_influences call per (node, mask group). Work the nodes share is
    counted on the first node that needs it (the stage's sum is the group's time).
    """
    import inspect

    from ...influence.pipeline import influence_jobs

    tr, inf = b.training, b.influence
    ckpts, n_train = tr.epochs, len(data["train"])
    test_of = {l: min(inf.test_per_language, len(v)) for l, v in by_language(data["test"]).items()}
    dim = sum(d for _, d in layer_dims(select_linears(model, inf.layers), inf.proj_dim))
    row_bytes = dim * torch.tensor([], dtype=DTYPES[inf.dtype]).element_size() * ckpts  # one example, every checkpoint
    seconds, sketch_bytes = {n.key: cal.table_io for n in nodes}, {n.key: 0 for n in nodes}
    seconds[nodes[0].key] += cal.build
    masks: dict = {}  # distinct mask -> (first node using it, its test sets: languages -> examples)
    for n in nodes:
        groups: dict = {}
        for lang, ref in n.params.masks.items():
            groups.setdefault(None if ref is None else (ref["key"], tuple(ref["languages"]), ref["op"]), []).append(lang)
        for mask, langs in groups.items():
            first, sets = masks.setdefault(mask, (n.key, {}))
            if tuple(langs) not in sets:
                sets[tuple(langs)] = (n.key, sum(test_of[l] for l in langs))
            n_test = sets[tuple(langs)][1]
            seconds[n.key] += cal.score_fixed + cal.score_unit * n_test * n_train * ckpts
        seconds[n.key] += ckpts * sum(test_of[l] for l in n.params.masks) * cal.eval_example[inf.batch_size]
    budget = inspect.signature(influence_jobs).parameters["budget_mb"].default * 2**20
    need = {m: row_bytes * (n_train + sum(t for _, t in sets.values())) for m, (_, sets) in masks.items()}
    passes, chunk = [], []
    for m in masks:  # pipeline.JobPlan.passes: masks in first-seen order, as many per pass as the budget holds
        if chunk and sum(need[k] for k in chunk + [m]) > budget:
            passes.append(chunk)
            chunk = []
        chunk.append(m)
    passes.append(chunk)
    for chunk in passes:
        seconds[masks[chunk[0]][0]] += ckpts * cal.load
        for m in chunk:
            first, sets = masks[m]
            seconds[first] += ckpts * n_train * cal.sketch_example
            sketch_bytes[first] += row_bytes * n_train
            for owner, n_test in sets.values():
                seconds[owner] += ckpts * n_test * cal.sketch_example
                sketch_bytes[owner] += row_bytes * n_test
    held = max(sum(need[m] for m in chunk) for chunk in passes)
    plan = planned(b, nodes[0].params.task)
    memory = max(cal.peak_sketch_bytes or (plan.influence_device if plan else 2 * 4 * params), held + 4 * params)
    return [StageCost(n.key, "influence", seconds[n.key], memory, sketch_bytes=sketch_bytes[n.key]) for n in nodes]
