"""A model's shape from its config.json alone (no torch, no hub): parameters, Linear layers, activation bytes.

One `Shape` covers each architecture family the sweeps use: the BERT family (BERT, RoBERTa,
XLM-R), DeBERTa-v2/v3 (relative positions, eager disentangled attention), ModernBERT / mmBERT
(fused Wqkv, gated MLP Wi, no biases) and the Llama-style decoders (Llama, Mistral, Qwen2/3,
Gemma 2/3: grouped-query attention, a gated MLP of 3 projections, RMSNorm). `PUBLISHED` holds
the published config.json values of the hub models researchers start from, keyed by hub id,
because the hub is not reachable where sweeps are planned; a local model directory's own
config.json is read instead. Parameter counts equal the real transformers models' (tests build
each family, and each published config on the meta device).

Sizes are of the model the sweep trains: the base model (no LM head: a tied or untied
`lm_head` is not part of it) plus the paper's classifier (dense h x h, tanh, out_proj).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ENCODERS = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "deberta-v2": "deberta-v2", "modernbert": "modernbert"}
DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3")

_XLMR = dict(model_type="xlm-roberta", num_hidden_layers=12, num_attention_heads=12, hidden_size=768, intermediate_size=3072,
             max_position_embeddings=514, vocab_size=250002, type_vocab_size=1)
_QWEN25_05 = dict(model_type="qwen2", num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, hidden_size=896,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True)
_QWEN25_15 = dict(_QWEN25_05, num_hidden_layers=28, num_attention_heads=12, hidden_size=1536, intermediate_size=8960)
_QWEN3_06 = dict(model_type="qwen3", num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 hidden_size=1024, intermediate_size=3072, vocab_size=151936, tie_word_embeddings=True)
_QWEN3_17 = dict(_QWEN3_06, hidden_size=2048, intermediate_size=6144)
_LLAMA32_1 = dict(model_type="llama", num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                  hidden_size=2048, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True)
_GEMMA3_1 = dict(model_type="gemma3_text", num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                 hidden_size=1152, intermediate_size=6912, vocab_size=262144, tie_word_embeddings=True)
_MMBERT = dict(model_type="modernbert", num_hidden_layers=22, num_attention_heads=12, hidden_size=768, intermediate_size=1152,
               vocab_size=256000, max_position_embeddings=8192)

# Published config.json values (the fields sizes need), by hub id; instruct variants share their base's shape.
PUBLISHED: dict[str, dict] = {
    "xlm-roberta-base": _XLMR,
    "FacebookAI/xlm-roberta-base": _XLMR,
    "xlm-roberta-large": dict(_XLMR, num_hidden_layers=24, num_attention_heads=16, hidden_size=1024, intermediate_size=4096),
    "bert-base-multilingual-cased": dict(model_type="bert", num_hidden_layers=12, num_attention_heads=12, hidden_size=768,
                                         intermediate_size=3072, max_position_embeddings=512, vocab_size=119547, type_vocab_size=2),
    "microsoft/mdeberta-v3-base": dict(model_type="deberta-v2", num_hidden_layers=12, num_attention_heads=12, hidden_size=768,
                                       intermediate_size=3072, max_position_embeddings=512, vocab_size=251000, type_vocab_size=0,
                                       relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                                       pos_att_type=["p2c", "c2p"], position_biased_input=False, max_relative_positions=-1),
    "jhu-clsp/mmBERT-base": _MMBERT,
    "answerdotai/ModernBERT-base": dict(_MMBERT, vocab_size=50368),
    "Qwen/Qwen2.5-0.5B": _QWEN25_05,
    "Qwen/Qwen2.5-0.5B-Instruct": _QWEN25_05,
    "Qwen/Qwen2.5-1.5B": _QWEN25_15,
    "Qwen/Qwen2.5-1.5B-Instruct": _QWEN25_15,
    "Qwen/Qwen3-0.6B": _QWEN3_06,
    "Qwen/Qwen3-0.6B-Base": _QWEN3_06,
    "Qwen/Qwen3-1.7B": _QWEN3_17,
    "Qwen/Qwen3-1.7B-Base": _QWEN3_17,
    "meta-llama/Llama-3.2-1B": _LLAMA32_1,
    "meta-llama/Llama-3.2-1B-Instruct": _LLAMA32_1,
    "google/gemma-3-1b-pt": _GEMMA3_1,
    "google/gemma-3-1b-it": _GEMMA3_1,
}


@dataclass(frozen=True)
class Shape:
    """The sizes of one model, enough to count its parameters, its Linear layers and the bytes a step keeps."""

    model_type: str
    family: str  # 'bert' (BERT / RoBERTa / XLM-R), 'deberta-v2', 'modernbert' or 'decoder'
    layers: int
    heads: int  # query heads: a head mask's width
    kv_heads: int  # key / value heads (grouped-query attention when fewer than heads)
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    positions: int = 0  # absolute position embedding rows (BERT family)
    token_types: int = 0
    rel_positions: int = 0  # DeBERTa's relative position embedding rows
    qkv_bias: bool = True
    out_bias: bool = True  # the attention output projection's bias
    mlp_bias: bool = True
    norm_bias: bool = True  # LayerNorm with a bias (RMSNorm and ModernBERT's norms have none)
    qk_norm: bool = False  # per-head RMSNorm of queries and keys (Qwen3, Gemma 3)
    norms: int = 2  # norms per layer (Gemma: 4)
    dropout: float = 0.0  # hidden dropout while training (its masks are kept for backward)
    tied: bool = False  # input and output embeddings shared (matters only with an LM head, which the classifier drops)

    @property
    def decoder(self) -> bool:
        return self.family == "decoder"

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def from_config(c: dict) -> Shape | None:
    """Returns the Shape of a config.json's values (transformers' defaults where a field is absent), or None for a model_type not covered."""
    t = c.get("model_type", "")
    text = c.get("text_config") if t == "gemma3" else None  # the multimodal Gemma 3 config nests its language model
    if text:
        return from_config({"model_type": "gemma3_text", **text})
    h, heads = c["hidden_size"], c["num_attention_heads"]
    base = dict(model_type=t, layers=c["num_hidden_layers"], heads=heads, hidden=h, intermediate=c["intermediate_size"],
                vocab=c["vocab_size"], tied=bool(c.get("tie_word_embeddings", t not in ("qwen2",))))
    if t in ("bert", "roberta", "xlm-roberta"):
        return Shape(family="bert", kv_heads=heads, head_dim=h // heads, positions=c.get("max_position_embeddings", 512),
                     token_types=c.get("type_vocab_size", 2), dropout=c.get("hidden_dropout_prob", 0.1), **base)
    if t == "deberta-v2":
        if not c.get("share_att_key", True) or c.get("embedding_size", h) != h or c.get("conv_kernel_size", 0):
            return None  # mDeBERTa-v3 / DeBERTa-v3 shape only: shared attention keys, no embedding projection, no conv
        rel = 0
        if c.get("relative_attention", False):
            buckets, span = c.get("position_buckets", -1), c.get("max_relative_positions", -1)
            rel = 2 * (buckets if buckets > 0 else (span if span > 0 else c.get("max_position_embeddings", 512)))
        return Shape(family="deberta-v2", kv_heads=heads, head_dim=h // heads,
                     positions=c.get("max_position_embeddings", 512) if c.get("position_biased_input", True) else 0,
                     token_types=c.get("type_vocab_size", 0), rel_positions=rel, dropout=c.get("hidden_dropout_prob", 0.1), **base)
    if t == "modernbert":
        return Shape(family="modernbert", kv_heads=heads, head_dim=h // heads, qkv_bias=c.get("attention_bias", False),
                     out_bias=c.get("attention_bias", False), mlp_bias=c.get("mlp_bias", False), norm_bias=c.get("norm_bias", False),
                     dropout=c.get("mlp_dropout", 0.0), **base)
    if t in DECODERS:
        head_dim = c.get("head_dim") or h // heads
        gemma = t.startswith("gemma")
        attn_bias = c.get("attention_bias", False)
        return Shape(family="decoder", kv_heads=c.get("num_key_value_heads") or heads, head_dim=head_dim,
                     qkv_bias=True if t == "qwen2" else attn_bias, out_bias=False if t == "qwen2" else attn_bias,
                     mlp_bias=c.get("mlp_bias", False), norm_bias=False, qk_norm=t in ("qwen3", "gemma3_text"),
                     norms=4 if gemma else 2, **base)
    return None


def shape_of_model(name: str) -> tuple[Shape | None, str]:
    """Returns (Shape, where it came from) of a hub id in PUBLISHED or a local directory's config.json; (None, why) otherwise."""
    folder = Path(name)
    if (folder / "config.json").is_file():
        try:
            c = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as e:
            return None, f"{folder / 'config.json'} is not readable JSON ({e})"
        try:
            s = from_config(c)
        except (KeyError, TypeError, ZeroDivisionError) as e:  # a config.json without the sizes transformers would default
            return None, f"{folder / 'config.json'} lacks {e} (sizes are read from the file, not defaulted)"
        return (s, f"{folder / 'config.json'}") if s else (None, f"model_type {c.get('model_type')!r} of {folder} has no shape here")
    if name in PUBLISHED:
        return from_config(PUBLISHED[name]), "published config.json (planning.shapes.PUBLISHED)"
    return None, f"{name!r} is neither a local model directory nor in planning.shapes.PUBLISHED"


