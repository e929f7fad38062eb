"""One record per model architecture: where its attention heads live and how the classifier pools.

Head masking, importance, SFT's gradient masks and sketches all need the same few facts about
a model family: the list of transformer layers, each layer's attention output projection (the
Linear whose input is the concatenation of the query heads' outputs: a head's slice enters
there), the query / key / value projections (separate or fused), the head geometry (query
heads, key/value heads for grouped-query attention, head size), and whether the classifier
reads the first token (encoders) or the last non-pad token (decoders). A new architecture is
one record in ARCHITECTURES; an unknown `model_type` is refused before any compute.

Torch-free on purpose: preflight imports this to check a model directory's config.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """How subnet-ray finds one model family's heads (paths are dotted attribute paths)."""

    model_type: str
    """config.json's `model_type`."""
    decoder: bool
    """True: causal LM, the classifier pools the last non-pad token; False: encoder, it pools the first token."""
    layers: str
    """From the base model (AutoModel) to the nn.ModuleList of transformer layers."""
    attention: str
    """From a layer to its attention module."""
    output: str
    """From the attention module to the output projection: the hook point, one input column block per query head."""
    query: str = ""
    key: str = ""
    value: str = ""
    """From the attention module to the separate q / k / v projections (rows: one block per query / key-value head)."""
    qkv: str = ""
    """From the attention module to a fused q / k / v projection (rows: the q, k and v blocks in that order)."""
    head_rows: tuple[str, ...] = ()
    """Further projections with one row block per query head, where present (DeBERTa's position projections)."""
    sdpa: bool = True
    """Whether transformers runs it under torch's scaled_dot_product_attention (else eager only)."""
    batched_sketch: bool = True
    """Whether every Linear sees per-example inputs only, so one batched backward gives per-example gradients
    (False: some Linear also runs on a table shared by the batch, and sketches go one example at a time)."""
    token_type_ids: bool = False
    """Whether the base model's forward takes token_type_ids (segment embeddings)."""
    load_kwargs: tuple[tuple[str, Any], ...] = ()
    """Extra keyword arguments of AutoModel.from_pretrained (e.g. no pooler for BERT-likes)."""
    config: str = ""
    """The transformers config class, for tiny models built locally (tests, benchmarks)."""
    tiny: dict = field(default_factory=dict)
    """Config settings a tiny model of this family needs beyond the sizes (e.g. token ids inside a small vocabulary)."""

    @property
    def pooling(self) -> str:
        return "last non-pad token" if self.decoder else "first token"


_BERT = dict(layers="encoder.layer", attention="attention", output="output.dense", query="self.query", key="self.key",
             value="self.value", token_type_ids=True, load_kwargs=(("add_pooling_layer", False),))
_LLAMA = dict(decoder=True, layers="layers", attention="self_attn", output="o_proj", query="q_proj", key="k_proj", value="v_proj")
_SMALL_IDS = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}  # inside any tiny vocabulary

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (
    Architecture("bert", decoder=False, config="BertConfig", **_BERT),
    Architecture("roberta", decoder=False, config="RobertaConfig", tiny={"pad_token_id": 0}, **_BERT),
    Architecture("xlm-roberta", decoder=False, config="XLMRobertaConfig", tiny={"pad_token_id": 0}, **_BERT),
    Architecture("electra", decoder=False, config="ElectraConfig", tiny={"embedding_size": 16},  # no pooler to drop
                 **{**_BERT, "load_kwargs": ()}),
    Architecture("distilbert", decoder=False, layers="transformer.layer", attention="attention", output="out_lin",
                 query="q_lin", key="k_lin", value="v_lin", config="DistilBertConfig"),
    # DeBERTa v2 / v3 / mDeBERTa: position projections exist (one row block per head) only when share_att_key is off
    # (v3 and mDeBERTa-v3 share them with the key / query projections, as the tiny model does).
    Architecture("deberta-v2", decoder=False, layers="encoder.layer", attention="attention", output="output.dense",
                 query="self.query_proj", key="self.key_proj", value="self.value_proj",
                 head_rows=("self.pos_key_proj", "self.pos_query_proj"), sdpa=False, batched_sketch=False, token_type_ids=True, config="DebertaV2Config",
                 tiny={"relative_attention": True, "position_buckets": 8, "max_relative_positions": 16,
                       "pos_att_type": ["p2c", "c2p"], "type_vocab_size": 2, "share_att_key": True}),
    # ModernBERT / mmBERT: one fused Wqkv whose rows are [q heads | k heads | v heads].
    Architecture("modernbert", decoder=False, layers="layers", attention="attn", output="Wo", qkv="Wqkv",
                 config="ModernBertConfig", tiny={**_SMALL_IDS, "cls_token_id": 2, "sep_token_id": 3, "global_attn_every_n_layers": 2,
                                                   "local_attention": 8}),
    # EuroBERT: a bidirectional Llama-style encoder (q/k/v/o_proj, grouped-query attention possible).
    Architecture("eurobert", decoder=False, layers="layers", attention="self_attn", output="o_proj", query="q_proj",
                 key="k_proj", value="v_proj", config="EuroBertConfig", tiny={**_SMALL_IDS, "mask_token_id": 4}),
    Architecture("llama", config="LlamaConfig", tiny=dict(_SMALL_IDS), **_LLAMA),
    Architecture("mistral", config="MistralConfig", tiny=dict(_SMALL_IDS), **_LLAMA),
    Architecture("qwen2", config="Qwen2Config", tiny=dict(_SMALL_IDS), **_LLAMA),
    Architecture("qwen3", config="Qwen3Config", tiny=dict(_SMALL_IDS), **_LLAMA),
    Architecture("gemma2", config="Gemma2Config", sdpa=False, tiny=dict(_SMALL_IDS), **_LLAMA),  # logit soft-capping: eager
    Architecture("gemma3_text", config="Gemma3TextConfig", tiny=dict(_SMALL_IDS), **_LLAMA),
)}


