"""Fine-tuning: full (all parameters, mixed-language batches) and sparse (SFT) on head masks.

SFT (paper section 4.2): language-specific batches in random order, every language equally
often; each step runs with that language's head mask in the forward pass and multiplies the
gradients of head-owned parameters by the mask before AdamW. Masked gradients alone still let
AdamW's momentum and weight decay move disabled heads (the paper's behaviour, our default);
`sft_mode: strict` restores the disabled heads' parameters after every step, bit for bit.

A checkpoint (safetensors + JSON with epoch, lr and dev accuracy per language) is written
after every epoch, because TracIn sums over them. Optimizer state for resuming is kept beside
them until training finishes. Runs are deterministic: data order and dropout are seeded per
epoch, so a run resumed from epoch k equals one that never stopped.
"""
from __future__ import annotations

import json
import random
import shutil
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..models.classifier import HeadMask, SequenceClassifier, head_parameter_masks, load_checkpoint, mask_gradients, save_checkpoint
from ..models.precision import autocast, grad_scaler
from ..data.tokenization import encode, length_order

if TYPE_CHECKING:  # only for annotations: train_step and evaluate run where pydantic is not installed (GPU machines)
    from ..sweep.config import TrainSpec
    from ..data.examples import Example

RESUME = "resume"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good epoch checkpoint is kept."""


def batches(examples: list[Example], batch_size: int) -> list[list[Example]]:
    """Returns consecutive batches of `examples`."""
    return [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: SequenceClassifier, examples: list[Example], tokenizer, max_length: int,
    batch_size: int = 32, mask: torch.Tensor | None = None, device: str = "cpu", precision: str = "fp32", bucket: bool = True,
) -> dict:
    """Returns {accuracy, loss, preds} of `model` on `examples`, with `mask` on the heads if given.

    preds are in the order of `examples`. bucket: batch examples of similar token length (less
    padding; the results do not depend on it). precision: see precision.autocast.
    """
    if not examples:
        raise ValueError("evaluate: no examples")
    was_training = model.training
    model.eval()
    order = length_order(examples, tokenizer, max_length) if bucket else list(range(len(examples)))
    preds, total_loss = [0] * len(examples), 0.0
    with HeadMask(model, mask), autocast(device, precision):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            b = _to(encode([examples[i] for i in idx], tokenizer, max_length), device)
            logits = model(**b)
            total_loss += F.cross_entropy(logits, b["labels"], reduction="sum").item()
            for i, p in zip(idx, logits.argmax(-1).tolist()):
                preds[i] = p
    model.train(was_training)
    correct = sum(p == e.label for p, e in zip(preds, examples))
    return {"accuracy": correct / len(examples), "loss": total_loss / len(examples), "preds": preds}


def by_language(examples: list[Example]) -> dict[str, list[Example]]:
    """Returns the examples grouped by language, in first-seen order."""
    out: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        out[e.language].append(e)
    return dict(out)


def accuracy_by_language(
    model, examples, tokenizer, max_length, batch_size=32, masks: dict[str, torch.Tensor] | None = None, device="cpu",
    precision: str = "fp32",
) -> dict[str, float]:
    """Returns dev accuracy per language, each language under its own mask when `masks` is given."""
    return {
        lang: evaluate(model, exs, tokenizer, max_length, batch_size, (masks or {}).get(lang), device, precision)["accuracy"]
        for lang, exs in by_language(examples).items()
    }


def epoch_plan(train: list[Example], batch_size: int, seed: int, epoch: int, sparse: bool) -> list[list[Example]]:
    """Returns the epoch's batches: shuffled mixed batches (full), or language batches in random order (SFT).

    For SFT every language gets the same number of batches: smaller languages are cycled up to
    the size of the largest, which is seen exactly once.
    """
    rng = random.Random(f"{seed}/{epoch}")
    if not sparse:
        order = list(train)
        rng.shuffle(order)
        return batches(order, batch_size)
    groups = by_language(train)
    target = max(len(g) for g in groups.values())
    plan = []
    for group in groups.values():
        pool: list[Example] = []
        while len(pool) < target:  # smaller languages are cycled up to the largest one's size
            cycle = list(group)
            rng.shuffle(cycle)
            pool += cycle
        plan += batches(pool[:target], batch_size)
    rng.shuffle(plan)
    return plan


def train_step(
    model, batch: dict, optimizer, param_masks=None, strict: bool = False, precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None, max_grad_norm: float | None = None,
) -> torch.Tensor:
    """Returns the batch loss after one AdamW step; with `param_masks`, an SFT step (head mask set by the caller).

    A non-finite loss is returned before any parameter changes. precision: the forward and
    backward's (precision.autocast); fp16 wants an enabled `scaler` (it skips a step whose
    scaled gradients overflow and lowers the scale). max_grad_norm: the global norm of the
    (masked, unscaled) gradients is clipped to it before the step.
    """
    with autocast(batch["input_ids"].device, precision):
        loss = F.cross_entropy(model(**batch), batch["labels"])  # float32 under autocast
    if not torch.isfinite(loss):
        return loss.detach()
    optimizer.zero_grad(set_to_none=True)
    scaled = scaler is not None and scaler.is_enabled()
    (scaler.scale(loss) if scaled else loss).backward()
    frozen = []
    if param_masks is not None:
        mask_gradients(param_masks)  # a 0/1 factor: the same on scaled gradients
        if strict:
            frozen = [(p, m, p.detach().clone()) for p, m in param_masks]
    if max_grad_norm is not None:
        if scaled:
            scaler.unscale_(optimizer)  # clip the true gradients; step() then does not unscale twice
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaled:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    with torch.no_grad():
        for p, m, before in frozen:
            p.copy_(torch.where(m.bool(), p, before))
    return loss.detach()


def fit_step(model, hm: HeadMask, optimizer, chunk: list[Example], tokenizer, cfg: TrainSpec, lr: float,
             masks: dict[str, torch.Tensor] | None, param_masks: dict, scaler) -> torch.Tensor:
    """Returns the loss of one step of `finetune` on `chunk` (one language under SFT): the language's head mask set
    (`masks`, or every head on), the learning rate, the batch encoded, train_step with its head-owned parameter masks.
    estimate's calibration times this same call."""
    lang = chunk[0].language
    device = next(model.parameters()).device
    hm.set(masks[lang].to(device) if masks is not None else None)
    for g in optimizer.param_groups:
        g["lr"] = lr
    b = _to(encode(chunk, tokenizer, cfg.max_length), device)
    return train_step(model, b, optimizer, param_masks.get(lang), cfg.sft_mode == "strict", cfg.precision, scaler, cfg.max_grad_norm)


