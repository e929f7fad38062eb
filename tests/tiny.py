"""The tiny model and batches every test reuses (2 layers x 4 heads x hidden 32)."""
from pathlib import Path

import torch

from subnet_ray.sweep.config import ModelSpec, TinySpec
from subnet_ray.models.classifier import build_model

VOCAB = 50
TINY = ModelSpec(name="tiny", tiny=TinySpec(layers=2, heads=4, hidden=32, intermediate=64, max_positions=64), dropout=0.0)


def tiny_model(seed: int = 0, num_labels: int = 2):
    """Returns a tiny random-init classifier in eval mode."""
    return build_model(TINY, num_labels=num_labels, vocab_size=VOCAB, seed=seed).eval()


def tiny_batch(n: int = 6, length: int = 10, seed: int = 0, pad: bool = True) -> dict:
    """Returns a batch with some rows right-padded, so padding is always exercised."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    if pad:
        for i in range(n):
            cut = length - (i % 3) * 2
            ids[i, cut:] = 0
            mask[i, cut:] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.randint(0, 2, (n,), generator=g),
    }


def tiny_task(languages=("xa", "xb", "ya"), train=24, dev=12, test=12):
    """Returns a small babel TaskSpec (families: x* related, y* alone)."""
    from subnet_ray.sweep.config import BabelSpec, TaskSpec

    fams = [[l for l in languages if l.startswith("x")], [l for l in languages if not l.startswith("x")]]
    return TaskSpec(
        id="babel", languages=list(languages), train_size=train, dev_size=dev, test_size=test,
        babel=BabelSpec(vocab_size=60, length=8, families=[f for f in fams if f]),
    )


def tiny_data(task=None):
    """Returns (task, train, dev, test, tokenizer) for the tiny babel task."""
    from subnet_ray.data.examples import load_examples
    from subnet_ray.data.examples import tokenizer_for

    task = task or tiny_task()
    return task, load_examples(task, "train"), load_examples(task, "dev"), load_examples(task, "test"), tokenizer_for(task)


def tiny_babel_model(tokenizer, seed=0):
    """Returns a tiny classifier sized for the tokenizer."""
    return build_model(TINY, num_labels=2, vocab_size=len(tokenizer), seed=seed)


SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"


def smoke_sweep(name: str, *replacements: tuple[str, str]) -> str:
    """Returns the text of sweeps/smoke.yaml named `name`, 3 retries a trial, with each (old, new) replaced.

    Raises AssertionError if an `old` text is not in the file, so an edit of smoke.yaml cannot
    silently turn a test's change into nothing.
    """
    text = SMOKE.read_text()
    for old, new in [("name: smoke", f"name: {name}"), ("max_failures: 1}", "max_failures: 3}"), *replacements]:
        assert old in text, f"{old!r} is not in {SMOKE}"
        text = text.replace(old, new)
    return text
