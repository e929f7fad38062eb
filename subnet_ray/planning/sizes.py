"""Model and sketch sizes from a sweep alone, without torch: what `validate` prints as the cost headline.

Parameters of a BERT / RoBERTa / XLM-R classifier follow from its shape (embeddings, per layer
the attention and feed-forward Linear layers and two layer norms, the paper's classifier);
the sketched layers are the Linear layers whose module names match influence.layers, the
same names the model has. `estimate` checks these against real models (tests).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..influence.layers import matches

if TYPE_CHECKING:  # annotations only
    from ..sweep.config import SweepSpec, TaskSpec

# Shapes of hub encoders, for sizes and estimates where the hub is not reachable:
# (layers, heads, hidden, intermediate, positions, vocab, token types).
KNOWN_SHAPES = {
    "xlm-roberta-base": (12, 12, 768, 3072, 514, 250002, 1),
    "FacebookAI/xlm-roberta-base": (12, 12, 768, 3072, 514, 250002, 1),
    "xlm-roberta-large": (24, 16, 1024, 4096, 514, 250002, 1),
    "bert-base-multilingual-cased": (12, 12, 768, 3072, 512, 119547, 2),
}
WORDPIECE_VOCAB = 8000  # the most a locally built WordPiece tokenizer holds (tokenization.wordpiece_tokenizer)


def shape_of(spec: SweepSpec, task: TaskSpec) -> tuple[tuple[int, ...], bool] | None:
    """Returns ((layers, heads, hidden, intermediate, positions, vocab, token types), exact) or None if unknown here.

    exact is False where the vocabulary is an upper bound (a WordPiece tokenizer not built yet).
    """
    if spec.model.name in KNOWN_SHAPES:
        return KNOWN_SHAPES[spec.model.name], True
    if spec.model.name != "tiny":
        return None
    t = spec.model.tiny
    if task.id == "babel":
        from ..data.examples import babel_languages  # no torch: the generator is numpy

        vocab, exact = 5 + len(babel_languages(task).vocabulary()), True
    else:
        vocab, exact = WORDPIECE_VOCAB, False
    return (t.layers, t.heads, t.hidden, t.intermediate, t.max_positions, vocab, 2), exact


def parameters(shape: tuple[int, ...], num_labels: int) -> int:
    """Returns the number of values in a checkpoint of a classifier of `shape` (parameters; no persistent buffers)."""
    layers, _, h, inter, positions, vocab, types = shape
    embeddings = (vocab + positions + types) * h + 2 * h
    per_layer = 4 * (h * h + h) + (h * inter + inter) + (inter * h + h) + 4 * h
    return embeddings + layers * per_layer + (h * h + h) + (h * num_labels + num_labels)


def linear_names(layers: int) -> list[str]:
    """Returns the module names of a SequenceClassifier's Linear layers, in module order."""
    per = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense")
    return [f"encoder.encoder.layer.{i}.{p}" for i in range(layers) for p in per] + ["classifier.dense", "classifier.out_proj"]


def sketch_dim(spec: SweepSpec, shape: tuple[int, ...], num_labels: int) -> int:
    """Returns the length of one example's sketch: d per matched layer (or the exact gradient sizes when d = 0)."""
    layers, _, h, inter = shape[:4]
    dims = {"intermediate.dense": (inter, h), "output.dense": (h, inter), "classifier.out_proj": (num_labels, h)}
    total = 0
    for name in linear_names(layers):
        if any(matches(name, p) for p in spec.influence.layers):
            if spec.influence.proj_dim:
                total += spec.influence.proj_dim
            else:
                out, inp = next((v for k, v in dims.items() if name.endswith(k) and not name.endswith("attention.output.dense")), (h, h))
                total += out * (inp + 1)
    return total


def headline(spec: SweepSpec, nodes: list) -> str:
    """Returns validate's one-line cost headline: checkpoint bytes and the sketches one influence output holds (no timing)."""
    from ..data.examples import num_labels

    parts = []
    for task in spec.tasks:
        found = shape_of(spec, task)
        if found is None:
            return f"cost: sizes of model {spec.model.name!r} are not known without loading it; `subnet-ray estimate` has them"
        shape, exact = found
        labels = num_labels(task)
        ckpt = 4 * parameters(shape, labels)
        finetunes = sum(1 for n in nodes if str(n.stage) == "finetune" and n.params.task == task.id)
        per_mask = spec.training.epochs * len(task.languages) * task.train_size * sketch_dim(spec, shape, labels)
        width = {"float32": 4, "float16": 2, "bfloat16": 2}[spec.influence.dtype]
        approx = "" if exact else "<= "
        parts.append(f"{task.id}: checkpoints {approx}{_gb(finetunes * spec.training.epochs * ckpt)} "
                     f"({finetunes} models x {spec.training.epochs} epochs x {approx}{_gb(ckpt)}), "
                     f"training sketches {_gb(per_mask * width)} per mask (all checkpoints)")
    return "cost: " + "; ".join(parts) + " (`subnet-ray estimate` adds hours and memory)"


def _gb(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