def linear_schedule(total_steps: int, warmup: float) -> Callable[[int], float]:
    """Returns step -> learning-rate factor: linear warm-up over the first `warmup` of the steps, then linear decay to 0."""
    warm = int(total_steps * warmup)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return factor


def save_resume(directory: Path, optimizer: torch.optim.Optimizer, names: dict, epoch: int, step: int, scaler=None) -> None:
    """Writes the optimizer state, epoch, step and loss scale beside the epoch checkpoints (atomically), so a killed run resumes."""
    tensors = {}
    for p, state in optimizer.state.items():
        for k, v in state.items():
            tensors[f"{names[p]}::{k}"] = v.detach().reshape(-1).cpu() if v.dim() == 0 else v.detach().cpu()
    tmp = directory / f".{RESUME}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    scale = scaler.state_dict() if scaler is not None and scaler.is_enabled() else None
    (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "step": step, "scaler": scale}, sort_keys=True))
    shutil.rmtree(directory / RESUME, ignore_errors=True)
    tmp.rename(directory / RESUME)


def _load_resume(directory: Path, optimizer: torch.optim.Optimizer, named: dict, scaler=None) -> tuple[int, int]:
    state = json.loads((directory / RESUME / "state.json").read_text())
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])  # fp16: resume with the loss scale reached, as if never stopped
    tensors = load_file(str(directory / RESUME / "optimizer.safetensors"))
    for key, v in tensors.items():
        name, k = key.split("::")
        p = named[name]
        optimizer.state[p][k] = v.reshape(()) if k == "step" else v.to(p.device)
    return state["epoch"], state["step"]


