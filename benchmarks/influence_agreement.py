"""The two influence engines at the paper's pair count: do their top-k tables agree, and with the truth?

Runs a sweep (default benchmarks/sweeps/influence_paper_shape.yaml: 10K training x 2,500 test
examples, full + SFT + random-SFT, `influence.actors: 2`) with the Ray executor, so its influence
wave runs on Ray Data (orchestration/influence_ray.py); copies that root's finished outputs except
influence into a second root and runs it with `--executor local`, so the same checkpoints and masks
are scored by the single-process engine (influence/pipeline.py). Then, per influence variant:
- agreement of the two tables: the share of (test, checkpoint, sign, rank) rows naming the same
  training example (ties at equal scores may swap two), the largest score difference on those rows,
  both also per test language;
- the truth: for `--sample` test examples per variant and test language, the summed TracIn score
  against every training example computed directly (sketch_batch on the example alone, training
  examples in batches of 7 in id order, the language's mask applied; cosine per checkpoint in
  float64, summed), independent of both engines' batching, ordering and mask assignment; each
  table's top-k scores of those examples must equal the direct top-k scores.

Prints one JSON line per variant and a last line {"summary": ...} with the worst values and whether
every table is within 1e-4 of the other and of the truth. The two runs take ~40 min on 2 idle cores.

Run: .venv/bin/python benchmarks/influence_agreement.py [--sweep FILE] [--work DIR] [--sample N] [--reuse]
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from subnet_ray.sweep.config import load_sweep
from subnet_ray.sweep.graph import Stage, branch_of, graph
from subnet_ray.influence.projection import Projector
from subnet_ray.influence.sketch import select_linears, sketch_batch
from subnet_ray.models.classifier import load_checkpoint
from subnet_ray.stages import TOPK, model_factory, resolve_mask, task_data
from subnet_ray.storage.store import store_for
from subnet_ray.data.tokenization import encode
from subnet_ray.train.finetune import checkpoints

HERE = Path(__file__).resolve().parent
KEY = ["test_id", "checkpoint", "sign", "rank"]


def run(sweep: Path, root: Path, executor: str) -> float:
    """Returns the seconds `subnet-ray run` took on `root` with `executor`; raises with its stderr tail if it failed."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "subnet_ray.cli", "run", str(sweep), "--root", str(root), "--executor", executor,
                           "--quiet"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"run --executor {executor} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Returns the share of rows naming the same training example and the largest score difference, overall and per test language."""
    m = a.merge(b, on=KEY, suffixes=("_a", "_b"), how="outer", indicator=True)
    both = m[m["_merge"] == "both"]
    same = both.train_id_a == both.train_id_b
    return {"rows": len(a), "rows_other": len(b), "rows_unmatched": int((m["_merge"] != "both").sum()),
            "same_train_id": round(float(same.mean()), 5), "max_score_diff": float((both.score_a - both.score_b).abs().max()),
            "by_language": {lang: round(float(s.mean()), 4) for lang, s in same.groupby(both.test_language_a)}}


