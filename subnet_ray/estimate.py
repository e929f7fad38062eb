"""What a sweep will cost before it starts: hours per stage, memory per trial, checkpoint and sketch bytes.

`static_costs` counts from the sweep alone (no compute): stage outputs, parameters,
checkpoint and sketch bytes. `calibrate` times a few real batches of each pass on the present
device, at the sweep's model, batch sizes and the task's real token lengths (the same library
calls the stages make: encode + train_step, evaluate, importance_pass, sketch_examples,
checkpoint saves and loads, top_influences); `estimate` multiplies those per-batch costs by
each stage's exact batch counts (epoch plans, dev and test sizes, mask groups, checkpoints).

The one quantity not known before running is how many pruning steps the subnetwork search
takes: `pruned` is the fraction of heads it is assumed to disable before stopping (default 1.0,
every step until one head is left: an upper bound).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch

from .config import SweepSpec, branches
from .influence.pipeline import sketch_examples
from .influence.projection import Projector
from .influence.sketch import DTYPES, Sketches, layer_dims, select_linears
from .influence.tracin import top_influences
from .models import build_model, load_checkpoint, save_checkpoint
from .precision import grad_scaler
from .graph import Node, graph, influence_precision
from .stages import model_factory, task_data
from .sizes import KNOWN_SHAPES
from .store import Store
from .subnetworks.importance import importance_pass
from .subnetworks.masks import load_mask, random_mask, save_mask
from .subnetworks.pruning import make_batches, step_size
from .tokenization import encode
from .train import _save_resume, by_language, epoch_plan, evaluate, train_step

STAGES = ("pretrain", "finetune", "subnetworks", "random_masks", "influence")


@dataclass
class Calibration:
    """Seconds per batch (or per call) of each pass, measured on one device for one task."""

    device: str
    build: float  # build the model
    train_batch: float  # encode + one train_step at training.batch_size
    eval_example: dict[int, float]  # evaluate, per example, by batch size
    save_epoch: float  # checkpoint + resume state after an epoch
    load: float  # load a checkpoint
    importance_batch: float  # one importance_pass batch at subnetworks.batch_size
    encode_example: float  # tokenizing one example (importance encodes each language once)
    sketch_example: float  # sketch_examples, per example at influence.batch_size
    score_unit: float  # top_influences seconds per (test x train x checkpoint)
    score_fixed: float  # top_influences seconds per call besides that
    mask_io: float  # a random_masks node: load + shuffle + save one language's mask
    node_io: float  # any node: the store's atomic write and ledger record
    table_io: float  # an influence node: writing its top-k and predictions tables
    peak_train_bytes: int | None  # device memory of a training step (CUDA only)
    peak_sketch_bytes: int | None  # device memory of a sketch batch (CUDA only)
    slowdown: float = 1.0  # how much slower than on an idle machine the passes ran while calibrating (Clock.slowdown)

    @classmethod
    def zero(cls, device: str, batch_sizes: list[int]) -> "Calibration":
        """Returns a calibration where everything takes no time (for counting bytes alone)."""
        times = {f.name: 0.0 for f in fields(cls) if f.type == "float" and f.name != "slowdown"}
        return cls(device=device, eval_example={bs: 0.0 for bs in batch_sizes}, peak_train_bytes=None, peak_sketch_bytes=None, **times)


@dataclass
class StageCost:
    """One stage output's projected cost."""

    key: str
    stage: str
    seconds: float
    memory_bytes: int  # peak memory of the trial while computing it (device or host)
    checkpoint_bytes: int = 0
    sketch_bytes: int = 0


