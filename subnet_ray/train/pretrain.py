"""Masked-LM pre-training of the tiny encoder: the stand-in for a pretrained multilingual model.

The paper fine-tunes XLM-R, whose heads already do language-specific work before the task
is seen; pruning then keeps 42-71% of them. A tiny encoder trained from scratch on a few
thousand labelled sentences solves the task with one or two heads shared by every language
(tests/test_pretrain.py and the notes have the numbers). Pre-training it with BERT's
objective on the task's unlabelled text first gives it heads that read each language, the
way a pretrained model arrives.

`pretrain` writes the encoder's weights (safetensors, no pooler, no LM head) and one record
per epoch; `load_pretrained` puts them into a freshly built classifier, whose classifier head
keeps the training seed's initialisation. Always float32: the tiny model is cheap everywhere.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import BertForMaskedLM

from ..data import babel as babel_mod
from ..sweep.config import PretrainSpec, TaskSpec, TinySpec
from ..data.examples import babel_languages, load_examples
from ..models.classifier import SequenceClassifier, tiny_config
from .finetune import NonFiniteLossError, linear_schedule

ENCODER = "encoder.safetensors"
HISTORY = "pretrain.json"


def corpus(task: TaskSpec, sentences: int) -> list[str]:
    """Returns the pre-training text: `sentences` per language of the task, languages in task order.

    babel renders latent sentences of a split of their own ("pretrain"), so no training, dev
    or test item is among them; other tasks give their training texts (and second texts of
    pairs), labels unused.
    """
    if task.id == "babel":
        world = babel_languages(task)
        concepts, _, _ = babel_mod.latent_sample(world, "pretrain", sentences)
        return [t for lang in task.languages for t in babel_mod.render(world, lang, concepts)]
    train, texts = load_examples(task, "train"), []
    for lang in task.languages:
        own = [e for e in train if e.language == lang][:sentences]
        texts += [t for e in own for t in (e.text, e.text_pair) if t]
    return texts


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, mask_id: int, ordinary: torch.Tensor, p: float,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (inputs, labels) for BERT's masked-LM loss on token ids [batch, length].

    Each non-special token is chosen with probability `p`; a chosen token is replaced by
    [MASK] (80%), by a random ordinary token (10%) or kept (10%); labels are the original ids
    at chosen positions and -100 elsewhere. `special` is a bool table over the vocabulary.
    """
    chosen = (torch.rand(ids.shape, generator=g) < p) & ~special[ids]
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=g)
    inputs = ids.clone()
    inputs[chosen & (r < 0.8)] = mask_id
    swap = chosen & (r >= 0.8) & (r < 0.9)
    inputs[swap] = ordinary[torch.randint(len(ordinary), (int(swap.sum()),), generator=g)]
    return inputs, labels


def pretrain(tiny: TinySpec, tokenizer, texts: list[str], cfg: PretrainSpec, max_length: int, out: str | Path,
             device: str = "cpu", progress: bool = True, on_step: Callable[[int, int, int, int], None] | None = None) -> list[dict]:
    """Returns one record per epoch (mean masked-LM loss); writes the encoder's weights and the records into `out`."""
    if not texts:
        raise ValueError("pretrain: no text to pre-train on")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = BertForMaskedLM(tiny_config(tiny, len(tokenizer))).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(cfg.seed)
    special = torch.zeros(len(tokenizer), dtype=torch.bool)
    special[tokenizer.all_special_ids] = True
    ordinary = torch.nonzero(~special).flatten()
    per_epoch = (len(texts) + cfg.batch_size - 1) // cfg.batch_size
    total, step, history = per_epoch * cfg.epochs, 0, []
    schedule = linear_schedule(total, 0.1)
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(texts), generator=g).tolist()
        losses = []
        for i in tqdm(range(0, len(texts), cfg.batch_size), desc=f"pretrain epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False):
            batch = tokenizer([texts[j] for j in order[i : i + cfg.batch_size]], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            inputs, labels = mask_tokens(batch["input_ids"], special, tokenizer.mask_token_id, ordinary, cfg.mask_prob, g)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * schedule(step)
            loss = model(input_ids=inputs.to(device), attention_mask=batch["attention_mask"].to(device), labels=labels.to(device)).loss
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"pretrain: masked-LM loss is {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if on_step:
                on_step(step, total, epoch, cfg.epochs)
        history.append({"epoch": epoch, "mlm_loss": float(np.mean(losses)), "sentences": len(texts)})
    encoder = {k.removeprefix("bert."): v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.startswith("bert.")}
    save_file(encoder, str(out / ENCODER))
    (out / HISTORY).write_text(json.dumps(history, indent=2, sort_keys=True))
    return history


def load_pretrained(model: SequenceClassifier, folder: str | Path) -> None:
    """Loads a pre-trained encoder from `folder` into `model` (every encoder weight, nothing else)."""
    path = Path(folder) / ENCODER
    if not path.exists():
        raise FileNotFoundError(f"no pre-trained encoder at {path}")
    model.encoder.load_state_dict(load_file(str(path)), strict=True)
