"""The mask toolkit: random and suboptimal baselines, composition, similarity and overlap, storage.

A mask is a bool tensor [layers, heads], True = head enabled (numpy arrays and 0/1 tensors
are accepted). Functions over several languages take {language: mask} and keep its order.
Paper: random and suboptimal subnetworks (Sec. 5.2), cosine similarity of flattened masks
(Sec. 7.2, per layer for Fig. 9), overlap and heads shared by k languages (App. D, Figs.
12-15, Table 1), union and intersection (App. F.1).

Storage: `mask.npy` (bool, read with allow_pickle=False) and `mask.json` (metadata) in one
folder, the folder an artifact-store stage writes into.
"""
from __future__ import annotations

import json
import os
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..data.seeding import rng

MASK_FILE = "mask.npy"
META_FILE = "mask.json"


def as_mask(mask: Any, name: str = "mask") -> torch.Tensor:
    """Returns `mask` as a bool tensor [layers, heads]; raises ValueError for other shapes or non-0/1 values."""
    t = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [layers, heads], got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if not ((t == 0) | (t == 1)).all():
            raise ValueError(f"{name} must be binary (0/1 or bool), got values {torch.unique(t)[:5].tolist()}")
        t = t != 0
    return t.cpu()


def _masks(masks: dict[str, Any]) -> dict[str, torch.Tensor]:
    if not masks:
        raise ValueError("no masks given")
    out = {lang: as_mask(m, f"mask of {lang!r}") for lang, m in masks.items()}
    shapes = {tuple(m.shape) for m in out.values()}
    if len(shapes) > 1:
        raise ValueError(f"masks have different shapes: { {lang: tuple(m.shape) for lang, m in out.items()} }")
    return out


# ---- baselines ------------------------------------------------------------------------------


def random_mask(mask: Any, seed: int, *stream: object) -> torch.Tensor:
    """Returns `mask` with its entries shuffled by the stream (`seed`, *stream): same shape, same number of enabled heads.

    Name the stream by what the mask belongs to (e.g. task and language): each language's
    random mask must be drawn independently. One permutation shared by every language would
    keep every pairwise overlap of the identified masks, the structure the random baseline
    exists to remove (paper Sec. 5.2 / 6.1).
    """
    m = as_mask(mask)
    perm = rng(seed, "random_mask", *stream).permutation(m.numel())
    return m.flatten()[torch.from_numpy(perm)].view(m.shape).clone()


def suboptimal_mask(masks: dict[str, Any], donor: str, target: str) -> torch.Tensor:
    """Returns language `donor`'s mask, to be applied to language `target`'s inputs (paper Sec. 5.2)."""
    if donor not in masks:
        raise KeyError(f"no mask for donor language {donor!r}; have {sorted(masks)}")
    if donor == target:
        raise ValueError(f"a suboptimal mask comes from another language: donor and target are both {donor!r}")
    return as_mask(masks[donor]).clone()


# ---- composition ----------------------------------------------------------------------------


def union(*masks: Any) -> torch.Tensor:
    """Returns the heads enabled in any of `masks`."""
    ms = list(_masks({str(i): m for i, m in enumerate(masks)}).values())
    return torch.stack(ms).any(0)


def intersection(*masks: Any) -> torch.Tensor:
    """Returns the heads enabled in all of `masks`."""
    ms = list(_masks({str(i): m for i, m in enumerate(masks)}).values())
    return torch.stack(ms).all(0)


# ---- similarity and overlap -----------------------------------------------------------------


def cosine_similarity(a: Any, b: Any) -> float:
    """Returns the cosine similarity of the two flattened binary masks (= |a & b| / sqrt(|a| |b|))."""
    a, b = as_mask(a, "first mask"), as_mask(b, "second mask")
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be compared")
    na, nb = int(a.sum()), int(b.sum())
    if na == 0 or nb == 0:
        raise ValueError("cosine similarity is undefined for a mask with no enabled head")
    return int((a & b).sum()) / float(np.sqrt(na * nb))


def similarity_matrix(masks: dict[str, Any]) -> pd.DataFrame:
    """Returns the pairwise cosine similarity of the languages' masks (symmetric, 1 on the diagonal)."""
    ms = _masks(masks)
    langs = list(ms)
    return pd.DataFrame([[cosine_similarity(ms[a], ms[b]) for b in langs] for a in langs], index=langs, columns=langs)