def finetune(
    model: SequenceClassifier,
    train: list[Example],
    dev: list[Example],
    tokenizer,
    cfg: TrainSpec,
    out_dir: str | Path,
    seed: int,
    masks: dict[str, torch.Tensor] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    on_step: Callable[[int, int, int, int], None] | None = None,
) -> list[dict]:
    """Returns the per-epoch history; writes `epoch_<e>/` checkpoints into `out_dir`.

    Full fine-tuning when `masks` is None, else SFT with each language's mask. Resumes from
    the last finished epoch found in `out_dir`. `on_epoch(record)` is called after each epoch,
    `on_step(step, total steps, epoch, epochs)` after each optimiser step.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not train:
        raise ValueError("finetune: no training examples")
    sparse = masks is not None
    if sparse:
        missing = sorted({e.language for e in train} - set(masks))
        if missing:
            raise ValueError(f"SFT needs a head mask for every training language; missing {missing}")
    device = torch.device(cfg.device)
    model.to(device).train()
    named = dict(model.named_parameters())
    names = {p: n for n, p in named.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(epoch_plan(train, cfg.batch_size, seed, 0, sparse))
    schedule = linear_schedule(steps_per_epoch * cfg.epochs, cfg.warmup)
    param_masks = {lang: head_parameter_masks(model, m.to(device)) for lang, m in (masks or {}).items()}
    scaler = grad_scaler(device, cfg.precision)
    history, start, step = [], 0, 0
    if (out_dir / RESUME).exists():
        try:
            start, step = _load_resume(out_dir, optimizer, named, scaler)
            load_checkpoint(model, out_dir / f"epoch_{start}")  # reads the whole file before touching the model
            history = [json.loads((out_dir / f"epoch_{e}" / "meta.json").read_text()) for e in range(1, start + 1)]
        except Exception as e:  # noqa: BLE001 - partial state cut short (killed mid-write, full disk): start over
            warnings.warn(f"{out_dir}: cannot resume ({e!r}); fine-tuning starts over", stacklevel=2)
            for stale in [out_dir / RESUME, *out_dir.glob("epoch_*")]:
                shutil.rmtree(stale, ignore_errors=True)
            optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            scaler = grad_scaler(device, cfg.precision)
            history, start, step = [], 0, 0
    hm = HeadMask(model)
    try:
        for epoch in range(start + 1, cfg.epochs + 1):
            torch.manual_seed(seed * 10_000 + epoch)  # dropout: same seed, same epoch, same masks
            plan = epoch_plan(train, cfg.batch_size, seed, epoch, sparse)
            total, lr_sum = 0.0, 0.0
            bar = tqdm(plan, desc=f"{'sft' if sparse else 'full'} epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
            for chunk in bar:
                lang = chunk[0].language
                lr_sum += cfg.lr * schedule(step)
                loss = fit_step(model, hm, optimizer, chunk, tokenizer, cfg, cfg.lr * schedule(step), masks, param_masks, scaler)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at epoch {epoch}, step {step} (batch language {lang}); "
                        f"last good checkpoint: {out_dir / f'epoch_{epoch - 1}' if epoch > 1 else 'none'}"
                    )
                total += loss.item()
                step += 1
                if on_step:
                    on_step(step, steps_per_epoch * cfg.epochs, epoch, cfg.epochs)
            hm.set(None)
            dev_acc = accuracy_by_language(model, dev, tokenizer, cfg.max_length, cfg.batch_size, masks, cfg.device, cfg.precision)
            record = {
                # lr: the rate at the epoch's last step; lr_mean: the mean over its steps, TracInCP's weight
                # for this checkpoint (it stands for the steps taken since the previous one)
                "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "lr_mean": lr_sum / len(plan), "train_loss": total / len(plan),
                "dev_accuracy": dev_acc, "dev_accuracy_mean": sum(dev_acc.values()) / len(dev_acc), "seed": seed,
                "method": "sft" if sparse else "full",
            }
            save_checkpoint(model, out_dir / f"epoch_{epoch}", record)
            save_resume(out_dir, optimizer, names, epoch, step, scaler)
            history.append(record)
            if on_epoch:
                on_epoch(record)
    finally:
        hm.remove()
    shutil.rmtree(out_dir / RESUME, ignore_errors=True)
    return history


def checkpoints(out_dir: str | Path) -> list[Path]:
    """Returns the epoch checkpoint folders in `out_dir`, in epoch order."""
    found = sorted(Path(out_dir).glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))
    if not found:
        raise FileNotFoundError(f"no epoch checkpoints in {out_dir}")
    return found