@dataclass
class Estimate:
    """A sweep's projected cost per stage output, its fixed costs, and its wall time on an executor.

    Every seconds figure is what an idle machine takes (see Clock); `at_load` gives the present load's.
    """

    sweep: str
    device: str
    nodes: list[StageCost] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    executor: str = "local"
    fixed: dict[str, float] = field(default_factory=dict)  # walltime.FIXED name -> seconds, once per invocation
    tune: dict[str, float] = field(default_factory=dict)  # tune_wave, tune_trial seconds (Ray executor)
    trials: dict[int, dict[str, list[str]]] = field(default_factory=dict)  # wave -> Tune trial -> its node keys
    slots: int = 1  # trials at a time
    threads: int = 1  # torch threads per trial (resources.cpus)
    slowdown: float = 1.0  # how much slower than idle the calibration ran (Clock.slowdown)

    def waves(self) -> dict[str, float]:
        """Returns each wave's wall seconds, trials scheduled as the executor runs them."""
        from .walltime import wave_seconds

        cost = {n.key: n.seconds for n in self.nodes}
        plan = {w: {t: [cost[k] for k in keys] for t, keys in trials.items()} for w, trials in self.trials.items()}
        return wave_seconds(plan, self.executor, self.slots, self.tune.get("tune_wave", 0.0), self.tune.get("tune_trial", 0.0))

    def total_seconds(self) -> float:
        """Returns the invocation's wall seconds: its fixed costs and its waves."""
        return sum(self.fixed.values()) + sum(self.waves().values())

    def at_load(self) -> dict:
        """Returns the slowdown the present load implies for this sweep's run, and its total seconds and hours under it."""
        from .walltime import cores, run_slowdown

        busy = self.threads * (self.slots if self.executor == "ray" else 1)
        factor = run_slowdown(self.slowdown, self.threads, busy, cores())
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        total = self.total_seconds() * factor
        return {"slowdown": factor, "calibration_slowdown": self.slowdown, "load_1min": load, "cores": cores(),
                "total_seconds": total, "total_hours": total / 3600}

    def by_stage(self, cpus: float, gpus: float) -> dict[str, dict]:
        """Returns per stage and per fixed cost: outputs, seconds, hours, device_hours (GPU), cpu_hours, peak memory,
        checkpoint and sketch bytes; 'tune' (trial and wave starts), 'parallel' (seconds saved by trials side by side,
        <= 0) and 'total' (the wall time), so that the rows add up to the total."""
        def row(seconds: float, rows: list[StageCost], per_cpu: float) -> dict:
            hours = seconds / 3600
            return {"outputs": len(rows), "seconds": seconds, "hours": hours,
                    "device_hours": hours * gpus if self.device.startswith("cuda") else 0.0, "cpu_hours": hours * per_cpu,
                    "peak_memory_bytes": max((n.memory_bytes for n in rows), default=0),
                    "checkpoint_bytes": sum(n.checkpoint_bytes for n in rows), "sketch_bytes": sum(n.sketch_bytes for n in rows)}

        out = {}
        for stage in STAGES:
            rows = [n for n in self.nodes if n.stage == stage]
            if stage == "pretrain" and not rows:
                continue  # a row of its own only where the sweep pre-trains
            out[stage] = row(sum(n.seconds for n in rows), rows, cpus)
        for name, seconds in self.fixed.items():
            out[name] = row(seconds, [], 1)
        if self.executor == "ray":
            n_trials = sum(len(t) for t in self.trials.values())
            out["tune"] = row(n_trials * self.tune.get("tune_trial", 0.0) + len(self.waves()) * self.tune.get("tune_wave", 0.0), [], 1)
        total = self.total_seconds()
        if self.executor == "ray":
            out["parallel"] = row(total - sum(r["seconds"] for r in out.values()), [], 1)
        out["total"] = row(total, self.nodes, cpus)
        return out