def overlap(masks: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (heads enabled in both, % of the row language's enabled heads also enabled in the column's).

    The percentage is asymmetric: a language with fewer enabled heads shares a larger share of
    its capacity (paper Figs. 13-15: row = the language whose capacity is measured).
    """
    ms = _masks(masks)
    langs = list(ms)
    both = pd.DataFrame([[int((ms[a] & ms[b]).sum()) for b in langs] for a in langs], index=langs, columns=langs)
    sizes = pd.Series({lang: int(ms[lang].sum()) for lang in langs})
    if (sizes == 0).any():
        raise ValueError(f"language(s) {list(sizes[sizes == 0].index)} have no enabled head: overlap % is undefined")
    return both, both.div(sizes, axis=0) * 100.0


def heads_shared_by(masks: dict[str, Any]) -> torch.Tensor:
    """Returns int [layers, heads]: how many of the languages enable each head (paper Fig. 12)."""
    return torch.stack(list(_masks(masks).values())).sum(0).to(torch.int64)


def layer_similarity(masks: dict[str, Any]) -> pd.DataFrame:
    """Returns per-layer cosine similarity for each language pair: columns language_a, language_b, layer, cosine.

    Pairs follow the order of `masks` (a before b). A layer in which either mask has no enabled
    head has no defined cosine: NaN.
    """
    ms = _masks(masks)
    rows = []
    for a, b in combinations(ms, 2):
        for layer in range(ms[a].shape[0]):
            x, y = ms[a][layer], ms[b][layer]
            nx, ny = int(x.sum()), int(y.sum())
            cos = int((x & y).sum()) / float(np.sqrt(nx * ny)) if nx and ny else float("nan")
            rows.append(dict(language_a=a, language_b=b, layer=layer, cosine=cos))
    return pd.DataFrame(rows, columns=["language_a", "language_b", "layer", "cosine"])


def disabled_heads_table(masks_by_task: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Returns Table 1: disabled heads per task (rows) and language (columns); <NA> where a task lacks a language."""
    langs: list[str] = []
    for masks in masks_by_task.values():
        langs += [lang for lang in masks if lang not in langs]
    table = pd.DataFrame(
        {lang: [int((~as_mask(m[lang])).sum()) if lang in m else pd.NA for m in masks_by_task.values()] for lang in langs},
        index=list(masks_by_task),
    )
    return table.astype("Int64")


# ---- storage --------------------------------------------------------------------------------


class MaskMeta(BaseModel):
    """Where a stored mask came from and how well it does, each field about this mask itself (extra keys are kept).

    An identified mask (`kind` identified) was found by pruning and records its pruning settings. A mask made
    from another (`kind` random: the source's enabled heads shuffled) records its own dev accuracy, how it was
    made (`made_by`, `random_seed`) and its source under `source` (key, and the source's own accuracy and
    pruning settings, kept there so they are never read as this mask's).
    """

    model_config = ConfigDict(extra="allow")
    task: str = Field(description="Task id the mask was made for.")
    language: str = Field(description="Language whose dev data the mask is applied to (and an identified mask was found on).")
    seed: int = Field(description="Training seed of the fine-tuned model the mask belongs to.")
    checkpoint: str = Field(description="Artifact-store key of the fine-tuned model whose last checkpoint the accuracies are of.")
    full_accuracy: float = Field(description="Dev accuracy of that model on this language, no mask.")
    masked_accuracy: float = Field(description="Dev accuracy of that model on this language with this mask applied.")
    kind: Literal["identified", "random"] = Field("identified", description="identified: found by pruning; random: a source mask's heads shuffled.")
    threshold: float | None = Field(None, description="Pruning threshold (fraction of the full accuracy); identified masks only.")
    step_fraction: float | None = Field(None, description="Fraction of all heads disabled per pruning step; identified masks only.")
    random_seed: int | None = Field(None, description="Seed of the shuffle (random masks only).")
    made_by: str | None = Field(None, description="How a mask made from another was made (random masks only).")
    source: dict | None = Field(None, description="The mask this one was made from: its artifact-store key, and its own "
                                "masked_accuracy, heads_enabled, threshold and step_fraction (random masks only).")


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def save_mask(directory: str | os.PathLike, mask: Any, meta: MaskMeta | dict) -> Path:
    """Writes mask.npy (bool) and mask.json (meta plus shape and heads_enabled) into `directory`; returns it."""
    m = as_mask(mask).numpy()
    try:
        meta = meta if isinstance(meta, MaskMeta) else MaskMeta.model_validate(meta)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"mask metadata is incomplete or invalid: {problems}") from None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = meta.model_dump(mode="json") | {"shape": list(m.shape), "heads_enabled": int(m.sum())}
    _write_atomic(directory / MASK_FILE, lambda f: np.save(f, m, allow_pickle=False))
    _write_atomic(directory / META_FILE, lambda f: f.write(json.dumps(record, indent=2, sort_keys=True).encode()))
    return directory


def load_mask(directory: str | os.PathLike, expect_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, MaskMeta]:
    """Returns (bool mask [layers, heads], its MaskMeta) from `directory`; checks the shape against `expect_shape`.

    expect_shape: (model.num_layers, model.num_heads) of the model the mask will be applied to.
    """
    directory = Path(directory)
    path = directory / MASK_FILE
    if not path.exists():
        raise FileNotFoundError(f"no mask at {path}")
    arr = np.load(path, allow_pickle=False)
    if arr.dtype != np.bool_ or arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D bool mask, got dtype {arr.dtype} and shape {arr.shape}")
    if expect_shape is not None and tuple(arr.shape) != tuple(expect_shape):
        raise ValueError(f"{path}: mask of shape {arr.shape} does not fit the model: expected {tuple(expect_shape)} (layers, heads)")
    meta_path = directory / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"no mask metadata at {meta_path}")
    record = json.loads(meta_path.read_text())
    if record.get("shape") is not None and list(record["shape"]) != list(arr.shape):
        raise ValueError(f"{meta_path}: records shape {record['shape']} but {path} has {list(arr.shape)}")
    meta = MaskMeta.model_validate({k: v for k, v in record.items() if k not in ("shape", "heads_enabled")})
    return torch.from_numpy(arr.copy()), meta
