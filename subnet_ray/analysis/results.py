"""The analysis input contract: what one task of a sweep produced, as plain tables and masks.

The orchestration assembles these from the artifact store; the analysis reads nothing else.
Variant names say which trained model was scored with which masks at test time (with a
mask, train and test gradients are both taken under the test language's mask):

- ``full``                   full fine-tuning, no mask
- ``full+subnet``            full model, each test language's own identified mask
- ``full+random:{seed}``     full model, the test language's mask shuffled with ``seed``
- ``full+subopt:{lang}``     full model, language ``lang``'s mask on the test language
- ``sft+subnet``             sparse-fine-tuned (SFT) model, each test language's own mask
- ``sft+union:{a}-{b}``      SFT model, union of a's and b's masks, on test languages a, b
- ``sft+intersect:{a}-{b}``  SFT model, intersection of a's and b's masks, on a and b
- ``random-sft:{seed}``      model SFT-trained with the random masks of ``seed``, each test
                             language's random mask
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

TOPK_COLUMNS = ("test_id", "test_language", "checkpoint", "sign", "rank", "train_id", "train_language", "score")
PREDICTION_COLUMNS = ("test_id", "test_language", "label", "pred")
CURVE_COLUMNS = ("language", "step", "heads_disabled", "accuracy", "full_accuracy")
ACCURACY_COLUMNS = ("variant", "language", "epoch", "split", "accuracy")
SUM_CHECKPOINT = -1  # checkpoint value of the TracIn sum over all epoch checkpoints

_VARIANT = re.compile(
    r"^(?:(?P<plain>full|full\+subnet|sft\+subnet)"
    r"|(?P<seeded>full\+random|random-sft):(?P<seed>-?\d+)"
    r"|full\+subopt:(?P<lang>[^:\s]+)"
    r"|sft\+(?P<op>union|intersect):(?P<a>[^:\s-]+)-(?P<b>[^:\s-]+))$"
)


@dataclass(frozen=True)
class Variant:
    """A parsed variant name: its kind (the part before ':') and its argument, if any."""

    name: str
    kind: str  # full | full+subnet | full+random | full+subopt | sft+subnet | sft+union | sft+intersect | random-sft
    seed: int | None = None  # full+random, random-sft
    language: str | None = None  # full+subopt: whose mask is applied
    pair: tuple[str, str] | None = None  # sft+union, sft+intersect


def parse_variant(name: str) -> Variant:
    """Returns the parsed variant; raises ValueError naming the variant if it is not one we know."""
    m = _VARIANT.match(name)
    if m is None:
        raise ValueError(
            f"unknown variant name {name!r}; expected full, full+subnet, full+random:SEED, "
            "full+subopt:LANG, sft+subnet, sft+union:A-B, sft+intersect:A-B or random-sft:SEED"
        )
    if m["plain"]:
        return Variant(name, m["plain"])
    if m["seeded"]:
        return Variant(name, m["seeded"], seed=int(m["seed"]))
    if m["lang"]:
        return Variant(name, "full+subopt", language=m["lang"])
    return Variant(name, f"sft+{m['op']}", pair=(m["a"], m["b"]))


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing columns {missing}; has {list(df.columns)}")


@dataclass
class InfluenceResult:
    """Top-k influence rankings and final predictions of one variant."""

    topk: pd.DataFrame
    """One row per (test example, checkpoint, sign, rank): columns test_id, test_language,
    checkpoint (int epoch 1..E, or -1 = the TracIn sum over checkpoints), sign ('pos' for the
    most positive, 'neg' for the most negative), rank (0..k-1, 0 = most influential),
    train_id, train_language, score (float influence)."""
    predictions: pd.DataFrame
    """One row per test example: test_id, test_language, label, pred, at the final checkpoint
    with this variant's masks applied."""
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def cached(self, key: tuple, compute):
        """Returns compute(), computed once per key (the tables are treated as read-only once built)."""
        # Rankings of a real sweep hold millions of rows; a report asks for the same
        # per-example shares dozens of times.
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def validate(self, where: str = "InfluenceResult") -> None:
        """Returns None; raises ValueError naming the table and what is wrong."""
        _require_columns(self.topk, TOPK_COLUMNS, f"{where}.topk")
        _require_columns(self.predictions, PREDICTION_COLUMNS, f"{where}.predictions")
        bad_sign = set(self.topk["sign"].unique()) - {"pos", "neg"}
        if bad_sign:
            raise ValueError(f"{where}.topk.sign must be 'pos' or 'neg', found {sorted(map(str, bad_sign))}")
        ckpt = self.topk["checkpoint"]
        if len(ckpt) and (not pd.api.types.is_integer_dtype(ckpt) or ((ckpt < 1) & (ckpt != SUM_CHECKPOINT)).any()):
            raise ValueError(f"{where}.topk.checkpoint must be integer epochs >= 1 or -1 (the sum)")
        dup = self.predictions.duplicated(["test_language", "test_id"])
        if dup.any():
            first = self.predictions[dup].iloc[0]
            raise ValueError(f"{where}.predictions has duplicate test example ({first.test_language!r}, {first.test_id!r})")
        ranked = pd.MultiIndex.from_frame(self.topk[["test_language", "test_id"]]).unique()
        missing = ranked.difference(pd.MultiIndex.from_frame(self.predictions[["test_language", "test_id"]]))
        if len(missing):
            raise ValueError(
                f"{where}.topk ranks {len(missing)} test examples with no row in predictions, e.g. {missing[0]} "
                "(same test_id type in both tables?)"
            )
        dup = self.topk.duplicated(["test_language", "test_id", "checkpoint", "sign", "rank"])
        if dup.any():
            first = self.topk[dup].iloc[0]
            raise ValueError(
                f"{where}.topk has two rows for test example ({first.test_language!r}, {first.test_id!r}), "
                f"checkpoint {first.checkpoint}, sign {first.sign!r}, rank {first['rank']}"
            )


