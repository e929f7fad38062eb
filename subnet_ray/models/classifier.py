"""Encoders with the paper's classifier, and attention-head masks applied through hooks.

transformers 5.x has no `head_mask` (it is swallowed silently), so heads are masked here:
a forward pre-hook on each layer's `attention.output.dense` scales each head's slice of
its input. That works under sdpa and eager alike, and with the mask as a tensor that
requires grad, `autograd.grad(loss, mask)` is Michel et al.'s dL/dxi.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

if TYPE_CHECKING:  # only for annotations: the model code runs where pydantic is not installed (GPU machines)
    from ..sweep.config import ModelSpec

WEIGHTS = "model.safetensors"
META = "meta.json"


class SequenceClassifier(nn.Module):
    """An encoder plus the paper's classifier: one tanh hidden layer on the first token."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.classifier = nn.ModuleDict(
            {"dense": nn.Linear(hidden, hidden), "dropout": nn.Dropout(dropout), "out_proj": nn.Linear(hidden, num_labels)}
        )
        self.num_labels = num_labels

    @property
    def num_layers(self) -> int:
        return self.encoder.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.encoder.config.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.encoder.config.hidden_size // self.num_heads

    def attention_layers(self) -> list[nn.Module]:
        """Returns each encoder layer's attention module (has .self.{query,key,value} and .output.dense)."""
        return [layer.attention for layer in self.encoder.encoder.layer]

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state[:, 0]
        c = self.classifier
        return c["out_proj"](c["dropout"](torch.tanh(c["dense"](c["dropout"](h)))))


def tiny_config(t, vocab_size: int) -> BertConfig:
    """Returns the BERT config of the tiny model with sizes `t` (config.TinySpec)."""
    return BertConfig(
        vocab_size=vocab_size, hidden_size=t.hidden, num_hidden_layers=t.layers, num_attention_heads=t.heads,
        intermediate_size=t.intermediate, max_position_embeddings=t.max_positions, type_vocab_size=2,
    )


def build_model(spec: ModelSpec, num_labels: int, vocab_size: int | None = None, seed: int = 0) -> SequenceClassifier:
    """Returns a SequenceClassifier: `tiny` built from its sizes (random init), else from a hub id or local dir."""
    torch.manual_seed(seed)
    if spec.name == "tiny":
        if vocab_size is None:
            raise ValueError("model 'tiny' needs the tokenizer's vocab_size")
        encoder = BertModel(tiny_config(spec.tiny, vocab_size), add_pooling_layer=False)
    else:
        try:
            config = AutoConfig.from_pretrained(spec.name)
        except OSError as e:
            raise ValueError(f"model {spec.name!r}: not a local model directory and not loadable from the hub ({e})") from None
        if config.model_type not in {"bert", "roberta", "xlm-roberta"}:
            raise ValueError(f"model {spec.name!r}: type {config.model_type!r} is not a BERT / RoBERTa / XLM-R encoder")
        encoder = AutoModel.from_pretrained(spec.name, add_pooling_layer=False)
    return SequenceClassifier(encoder, num_labels, spec.dropout)


def check_mask(model: SequenceClassifier, mask: torch.Tensor) -> None:
    """Raises ValueError unless `mask` is [layers, heads] (or [batch, layers, heads]) for `model`."""
    want = (model.num_layers, model.num_heads)
    if tuple(mask.shape[-2:]) != want or mask.dim() not in (2, 3):
        raise ValueError(f"head mask of shape {tuple(mask.shape)} does not fit the model: expected {want} (layers, heads)")


class HeadMask:
    """Masks attention heads of `model` while attached; `set(mask)` chooses the mask (None = all on).

    mask: float or bool tensor [layers, heads], or [batch, layers, heads] for a different mask per
    example; 1 keeps a head, 0 disables it. Use as a context manager, or call `remove()`.
    """

    def __init__(self, model: SequenceClassifier, mask: torch.Tensor | None = None):
        self.model = model
        self.mask: torch.Tensor | None = None
        self._handles = [
            attn.output.dense.register_forward_pre_hook(self._hook(i)) for i, attn in enumerate(model.attention_layers())
        ]
        self.set(mask)

    def set(self, mask: torch.Tensor | None) -> "HeadMask":
        if mask is not None:
            check_mask(self.model, mask)
        self.mask = mask
        return self

    def _hook(self, layer: int):
        heads = self.model.num_heads

        def pre_hook(module, args):
            if self.mask is None:
                return None
            x = args[0]
            m = self.mask[..., layer, :].to(device=x.device, dtype=x.dtype)
            m = m.view(-1, 1, heads, 1) if m.dim() == 2 else m.view(1, 1, heads, 1)
            return ((x.unflatten(-1, (heads, -1)) * m).flatten(-2),) + tuple(args[1:])

        return pre_hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "HeadMask":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def head_parameter_masks(model: SequenceClassifier, mask: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Returns (parameter, 0/1 tensor broadcastable to it) for every parameter owned by single heads.

    A head owns its rows of the query, key and value weights and biases, and its columns of
    the attention output projection; everything else is shared by all heads of a layer.
    """
    check_mask(model, mask)
    if mask.dim() != 2:
        raise ValueError("parameter masks need one [layers, heads] mask, not one per example")
    dh = model.head_dim
    out = []
    for layer, attn in enumerate(model.attention_layers()):
        m = mask[layer].to(attn.output.dense.weight.device, torch.float32).repeat_interleave(dh)
        for lin in (attn.self.query, attn.self.key, attn.self.value):
            out.append((lin.weight, m.view(-1, 1)))
            if lin.bias is not None:
                out.append((lin.bias, m))
        out.append((attn.output.dense.weight, m.view(1, -1)))
    return out


def mask_gradients(param_masks: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """Multiplies each head-owned parameter's gradient by its head mask, in place (the paper's SFT)."""
    for p, m in param_masks:
        if p.grad is not None:
            p.grad.mul_(m.to(p.grad.dtype))


def save_checkpoint(model: nn.Module, directory: str | Path, meta: dict) -> None:
    """Writes the model's weights (safetensors) and `meta` (JSON) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_checkpoint(model: nn.Module, directory: str | Path) -> dict:
    """Loads weights from `directory` into `model` (shapes and names must match); returns its meta."""
    directory = Path(directory)
    path = directory / WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = load_file(str(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or bad:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing[:3]}, unexpected {extra[:3]}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in bad[:3]]}"
        )
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state.items()})
    return json.loads((directory / META).read_text()) if (directory / META).exists() else {}
