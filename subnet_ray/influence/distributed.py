"""TracIn influence on Ray: sketching on a Ray Data actor pool, scoring as tasks over test shards.

Same inputs and result as pipeline.influence (same ids, scores within float tolerance):
- per checkpoint, one `map_batches` pass over every (training example x distinct mask) and
  every test example (under its language's mask); a `SketchActor` loads the checkpoint once,
  sets torch threads to its CPUs and applies each row's mask (masks may differ within a
  batch). The weights travel through the object store, so workers need no shared disk.
  Output rows are keyed by example id and mask (optionally written as parquet shards);
- per mask, the training sketches of all checkpoints go into the object store once and each
  shard of that mask's test examples is scored by a task against them.

`ray.init` is called with `address` if Ray is not running yet (None = a local instance).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..config import InfluenceSpec
from ..models import WEIGHTS
from .pipeline import as_model, check_examples, checkpoint_metas, mask_groups, token_lengths
from .projection import Projector
from .sketch import DTYPES, Sketches, from_numpy, layer_dims, select_linears, sketch_batch, to_numpy
from .tracin import top_influences

WORKER_ENV = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}}


class SketchActor:
    """Ray Data callable class: holds one model at one checkpoint; maps a batch of example rows to sketches."""

    def __init__(self, model, weights: list, spec: dict, masks: list, tokenizer, max_length: int, device: str, cpus: float):
        import ray
        from safetensors.torch import load as load_safetensors

        torch.set_num_threads(max(1, int(cpus)))  # two processes on all cores ruin each other
        self.spec = InfluenceSpec.model_validate(spec)
        self.model = as_model(model)
        self.model.load_state_dict(load_safetensors(ray.get(weights[0])))
        self.model.to(device).eval()
        self.device = device
        self.linears = select_linears(self.model, self.spec.layers)
        self.projector = Projector(self.spec.proj_dim, self.spec.projection_seed) if self.spec.proj_dim else None
        self.masks = [None if m is None else torch.as_tensor(m, dtype=torch.float32) for m in masks]
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..data import Example, encode

        n = len(batch["row"])
        if n == 0:
            raise ValueError("SketchActor got an empty shard of examples")
        pairs = batch["text_pair"] if "text_pair" in batch else [None] * n
        examples = [
            # Arrow turns an all-None column into float NaN: only a str is a text pair.
            Example(id=str(i), language=str(lang), text=str(t), text_pair=p if isinstance(p, str) else None, label=int(y))
            for i, lang, t, p, y in zip(batch["id"], batch["language"], batch["text"], pairs, batch["label"])
        ]
        groups = [self.masks[g] for g in batch["group"]]
        if all(m is None for m in groups):
            head_mask = None
        else:  # an all-ones mask is exactly the full model
            ones = torch.ones_like(next(m for m in groups if m is not None))
            head_mask = torch.stack([ones if m is None else m for m in groups]).to(self.device)
        enc = {k: v.to(self.device) for k, v in encode(examples, self.tokenizer, self.max_length).items()}
        values = sketch_batch(self.model, enc, self.linears, self.projector, head_mask).to("cpu", DTYPES[self.spec.dtype])
        return {"row": batch["row"], "id": batch["id"], "group": batch["group"], "sketch": to_numpy(values)}


def _score_shard(test: list[Sketches], train: list[Sketches], top_k: int, lr_weighting: bool, cpus: float) -> pd.DataFrame:
    """Returns the top-k table of one test shard (runs as a Ray task)."""
    torch.set_num_threads(max(1, int(cpus)))
    return top_influences(test, train, top_k, lr_weighting)


def _rows(train: list, test: list, groups, tokenizer, max_length: int) -> list[dict]:
    """Returns one row per (training example, mask) and per test example, sorted by token count so batches pad little."""
    lengths = token_lengths(train + test, tokenizer, max_length)
    length = {("train", ex.id): n for ex, n in zip(train, lengths)} | {("test", ex.id): n for ex, n in zip(test, lengths[len(train):])}
    rows = []
    for g, group in enumerate(groups):
        rows += [("train", g, ex) for ex in train]
        rows += [("test", g, ex) for ex in test if ex.language in group.languages]
    rows.sort(key=lambda r: length[(r[0], r[2].id)])
    has_pair = any(ex.text_pair is not None for ex in train + test)
    out = []
    for i, (role, g, ex) in enumerate(rows):
        row = {"row": i, "role": role, "group": g, "id": ex.id, "language": ex.language, "text": ex.text, "label": int(ex.label)}
        if has_pair:
            row["text_pair"] = ex.text_pair
        out.append(row)
    return out


def influence_ray(
    model: nn.Module | Callable[[], nn.Module],
    checkpoints: list[str | Path],
    train: list,
    test: list,
    tokenizer,
    spec: InfluenceSpec,
    masks: dict[str, torch.Tensor | None] | None = None,
    max_length: int = 128,
    device: str = "cpu",
    address: str | None = None,
    cpus_per_actor: float = 1.0,
    shard_size: int = 256,
    sketch_dir: str | None = None,
) -> pd.DataFrame:
    """Returns the same table as pipeline.influence, computed on Ray (see the module docstring).

    model: as for pipeline.influence; a factory must be importable on the workers (a function
    of an installed module, or a functools.partial of one), an instance travels with its weights.
    Extra arguments: address of the cluster if Ray is not initialised yet; CPUs per actor
    and scoring task (torch threads follow it); test examples per scoring task; sketch_dir, a
    local folder or URI Ray can write, to keep each checkpoint's sketches as parquet shards
    (columns row, id, group, sketch). GPUs per actor and the number of actors come from spec.
    """
    import ray

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not ray.is_initialized():
        ray.init(address=address)
    build = model  # actors get the factory if there is one, so no weights are pickled with it
    model = as_model(model)
    check_examples(train, "training")
    check_examples(test, "test")
    metas = checkpoint_metas(model, checkpoints)
    groups = mask_groups(model, sorted({ex.language for ex in test}), masks)
    layout = layer_dims(select_linears(model, spec.layers), spec.proj_dim)
    rows = _rows(train, test, groups, tokenizer, max_length)
    role = np.array([r["role"] for r in rows])
    group_of = np.array([r["group"] for r in rows])
    actor_device = "cuda" if spec.gpus_per_actor > 0 else device
    masks_np = [None if g.mask is None else g.mask.numpy() for g in groups]
    done = []
    for meta in metas:
        weights = ray.put((Path(meta["dir"]) / WEIGHTS).read_bytes())
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // spec.batch_size, 8 * spec.actors)))
        out = ds.map_batches(
            SketchActor,
            fn_constructor_kwargs=dict(model=build, weights=[weights], spec=spec.model_dump(), masks=masks_np,
                                       tokenizer=tokenizer, max_length=max_length, device=actor_device, cpus=cpus_per_actor),
            batch_size=spec.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=spec.actors),
            num_cpus=cpus_per_actor, num_gpus=spec.gpus_per_actor, runtime_env=WORKER_ENV,
        ).materialize()
        if sketch_dir is not None:
            out.write_parquet(f"{sketch_dir.rstrip('/')}/epoch_{meta['epoch']}")
        done.append((meta, out))
        del weights
    score = ray.remote(num_cpus=cpus_per_actor, runtime_env=WORKER_ENV)(_score_shard)
    frames = []
    for g, group in enumerate(groups):
        sk_train, sk_test = [], []
        for meta, out in done:
            values, seen = _collect(out, g, len(rows), spec.dtype)
            for what, sink in (("train", sk_train), ("test", sk_test)):
                idx = np.flatnonzero((role == what) & (group_of == g))
                if not seen[idx].all():
                    lost = [rows[i]["id"] for i in idx[~seen[idx]][:3]]
                    raise RuntimeError(f"checkpoint {meta['epoch']}: the sketching pass lost {what} examples, e.g. {lost}")
                sink.append(Sketches(
                    ids=[rows[i]["id"] for i in idx], languages=[rows[i]["language"] for i in idx], values=values[torch.from_numpy(idx)],
                    layout=layout, proj_dim=spec.proj_dim, seed=spec.projection_seed, checkpoint=meta["epoch"],
                    lr=meta["lr"], mask=group.key,
                ))
        train_ref = ray.put(sk_train)
        n_test = len(sk_test[0].ids)
        shards = [[s.take(s.ids[i : i + shard_size]) for s in sk_test] for i in range(0, n_test, shard_size)]
        frames += ray.get([score.remote(shard, train_ref, spec.top_k, spec.lr_weighting, cpus_per_actor) for shard in shards])
        del train_ref
    return pd.concat(frames, ignore_index=True)


def _collect(out, group: int, n_rows: int, dtype: str) -> tuple[torch.Tensor, np.ndarray]:
    """Returns (sketches by row index, which rows arrived) for one mask group of a sketched dataset."""
    values, seen = None, np.zeros(n_rows, dtype=bool)
    for b in out.iter_batches(batch_format="numpy", batch_size=None):
        keep = b["group"] == group
        rows, sk = b["row"][keep], b["sketch"][keep]
        if not len(rows):
            continue
        if seen[rows].any():
            raise RuntimeError(f"the sketching pass returned rows twice, e.g. id {b['id'][keep][seen[rows]][0]}")
        if values is None:
            values = torch.zeros((n_rows, sk.shape[1]), dtype=DTYPES[dtype])
        values[torch.from_numpy(rows)] = from_numpy(sk, dtype)
        seen[rows] = True
    if values is None:
        raise RuntimeError(f"the sketching pass returned no rows for mask group {group}")
    return values, seen