def unsupported(model_type: Any) -> str | None:
    """Returns why `model_type` cannot be studied (one line naming the supported ones), or None if it has a record."""
    if model_type in ARCHITECTURES:
        return None
    return f"model_type {model_type!r} has no architecture record; supported model_types: {', '.join(ARCHITECTURES)}"


def architecture(model_type: Any, what: str = "model") -> Architecture:
    """Returns the record of `model_type`; raises ValueError in one line naming the supported ones if it has none."""
    why = unsupported(model_type)
    if why is not None:
        raise ValueError(f"{what}: {why}")
    return ARCHITECTURES[model_type]


@dataclass(frozen=True)
class Geometry:
    """A model's attention shape: layers, query heads, key/value heads and head size."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per key/value head: query head h reads key/value head h // group."""
        return self.heads // self.kv_heads


def geometry(config: Any) -> Geometry:
    """Returns the attention geometry of a transformers config (head_dim where the config sets it, as Gemma and Qwen3 do)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv_heads:
        raise ValueError(f"model config: {heads} query heads are not a multiple of {kv_heads} key/value heads")
    return Geometry(config.num_hidden_layers, heads, kv_heads, head_dim)


def tiny_config(model_type: str, vocab_size: int, layers: int = 2, heads: int = 4, kv_heads: int | None = None,
                hidden: int = 32, intermediate: int = 64, max_positions: int = 64, **overrides):
    """Returns a transformers config of a tiny model of `model_type` (for tests and benchmarks; random init).

    kv_heads: key/value heads where the family has grouped-query attention (ignored otherwise).
    """
    import transformers

    arch = architecture(model_type, "tiny model")
    kwargs = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=intermediate, max_position_embeddings=max_positions, **arch.tiny)
    config_class = getattr(transformers, arch.config)
    defaults = config_class().to_dict()
    if "num_key_value_heads" in defaults:
        kwargs["num_key_value_heads"] = kv_heads or heads
    if defaults.get("head_dim") is not None:
        kwargs["head_dim"] = hidden // heads  # families whose default head_dim ignores hidden_size (Gemma: 256)
    kwargs.update(overrides)
    return config_class(**kwargs)


def pad_with_eos(tokenizer) -> Any:
    """Returns `tokenizer` with a pad token: its own, else its eos token (decoder tokenizers often have none).

    Safe for pooling: the classifier finds the last non-pad token from the attention mask, never
    by searching for the pad id (which pad == eos would confuse).
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad token nor an eos token to pad with; expected one of them")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_tiny_model(model_type: str, tokenizer, folder, seed: int = 0, **sizes) -> Any:
    """Writes a tiny random-init model of `model_type` and `tokenizer` into `folder` as a user's model directory; returns it.

    The directory is what `save_pretrained` makes (config.json, model.safetensors, tokenizer
    files), so a sweep's `model.name: <folder>` loads it as it would a downloaded model.
    sizes: tiny_config's (layers, heads, kv_heads, hidden, intermediate, max_positions).
    """
    import torch
    from transformers import AutoModel

    config = tiny_config(model_type, len(tokenizer), **sizes)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