@dataclass
class TaskResults:
    """Everything the report needs about one task of a sweep."""

    task: str
    """Task id (e.g. 'babel', 'pawsx'); used in file names."""
    languages: list[str]
    """Language codes, in the order figures show them (training and test languages)."""
    masks: dict[str, np.ndarray]
    """Identified subnetwork per language: bool [layers, heads], True = head enabled."""
    random_masks: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    """Random seed -> language -> that language's mask shuffled (same number of heads on)."""
    pruning_curves: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CURVE_COLUMNS)))
    """Pruning trace: language, step, heads_disabled, accuracy, full_accuracy (dev, fractions)."""
    accuracy: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(ACCURACY_COLUMNS)))
    """variant (same names as `influence`), language, epoch, split ('dev'|'test'), accuracy in [0, 1]."""
    influence: dict[str, InfluenceResult] = field(default_factory=dict)
    """Variant name -> its top-k rankings and predictions; any subset of the variants."""
    threshold: float | None = None
    """The pruning threshold the masks were found with (fraction of the full model's dev accuracy)."""
    step_fraction: float | None = None
    """Fraction of all heads disabled per pruning step."""

    def validate(self) -> None:
        """Returns None; raises ValueError naming the task, the field and what is wrong."""
        where = f"task {self.task!r}"
        if not self.task or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.task):
            raise ValueError(f"{where}: task id must be non-empty letters, digits, '_', '.', '-' (used in file names)")
        if len(set(self.languages)) != len(self.languages) or not self.languages:
            raise ValueError(f"{where}: languages must be a non-empty list of unique codes, got {self.languages}")
        shape = None
        named = [("masks", self.masks)] + [(f"random_masks[{s}]", m) for s, m in self.random_masks.items()]
        for label, masks in named:
            for lang, mask in masks.items():
                if lang not in self.languages:
                    raise ValueError(f"{where}: {label} has language {lang!r} not in languages {self.languages}")
                mask = np.asarray(mask)
                if mask.ndim != 2 or mask.dtype != bool:
                    raise ValueError(f"{where}: {label}[{lang!r}] must be a bool array [layers, heads], got {mask.dtype} {mask.shape}")
                if shape is not None and mask.shape != shape:
                    raise ValueError(f"{where}: {label}[{lang!r}] has shape {mask.shape}, other masks {shape}")
                shape = mask.shape
        _require_columns(self.pruning_curves, CURVE_COLUMNS, f"{where}: pruning_curves")
        _require_columns(self.accuracy, ACCURACY_COLUMNS, f"{where}: accuracy")
        acc = pd.to_numeric(self.accuracy["accuracy"], errors="coerce")
        if acc.isna().any() or ((acc < 0) | (acc > 1)).any():
            raise ValueError(f"{where}: accuracy.accuracy must be fractions in [0, 1]")
        bad_split = set(self.accuracy["split"].unique()) - {"dev", "test"}
        if bad_split:
            raise ValueError(f"{where}: accuracy.split must be 'dev' or 'test', found {sorted(map(str, bad_split))}")
        for name in set(self.accuracy["variant"].unique()):
            parse_variant(name)
        for name, result in self.influence.items():
            variant = parse_variant(name)
            result.validate(f"{where}: influence[{name!r}]")
            for lang in [variant.language, *(variant.pair or ())]:
                if lang is not None and lang not in self.languages:
                    raise ValueError(f"{where}: variant {name!r} names language {lang!r} not in {self.languages}")
            unknown = set(result.topk["train_language"].unique()) | set(result.topk["test_language"].unique())
            unknown -= set(self.languages)
            if unknown:
                raise ValueError(f"{where}: influence[{name!r}] has languages {sorted(unknown)} not in {self.languages}")

    def variants(self, kind: str) -> list[Variant]:
        """Returns the parsed variants of `influence` of one kind, by seed, then language / pair."""
        found = [v for v in map(parse_variant, self.influence) if v.kind == kind]
        return sorted(found, key=lambda v: (v.seed or 0, v.language or "", v.pair or ("", ""), v.name))