class Clock:
    """Times calls of a pass: the seconds an idle machine takes, and how much slower this machine runs them now.

    On a GPU: wall time after a sync. On a CPU: the smaller of wall time and this process's CPU time.
    Both bound what an idle machine takes from above (wall time counts waiting for a core others hold,
    CPU time counts every thread's work, and busy-waiting OpenMP threads, so it exceeds wall time when
    threads run in parallel); a single thread (resources.cpus: 1), under OMP_WAIT_POLICY=PASSIVE, has
    CPU time equal to its idle-machine wall time whatever else runs. `slowdown` is the summed wall time
    over the summed idle-machine time of every call: how much slower the passes ran under the present load.
    """

    def __init__(self, device: str):
        self.device, self.wall, self.quiet = device, 0.0, 0.0

    def __call__(self, fn) -> float:
        """Returns the idle-machine seconds of one call of `fn`."""
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        fn()
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        quiet = wall if cuda else min(wall, cpu)
        self.wall, self.quiet = self.wall + wall, self.quiet + quiet
        return quiet

    @property
    def slowdown(self) -> float:
        """Returns summed wall time / summed idle-machine time of the calls so far (1.0: none yet)."""
        return max(1.0, self.wall / self.quiet) if self.quiet > 0 else 1.0


def _timed(fn, clock: Clock, min_seconds: float = 0.3, max_repeats: int = 15) -> float:
    """Returns the least idle-machine seconds of repeated calls of `fn` (until `min_seconds` in all, at most `max_repeats`),
    after a warm-up call.

    The least, not the median: other work on the machine only ever adds time to a call.
    """
    fn()
    times, start = [], time.perf_counter()
    while len(times) < max_repeats and (not times or time.perf_counter() - start < min_seconds):
        times.append(clock(fn))
    return min(times)


def param_count(model: torch.nn.Module) -> int:
    """Returns the number of elements of the model's state (parameters and buffers): what a checkpoint holds."""
    return sum(v.numel() for v in model.state_dict().values())


