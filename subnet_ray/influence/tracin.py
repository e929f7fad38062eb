"""TracIn scores from sketches: cosine per checkpoint, optional learning-rate weight, summed; top-k per test example.

I(z, z_test) = sum_e w_e cos(g_e(z), g_e(z_test)) over epoch checkpoints e (Pruthi et al. 2020,
with Barshan et al.'s cosine normalisation as in the paper), w_e = the checkpoint's learning
rate if lr weighting is on, else 1. The per-checkpoint terms are kept too: the paper's
training-dynamics analysis ranks by each checkpoint alone.

Scoring never holds the test x train matrix: test rows are taken in chunks, train rows in
chunks, and a running top-k (most positive and most negative) is merged block by block, so
memory is bounded by `max_block_mb` plus the sketches themselves. Train sketches stay in their
storage dtype; only the current block is upcast to float32.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .sketch import Sketches

SUM = -1  # `checkpoint` value of the score summed over checkpoints
COLUMNS = ["test_id", "test_language", "checkpoint", "sign", "rank", "train_id", "train_language", "score"]


def align(test: list[Sketches], train: list[Sketches]) -> tuple[list[Sketches], list[Sketches]]:
    """Returns test and train sketch lists (one entry per checkpoint) with rows in one id order each; raises on any mismatch."""
    if not train or not test:
        raise ValueError("TracIn needs sketches of at least one checkpoint for both test and train")
    if len(test) != len(train):
        raise ValueError(f"test sketches cover {len(test)} checkpoints, train sketches {len(train)}")
    epochs = [s.checkpoint for s in train]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"train sketches repeat a checkpoint: {epochs}")
    for te, tr in zip(test, train):
        te.check_comparable(tr)
    out = []
    for what, group in (("test", test), ("train", train)):
        ids = group[0].ids
        for s in group[1:]:
            if s.ids != ids:
                if len(s.ids) != len(ids) or set(s.ids) != set(ids):
                    raise ValueError(
                        f"{what} sketches of checkpoints {group[0].checkpoint} and {s.checkpoint} cover different examples "
                        f"({len(ids)} vs {len(s.ids)} ids)"
                    )
        out.append([s if s.ids == ids else s.take(ids) for s in group])
    return out[0], out[1]


def checkpoint_weights(train: list[Sketches], lr_weighting: bool) -> list[float]:
    """Returns w_e per checkpoint: its mean learning rate if `lr_weighting`, else 1.

    TracInCP (Pruthi et al. 2020, eq. 3): I(z, z') = sum_e eta_e grad L(w_e, z) . grad L(w_e, z'),
    where eta_e stands for the step sizes taken between checkpoints e-1 and e. With one
    checkpoint per epoch, eta_e = (1 / S) sum_{s in epoch e} lr_s, the mean rate over the
    epoch's S steps (equal-length epochs make this the sum up to a constant factor). The rate
    at the epoch's last step would give the last checkpoint ~0 under linear decay.
    """
    if not lr_weighting:
        return [1.0] * len(train)
    missing = [s.checkpoint for s in train if s.lr is None]
    if missing:
        raise ValueError(f"lr weighting needs each checkpoint's learning rate; checkpoints {missing} have none (meta 'lr_mean', the mean learning rate of its epoch)")
    return [float(s.lr) for s in train]


def _inverse_norms(s: Sketches, normalize: bool, chunk: int = 4096) -> torch.Tensor:
    """Returns 1 / ||row|| per row in float32 (0 for an all-zero row), or ones without normalisation."""
    if not normalize:
        return torch.ones(s.values.shape[0])
    norms = torch.cat([s.values[i : i + chunk].float().norm(dim=1) for i in range(0, s.values.shape[0], chunk)])
    return torch.where(norms > 0, 1.0 / norms.clamp_min(1e-30), torch.zeros_like(norms))


def dense_scores(test: list[Sketches], train: list[Sketches], lr_weighting: bool = False, normalize: bool = True) -> torch.Tensor:
    """Returns every score [checkpoints + 1, test, train] in the aligned id orders; the last slice is the sum.

    For small sets and validation: it holds the whole matrix.
    """
    test, train = align(test, train)
    w = checkpoint_weights(train, lr_weighting)
    per = [
        wi * (te.values.float() * _inverse_norms(te, normalize)[:, None]) @ (tr.values.float() * _inverse_norms(tr, normalize)[:, None]).T
        for wi, te, tr in zip(w, test, train)
    ]
    return torch.stack(per + [torch.stack(per).sum(0)])


def _merge(best: tuple | None, block: torch.Tensor, offset: int, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the running top-k (values, train indices) after merging in one block of scores."""
    kb = min(k, block.shape[1])
    v, i = block.topk(kb, dim=1, largest=largest, sorted=True)
    i = i + offset
    if best is None:
        return v, i
    v = torch.cat([best[0], v], 1)
    i = torch.cat([best[1], i], 1)
    v, j = v.topk(k, dim=1, largest=largest, sorted=True)
    return v, i.gather(1, j)


