"""Builds a local 12-layer encoder directory and a parallel XNLI-format data set for cost benchmarks.

No hub is reachable here, so the "pretrained 12-layer multilingual encoder" of issue 21 is made
locally: a BERT config of the multilingual MiniLM's shape (12 layers x 12 heads, hidden 384,
intermediate 1536, a 250,002-row embedding), random weights saved with `save_pretrained`
(safetensors), and a WordPiece tokenizer built from the data. What an estimate must get right
(parameters, checkpoint bytes, token lengths, FLOPs per example) is that of the real model; the
weights' values do not change any cost.

The data: `<out>/data/<lang>/{train,validation,test}.jsonl` with XNLI's columns (premise,
hypothesis, label 0/1/2), parallel by row position as XNLI is. Each language renders the same
latent items with its own pseudo-words; premises are 12-34 words (XNLI's premises average ~20
words, ~30 subword tokens), hypotheses 5-14. A hypothesis made of premise concepts is
entailment (0), one with a new concept neutral (1) or contradiction (2).

    python benchmarks/encoder12.py OUT [--languages en de fr es ru] [--items 600]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

LANGUAGES = ("en", "de", "fr", "es", "ru")
SPLITS = {"train": 0.7, "validation": 0.15, "test": 0.15}
SHAPE = dict(num_hidden_layers=12, num_attention_heads=12, hidden_size=384, intermediate_size=1536,
             vocab_size=250_002, max_position_embeddings=512, type_vocab_size=2)
CONCEPTS = 3000
SYLLABLES = ("ka", "to", "mi", "ra", "se", "lu", "no", "pe", "di", "ga", "vo", "ze", "sha", "bri", "tel",
             "mon", "qua", "fin", "dor", "lis", "ek", "ul", "an", "or", "ix")


def lexicon(language: str, g: np.random.Generator) -> list[str]:
    """Returns one pseudo-word per concept for `language` (2-4 syllables, a per-language suffix)."""
    suffix = language[::-1]
    words, seen = [], set()
    while len(words) < CONCEPTS:
        w = "".join(g.choice(SYLLABLES, size=int(g.integers(2, 5)))) + suffix
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def items(n: int, g: np.random.Generator) -> list[tuple[list[int], list[int], int]]:
    """Returns n latent (premise concepts, hypothesis concepts, label) items, Zipf-distributed concepts."""
    p = 1.0 / np.arange(1, CONCEPTS + 1)
    p /= p.sum()
    out = []
    for _ in range(n):
        premise = list(g.choice(CONCEPTS, size=int(g.integers(12, 35)), p=p))
        k = int(g.integers(5, 15))
        label = int(g.integers(0, 3))
        hyp = list(g.choice(premise, size=k))
        if label:  # neutral / contradiction: concepts the premise does not have
            fresh = [c for c in g.choice(CONCEPTS, size=3 * label, p=p) if c not in premise] or [CONCEPTS - 1]
            hyp[: len(fresh)] = fresh[:k]
            g.shuffle(hyp)
        out.append((premise, hyp, label))
    return out


def build(out: Path, languages=LANGUAGES, n_items: int = 600, seed: int = 0) -> tuple[Path, Path]:
    """Returns (model directory, data folder), written under `out` (skipped when already there)."""
    from transformers import BertConfig, BertModel

    from subnet_ray.data.tokenization import wordpiece_tokenizer

    model_dir, data_dir = out / "encoder12", out / "data"
    g = np.random.default_rng(seed)
    latent = items(n_items, g)
    texts = []
    cut = np.cumsum([0] + [int(round(f * n_items)) for f in SPLITS.values()])
    for lang in languages:
        words = lexicon(lang, np.random.default_rng([seed, sum(map(ord, lang))]))
        rows = [{"premise": " ".join(words[c] for c in pr), "hypothesis": " ".join(words[c] for c in hy), "label": lb}
                for pr, hy, lb in latent]
        texts += [r["premise"] + " " + r["hypothesis"] for r in rows]
        for (split, _), a, b in zip(SPLITS.items(), cut[:-1], cut[1:]):
            path = data_dir / lang / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows[a:b]))
    if not (model_dir / "config.json").exists():
        import torch

        torch.manual_seed(seed)
        BertModel(BertConfig(**SHAPE), add_pooling_layer=False).save_pretrained(model_dir)
        wordpiece_tokenizer(texts, vocab_size=30_000).save_pretrained(model_dir)
    return model_dir, data_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--languages", nargs="+", default=list(LANGUAGES))
    p.add_argument("--items", type=int, default=600)
    a = p.parse_args(argv)
    model_dir, data_dir = build(a.out, tuple(a.languages), a.items)
    print(json.dumps({"bench": "encoder12", "model": str(model_dir), "data": str(data_dir)}))


if __name__ == "__main__":
    sys.exit(main())