def _peak(device: str, fn) -> int | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def setup(spec: SweepSpec, task_id: str) -> tuple[dict, object, object, list[str]]:
    """Returns ({split: examples}, tokenizer, model factory, notes) for task `task_id`: the real ones where at hand.

    Nothing is downloaded. Where the task's data or the model's tokenizer is not on this
    machine (a hub id), a synthetic babel task of the same languages and sizes, with sentences
    of max_length / 2 tokens, stands in; where the model is a hub id, a randomly initialised
    BERT of its shape (KNOWN_SHAPES). `notes` says which.
    """
    from .config import BabelSpec, ConfigError, ModelSpec, TinySpec
    from .data import num_labels

    task = next(t for t in spec.tasks if t.id == task_id)
    local_model = spec.model.name == "tiny" or Path(spec.model.name).is_dir()
    local_data = task.id == "babel" or (task.source is not None and Path(task.source).exists())
    if local_model and local_data:
        _, data, tok = task_data(spec, task_id)
        return data, tok, model_factory(spec, task, tok, seed=0), []
    notes = []
    words = max(2, spec.training.max_length // 2 - 2)
    stand_in = task.model_copy(update={"id": "babel", "source": None, "babel": BabelSpec(length=words, morphology="isolating")})
    _, data, tok = task_data(spec.model_copy(update={"tasks": [stand_in], "model": ModelSpec(name="tiny")}), "babel")
    why = "the model's tokenizer is on the hub" if local_data else "its data is on the hub"
    notes.append(f"task {task_id}: {why} (nothing is downloaded): synthetic sentences of {words + 2} tokens, same sizes")
    if local_model:
        return data, tok, model_factory(spec, task, tok, seed=0), notes
    if spec.model.name not in KNOWN_SHAPES:
        raise ConfigError(f"model {spec.model.name!r}: not a local directory and its shape is unknown; estimate knows {', '.join(KNOWN_SHAPES)}")
    layers, heads, hidden, inter, positions, vocab, _ = KNOWN_SHAPES[spec.model.name]
    shape = ModelSpec(name="tiny", dropout=spec.model.dropout, tiny=TinySpec(
        layers=layers, heads=heads, hidden=hidden, intermediate=inter, max_positions=positions))
    notes.append(f"model {spec.model.name}: a random BERT of its shape ({layers}x{heads} heads, hidden {hidden}, vocab {vocab})")
    labels = num_labels(task)
    return data, tok, lambda: build_model(shape, labels, vocab, seed=0), notes


def spread(examples: list, n: int) -> list:
    """Returns about `n` examples taken evenly across `examples`: every language and length, not only the first language's."""
    return examples[:: max(1, len(examples) // n)][:n]


def calibrate(spec: SweepSpec, task_id: str, batches: int = 3) -> Calibration:
    """Returns per-batch costs of every pass for task `task_id` of the branch `spec`, timed on training.device."""
    data, tok, make, _ = setup(spec, task_id)
    device, precision, ml = spec.training.device, spec.training.precision, spec.training.max_length
    clock = Clock(device)
    build = _timed(make, clock)
    model = make().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.training.lr)
    scaler = grad_scaler(device, precision)
    plan = epoch_plan(data["train"], spec.training.batch_size, 0, 1, False)[:batches]

    def steps():
        for chunk in plan:
            b = {k: v.to(device) for k, v in encode(chunk, tok, ml).items()}
            train_step(model, b, opt, precision=precision, scaler=scaler, max_grad_norm=spec.training.max_grad_norm)
    train_batch = _timed(steps, clock) / len(plan)
    peak_train = _peak(device, steps)
    eval_example = {}
    for bs in {spec.training.batch_size, spec.influence.batch_size}:
        sample = spread(data["dev"], bs * batches)
        eval_example[bs] = _timed(lambda: evaluate(model, sample, tok, ml, bs, None, device, precision), clock) / len(sample)
    with tempfile.TemporaryDirectory() as tmp:
        save_epoch = _timed(lambda: (save_checkpoint(model, Path(tmp) / "epoch_1", {"epoch": 1}),
                                     _save_resume(Path(tmp), opt, {p: n for n, p in model.named_parameters()}, 1, 1, scaler)), clock)
        load = _timed(lambda: load_checkpoint(model, Path(tmp) / "epoch_1"), clock)
        mask = torch.ones(model.num_layers, model.num_heads, dtype=torch.bool)
        meta = {"task": task_id, "language": "x", "seed": 0, "checkpoint": "-", "full_accuracy": 1.0, "masked_accuracy": 1.0,
                "threshold": 1.0, "step_fraction": 1.0}
        # per language, as the stage does it: the input checked against its manifest, the shuffle,
        # the save, and its share of the output's manifest (hash, fsync); the difference of a 3- and
        # a 1-language publish leaves out what every node pays once (node_io)
        masks_store = Store(Path(tmp) / "masks")
        source = f"subnetworks/{0:020x}"
        with masks_store.writing(source) as out:
            for lang in ("a", "b", "c"):
                save_mask(out / lang, mask, meta)
        three = _timed(lambda: _publish_random_masks(masks_store, source, ("a", "b", "c"), meta), clock)
        one = _timed(lambda: _publish_random_masks(masks_store, source, ("a",), meta), clock)
        # both publishes check the same 3-language input, so the difference drops that check: add its share back
        check = _timed(lambda: masks_store.path(source, hashes="all"), clock)
        mask_io = max(0.0, three - one) / 2 + check / 3
        # execute() also resolves the node's grid branch (pydantic validation of the sweep) for every node
        from .config import branches
        from .graph import branch_of

        values = branches(spec)[0][0]
        node_io = _timed(lambda: _store_write(Store(Path(tmp) / "store")), clock) + _timed(lambda: branch_of(spec, values), clock)
    dev = spread(data["dev"], spec.subnetworks.batch_size * batches)
    encode_example = _timed(lambda: encode(dev, tok, ml), clock) / len(dev)
    imp = make_batches(encode(dev, tok, ml), spec.subnetworks.batch_size)
    imp = [{k: v.to(device) for k, v in b.items()} for b in imp]
    importance_batch = _timed(lambda: importance_pass(model, imp, None, "example", device, precision), clock) / len(imp)
    inf = spec.influence.model_copy(update={"precision": influence_precision(spec)})
    sample = spread(data["train"], inf.batch_size * batches)
    model.eval()
    projector = Projector(inf.proj_dim, inf.projection_seed) if inf.proj_dim else None
    sketch = lambda: sketch_examples(model, sample, tok, inf, ml, None, device, projector)  # noqa: E731
    sketch_example = _timed(sketch, clock) / len(sample)
    peak_sketch = _peak(device, sketch)
    score_unit, score_fixed, table_io = _calibrate_scoring(model, inf, len(data["train"]), spec.training.epochs, clock)
    return Calibration(device, build, train_batch, eval_example, save_epoch, load, importance_batch, encode_example, sketch_example,
                       score_unit, score_fixed, mask_io, node_io, table_io, peak_train, peak_sketch, clock.slowdown)


def _publish_random_masks(store: Store, source: str, languages: tuple[str, ...], meta: dict) -> None:
    src = store.path(source, hashes="all")
    with store.writing(f"random_masks/{time.perf_counter_ns() % 16**20:020x}") as out:
        for lang in languages:
            save_mask(out / lang, random_mask(load_mask(src / lang)[0], 1, "t", lang), meta)


def _store_write(store: Store) -> None:
    # what stages.execute does around every node's compute: done check, lease, atomic publish, ledger
    from .lease import lease

    key = f"calibration/{time.perf_counter_ns() % 16**20:020x}"  # a store key is <stage>/<20 hex digits>
    store.done(key)
    with lease(store, key):
        store.done(key)
        with store.writing(key) as out:
            (out / "done").write_text("")
    store.record({"key": key, "stage": "calibration", "time": time.time()})


def _calibrate_scoring(model, inf, n_train: int, checkpoints: int, clock: Clock) -> tuple[float, float, float]:
    """Returns (seconds per test x train x checkpoint, seconds per call) of top_influences, from two sizes, and
    the seconds to write a top-k table of 32 test examples and `checkpoints` checkpoints as parquet."""
    dim = sum(d for _, d in layer_dims(select_linears(model, inf.layers), inf.proj_dim))
    g = torch.Generator().manual_seed(0)
    n_train = min(n_train, 2048)

    def run(n_test):
        sk = lambda n, w: [Sketches([f"{w}{i}" for i in range(n)], ["x"] * n, torch.randn(n, dim, generator=g).to(DTYPES[inf.dtype]),  # noqa: E731
                                    layer_dims(select_linears(model, inf.layers), inf.proj_dim), inf.proj_dim, 0, 1)]
        te, tr = sk(n_test, "te"), sk(n_train, "tr")
        return _timed(lambda: top_influences(te, tr, min(inf.top_k, n_train)), clock), te, tr  # scoring runs on CPU
    (small, _, _), (big, te, tr) = run(2), run(34)
    unit = max(0.0, (big - small) / (32 * n_train))
    frame = pd.concat([top_influences(te, tr, min(inf.top_k, n_train))] * checkpoints)  # about the rows of a real table
    with tempfile.TemporaryDirectory() as tmp:
        table_io = 2 * _timed(lambda: frame.to_parquet(Path(tmp) / "t.parquet", index=False), clock)
    return unit, max(0.0, small - 2 * n_train * unit), table_io


def _groups(node: Node) -> list[int]:
    """Returns the number of test languages of each distinct mask group an influence node sketches under."""
    refs = node.params.masks
    keys = Counter(None if r is None else (r["key"], tuple(r["languages"]), r["op"]) for r in refs.values())
    return list(keys.values())


def estimate(spec: SweepSpec, pruned: float = 1.0, calibration: dict[str, Calibration] | None = None, timed: bool = True,
             executor: str = "local", fixed: dict[str, float] | None = None, cluster_cpus: int | None = None) -> Estimate:
    """Returns the projected cost of every stage output of the sweep (calibrating per task unless given), and its wall
    time on `executor` ('local' or 'ray') with the named fixed costs `fixed` (orchestration.overheads.measure).

    Ray's costs in `fixed` (ray_start, tune_wave, tune_trial) are wall times under the load they
    were measured at: they are scaled to an idle machine by the calibration's slowdown.
    timed=False: bytes and counts only, every time 0, no compute (the model is built on torch's
    meta device): what `validate` prints.
    """
    from .walltime import FIXED, cores, slots, trials

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
        f"executor {executor}: {how}; seconds are an idle machine's (at_load: under the load seen while calibrating)",
    ] + (["a masked-LM pre-training step costs a fine-tuning step of the same batch size (not timed on its own)"]
         if spec.model.pretrain is not None else []))
    if fixed is None:
        est.assumptions.append("fixed costs (startup, data, MLflow, Ray, report) not measured: counted as 0")
    seen, calibration = set(), dict(calibration or {})
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # as the sweep's trials run (runner.run_sweep, tune._trainable: workers.use_cpus)
    try:
        _estimate_into(est, spec, pruned, calibration, timed, seen)
    finally:
        torch.set_num_threads(before)
    est.slowdown = max([c.slowdown for c in calibration.values()] or [1.0]) if timed else 1.0
    keys = {n.key for n in est.nodes}
    est.trials = {w: {t: [n.key for n in ns if n.key in keys] for t, ns in plan.items()} for w, plan in trials(graph(spec)).items()}
    fixed = dict(fixed or {})
    for name in ("ray_start", "tune_wave", "tune_trial"):  # wall times of several processes: scaled to an idle machine
        if name in fixed:
            fixed[name] /= est.slowdown
    est.fixed = {name: fixed[name] for name in FIXED if name in fixed and (executor == "ray" or name != "ray_start")}
    if executor == "ray":
        est.tune = {name: fixed.get(name, 0.0) for name in ("tune_wave", "tune_trial")}
    return est


