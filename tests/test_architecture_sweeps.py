"""The whole sweep (full, SFT, random-SFT, influence, report, MLflow) on a user's local model
directory of a current encoder (DeBERTa-v2, as mDeBERTa-v3) and a decoder with grouped-query
attention (Qwen3), written with save_pretrained plus a tokenizer over babel's vocabulary."""
import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from subnet_ray.cli import main
from subnet_ray.data.examples import load_examples, tokenizer_for
from subnet_ray.models.architectures import save_tiny_model
from subnet_ray.models.classifier import build_model, load_checkpoint
from subnet_ray.storage.store import store_for
from subnet_ray.sweep.config import load_sweep
from subnet_ray.sweep.graph import graph
from subnet_ray.train.finetune import checkpoints, evaluate
from tiny import smoke_sweep

TINY_LINE = "name: tiny\n  tiny: {layers: 2, heads: 4, hidden: 32, intermediate: 64, max_positions: 32}"


def model_sweep(tmp_path: Path, model_type: str) -> Path:
    """Returns the smoke sweep's file with model.name a fresh local directory of a tiny `model_type`."""
    plain = tmp_path / "plain.yaml"
    plain.write_text(smoke_sweep("plain"))
    folder = tmp_path / f"my-{model_type}"
    tokenizer = tokenizer_for(load_sweep(plain).tasks[0])  # babel's vocabulary, as the tiny model's
    save_tiny_model(model_type, tokenizer, folder, layers=2, heads=4, kv_heads=2, hidden=32, intermediate=64, max_positions=64)
    sweep = tmp_path / f"{model_type}.yaml"
    sweep.write_text(smoke_sweep(f"arch-{model_type}", (TINY_LINE, f"name: {folder}")))
    return sweep


@pytest.mark.slow  # ~70-100 s each on 2 busy cores
@pytest.mark.parametrize("model_type", ["deberta-v2", "qwen3"])
def test_whole_sweep_on_a_local_model_directory(model_type, tmp_path):
    sweep = model_sweep(tmp_path, model_type)
    root = tmp_path / "root"
    assert main(["run", str(sweep), "--root", str(root), "--executor", "local"]) == 0  # preflight included
    spec = load_sweep(sweep)
    store = store_for(root)
    nodes = graph(spec)
    assert all(store.done(n.key) for n in nodes)
    assert {n.stage for n in nodes} >= {"finetune", "subnetworks", "random_masks", "influence"}

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == ["full s1", "rsft s1 r1", "sft s1"]
    full = children["full s1"]
    assert full.data.params["model.name"] == spec.model.name
    mask = np.load(root / "mlartifacts" / spec.name / full.info.run_id / "artifacts" / "masks" / "xa" / "mask.npy")
    assert mask.shape == (2, 4) and 0 < mask.sum() <= 8  # query heads: the mask switches 4 per layer, GQA or not

    report = next((root / "reports").rglob("summary.json"))
    summary = json.loads(report.read_text())
    assert {"accuracy", "heads_disabled", "comparisons"} <= set(summary)

    # the last full checkpoint, rebuilt from the directory, reproduces the logged dev accuracy, with
    # length bucketing or without (a decoder's logits must not depend on its batch-mates' padding)
    task = spec.tasks[0]
    node = next(n for n in nodes if n.stage == "finetune" and n.trial == "babel/full/seed1")
    model = build_model(spec.model, num_labels=2)
    load_checkpoint(model, checkpoints(store.path(node.key))[-1])
    dev = [e for e in load_examples(task, "dev") if e.language == "xa"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.model.name)
    bucketed = evaluate(model, dev, tok, spec.training.max_length, batch_size=5)
    plain = evaluate(model, dev, tok, spec.training.max_length, batch_size=5, bucket=False)
    assert bucketed["preds"] == plain["preds"] and abs(bucketed["loss"] - plain["loss"]) < 1e-5
    logged = client.get_metric_history(full.info.run_id, "dev_accuracy/xa")
    assert len(logged) == 2 and logged[-1].value == pytest.approx(bucketed["accuracy"])