def linears(s: Shape, num_labels: int) -> list[tuple[str, int, int, bool]]:
    """Returns (module name in the SequenceClassifier, out features, in features, has bias) of every Linear layer, in module order."""
    h, q, kv, i = s.hidden, s.q_dim, s.kv_dim, s.intermediate
    if s.family == "bert":
        per = [("attention.self.query", q, h, True), ("attention.self.key", q, h, True), ("attention.self.value", q, h, True),
               ("attention.output.dense", h, q, True), ("intermediate.dense", i, h, True), ("output.dense", h, i, True)]
        prefix = "encoder.encoder.layer"
    elif s.family == "deberta-v2":
        per = [("attention.self.query_proj", q, h, True), ("attention.self.key_proj", q, h, True),
               ("attention.self.value_proj", q, h, True), ("attention.output.dense", h, q, True),
               ("intermediate.dense", i, h, True), ("output.dense", h, i, True)]
        prefix = "encoder.encoder.layer"
    elif s.family == "modernbert":
        per = [("attn.Wqkv", 3 * q, h, s.qkv_bias), ("attn.Wo", h, q, s.out_bias), ("mlp.Wi", 2 * i, h, s.mlp_bias),
               ("mlp.Wo", h, i, s.mlp_bias)]
        prefix = "encoder.layers"
    else:
        per = [("self_attn.q_proj", q, h, s.qkv_bias), ("self_attn.k_proj", kv, h, s.qkv_bias), ("self_attn.v_proj", kv, h, s.qkv_bias),
               ("self_attn.o_proj", h, q, s.out_bias), ("mlp.gate_proj", i, h, s.mlp_bias), ("mlp.up_proj", i, h, s.mlp_bias),
               ("mlp.down_proj", h, i, s.mlp_bias)]
        prefix = "encoder.layers"
    out = [(f"{prefix}.{k}.{n}", o, inp, b) for k in range(s.layers) for n, o, inp, b in per]
    return out + [("classifier.dense", h, h, True), ("classifier.out_proj", num_labels, h, True)]