def _estimate_into(est: Estimate, spec: SweepSpec, pruned: float, calibration: dict, timed: bool, seen: set) -> None:
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
            for node in graph(b):
                if node.key in seen or node.params.task != task.id:
                    continue
                seen.add(node.key)
                cost = _node_cost(node, b, cal, data, model, params, pruned)
                cost.seconds += cal.node_io
                est.nodes.append(cost)


def _node_cost(node: Node, b: SweepSpec, cal: Calibration, data: dict, model, params: int, pruned: float) -> StageCost:
    tr, inf = b.training, b.influence
    dev = by_language(data["dev"])
    model_bytes = 4 * params
    train_mem = cal.peak_train_bytes or 16 * params  # weights, gradients, AdamW's two moments (+ activations on CUDA)
    if node.stage == "pretrain":
        # a masked-LM step taken as a fine-tuning step scaled by batch size (same encoder, same lengths; the
        # tiny LM head is small next to the encoder): not calibrated on its own
        pt = b.model.pretrain
        steps = pt.epochs * math.ceil(pt.sentences * len(by_language(data["train"])) / pt.batch_size)
        return StageCost(node.key, "pretrain", cal.build + steps * cal.train_batch * pt.batch_size / tr.batch_size, train_mem,
                         checkpoint_bytes=model_bytes)
    if node.stage == "finetune":
        sparse = node.params.method != "full"
        steps = len(epoch_plan(data["train"], tr.batch_size, node.params.seed, 1, sparse))
        per_epoch = steps * cal.train_batch + len(data["dev"]) * cal.eval_example[tr.batch_size] + cal.save_epoch
        return StageCost(node.key, "finetune", cal.build + tr.epochs * per_epoch, train_mem, checkpoint_bytes=tr.epochs * model_bytes)
    if node.stage == "subnetworks":
        heads = model.num_layers * model.num_heads
        per_step = step_size(heads, b.subnetworks.step_fraction)
        steps = min(math.ceil((heads - 1) / per_step), math.ceil(pruned * (heads - 1) / per_step) + 1)
        seconds = cal.build + cal.load + sum(
            len(v) * cal.encode_example + (1 + steps) * math.ceil(len(v) / b.subnetworks.batch_size) * cal.importance_batch
            + cal.mask_io for v in dev.values())  # mask_io: about the cost of saving the language's mask
        return StageCost(node.key, "subnetworks", seconds, cal.peak_sketch_bytes or 2 * model_bytes)
    if node.stage == "random_masks":
        return StageCost(node.key, "random_masks", len(dev) * cal.mask_io, 0)
    # influence: per mask group, every checkpoint sketches all training and the group's test examples
    ckpts, n_train = tr.epochs, len(data["train"])
    test_of = {l: min(inf.test_per_language, len(v)) for l, v in by_language(data["test"]).items()}
    per_lang = sum(test_of[l] for l in node.params.masks) / len(node.params.masks)
    dim = sum(d for _, d in layer_dims(select_linears(model, inf.layers), inf.proj_dim))
    width = torch.tensor([], dtype=DTYPES[inf.dtype]).element_size()
    seconds, sketch_bytes, held = cal.build, 0, 0
    for langs in _groups(node):
        n_test = round(per_lang * langs)
        seconds += ckpts * (cal.load + (n_train + n_test) * cal.sketch_example)
        seconds += cal.score_fixed + cal.score_unit * n_test * n_train * ckpts
        group_bytes = ckpts * (n_train + n_test) * dim * width
        sketch_bytes, held = sketch_bytes + group_bytes, max(held, group_bytes)
    seconds += ckpts * (cal.load + sum(test_of[l] for l in node.params.masks) * cal.eval_example[inf.batch_size])
    seconds += cal.table_io
    return StageCost(node.key, "influence", seconds, max(cal.peak_sketch_bytes or 2 * model_bytes, held + model_bytes),
                     sketch_bytes=sketch_bytes)


