"""What calibration runs on, and whether a timed estimate can be made here at all.

`setup` gives the sweep's own data, tokenizer and model where they are on this machine, and stand-ins of the same
sizes and shapes where they are on the hub (nothing is downloaded): synthetic sentences of the sweep's lengths, a
random BERT of a known shape (planning.sizes.KNOWN_SHAPES) or a published config's real architecture with random
weights (planning.shapes.PUBLISHED). `check_inputs` refuses, in one line before anything is timed, what neither can
stand in for.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ...models.classifier import build_model
from ...stages import model_factory, task_data, task_of
from ...sweep.config import SweepSpec
from ..shapes import PUBLISHED
from ..sizes import KNOWN_SHAPES


def setup(spec: SweepSpec, task_id: str) -> tuple[dict, object, object, list[str]]:
    """Returns ({split: examples}, tokenizer, model factory, notes) for task `task_id`: the real ones where at hand.

    Nothing is downloaded. Where the task's data or the model's tokenizer is not on this
    machine (a hub id), a synthetic babel task of the same languages and sizes, with sentences
    of max_length / 2 tokens, stands in; where the model is a hub id, a randomly initialised
    BERT of its shape (KNOWN_SHAPES, the BERT family) or its real architecture with random
    weights of its published config (planning.shapes.PUBLISHED). `notes` says which.
    """
    from ...sweep.config import BabelSpec, ConfigError, ModelSpec, TinySpec
    from ...data.examples import num_labels

    task = task_of(spec, task_id)
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
    labels = num_labels(task)
    if spec.model.name not in KNOWN_SHAPES:
        if published_record(spec.model.name) is None:  # the record alone: building the model is the calibration's
            raise ConfigError(f"model {spec.model.name!r}: timing needs a model built here: a local directory or a hub id whose "
                              f"config is published in planning.shapes ({', '.join(PUBLISHED)}); "
                              "`subnet-ray estimate --memory` gives its sizes and memory without timing")
        notes.append(f"model {spec.model.name}: random weights of its published shape (planning.shapes.PUBLISHED), its real "
                     "architecture: timing does not depend on the weights' values")
        return data, tok, lambda: published_model(spec.model.name, labels, spec.model.dropout), notes
    layers, heads, hidden, inter, positions, vocab, _ = KNOWN_SHAPES[spec.model.name]
    shape = ModelSpec(name="tiny", dropout=spec.model.dropout, tiny=TinySpec(
        layers=layers, heads=heads, hidden=hidden, intermediate=inter, max_positions=positions))
    notes.append(f"model {spec.model.name}: a random BERT of its shape ({layers}x{heads} heads, hidden {hidden}, vocab {vocab})")
    return data, tok, lambda: build_model(shape, labels, vocab, seed=0), notes


def published_record(name: str):
    """Returns the architecture record of hub id `name` if its config is published in planning.shapes.PUBLISHED and its
    model_type has a record (so published_model can build it here), else None."""
    from ...models.architectures import ARCHITECTURES

    values = PUBLISHED.get(name)
    return None if values is None else ARCHITECTURES.get(values["model_type"])


def published_model(name: str, num_labels: int, dropout: float = 0.0):
    """Returns a SequenceClassifier of hub id `name`'s real architecture with random weights of its published config
    (planning.shapes.PUBLISHED: the hub is not reachable here); `published_record(name)` must not be None."""
    import transformers

    from ...models.classifier import SequenceClassifier

    arch = published_record(name)
    config = getattr(transformers, arch.config)(**{k: v for k, v in PUBLISHED[name].items() if k != "model_type"})
    torch.manual_seed(0)
    return SequenceClassifier(transformers.AutoModel.from_config(config, **dict(arch.load_kwargs)), num_labels, dropout)


def layers_and_heads(config: dict) -> tuple[int, int]:
    """Returns (layers, query heads) of a config.json's values, read through its architecture record's config class
    (DistilBERT names them n_layers / n_heads: transformers' attribute_map resolves every family's names)."""
    import transformers

    from ...models.architectures import architecture, geometry

    arch = architecture(config.get("model_type"), "model config")
    g = geometry(getattr(transformers, arch.config).from_dict(config))
    return g.layers, g.heads


def tokenizer_here(name: str) -> bool:
    """Whether model `name`'s tokenizer is on this machine (the tiny model's own, or a local model directory's): a hub
    id's is not loaded, as setup does not load it (nothing is downloaded)."""
    return name == "tiny" or Path(name).is_dir()


def check_inputs(spec: SweepSpec, sweep_path: str = "SWEEP") -> None:
    """Raises ConfigError in one line, before any calibration, if a timed estimate of the sweep cannot be made here: a
    model neither local nor of a known or published shape, or a task's data that cannot be loaded (a hub dataset
    not in the cache, a missing file): the estimate measures loading it."""
    from ...sweep.config import ConfigError, branches
    from ...data.examples import load_examples

    seen = set()
    for _, b in branches(spec):
        name = b.model.name
        if not (tokenizer_here(name) or name in KNOWN_SHAPES or published_record(name) is not None):
            raise ConfigError(f"estimate: model {name!r}: timing needs a model built here: a local directory or a hub id whose "
                              f"config is published in planning.shapes ({', '.join(PUBLISHED)}); "
                              f"`subnet-ray estimate --memory {sweep_path}` gives its sizes and memory without timing")
        for task in b.tasks:
            if task.id == "babel" or task.model_dump_json() in seen:
                continue
            seen.add(task.model_dump_json())
            try:
                with _offline():
                    load_examples(task, "dev")
            except (OSError, ValueError) as e:  # DataError is a ValueError
                why = (str(e).splitlines() or [type(e).__name__])[0][:300]
                raise ConfigError(f"estimate: task {task.id!r}: its data is not on this machine ({why}); a timed estimate "
                                  f"measures loading it: `subnet-ray estimate --memory {sweep_path}` gives sizes and memory "
                                  "without it") from None


@contextlib.contextmanager
def _offline():
    """Hub libraries in offline mode while it runs: a dataset not cached here fails at once, not after retries that
    could only download it (estimate downloads nothing)."""
    import datasets
    import huggingface_hub

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
