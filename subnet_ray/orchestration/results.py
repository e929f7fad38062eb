"""Assembles the analysis input (TaskResults) from what the artifact store holds."""
from __future__ import annotations

import json

import pandas as pd

from ..analysis.results import InfluenceResult, TaskResults
from ..sweep.config import SweepSpec
from ..sweep.graph import Node
from ..stages import HISTORY, PREDICTIONS, TOPK, load_masks
from ..storage.store import Store


def _dev_rows(variant: str, history: list[dict]) -> list[dict]:
    return [
        {"variant": variant, "language": lang, "epoch": r["epoch"], "split": "dev", "accuracy": acc}
        for r in history for lang, acc in r["dev_accuracy"].items()
    ]


def collect(store: Store, spec: SweepSpec, nodes: list[Node], seed: int) -> list[TaskResults]:
    """Returns one TaskResults per task of the sweep branch `spec` (no grid) and training seed `seed`, from finished nodes."""
    out = []
    mine = [n for n in nodes if n.params.seed == seed]
    for task in spec.tasks:
        tn = [n for n in mine if n.params.task == task.id]
        sub = next((n for n in tn if n.stage == "subnetworks" and store.done(n.key)), None)
        if sub is None:
            continue
        langs = task.languages
        masks = {l: m.numpy() for l, m in load_masks(store, sub.key, langs).items()}
        random_masks = {
            n.params.random_seed: {l: m.numpy() for l, m in load_masks(store, n.key, langs).items()}
            for n in tn if n.stage == "random_masks" and store.done(n.key)
        }
        curves = pd.read_csv(store.path(sub.key, hashes="small") / "pruning_curves.csv")
        acc_rows = []
        for n in tn:
            if n.stage == "finetune" and store.done(n.key):
                history = json.loads((store.path(n.key, hashes="small") / HISTORY).read_text())
                method = n.params.method
                variant = {"full": "full", "sft": "sft+subnet"}.get(method) or f"random-sft:{n.params.random_seed}"
                acc_rows += _dev_rows(variant, history)
        influence = {}
        for n in tn:
            if n.stage != "influence" or not store.done(n.key):
                continue
            folder = store.path(n.key, hashes="small")
            preds = pd.read_parquet(folder / PREDICTIONS)
            last = preds["checkpoint"].max()
            acc = preds.assign(correct=preds["label"] == preds["pred"]).groupby(["test_language", "checkpoint"])["correct"].mean()
            acc_rows += [
                {"variant": n.params.variant, "language": lang, "epoch": int(ck), "split": "test", "accuracy": float(a)}
                for (lang, ck), a in acc.items()
            ]
            final = preds[preds["checkpoint"] == last][["test_id", "test_language", "label", "pred"]].reset_index(drop=True)
            influence[n.params.variant] = InfluenceResult(topk=pd.read_parquet(folder / TOPK), predictions=final)
        out.append(TaskResults(
            task=task.id, languages=list(langs), masks=masks, random_masks=random_masks, pruning_curves=curves,
            accuracy=pd.DataFrame(acc_rows, columns=["variant", "language", "epoch", "split", "accuracy"]), influence=influence,
            threshold=spec.subnetworks.threshold, step_fraction=spec.subnetworks.step_fraction,
        ))
    return out