def human_bytes(n: float) -> str:
    """Returns `n` bytes as B, KB, MB, GB or TB (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def table(est: Estimate, cpus: float, gpus: float) -> str:
    """Returns the per-stage and fixed costs as a fixed-width text table (rows add up to the total), the waves, the present
    load's total, then the assumptions."""
    head = (f"{'stage':<13}{'outputs':>8}{'seconds':>10}{'hours':>10}{'device-h':>10}{'CPU-h':>10}{'peak mem':>11}"
            f"{'checkpoints':>13}{'sketches':>11}")
    rows = [head, "-" * len(head)]
    for stage, r in est.by_stage(cpus, gpus).items():
        if stage == "total":
            rows.append("-" * len(head))
        rows.append(f"{stage:<13}{r['outputs'] or '':>8}{r['seconds']:>10.1f}{r['hours']:>10.3g}{r['device_hours']:>10.3g}"
                    f"{r['cpu_hours']:>10.3g}{human_bytes(r['peak_memory_bytes']):>11}{human_bytes(r['checkpoint_bytes']):>13}"
                    f"{human_bytes(r['sketch_bytes']):>11}")
    waves = ", ".join(f"{k} {v:.1f} s" for k, v in est.waves().items())
    load = est.at_load()
    rows.append(f"waves (wall, {est.slots} trial(s) at a time): {waves}")
    rows.append(f"at the present load ({load['load_1min']:.2f} on {load['cores']} cores; calibration ran "
                f"{load['calibration_slowdown']:.2f}x slower than idle, this run ~{load['slowdown']:.2f}x): "
                f"{load['total_seconds']:.1f} s ({load['total_hours']:.3g} h)")
    return "\n".join(rows + [f"assumes: {a}" for a in est.assumptions])


def headline(est: Estimate, cpus: float, gpus: float) -> str:
    """Returns one line: outputs, checkpoint and sketch bytes, the largest memory per trial (no hours: nothing timed)."""
    t = est.by_stage(cpus, gpus)["total"]
    return (f"cost: {t['outputs']} stage outputs, checkpoints {human_bytes(t['checkpoint_bytes'])}, sketches "
            f"{human_bytes(t['sketch_bytes'])} in all, peak memory per trial ~{human_bytes(t['peak_memory_bytes'])} "
            f"(model state and sketches; `subnet-ray estimate` times it)")
