"""Simple statistics of head masks (bool [layers, heads], True = enabled), for the figures.

`subnet_ray/subnetworks/masks.py` owns the mask statistics; these numpy twins have the same
meaning (tests/test_analysis.py checks they agree) and exist because importing that package
pulls in transformers, which would triple the start-up time of `subnet-ray report`. Where the
toolkit raises for a mask with no enabled head, these return NaN, so one empty layer leaves a
blank cell or drops one pair from a correlation instead of stopping the report.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Returns the cosine similarity of two flattened binary masks; NaN if either enables no head."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else float("nan")


def similarity_matrix(masks: Mapping[str, np.ndarray], languages: Sequence[str], layer: int | None = None) -> pd.DataFrame:
    """Returns the cosine similarity of every language pair's masks (or of one layer's heads only)."""
    pick = (lambda m: np.asarray(m)[layer]) if layer is not None else np.asarray
    values = [[cosine(pick(masks[a]), pick(masks[b])) for b in languages] for a in languages]
    return pd.DataFrame(values, index=pd.Index(languages, name="language_a"), columns=pd.Index(languages, name="language_b"))


def overlap_counts(masks: Mapping[str, np.ndarray], languages: Sequence[str]) -> pd.DataFrame:
    """Returns the number of heads both languages enable (diagonal: heads each enables)."""
    values = [[int((np.asarray(masks[a]) & np.asarray(masks[b])).sum()) for b in languages] for a in languages]
    return pd.DataFrame(values, index=pd.Index(languages, name="language_a"), columns=pd.Index(languages, name="language_b"))


def overlap_percent(masks: Mapping[str, np.ndarray], languages: Sequence[str]) -> pd.DataFrame:
    """Returns, in row a and column b, the % of a's enabled heads that b also enables (asymmetric; NaN if a has none)."""
    counts = overlap_counts(masks, languages)
    enabled = pd.Series(np.diag(counts.to_numpy()), index=counts.index).astype(float)
    return counts.div(enabled.where(enabled > 0), axis=0) * 100.0


def heads_shared_by(masks: Mapping[str, np.ndarray], languages: Sequence[str]) -> np.ndarray:
    """Returns, per head [layers, heads], how many of the languages' masks enable it."""
    return np.sum([np.asarray(masks[lang], dtype=int) for lang in languages], axis=0)


def disabled_heads(mask: np.ndarray) -> int:
    """Returns the number of heads the mask disables."""
    return int(np.asarray(mask).size - np.asarray(mask).sum())
