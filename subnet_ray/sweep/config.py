"""Sweep configuration: pydantic models loaded from YAML, and the expanded plan.

A sweep file names tasks, a model, training / subnetwork / influence settings and the
methods to run. Any setting may also be gridded with a `grid:` section of dotted paths to
lists (e.g. `training.lr: [2e-5, 3e-5]`); each combination is one branch of the plan.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .tasks import TASKS

Method = Literal["full", "sft", "random-sft"]
# names that become path components (store folders, report folders, MLflow experiments): a letter or
# digit first, so never '.', '..' or a hidden name; no separators
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
_SAFE = re.compile(SAFE_NAME)
PATH_GRID_KEYS = ("model.name",)  # a model may be a local folder: its report label is a hash, not the path


def safe_name(value: str, what: str) -> str:
    """Returns `value` if it matches SAFE_NAME; raises ValueError naming `what`, the value and the pattern."""
    if not isinstance(value, str) or not _SAFE.match(value):
        raise ValueError(f"{what} {value!r} is not a safe name: expected the pattern {SAFE_NAME} (letters, digits, _ . + -, a letter or digit first)")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BabelSpec(Strict):
    """The synthetic task: K artificial languages rendering one latent classification task."""

    vocab_size: int = Field(400, ge=20, description="Size of the latent (concept) vocabulary shared by all languages.")
    length: int = Field(12, ge=4, le=512, description="Words per sentence.")
    families: list[list[str]] | None = Field(
        None, description="Groups of related languages; languages in one group share `shared_vocab` of their surface words. Default: one family per language."
    )
    shared_vocab: float = Field(0.8, ge=0.0, le=1.0, description="Fraction of surface words a language shares with the other languages of its family.")
    global_vocab: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Fraction of the neutral concepts whose word (stem, in a suffixing family) is the same in every language, like loanwords, so unrelated families share some surface words.",
    )
    counted: float = Field(
        1.0, gt=0.0, le=1.0,
        description="Fraction of latent positions (the first ones, at least 4) whose polar words decide the label; below 1, the other positions hold 1-2 polar words of random sign (distractors), and with `reorder` each family writes the counted positions in its own surface slots.",
    )
    reorder: bool = Field(True, description="Whether each family has its own word order (a fixed permutation of positions).")
    label_noise: float = Field(0.05, ge=0.0, lt=0.5, description="Probability of flipping a label, so accuracy is not trivially 100%.")
    morphology: Literal["alternate", "isolating"] = Field(
        "alternate",
        description="'alternate': the groups of `families` in even places (1st, 3rd, ...) write one token per word, those in odd places write every word as stem + suffix, where a polar word's sign is only in the pair (2 x length tokens per sentence); 'isolating': one token per word everywhere.",
    )

    @field_validator("families")
    @classmethod
    def _safe_family_codes(cls, v):
        for lang in [l for f in v or [] for l in f]:
            safe_name(lang, "babel.families language code")
        return v

    def tokens_per_sentence(self) -> int:
        """Returns the most tokens a sentence can have, without [CLS] and [SEP]."""
        two = self.morphology == "alternate" and self.families is not None and len(self.families) > 1
        return self.length * (2 if two else 1)


class TaskSpec(Strict):
    """One task of the sweep: which data, which languages, how many examples."""

    id: str = Field(description="Task id: xnli, pawsx, marc, local or babel.")
    languages: list[str] = Field(min_length=1, description="Language codes to train and test on.")
    source: str | None = Field(None, description="Hub dataset id or local folder/file; default: the task's hub id (babel: generated).")
    train_size: int = Field(2000, ge=1, description="Training examples per language.")
    dev_size: int = Field(500, ge=1, description="Dev examples per language (subnetwork search, per-epoch accuracy).")
    test_size: int = Field(500, ge=1, description="Test examples per language (accuracy and influence).")
    data_seed: int = Field(0, description="Seed of the per-language sampling of examples.")
    text_column: str = Field("text", description="local task: column of the (first) text.")
    text_pair_column: str | None = Field(None, description="local task: column of the second text, if the task is a pair task.")
    label_column: str = Field("label", description="local task: column of the integer label.")
    language_column: str = Field("language", description="local task: column of the language code.")
    group_column: str | None = Field(
        None,
        description="local task: column naming the parallel item (rows of different languages with one value are translations of one item); when set, every language samples the same items, as XNLI and PAWS-X do.",
    )
    num_labels: int = Field(2, ge=2, description="local task: number of classes.")
    babel: BabelSpec = Field(default_factory=BabelSpec, description="babel task: the generator's settings.")

    @field_validator("id")
    @classmethod
    def _known_task(cls, v: str) -> str:
        safe_name(v, "task id")  # it names folders (reports, MLflow trial names)
        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}; expected one of {', '.join(TASKS)}")
        return v

    @field_validator("languages")
    @classmethod
    def _unique_languages(cls, v: list[str]) -> list[str]:
        for lang in v:
            safe_name(lang, "language code")  # it names the folder of the language's mask
        if len(set(v)) != len(v):
            raise ValueError(f"languages must be unique, got {v}")
        return v

    @model_validator(mode="after")
    def _known_languages(self) -> "TaskSpec":
        offered = TASKS[self.id].languages
        unknown = [l for l in self.languages if offered is not None and l not in offered]
        if unknown:
            raise ValueError(f"task {self.id} has no language(s) {unknown}; it offers {', '.join(offered)}")
        return self


class TinySpec(Strict):
    """Sizes of the locally built model (BERT architecture, random init)."""

    layers: int = Field(2, ge=1, description="Encoder layers.")
    heads: int = Field(4, ge=1, description="Attention heads per layer.")
    hidden: int = Field(32, ge=2, description="Hidden size; must be divisible by heads.")
    intermediate: int = Field(64, ge=2, description="Feed-forward size.")
    max_positions: int = Field(128, ge=8, description="Maximum sequence length the position embeddings cover.")

    @model_validator(mode="after")
    def _divisible(self) -> "TinySpec":
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class PretrainSpec(Strict):
    """Masked-LM pre-training of the tiny encoder on the task's text, before any fine-tuning.

    The paper fine-tunes a pretrained multilingual encoder (XLM-R); a tiny encoder trained from
    scratch on a few thousand labelled sentences reads every language with the same one or
    two heads. One pre-trained encoder is shared by every training seed, method and sweep
    that agrees on the task's text, the tiny sizes and these settings (a stage of its own).
    """

    sentences: int = Field(4000, ge=1, description="Sentences per language: babel generates them (a split of their own); other tasks use their training texts, labels unused.")
    epochs: int = Field(4, ge=1, description="Passes over the pre-training text.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (linear warm-up over the first 10% of steps, then linear decay).")
    batch_size: int = Field(32, ge=1, description="Sentences per step.")
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0, description="Share of tokens masked (BERT's 80/10/10 split: [MASK], a random token, unchanged).")
    seed: int = Field(0, description="Seed of the encoder's initialisation, the masking and the order of sentences.")


class ModelSpec(Strict):
    """The encoder: a hub id, a local directory, or `tiny`."""

    name: str = Field("tiny", description="Hugging Face hub id (e.g. xlm-roberta-base), local model directory, or 'tiny'.")
    tiny: TinySpec = Field(default_factory=TinySpec, description="Sizes when name is 'tiny'.")
    pretrain: PretrainSpec | None = Field(None, description="Masked-LM pre-training of the tiny encoder before fine-tuning; null: fine-tune from random initialisation.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout of the classifier head.")

    @model_validator(mode="after")
    def _pretrain_tiny_only(self) -> "ModelSpec":
        if self.pretrain is not None and self.name != "tiny":
            raise ValueError(f"model.pretrain is for the tiny model; {self.name!r} comes pretrained (remove model.pretrain)")
        return self


class TrainSpec(Strict):
    """Fine-tuning settings, shared by full fine-tuning and SFT."""

    lr: float = Field(2e-5, gt=0, description="AdamW learning rate (paper: XNLI 2e-5, PAWS-X 9e-6, MARC 2e-5).")
    epochs: int = Field(4, ge=1, description="Epochs; a checkpoint is kept after each (TracIn needs them).")
    batch_size: int = Field(32, ge=1, description="Examples per step.")
    max_length: int = Field(128, ge=8, description="Tokens per example after truncation.")
    warmup: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of steps with linear learning-rate warm-up.")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(
        1.0, gt=0,
        description="Clip the global gradient norm to this before each AdamW step (the Hugging Face Trainer's default, 1.0); null: no clipping.",
    )
    seeds: list[int] = Field([1], min_length=1, description="Training seeds; each is its own trial.")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps.")
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = Field(
        "fp32",
        description="Numeric precision of fine-tuning, head importance, evaluation (and sketching unless influence.precision says otherwise): fp32; tf32 (fp32 with TensorFloat-32 matmuls on GPUs that have them); bf16 or fp16 autocast (fp16 with loss scaling). Weights stay float32.",
    )
    sft_mode: Literal["paper", "strict"] = Field(
        "paper",
        description="paper: masked gradients go to AdamW (momentum and weight decay still move disabled heads); strict: disabled heads' parameters stay bit-identical.",
    )


def heads_per_step(total_heads: int, step_fraction: float) -> int:
    """Returns how many heads one pruning step disables: step_fraction x total heads, rounded half up (may be 0)."""
    return math.floor(step_fraction * total_heads + 0.5 + 1e-9)  # 1e-9: a product like 0.35 x 10 stored below 3.5


class SubnetworkSpec(Strict):
    """Michel et al. (2019) head pruning per language."""

    step_fraction: float = Field(0.1, gt=0.0, le=1.0, description="Fraction of all heads disabled per pruning step (14 of 144 for XLM-R base).")
    threshold: float = Field(0.95, gt=0.0, le=1.0, description="Keep pruning while dev accuracy >= threshold x the full model's.")
    normalize_layers: bool = Field(True, description="L2-normalise importance within each layer.")
    global_scaling: bool = Field(False, description="Min-max scale importance over all heads after normalisation.")
    batch_size: int = Field(32, ge=1, description="Examples per importance / evaluation batch.")


class InfluenceSpec(Strict):
    """TracIn with random-projection sketches."""

    proj_dim: int = Field(256, ge=0, description="Sketch dimension d per layer (a perfect square); 0 = exact gradients.")
    layers: list[str] = Field(["encoder", "classifier"], min_length=1, description="Name prefixes of the Linear layers to sketch ('encoder', 'classifier', or module names such as 'encoder.encoder.layer.11'); embedding layers are not sketched.")
    top_k: int = Field(100, ge=1, description="Most positive and most negative training examples kept per test example.")
    test_per_language: int = Field(500, ge=1, description="Test examples per language scored against all training examples.")
    batch_size: int = Field(32, ge=1, description="Examples per sketching batch.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Storage dtype of sketches.")
    precision: Literal["fp32", "tf32", "bf16", "fp16"] | None = Field(
        None, description="Numeric precision of sketching and of the test predictions (fp32, tf32, bf16, fp16); default: training.precision."
    )
    lr_weighting: bool = Field(False, description="Weight each checkpoint's scores by its learning rate.")
    projection_seed: int = Field(0, description="Seed of the projection matrices (every worker derives the same ones).")
    actors: int = Field(1, ge=1, description="Ray Data actors sketching in parallel.")
    gpus_per_actor: float = Field(0.0, ge=0.0, description="GPUs per sketching actor.")

    @field_validator("layers")
    @classmethod
    def _no_embeddings(cls, v: list[str]) -> list[str]:
        # Sketches cover nn.Linear layers (G1 delta x^T G2^T); an embedding's gradient is a
        # scatter of rows, which the sketcher does not project: refuse it here, not mid-run.
        bad = [p for p in v if "embeddings" in p.split(".")]
        if bad:
            raise ValueError(f"{bad}: embedding layers are not sketched; name Linear layers ('encoder', 'classifier' or module names)")
        return v

    @field_validator("proj_dim")
    @classmethod
    def _square(cls, v: int) -> int:
        if v and round(v**0.5) ** 2 != v:
            raise ValueError(f"proj_dim must be a perfect square (sqrt(d) x sqrt(d) sketches), got {v}")
        return v


class Resources(Strict):
    """Resources of one Ray Tune trial."""

    cpus: float = Field(1.0, gt=0, description="CPUs per trial.")
    gpus: float = Field(0.0, ge=0, description="GPUs per trial (fractions allowed).")
    max_failures: int = Field(2, ge=0, description="Retries of a failed trial (it resumes from its last epoch).")


class AnalysisSpec(Strict):
    """Which baselines and compositions the report includes."""

    random_test_language: str | None = Field(None, description="Test language for the random / suboptimal test-time masks (Fig 3); default: the first language.")
    compose: list[tuple[str, str]] = Field([], description="Language pairs whose masks are composed by union and intersection at test time (Fig 19).")


class SweepSpec(Strict):
    """A whole sweep: what to run and how."""

    name: str = Field(description="Sweep name (letters, digits, _ . + -; a letter or digit first); the MLflow experiment and report folder use it.")
    tasks: list[TaskSpec] = Field(min_length=1, description="Tasks to run.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The encoder.")
    training: TrainSpec = Field(default_factory=TrainSpec, description="Fine-tuning settings.")
    subnetworks: SubnetworkSpec = Field(default_factory=SubnetworkSpec, description="Subnetwork search.")
    influence: InfluenceSpec = Field(default_factory=InfluenceSpec, description="TracIn settings.")
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description="Baselines and compositions in the report.")
    methods: list[Method] = Field(["full", "sft", "random-sft"], min_length=1, description="Fine-tuning methods: full, sft, random-sft.")
    random_seeds: list[int] = Field([1, 2, 3], description="Seeds of the random (shuffled) masks.")
    resources: Resources = Field(default_factory=Resources, description="Resources per trial.")
    grid: dict[str, list[Any]] = Field({}, description="Dotted setting paths to lists of values; each combination is a branch.")

    @field_validator("name")
    @classmethod
    def _safe_sweep_name(cls, v: str) -> str:
        return safe_name(v, "sweep name")

    @model_validator(mode="after")
    def _consistent(self) -> "SweepSpec":
        ids = [t.id for t in self.tasks]
        if len(set(ids)) != len(ids):
            raise ValueError(f"task ids must be unique within a sweep, got {ids}")
        if {"sft", "random-sft"} & set(self.methods) and "full" not in self.methods:
            raise ValueError("methods 'sft' and 'random-sft' need 'full' (the subnetworks are found in the fully fine-tuned model)")
        if "random-sft" in self.methods and not self.random_seeds:
            raise ValueError("method 'random-sft' needs at least one of random_seeds")
        if self.model.name == "tiny":
            total = self.model.tiny.layers * self.model.tiny.heads
            if heads_per_step(total, self.subnetworks.step_fraction) < 1:
                raise ValueError(
                    f"subnetworks.step_fraction {self.subnetworks.step_fraction} of the tiny model's {total} heads rounds to 0 "
                    f"heads per pruning step: use a step_fraction of at least {0.5 / total:.4g}")
        for t in self.tasks:
            if t.id == "babel" and t.babel.tokens_per_sentence() + 2 > self.training.max_length:
                raise ValueError(
                    f"task babel: sentences have up to {t.babel.tokens_per_sentence()} tokens plus [CLS] and [SEP], more than "
                    f"training.max_length={self.training.max_length}; raise max_length or lower babel.length"
                )
        for path, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{path} must be a non-empty list")
            if path.split(".")[0] not in {"model", "training", "subnetworks", "influence"}:
                raise ValueError(f"grid.{path}: only model.*, training.*, subnetworks.* and influence.* settings can be gridded")
            for v in values:  # a grid value names its branch's report folder
                if path not in PATH_GRID_KEYS and isinstance(v, str):
                    safe_name(v, f"grid.{path} value")
        return self


class ConfigError(ValueError):
    """A sweep file that cannot be used; the message names the file and the field."""


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """Returns the pydantic model that holds the field at `loc` (list indices skipped), or None."""
    model: type[BaseModel] = SweepSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        inner = [a for a in _flatten_types(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model


def _flatten_types(tp: Any) -> list:
    args = getattr(tp, "__args__", None)
    return [tp] if not args else [t for a in args for t in _flatten_types(a)]


def _hint(err: dict) -> str:
    """Returns "; did you mean `training.lr`?" for a misspelt field, else ""."""
    loc = err["loc"]
    if err.get("type") != "extra_forbidden" or not loc:
        return ""
    model = _model_at(loc)
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6) if model else []
    if not close:
        return f"; expected one of {', '.join(model.model_fields)}" if model else ""
    return f"; did you mean `{'.'.join(str(p) for p in (*loc[:-1], close[0]))}`?"


def _format_error(path: str, err: ValidationError) -> str:
    """Returns one line per problem: `<file>: <field>: <what is wrong> (got X)[; did you mean ...?]`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
        got = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            msg = "unknown setting"
        got_s = "" if isinstance(got, (dict, list)) or msg.endswith(f"got {got}") else f" (got {got!r})"
        lines.append(f"{path}: {loc}: {msg}{got_s}{_hint(e)}")
    return "\n".join(lines)


