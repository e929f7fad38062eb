"""Encoders and decoders with the paper's classifier, and attention-head masks applied through hooks.

transformers 5.x has no `head_mask` (it is swallowed silently), so heads are masked here:
a forward pre-hook on each layer's attention output projection (found through the model's
architecture record, models.architectures) scales each query head's slice of its input. That
works under sdpa and eager alike, and with the mask as a tensor that requires grad,
`autograd.grad(loss, mask)` is Michel et al.'s dL/dxi. Under grouped-query attention a head is
a query head: its slice of the output projection's input is its own even where it shares
its key and value with other query heads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

from .architectures import Architecture, Geometry, architecture, geometry

if TYPE_CHECKING:  # only for annotations: the model code runs where pydantic is not installed (GPU machines)
    from ..sweep.config import ModelSpec

WEIGHTS = "model.safetensors"
META = "meta.json"


def _at(module: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        module = getattr(module, name)
    return module


class SequenceClassifier(nn.Module):
    """A base model plus the paper's classifier: one tanh hidden layer on the pooled token.

    Encoders pool the first token; decoders the last non-pad token, found from the attention
    mask (so either padding side works, and a pad token equal to eos does not confuse it).
    Decoders get position ids counted over the real tokens, so a left-padded example reads the
    same positions as unpadded.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.arch: Architecture = architecture(encoder.config.model_type)
        self.geometry: Geometry = geometry(encoder.config)
        hidden = encoder.config.hidden_size
        self.classifier = nn.ModuleDict(
            {"dense": nn.Linear(hidden, hidden), "dropout": nn.Dropout(dropout), "out_proj": nn.Linear(hidden, num_labels)}
        )
        self.num_labels = num_labels

    @property
    def num_layers(self) -> int:
        return self.geometry.layers

    @property
    def num_heads(self) -> int:
        """Query heads per layer: the heads a mask switches."""
        return self.geometry.heads

    @property
    def num_kv_heads(self) -> int:
        return self.geometry.kv_heads

    @property
    def head_dim(self) -> int:
        return self.geometry.head_dim

    def attention_layers(self) -> list[nn.Module]:
        """Returns each layer's attention module (its projections are named by the architecture record)."""
        return [_at(layer, self.arch.attention) for layer in _at(self.encoder, self.arch.layers)]

    def output_projections(self) -> list[nn.Linear]:
        """Returns each layer's attention output projection: its input holds the query heads' slices."""
        return [_at(attn, self.arch.output) for attn in self.attention_layers()]

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None and self.arch.token_type_ids else {}
        if self.arch.decoder:
            kwargs["position_ids"] = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if self.arch.decoder:
            # the last position whose mask is 1 (argmax returns the first maximum, hence position-weighted)
            last = (attention_mask.long() * torch.arange(1, hidden.shape[1] + 1, device=hidden.device)).argmax(1)
            h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            h = hidden[:, 0]
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
        model_type = _model_type(spec.name)
        arch = architecture(model_type, f"model {spec.name!r}")  # refused before any weights load
        config = AutoConfig.from_pretrained(spec.name)
        # float32 weights whatever the checkpoint's dtype: precision is chosen per pass (models.precision)
        encoder = AutoModel.from_pretrained(spec.name, config=config, dtype=torch.float32, **dict(arch.load_kwargs))
    return SequenceClassifier(encoder, num_labels, spec.dropout)


def _model_type(name: str) -> str | None:
    """Returns config.json's model_type of a local directory or hub id (read as JSON: transformers refuses unknown types itself)."""
    from transformers.utils import cached_file

    try:
        path = cached_file(name, "config.json")
    except (OSError, ValueError) as e:
        raise ValueError(f"model {name!r}: not a local model directory and not loadable from the hub ({e})") from None
    try:
        return json.loads(Path(path).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"model {name!r}: config.json is not a JSON model config ({e})") from None


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
        self._handles = [proj.register_forward_pre_hook(self._hook(i)) for i, proj in enumerate(model.output_projections())]
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

    A (query) head owns its rows of the query weight and bias and its columns of the attention
    output projection. Its key and value rows are its own too, unless grouped-query attention
    shares them: then a key/value row block is frozen only when every query head that reads it
    (its group) is disabled. Everything else is shared by all heads of a layer.
    """
    check_mask(model, mask)
    if mask.dim() != 2:
        raise ValueError("parameter masks need one [layers, heads] mask, not one per example")
    g, arch = model.geometry, model.arch
    out = []
    for layer, (attn, proj) in enumerate(zip(model.attention_layers(), model.output_projections())):
        m = mask[layer].to(proj.weight.device, torch.float32)
        q = m.repeat_interleave(g.head_dim)
        kv = m.view(g.kv_heads, g.group).amax(1).repeat_interleave(g.head_dim)  # on while any head of the group is on
        if arch.qkv:
            rows = [(_at(attn, arch.qkv), torch.cat([q, kv, kv]))]
        else:
            rows = [(_at(attn, arch.query), q), (_at(attn, arch.key), kv), (_at(attn, arch.value), kv)]
        rows += [(_at(attn, p), q) for p in arch.head_rows if _has(attn, p)]
        for lin, r in rows:
            out.append((lin.weight, r.view(-1, 1)))
            if lin.bias is not None:
                out.append((lin.bias, r))
        out.append((proj.weight, q.view(1, -1)))
    return out


def _has(module: nn.Module, path: str) -> bool:
    try:
        return isinstance(_at(module, path), nn.Linear)
    except AttributeError:
        return False


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
