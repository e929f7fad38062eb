"""benchmarks/gpu_check.py runs on CPU at tiny shapes, with and without the config layer installed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Runs the script as on the GPU machines: no pydantic, ray, mlflow or datasets importable.
BARE = ("import sys, runpy; [sys.modules.__setitem__(m, None) for m in ('pydantic', 'ray', 'mlflow', 'datasets')]; "
        "sys.argv = ['gpu_check.py'] + sys.argv[1:]; runpy.run_path(%r, run_name='__main__')")


def lines(cmd: list[str]) -> list[dict]:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_gpu_check_runs_without_pydantic_ray_mlflow_and_says_why_it_skips_the_sweep():
    got = lines([sys.executable, "-c", BARE % str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--quick"])
    kinds = [(l["benchmark"], l.get("precision")) for l in got]
    for p in ("fp32", "tf32", "bf16"):
        assert ("gpu_train_step", p) in kinds and ("gpu_sketch", p) in kinds
    assert all(l["examples_per_s"] > 0 for l in got if "examples_per_s" in l)
    agree = {l["precision"]: l for l in got if l["benchmark"] == "gpu_sketch_agreement"}
    assert agree["bf16"]["spearman_min"] >= 0.99 and agree["tf32"]["spearman_min"] == 1.0  # tf32 is fp32 on CPU
    decoder = {l["precision"]: l for l in got if l["benchmark"] == "gpu_decoder"}
    for p, d in decoder.items():  # the mask matters, equals zeroing the heads' o_proj columns; strict SFT keeps them
        # (with the k/v rows of a wholly disabled GQA group) and trains every row an enabled head owns
        assert d["masked_vs_unmasked_max_abs"] > 1e-3 and d["sft_disabled_heads_unchanged"] is True, d
        assert d["sft_enabled_heads_changed"] is True and d["sketch_cos_vs_zeroed_min"] > 0.99, d
    assert decoder["fp32"]["masked_vs_zeroed_max_abs"] < 1e-5 and decoder["bf16"]["masked_vs_zeroed_max_abs"] < 2e-2
    assert decoder["fp32"]["logits_vs_cpu_fp32_max_abs"] == 0.0 and decoder["fp32"]["sft_params_vs_cpu_max_abs"] == 0.0  # CPU vs CPU
    assert decoder["fp32"]["sketch_cos_vs_cpu_min"] == 1.0 and decoder["fp32"]["sketch_cos_vs_zeroed_min"] > 0.9999 and decoder["bf16"]["sketch_cos_vs_cpu_min"] > 0.99
    assert got[-1]["benchmark"] == "gpu_smoke_sweep" and "pydantic is not installed" in got[-1]["skipped"]


@pytest.mark.slow
def test_gpu_check_runs_the_smoke_sweep_end_to_end(tmp_path):
    got = lines([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--quick"])
    sweep = got[-1]
    assert sweep["benchmark"] == "gpu_smoke_sweep" and sweep["device"] == "cpu", sweep
    from subnet_ray.sweep.config import load_sweep
    from subnet_ray.sweep.graph import graph

    assert sweep["nodes_computed"] == len(graph(load_sweep(ROOT / "sweeps" / "smoke.yaml")))
    assert sweep["report"] is True