def load_sweep(path: str | Path) -> SweepSpec:
    """Returns the validated sweep in `path`; raises ConfigError naming the file and field."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read sweep file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); expected a YAML sweep file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        why = getattr(e, "problem", None) or " ".join(str(e).split())
        raise ConfigError(f"{path}: not valid YAML{at}: {why}; expected a YAML mapping of settings") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    for task in raw.get("tasks") or []:
        # a local data folder is named relative to where the sweep is launched; trials run elsewhere
        if isinstance(task, dict) and isinstance(task.get("source"), str) and Path(task["source"]).exists():
            task["source"] = str(Path(task["source"]).resolve())
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(path, e)) from None
    try:
        branches(spec)  # every grid combination must itself validate
    except ValidationError as e:
        raise ConfigError(_format_error(path + " (grid)", e)) from None
    except KeyError as e:
        raise ConfigError(f"{path}: grid: {e.args[0]}") from None
    return spec


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if k not in d or not isinstance(d[k], dict):
            raise KeyError(f"unknown setting {dotted!r}")
        d = d[k]
    if keys[-1] not in d:
        raise KeyError(f"unknown setting {dotted!r}")
    d[keys[-1]] = value


def branches(spec: SweepSpec) -> list[tuple[dict[str, Any], SweepSpec]]:
    """Returns one (grid values, sweep without grid) pair per combination of `spec.grid`."""
    base = spec.model_dump(mode="json")
    base["grid"] = {}
    keys = sorted(spec.grid)
    out = []
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        d = copy.deepcopy(base)
        for k, v in zip(keys, combo):
            _set_dotted(d, k, v)
        out.append((dict(zip(keys, combo)), SweepSpec.model_validate(d)))
    return out