def parameters(s: Shape, num_labels: int) -> int:
    """Returns the number of parameters of the classifier of shape `s` (= the values in its checkpoint: no persistent buffers)."""
    h = s.hidden
    norm = h * (2 if s.norm_bias else 1)
    lin = sum(o * i + (o if b else 0) for _, o, i, b in linears(s, num_labels))
    embeddings = (s.vocab + s.positions + s.token_types) * h
    if s.family in ("bert", "deberta-v2"):
        rel = s.rel_positions * h + 2 * h if s.rel_positions else 0  # rel_embeddings and their LayerNorm
        return lin + embeddings + norm + s.layers * 2 * norm + rel
    if s.family == "modernbert":  # embedding norm, final norm; the first layer's attention norm is an Identity
        return lin + embeddings + 2 * norm + (2 * s.layers - 1) * norm
    qk = 2 * s.head_dim if s.qk_norm else 0
    return lin + embeddings + s.layers * (s.norms * norm + qk) + norm


# Bytes one training step keeps for backward per token and layer, as c . (hidden, q_dim, kv_saved, intermediate, heads,
# length, heads x length, 1), by variant and autocast (True: bf16 / fp16). Measured: every tensor autograd saves in
# transformers' model (saved_tensors_hooks, once per storage, parameters left out), layer L+1 minus layer L, on CPU
# under sdpa (eager for DeBERTa) with dropout off, fitted over 12 random shapes per row, exact to the byte; the test
# (tests/test_sizes.py) re-measures other shapes. What they hold: layer inputs and norm statistics, each Linear's input
# (under autocast one half copy per Linear), the fused attention kernel's q, k, v, output and log-sum-exp (k and v
# repeated to every query head under GQA: kv_saved is q_dim unless there is 1 kv head, a view, or none is shared),
# the padding mask (length), the MLP's pre-activations; DeBERTa's eager disentangled attention keeps its
# length x length scores, softmax and int64 gather indices (heads x length).
ACTIVATIONS: dict[tuple[str, bool], tuple[float, ...]] = {
    ("bert", False): (16, 16, 0, 8, 4, 4, 0, 16),
    ("bert", True): (16, 8, 0, 4, 4, 2, 0, 16),
    ("deberta-v2", False): (36, 0, 0, 8, 0, 1, 4, 16),
    ("deberta-v2", True): (26, 0, 0, 4, 0, 1, 2, 16),
    ("modernbert", False): (16, 24, 0, 16, 4, 4, 0, 16),
    ("modernbert", True): (12, 12, 0, 8, 4, 2, 0, 16),
    ("decoder", False): (24, 8, 8, 16, 4, 4, 0, 8),
    ("decoder", True): (26, 6, 2, 8, 4, 2, 0, 8),
}
# Qwen3's and Gemma 3's per-head q_norm / k_norm keep the projection's float32 output, the rsqrt per head and the
# normalised values (Qwen3 casts them back to the half dtype under autocast, Gemma keeps float32): bytes per
# (q_dim, kv_dim, heads, kv_heads) per token and layer, by (Gemma, autocast).
QK_NORM = {(False, False): (8, 8, 4, 4), (False, True): (6, 6, 4, 4), (True, False): (8, 8, 4, 4), (True, True): (8, 8, 4, 4)}
# DeBERTa's eager attention also keeps, per layer, the content-to-position and position-to-content scores against
# its rel_positions relative embeddings (heads x rel_positions per token), their two int64 gather indices (length x
# length), the relative keys and queries repeated per example (batch x rel_positions x hidden) and, under autocast,
# the half copies of the relative embeddings they project: bytes per (heads x rel_positions per token, length^2,
# batch x rel_positions x hidden, rel_positions x hidden), by autocast; fitted as ACTIVATIONS, with rel_positions and
# the batch varied too.
DEBERTA = {False: (8, 16, 8, 0), True: (4, 16, 4, 4)}
# Not covered: Gemma 2 runs eager attention (logit soft-capping), whose length x length scores these rows leave out
# (measured 15-18% under at length 20); no published Gemma 2 of 0.5-1.5B is in PUBLISHED.
# Gemma's two norms more per layer (after attention, after the MLP) keep their float32 input, rsqrt and normalised input.
EXTRA_NORM = (8, 4)  # bytes per hidden element, per token


