"""Comparing runs end to end on a gridded smoke sweep (two learning rates): what MLflow holds per child
run, one run per thing across invocations, a moved root that keeps its artifacts, the runs table in a
real browser, and `subnet-ray compare` over two sweeps in one root."""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from procs import free_port
from subnet_ray.cli import main
from subnet_ray.sweep.config import load_sweep
from subnet_ray.orchestration.runner import run_sweep
from subnet_ray.orchestration.tracking_store import TrackingUnreachable, check_tracking_uri, default_tracking_uri, start_ui, stop_ui
from tiny import smoke_sweep

LRS = ("0.003", "0.001")
GRID = smoke_sweep("gridsmoke", ("resources:", f"grid: {{training.lr: [{', '.join(LRS)}]}}\nresources:"))
# a second sweep sharing the first branch's fine-tuning: only its subnetworks and influence are new
OTHER = smoke_sweep("othersmoke", ("methods: [full, sft, random-sft]", "methods: [full]"),
                    ("threshold: 0.9", "threshold: 0.8"))
ARTIFACTS = Path(os.environ.get("SUBNET_RAY_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / ".test-artifacts"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _runs(root: Path, sweep: str) -> list:
    c = MlflowClient(default_tracking_uri(root))
    return c.search_runs([c.get_experiment_by_name(sweep).experiment_id], max_results=1000)


def _children(runs):
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A root with the gridded sweep run twice and then given a new random seed, and a second sweep; then moved."""
    base = tmp_path_factory.mktemp("compare")
    root = base / "root"
    files = {}
    for name, text in (("gridsmoke", GRID), ("othersmoke", OTHER)):
        files[name] = base / f"{name}.yaml"
        files[name].write_text(text)
    spec = load_sweep(files["gridsmoke"])
    first = run_sweep(spec, root, executor="local", progress=False)
    after_first = {r.info.run_id: r for r in _runs(root, "gridsmoke")}
    again = run_sweep(spec, root, executor="local", progress=False)
    after_second = {r.info.run_id: r for r in _runs(root, "gridsmoke")}
    more = run_sweep(spec, root, executor="local", progress=False, random_seeds=[2])
    after_random = {r.info.run_id: r for r in _runs(root, "gridsmoke")}
    run_sweep(load_sweep(files["othersmoke"]), root, executor="local", progress=False)
    return {"base": base, "root": root, "files": files, "first": first, "again": again, "more": more,
            "after_first": after_first, "after_second": after_second, "after_random": after_random}


@pytest.mark.slow
def test_children_carry_settings_and_results_and_a_rerun_adds_no_run(world):
    runs = world["after_first"]
    children = _children(runs.values())
    parents = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(children) == 6  # full, sft, random-sft x two learning rates
    names = [r.info.run_name for r in children]
    assert len(set(names)) == len(names) and all(len(n) < 40 for n in names)
    assert sorted(names) == sorted(f"lr={lr} {m}" for lr in LRS for m in ("full s1", "sft s1", "rsft s1 r1"))
    for r in children:
        lr = r.info.run_name.split()[0].removeprefix("lr=")
        p, m = r.data.params, r.data.metrics
        # the branch's own setting, and the settings it shares with the other branch, are params of the child
        assert float(p["training.lr"]) == float(lr) and float(p["grid.training.lr"]) == float(lr)
        assert p["training.epochs"] == "2" and p["subnetworks.threshold"] == "0.9" and p["influence.proj_dim"] == "16"
        assert p["model.tiny.layers"] == "2" and p["tasks.0.train_size"] == "40" and p["seed"] == "1"
        assert p["method"] == r.data.tags["method"]
        langs = ("xa", "xb", "ya")
        for key in ("test_accuracy", "share_in_pos", "share_in_neg", "heads_disabled"):
            assert all(f"{key}/{lang}" in m for lang in langs), (r.info.run_name, key)
        # a change needs test examples both models classify correctly: a language with none (n = 0 on
        # this 12-example tiny task) has no change metric, and the mean is over the languages that have one
        changes = [m[f"change_in_pos/{lang}"] for lang in langs if f"change_in_pos/{lang}" in m]
        assert not changes or m["change_in_pos_mean"] == pytest.approx(sum(changes) / len(changes)), r.info.run_name
        acc = [m[f"test_accuracy/{lang}"] for lang in langs]
        assert m["test_accuracy_mean"] == pytest.approx(sum(acc) / 3)
        assert all(0 <= a <= 1 for a in acc) and all(0 <= m[f"share_in_pos/{lang}"] <= 100 for lang in langs)
        assert all(m[f"heads_disabled/{lang}"] == 7 for lang in langs)  # threshold 0.9 on this tiny task
        assert "train_loss" in m and "dev_accuracy/xa" in m
    full = next(r for r in children if r.info.run_name == f"lr={LRS[0]} full s1")
    # the full model's change is Fig 2's diagonal: its subnetwork against itself unmasked
    assert full.data.metrics["change_in_pos_mean"] == full.data.metrics["full+subnet/change_in_pos_mean".replace("+", "_")]

    # a second invocation of the same sweep computes nothing and adds no run, parent or child
    assert world["again"].computed == []
    assert set(world["after_second"]) == set(runs)
    c = MlflowClient(default_tracking_uri(world["root"]))
    assert len(c.get_metric_history(full.info.run_id, "train_loss")) == 2  # one per epoch, not repeated
    assert len(c.get_metric_history(full.info.run_id, "test_accuracy_mean")) == 1

    # rerun-random adds the new random seed's runs only, under the same parent
    added = [world["after_random"][k] for k in set(world["after_random"]) - set(runs)]
    assert sorted(r.info.run_name for r in added) == sorted(f"lr={lr} rsft s1 r2" for lr in LRS)
    assert {r.data.tags["mlflow.parentRunId"] for r in added} == {parents[0].info.run_id}
    note = world["after_random"][parents[0].info.run_id].data.tags["mlflow.note.content"]
    assert all(r.info.run_id in note for r in _children(world["after_random"].values()))


@pytest.mark.slow
def test_moved_root_keeps_artifacts_and_the_browser_shows_the_runs(world, tmp_path):
    moved = world["base"] / "elsewhere" / "root"
    moved.parent.mkdir()
    shutil.move(world["root"], moved)
    port = free_port()
    proc = start_ui(moved, port=port)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # ~40 s on a busy 2-core machine
        while True:
            try:
                check_tracking_uri(uri, timeout=5)
                break
            except TrackingUnreachable:
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow ui did not come up"
                time.sleep(0.5)
        c = MlflowClient(uri)
        exp = c.get_experiment_by_name("gridsmoke")
        runs = c.search_runs([exp.experiment_id], max_results=1000)
        assert len(runs) == 9
        for r in runs:
            top = [a.path for a in c.list_artifacts(r.info.run_id)]
            assert top, f"run {r.info.run_name} lists no artifacts after the move"
        full = next(r for r in runs if r.info.run_name == f"lr={LRS[0]} full s1")
        masks = {a.path for a in c.list_artifacts(full.info.run_id, "masks/xa")}
        assert masks == {"masks/xa/mask.npy", "masks/xa/mask.json", "masks/xa/mask.png", "masks/xa/heads.json"}
        heads = json.loads(Path(c.download_artifacts(full.info.run_id, "masks/xa/heads.json", str(tmp_path))).read_text())
        assert heads["heads_disabled"] == len(heads["disabled"]) == 7 and len(heads["mask"]) == 2
        on_disk = list((moved / "mlartifacts").rglob("*"))
        assert on_disk and not [p for p in on_disk if p.name == "_SUCCESS"]
        parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
        assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"gridsmoke.yaml", "report", "runs.json"}
        _browser_shows_runs(uri, exp.experiment_id, [r.info.run_name for r in _children(runs)], tmp_path)
    finally:
        stop_ui(proc)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (the README's test command does it)")
    return path


def _browser_shows_runs(uri: str, experiment_id: str, names: list[str], tmp_path: Path) -> None:
    # MLflow 3 nests children under their parent unless the table is sorted by something other than
    # date, and opens in GenAI mode unless told the workflow type: this URL lands on the flat runs table.
    url = f"{uri}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&orderByKey=attributes.run_name&orderByAsc=true"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "mlflow_runs_table.png"
    for extra in (["--dump-dom"], [f"--screenshot={shot}", "--window-size=1600,1000"]):
        profile = tmp_path / f"chrome-{extra[0][2:8]}"
        profile.mkdir()
        got = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000",
                              *extra, url], capture_output=True, text=True, timeout=180)
        assert got.returncode == 0, got.stderr[-2000:]
        if extra == ["--dump-dom"]:
            missing = [n for n in names if f">{n}<" not in got.stdout]
            assert not missing, f"runs table lacks {missing}"
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_compare_two_sweeps_in_all_formats(world, tmp_path, capsys):
    root = world["root"] if world["root"].exists() else world["base"] / "elsewhere" / "root"
    assert (root / "sweeps" / "gridsmoke.yaml").is_file() and (root / "sweeps" / "othersmoke.yaml").is_file()
    out = tmp_path / "tables"
    assert main(["compare", str(root), "--format", "all", "--out", str(out)]) == 0
    overview = pd.read_csv(out / "overview.csv")
    assert list(zip(overview["sweep"], overview["branch"])) == [
        ("gridsmoke", "lr=0.003"), ("gridsmoke", "lr=0.001"), ("othersmoke", "-")]
    assert (overview["status"] == "done").all() and (overview["stages_done"] == overview["stages"]).all()
    # the headline numbers are the child runs' metrics
    runs = {r.info.run_name: r for r in world["after_random"].values()}
    for lr in LRS:
        row = overview[overview["branch"] == f"lr={lr}"].iloc[0]
        m = runs[f"lr={lr} full s1"].data.metrics
        assert row["acc_full_pct"] == pytest.approx(100 * m["test_accuracy_mean"])
        assert row["change_full_subnet_pts"] == pytest.approx(m["change_in_pos_mean"])
        assert row["acc_sft_subnet_pct"] == pytest.approx(100 * runs[f"lr={lr} sft s1"].data.metrics["test_accuracy_mean"])
    other = overview[overview["sweep"] == "othersmoke"].iloc[0]
    assert pd.isna(other["acc_sft_subnet_pct"])  # no sft in that sweep: n/a, not 0
    t1 = pd.read_csv(out / "table1.csv")
    assert len(t1) == 3 and set(t1.columns) >= {"sweep", "branch", "xa", "xb", "ya", "total_heads"}
    md = (out / "table2.md").read_text().splitlines()
    assert md[0].startswith("| sweep | branch | seed | task | language |") and len(md) == 2 + 3 * 3
    assert "| othersmoke | - | 1 | babel | xa |" in md[-3] and "n/a" in md[-3]
    tex = (out / "table1.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "\\label{tab:disabled-heads}" in tex
    assert tex.count("\\\\") == 1 + 3 and "lr=0.003" in tex and "total\\_heads" in tex
    # naming one sweep compares only that one; a wrong name is one clear line
    capsys.readouterr()
    assert main(["compare", str(root), "othersmoke", "--format", "csv"]) == 0
    assert "gridsmoke" not in capsys.readouterr().out
    assert main(["compare", str(root), "nosuch"]) == 2
    assert "sweep 'nosuch'" in capsys.readouterr().err


@pytest.mark.slow
def test_child_runs_carry_their_reports_correlations_and_verdicts(world):
    """After the sweep, each branch's child runs hold its report's correlations (of the variants their model scores)
    and its verdicts, under the names the README lists, read back from the SQLite store."""
    from subnet_ray.analysis.headline import correlation_key, model_of, verdict_model

    root = world["root"] if world["root"].exists() else world["base"] / "elsewhere" / "root"
    runs = {r.info.run_name: r.data for r in world["after_random"].values()}
    for lr in LRS:
        summary = json.loads((root / "reports" / "gridsmoke" / f"lr{lr}-seed1" / "summary.json").read_text())
        model_run = {"full": runs[f"lr={lr} full s1"], "sft": runs[f"lr={lr} sft s1"],
                     **{f"random-sft:{r}": runs[f"lr={lr} rsft s1 r{r}"] for r in (1, 2)}}
        assert summary["correlations"]
        for c in summary["correlations"]:
            run, key = model_run[model_of(c["variant"])], correlation_key(c)
            assert run.metrics[f"{key}/n"] == c["n"], c
            for m in ("pearson", "spearman"):  # smoke's are often undefined (constant accuracy): then not logged
                if c[f"{m}_r"] is None:
                    assert f"{key}/{m}_r" not in run.metrics, c
                else:
                    assert run.metrics[f"{key}/{m}_r"] == pytest.approx(c[f"{m}_r"]), c
        effects = summary["effects"]["babel"]
        for finding, verdict in effects["checks"].items():
            run = model_run[verdict_model(finding, effects["evidence"].get(finding))]
            assert run.tags[f"verdict/{finding}"] == (verdict or "null"), finding