def top_influences(
    test: list[Sketches],
    train: list[Sketches],
    top_k: int,
    lr_weighting: bool = False,
    normalize: bool = True,
    max_block_mb: float = 256.0,
) -> pd.DataFrame:
    """Returns the top-k most positive and most negative training examples per test example, per checkpoint and summed.

    test, train: one Sketches per checkpoint (same checkpoints, same layout, seed and mask).
    Columns: test_id, test_language, checkpoint (epoch, or -1 for the sum), sign ('pos' = largest
    scores, 'neg' = smallest), rank (0 = most influential), train_id, train_language, score.
    top_k is capped at the number of training examples.
    """
    test, train = align(test, train)
    w = checkpoint_weights(train, lr_weighting)
    n_ckpt, n_test, n_train = len(train), len(test[0].ids), len(train[0].ids)
    k = min(top_k, n_train)
    inv_train = [_inverse_norms(s, normalize) for s in train]
    inv_test = [_inverse_norms(s, normalize) for s in test]
    n_scores = n_ckpt + (n_ckpt > 1)  # with one checkpoint the sum is that checkpoint
    # Block of bt x bn scores per checkpoint plus the sum and the merge buffers.
    budget = max_block_mb * 2**20 / 4 / (n_scores + 2)
    bt = max(1, min(n_test, 512))
    bn = int(max(k, min(n_train, budget // bt)))
    pos = [[] for _ in range(n_scores)]
    neg = [[] for _ in range(n_scores)]
    for q0 in range(0, n_test, bt):
        q = slice(q0, q0 + bt)
        tq = [te.values[q].float() for te in test]
        scale = [wi * it[q, None] for wi, it in zip(w, inv_test)]
        best_pos: list = [None] * n_scores
        best_neg: list = [None] * n_scores
        for n0 in range(0, n_train, bn):
            n = slice(n0, n0 + bn)
            # Scale the scores, not the sketches: no normalised copies of test or train rows.
            blocks = [(t @ tr.values[n].float().T).mul_(sc).mul_(inv[n]) for t, sc, tr, inv in zip(tq, scale, train, inv_train)]
            if n_ckpt > 1:
                blocks.append(torch.stack(blocks).sum(0))
            for c, b in enumerate(blocks):
                best_pos[c] = _merge(best_pos[c], b, n0, k, largest=True)
                best_neg[c] = _merge(best_neg[c], b, n0, k, largest=False)
        for c in range(n_scores):
            pos[c].append(best_pos[c])
            neg[c].append(best_neg[c])
    labels = [s.checkpoint for s in train] + [SUM]
    frames = []
    for c, label in enumerate(labels):
        src = min(c, n_scores - 1)
        for sign, parts in (("pos", pos[src]), ("neg", neg[src])):
            vals = torch.cat([p[0] for p in parts]).numpy()
            idx = torch.cat([p[1] for p in parts]).numpy()
            frames.append(_frame(test[0], train[0], label, sign, vals, idx))
    return pd.concat(frames, ignore_index=True)


def _frame(test: Sketches, train: Sketches, checkpoint: int, sign: str, vals: np.ndarray, idx: np.ndarray) -> pd.DataFrame:
    """Returns the rows of one (checkpoint, sign): vals, idx [test, k]."""
    n_test, k = vals.shape
    train_ids = np.asarray(train.ids, dtype=object)
    train_langs = np.asarray(train.languages, dtype=object)
    flat = idx.reshape(-1)
    return pd.DataFrame(
        {
            "test_id": np.repeat(np.asarray(test.ids, dtype=object), k),
            "test_language": np.repeat(np.asarray(test.languages, dtype=object), k),
            "checkpoint": np.full(n_test * k, checkpoint, dtype=np.int64),
            "sign": np.full(n_test * k, sign, dtype=object),
            "rank": np.tile(np.arange(k, dtype=np.int64), n_test),
            "train_id": train_ids[flat],
            "train_language": train_langs[flat],
            "score": vals.reshape(-1).astype(np.float32),
        },
        columns=COLUMNS,
    )