def activation_bytes(s: Shape, tokens: int, length: int, precision: str = "fp32", device: str = "cuda") -> int:
    """Returns the bytes of activations one training step keeps for backward over `tokens` (batch x length, padded) at
    `precision` (fp32 / tf32 / bf16 / fp16 autocast; weights float32 as train.train_step keeps them): ACTIVATIONS per
    token and layer, the half copy of every Linear weight autocast keeps, and on CUDA the 1-byte masks of training
    dropout (CPU keeps float masks and unfused attention there: CPU runs of encoders with dropout keep more)."""
    half = precision in ("bf16", "fp16")
    c = ACTIVATIONS[(s.family, half)]
    kv_saved = s.q_dim if 1 < s.kv_heads < s.heads else s.kv_dim
    x = (s.hidden, s.q_dim, kv_saved, s.intermediate, s.heads, length, s.heads * length, 1)
    per_token = sum(a * b for a, b in zip(c, x))
    if s.qk_norm:
        per_token += sum(a * b for a, b in zip(QK_NORM[(s.model_type.startswith("gemma"), half)], (s.q_dim, s.kv_dim, s.heads, s.kv_heads)))
    per_token += (s.norms - 2) * (EXTRA_NORM[0] * s.hidden + EXTRA_NORM[1])
    if s.dropout > 0 and device.startswith("cuda"):  # attention output and feed-forward output; DeBERTa's probabilities
        per_token += 2 * s.hidden + (5 * s.heads * length if s.family == "deberta-v2" else 0)  # DeBERTa: mask and dropped copy
    fixed = 0
    if s.family == "deberta-v2":
        a, b, c2, d = DEBERTA[half]
        per_token += a * s.heads * s.rel_positions
        fixed = b * length * length + (c2 * (tokens // max(1, length)) + d) * s.rel_positions * s.hidden
    if s.model_type.startswith("gemma"):  # every Gemma norm keeps its float32 (1 + weight)
        fixed = 4 * (s.norms * s.hidden + (2 * s.head_dim if s.qk_norm else 0))
    copies = sum(o * i for _, o, i, _ in linears(s, 2)) * 2 if half else 0
    return int(tokens * s.layers * per_token + s.layers * fixed + copies)