def truth(spec, store, nodes, sample: int, tables: dict[str, dict[str, pd.DataFrame]]) -> dict[str, dict]:
    """Returns node key -> per engine the largest difference between its top-k scores and the directly computed ones on
    `sample` test examples per test language, and the share of the direct top-k training examples it holds.

    Test examples are grouped by (fine-tuned model, mask), so each model's training set is sketched once per distinct mask.
    """
    from subnet_ray.influence.pipeline import mask_key

    groups: dict[tuple, list] = {}  # (model key, mask key) -> [(node, test example)], plus the mask and the branch
    rng = np.random.default_rng(0)
    for node in nodes:
        b = branch_of(spec, node.params.branch)
        task, data, tok = task_data(b, node.params.task)
        model = model_factory(b, task, tok, node.params.seed)()
        for lang, ref in node.params.masks.items():
            mask = resolve_mask(store, ref, (model.num_layers, model.num_heads))
            mask = None if mask is None else mask.float()
            tests = [e for e in data["test"] if e.language == lang][: b.influence.test_per_language]
            pick = [tests[i] for i in sorted(rng.choice(len(tests), min(sample, len(tests)), replace=False))]
            g = groups.setdefault((node.params.model, mask_key(mask)), {"mask": mask, "node": node, "tests": []})
            g["tests"] += [(node, e) for e in pick]
    out = {n.key: {f"truth_max_diff_{name}": 0.0 for name in next(iter(tables.values()))} | {"_overlap": {}} for n in nodes}
    for (model_key, _), g in groups.items():
        node, mask = g["node"], g["mask"]
        b = branch_of(spec, node.params.branch)
        task, data, tok = task_data(b, node.params.task)
        model = model_factory(b, task, tok, node.params.seed)().eval()
        ins, train = b.influence, data["train"]
        projector = Projector(ins.proj_dim, ins.projection_seed) if ins.proj_dim else None
        linears = select_linears(model, ins.layers)
        exs = [e for _, e in g["tests"]]
        total = torch.zeros(len(exs), len(train), dtype=torch.float64)
        for c in checkpoints(store.path(model_key)):
            meta = load_checkpoint(model, c)
            w = float(meta["lr_mean"]) if ins.lr_weighting else 1.0

            def sketches(examples, size):
                return torch.cat([sketch_batch(model, encode(examples[i : i + size], tok, b.training.max_length), linears, projector, mask)
                                  for i in range(0, len(examples), size)]).double()

            total += w * F.normalize(sketches(exs, 1), dim=1) @ F.normalize(sketches(train, 7), dim=1).T
        for j, (n, e) in enumerate(g["tests"]):
            for sign, largest in (("pos", True), ("neg", False)):
                want = total[j].topk(min(ins.top_k, len(train)), largest=largest)
                ids = {train[i].id for i in want.indices.tolist()}
                for name, tab in tables[n.key].items():
                    got = tab[(tab.test_id == e.id) & (tab.checkpoint == -1) & (tab.sign == sign)].sort_values("rank")
                    diff = float(np.abs(got.score.to_numpy() - want.values.numpy()).max())
                    out[n.key][f"truth_max_diff_{name}"] = max(out[n.key][f"truth_max_diff_{name}"], diff)
                    out[n.key]["_overlap"].setdefault(name, []).append(len(ids & set(got.train_id)) / len(ids))
    for v in out.values():
        v |= {f"truth_topk_overlap_{name}": round(float(np.mean(o)), 4) for name, o in v.pop("_overlap").items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", type=Path, default=HERE / "sweeps" / "influence_paper_shape.yaml")
    p.add_argument("--work", type=Path, default=Path("/tmp/influence_agreement"))
    p.add_argument("--sample", type=int, default=2, help="test examples per variant and language checked against the direct computation")
    p.add_argument("--reuse", action="store_true", help="compare the roots under --work as they are (no runs)")
    a = p.parse_args()
    torch.set_num_threads(1)
    spec = load_sweep(a.sweep)
    ray_root, local_root = a.work / "ray_data", a.work / "single_process"
    seconds = {}
    if not a.reuse:
        shutil.rmtree(a.work, ignore_errors=True)
        seconds["ray_data_run_s"] = round(run(a.sweep, ray_root, "ray"), 1)
        shutil.copytree(ray_root / "store", local_root / "store", ignore=shutil.ignore_patterns("influence", "_ledger", "_leases", "_partial"))
        seconds["single_process_influence_s"] = round(run(a.sweep, local_root, "local"), 1)
    stores = {"ray_data": store_for(ray_root), "single_process": store_for(local_root)}
    nodes = [n for n in graph(spec) if n.stage == Stage.INFLUENCE]
    tables = {n.key: {name: pd.read_parquet(s.path(n.key) / TOPK) for name, s in stores.items()} for n in nodes}
    checked = truth(spec, stores["single_process"], nodes, a.sample, tables) if a.sample else {}
    worst = {"same_train_id": 1.0, "max_score_diff": 0.0, "truth_max_diff": 0.0}
    for node in nodes:
        line = {"variant": node.params.variant} | agreement(tables[node.key]["ray_data"], tables[node.key]["single_process"])
        line |= checked.get(node.key, {})
        worst["same_train_id"] = min(worst["same_train_id"], line["same_train_id"])
        worst["max_score_diff"] = max(worst["max_score_diff"], line["max_score_diff"])
        worst["truth_max_diff"] = max([worst["truth_max_diff"]] + [v for k, v in line.items() if k.startswith("truth_max_diff")])
        print(json.dumps(line), flush=True)
    ok = worst["max_score_diff"] <= 1e-4 and worst["truth_max_diff"] <= 1e-4
    print(json.dumps({"summary": worst | seconds | {"within_1e-4": ok, "sweep": str(a.sweep)}}), flush=True)


if __name__ == "__main__":
    main()
