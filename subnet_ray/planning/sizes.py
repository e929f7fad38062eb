"""Model and sketch sizes from a sweep alone, without torch: what `validate` prints as the cost headline.

Parameters, sketched Linear layers and memory follow from the model's shape (shapes.py: the tiny BERT,
a local config.json or a hub id's published config; memory.py: training, influence, sketches);
the sketched layers are the Linear layers whose module names match influence.layers, the
same names the model has. `estimate` checks these against real models (tests).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import memory
from .shapes import PUBLISHED, Shape, parameters, shape_of_model

if TYPE_CHECKING:  # annotations only
    from ..sweep.config import SweepSpec, TaskSpec

# BERT-family hub encoders as (layers, heads, hidden, intermediate, positions, vocab, token types): the random BERT
# of the same shape that estimate's calibration times in place of a hub model (cost.inputs.setup).
KNOWN_SHAPES = {name: (c["num_hidden_layers"], c["num_attention_heads"], c["hidden_size"], c["intermediate_size"],
                       c["max_position_embeddings"], c["vocab_size"], c["type_vocab_size"])
                for name, c in PUBLISHED.items() if c["model_type"] in ("bert", "roberta", "xlm-roberta")}
WORDPIECE_VOCAB = 8000  # the most a locally built WordPiece tokenizer holds (tokenization.wordpiece_tokenizer)


def shape_of(spec: SweepSpec, task: TaskSpec) -> tuple[Shape, bool] | None:
    """Returns (the model's Shape, exact) or None if its shape is not known here.

    The tiny model is a BERT of the sweep's sizes; a local directory's config.json or a hub id's
    published config (shapes.PUBLISHED) gives any other. exact is False where the vocabulary is an
    upper bound (a WordPiece tokenizer not built yet).
    """
    if spec.model.name != "tiny":
        found, _ = shape_of_model(spec.model.name)
        return (found, True) if found is not None else None
    t = spec.model.tiny
    if task.id == "babel":
        from ..data.examples import babel_languages  # no torch: the generator is numpy

        vocab, exact = 5 + len(babel_languages(task).vocabulary()), True
    else:
        vocab, exact = WORDPIECE_VOCAB, False
    return Shape(model_type="bert", family="bert", layers=t.layers, heads=t.heads, kv_heads=t.heads, head_dim=t.hidden // t.heads,
                 hidden=t.hidden, intermediate=t.intermediate, vocab=vocab, positions=t.max_positions, token_types=2), exact


def sketch_dim(spec: SweepSpec, shape: Shape, num_labels: int) -> int:
    """Returns the length of one example's sketch: d per matched layer (or the exact gradient sizes when d = 0)."""
    return memory.sketch_dim(shape, num_labels, spec.influence.layers, spec.influence.proj_dim)


def headline(spec: SweepSpec, nodes: list) -> str:
    """Returns validate's one-line cost headline: checkpoint bytes, the sketches one influence output holds, and the
    memory a training trial and an influence pass need (memory.Plan), with the smallest GPU that holds them (no timing)."""
    from ..data.examples import num_labels

    parts = []
    for task in spec.tasks:
        found = shape_of(spec, task)
        if found is None:
            _, why = shape_of_model(spec.model.name)
            return f"cost: sizes of model {spec.model.name!r} are not known without loading it ({why}); `subnet-ray estimate` has them"
        shape, exact = found
        labels = num_labels(task)
        ckpt = 4 * parameters(shape, labels)
        finetunes = sum(1 for n in nodes if str(n.stage) == "finetune" and n.params.task == task.id)
        per_mask = spec.training.epochs * len(task.languages) * task.train_size * sketch_dim(spec, shape, labels)
        width = {"float32": 4, "float16": 2, "bfloat16": 2}[spec.influence.dtype]
        approx = "" if exact else "<= "
        m = memory.sweep_plan(spec, task, shape)
        gpu = (f"; GPU: training fits {memory.fits(m.train_peak)}, influence {memory.fits(m.influence_device)}"
               if spec.training.device.startswith("cuda") else "")
        parts.append(f"{task.id}: checkpoints {approx}{_gb(finetunes * spec.training.epochs * ckpt)} "
                     f"({finetunes} models x {spec.training.epochs} epochs x {approx}{_gb(ckpt)}), "
                     f"training sketches {_gb(per_mask * width)} per mask (all checkpoints); "
                     f"memory: training {approx}{_gb(m.train_peak)} ({spec.training.precision}, batch {spec.training.batch_size} "
                     f"x {spec.training.max_length}), influence {approx}{_gb(m.influence_device)} + sketches held "
                     f"{_gb(m.sketches_one_mask)}{gpu}")
    return "cost: " + "; ".join(parts) + " (`subnet-ray estimate` adds hours; `estimate --memory` the breakdown)"


def memory_report(spec: SweepSpec) -> tuple[list[str], dict]:
    """Returns (text lines, JSON) of each task's memory Plan (memory.py) for `spec`, or why it is not known."""
    fits, gib = memory.fits, memory.gib
    lines, out = [], {}
    for task in spec.tasks:
        found = shape_of(spec, task)
        if found is None:
            why = shape_of_model(spec.model.name)[1]
            lines.append(f"memory ({task.id}): shape of {spec.model.name!r} not known here ({why})")
            continue
        shape, exact = found
        m = memory.sweep_plan(spec, task, shape)
        tr, inf = spec.training, spec.influence
        bound = "" if exact else "<= "
        lines += [
            f"memory ({task.id}, {spec.model.name}: {shape.model_type}, {m.params / 1e6:,.1f} M parameters, "
            f"{shape.layers} layers x {shape.heads} heads ({shape.kv_heads} kv), hidden {shape.hidden}):",
            f"  checkpoint      {bound}{gib(m.checkpoint)} each (float32)",
            f"  training        {bound}{gib(m.train_peak)} peak on {tr.device} = weights + gradients + AdamW "
            f"{gib(m.train_state)} + activations {gib(m.train_activations)} ({tr.precision}, batch {tr.batch_size} x "
            f"{tr.max_length} tokens) + backward working set: fits {fits(m.train_peak)}",
            f"  influence       {bound}{gib(m.influence_device)} on {tr.device} (model + sketching batch of "
            f"{inf.batch_size}, {inf.precision or tr.precision}): fits {fits(m.influence_device)}",
            f"  sketches        {m.sketch_dim:,} values per example per checkpoint ({inf.dtype}); held at once "
            f"{gib(m.sketches_one_mask)} (one mask, every checkpoint), all {len(task.languages)} masks {gib(m.sketches_all)} (host)",
        ]
        out[task.id] = {"model": spec.model.name, "model_type": shape.model_type, "exact": exact, **m.row()}
    return lines, out


def planned(spec: SweepSpec, task_id: str) -> memory.Plan | None:
    """Returns the memory Plan of `spec`'s model for task `task_id`, or None where its shape is not known here."""
    task = next(t for t in spec.tasks if t.id == task_id)
    found = shape_of(spec, task)
    return None if found is None else memory.sweep_plan(spec, task, found[0])


def _gb(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
