"""Per-batch costs of every pass of a sweep, timed on the present device: what `estimate` multiplies by batch counts.

`calibrate` times a few real batches of each pass at the sweep's model, batch sizes and the
task's real token lengths (the same library calls the stages make: train.fit_step (full and SFT),
evaluate, importance_pass, sketch_examples, checkpoint saves and loads, top_influences, the
store's publish), with the torch threads the sweep's trials use (resources.cpus). `Clock` makes
each time what an idle machine takes, whatever else runs here, and says how much slower the
machine ran them now.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
import torch

from ...sweep.config import SweepSpec
from ...sweep.graph import influence_precision
from ...influence.pipeline import sketch_examples
from ...influence.projection import Projector
from ...influence.sketch import DTYPES, Sketches, layer_dims, select_linears
from ...influence.tracin import top_influences
from ...models.classifier import HeadMask, head_parameter_masks, load_checkpoint, save_checkpoint
from ...models.precision import grad_scaler
from ...storage.store import Store
from ...subnetworks.importance import importance_pass
from ...subnetworks.masks import load_mask, random_mask, save_mask
from ...subnetworks.pruning import make_batches
from ...data.tokenization import encode
from ...train.finetune import save_resume, epoch_plan, evaluate, fit_step
from .inputs import setup


@dataclass
class Calibration:
    """Seconds per batch (or per call) of each pass, measured on one device for one task."""

    device: str
    build: float  # build the model
    train_batch: float  # one step of full fine-tuning at training.batch_size (train.fit_step: encode, train_step)
    train_batch_sft: float  # one SFT step (the language's head mask in the forward pass, its gradients masked)
    first_steps: float  # what a fine-tuning's first steps take beyond train_batch each (gradients, optimizer state allocated)
    eval_example: dict[int, float]  # evaluate, per example, by batch size
    save_epoch: float  # checkpoint + resume state after an epoch
    load: float  # load a checkpoint
    importance_example: float  # importance_pass per example at subnetworks.batch_size
    importance_batch: float  # importance_pass per batch besides its examples
    importance_call: float  # importance_pass per call besides its batches (hooks, train/eval switches: a tiny model's passes are mostly this)
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


def timed(fn, clock: Clock, min_seconds: float = 0.3, max_repeats: int = 15, warm_up: bool = True) -> float:
    """Returns the median idle-machine seconds of repeated calls of `fn` (until `min_seconds` in all, at most `max_repeats`),
    after a warm-up call (unless `warm_up` is False).

    The median, not the least: the Clock already takes out what other work adds, and what is left
    varies from call to call in a run too (caches, the allocator), so a stage's many calls sum to
    about n x the median; n x the least came out 5-20% short on the smoke sweep's passes.
    """
    if warm_up:
        fn()
    times, start = [], time.perf_counter()
    while len(times) < max_repeats and (not times or time.perf_counter() - start < min_seconds):
        times.append(clock(fn))
    return float(statistics.median(times))


def _peak(device: str, fn) -> int | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def spread(examples: list, n: int) -> list:
    """Returns about `n` examples taken evenly across `examples`: every language and length, not only the first language's."""
    return examples[:: max(1, len(examples) // n)][:n]


def calibrate(spec: SweepSpec, task_id: str, batches: int = 3) -> Calibration:
    """Returns per-batch costs of every pass for task `task_id` of the branch `spec`, timed on training.device."""
    data, tok, make, _ = setup(spec, task_id)
    device, precision, ml = spec.training.device, spec.training.precision, spec.training.max_length
    clock = Clock(device)
    build = timed(make, clock)
    tr = spec.training
    state: dict = {}

    def fresh():  # a new model and optimizer, as every fine-tuning starts
        if "hm" in state:
            state["hm"].remove()
        state.update(model=make().to(device).train(), scaler=grad_scaler(device, precision))
        state["opt"] = torch.optim.AdamW(state["model"].parameters(), lr=tr.lr, weight_decay=tr.weight_decay)
        state["hm"] = HeadMask(state["model"])

    plans = {sparse: epoch_plan(data["train"], tr.batch_size, 0, 1, sparse)[:batches] for sparse in (False, True)}

    def steps(sparse=False):  # finetune's own step (train.fit_step), its loss read back as finetune does
        masks, pm = (state["masks"], state["pm"]) if sparse else (None, {})
        for chunk in plans[sparse]:
            fit_step(state["model"], state["hm"], state["opt"], chunk, tok, tr, tr.lr, masks, pm, state["scaler"]).item()
        state["hm"].set(None)
    firsts, start = [], time.perf_counter()
    while len(firsts) < 5 and (not firsts or time.perf_counter() - start < 0.3):  # a large model: once
        fresh()
        firsts.append(clock(steps))
    train_batch = timed(steps, clock, warm_up=False) / len(plans[False])
    first_steps = max(0.0, min(firsts) - len(plans[False]) * train_batch)
    model, opt, scaler = state["model"], state["opt"], state["scaler"]
    g = torch.Generator().manual_seed(0)  # SFT's cost does not depend on which heads are off: half of them, at random
    shape = (model.num_layers, model.num_heads)
    state["masks"] = {lang: (torch.rand(shape, generator=g) < 0.5).float() for lang in {e.language for e in data["train"]}}
    state["pm"] = {lang: head_parameter_masks(model, m) for lang, m in state["masks"].items()}  # once, as finetune makes them
    train_batch_sft = timed(lambda: steps(True), clock, warm_up=False) / len(plans[True])  # the model is warm already
    state["hm"].remove()
    peak_train = _peak(device, steps)
    eval_example = {}
    for bs in {spec.training.batch_size, spec.influence.batch_size}:
        sample = spread(data["dev"], bs * batches)
        eval_example[bs] = timed(lambda: evaluate(model, sample, tok, ml, bs, None, device, precision), clock) / len(sample)
    with tempfile.TemporaryDirectory() as tmp:
        # as finetune does after each epoch: a new checkpoint folder, the resume state replaced; the mean of two
        # epochs, no warm-up (a first write and a rewrite of the same file differ; so do the kernel's dirty pages after one)
        names = {p: n for n, p in model.named_parameters()}
        save_epoch = sum(clock(lambda e=e: (save_checkpoint(model, Path(tmp) / f"epoch_{e}", {"epoch": e}),
                                            save_resume(Path(tmp), opt, names, e, e, scaler))) for e in (1, 2)) / 2
        load = timed(lambda: load_checkpoint(model, Path(tmp) / "epoch_1"), clock)
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
        three = timed(lambda: _publish_random_masks(masks_store, source, ("a", "b", "c"), meta), clock)
        one = timed(lambda: _publish_random_masks(masks_store, source, ("a",), meta), clock)
        # both publishes check the same 3-language input, so the difference drops that check: add its share back
        check = timed(lambda: masks_store.path(source, hashes="all"), clock)
        mask_io = max(0.0, three - one) / 2 + check / 3
        # execute() also resolves the node's grid branch (pydantic validation of the sweep) for every node
        from ...sweep.config import branches
        from ...sweep.graph import branch_of

        values = branches(spec)[0][0]
        node_io = timed(lambda: _store_write(Store(Path(tmp) / "store")), clock) + timed(lambda: branch_of(spec, values), clock)
    dev = spread(data["dev"], spec.subnetworks.batch_size * batches)
    encode_example = timed(lambda: encode(dev, tok, ml), clock) / len(dev)
    imp = make_batches(encode(dev, tok, ml), spec.subnetworks.batch_size)
    imp = [{k: v.to(device) for k, v in b.items()} for b in imp]
    # three points: the batches as they are, as many batches of one example each, and one such batch, so a language's
    # pass costs importance_call + its batches x importance_batch + its examples x importance_example (a last batch is short)
    singles = [{k: v[:1] for k, v in b.items()} for b in imp]
    full, ones, one = (timed(lambda bs=bs: importance_pass(model, bs, None, "example", device, precision), clock)
                       for bs in (imp, singles, singles[:1]))
    importance_example = max(0.0, full - ones) / (len(dev) - len(imp)) if len(dev) > len(imp) else full / len(dev)
    per_batch = max(0.0, ones - one) / (len(imp) - 1) if len(imp) > 1 else ones  # one batch of one example
    importance_batch = max(0.0, per_batch - importance_example)
    importance_call = max(0.0, one - per_batch)
    inf = spec.influence.model_copy(update={"precision": influence_precision(spec)})
    sample = spread(data["train"], inf.batch_size * batches)
    model.eval()
    projector = Projector(inf.proj_dim, inf.projection_seed) if inf.proj_dim else None
    sketch = lambda: sketch_examples(model, sample, tok, inf, ml, None, device, projector)  # noqa: E731
    sketch_example = timed(sketch, clock) / len(sample)
    peak_sketch = _peak(device, sketch)
    score_unit, score_fixed, table_io = _calibrate_scoring(model, inf, len(data["train"]), spec.training.epochs, clock)
    return Calibration(device, build, train_batch, train_batch_sft, first_steps, eval_example, save_epoch, load, importance_example, importance_batch, importance_call, encode_example, sketch_example,
                       score_unit, score_fixed, mask_io, node_io, table_io, peak_train, peak_sketch, clock.slowdown)


def _publish_random_masks(store: Store, source: str, languages: tuple[str, ...], meta: dict) -> None:
    src = store.path(source, hashes="all")
    with store.writing(f"random_masks/{time.perf_counter_ns() % 16**20:020x}") as out:
        for lang in languages:
            save_mask(out / lang, random_mask(load_mask(src / lang)[0], 1, "t", lang), meta)


def _store_write(store: Store) -> None:
    # what stages.execute does around every node's compute: done check, lease, atomic publish, ledger
    from ...storage.lease import lease

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
        return timed(lambda: top_influences(te, tr, min(inf.top_k, n_train)), clock), te, tr  # scoring runs on CPU
    (small, _, _), (big, te, tr) = run(2), run(34)
    unit = max(0.0, (big - small) / (32 * n_train))
    frame = pd.concat([top_influences(te, tr, min(inf.top_k, n_train))] * checkpoints)  # about the rows of a real table
    with tempfile.TemporaryDirectory() as tmp:
        table_io = 2 * timed(lambda: frame.to_parquet(Path(tmp) / "t.parquet", index=False), clock)
    return unit, max(0.0, small - 2 * n_train * unit), table_io


def probe_work(job: dict, start) -> dict:
    """Builds the sweep's model, warms up, then for each phase (name, k) times that phase's work if `start(tag, k, fn)` says
    so (it may call fn once first, untimed); returns {"<name>/<k>": seconds per step or example, "nice": this process's
    niceness}."""
    from ...orchestration.workers import freeze_heap

    spec, task_id, seconds = SweepSpec.model_validate(job["spec"]), job["task"], job["seconds"]
    data, tok, make, _ = setup(spec, task_id)
    tr, device = spec.training, spec.training.device
    model = make().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay)
    hm, scaler = HeadMask(model), grad_scaler(device, tr.precision)
    plan = epoch_plan(data["train"], tr.batch_size, 0, 1, False)[:3]  # calibrate's batches
    inf = spec.influence.model_copy(update={"precision": influence_precision(spec)})
    sample = spread(data["train"], inf.batch_size * 3)
    projector = Projector(inf.proj_dim, inf.projection_seed) if inf.proj_dim else None

    def train():  # calibrate's batches, all of them (their token lengths differ)
        model.train()
        for chunk in plan:
            fit_step(model, hm, opt, chunk, tok, tr, tr.lr, None, {}, scaler).item()

    def sketch():
        model.eval()
        sketch_examples(model, sample, tok, inf, tr.max_length, None, device, projector)

    freeze_heap()
    train()  # first steps: the optimizer's state allocated
    sketch()
    out, units = {"nice": os.nice(0)}, {"train": (train, len(plan)), "sketch": (sketch, len(sample))}
    for name, k in job["phases"]:
        fn, n = units[name]
        if not start(f"{name}-{k}", k, fn):
            continue
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t, reps = time.perf_counter(), 0
        while reps == 0 or time.perf_counter() - t < seconds:
            fn()
            reps += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out[f"{name}/{k}"] = (time.perf_counter() - t) / (reps * n)
    return out
