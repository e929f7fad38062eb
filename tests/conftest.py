"""Shared test set-up: single-threaded torch, passive OpenMP, and tiny fixtures."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

import shutil  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@dataclass(frozen=True)
class SmokeRun:
    """One undisturbed local run of sweeps/smoke.yaml, named `clean` (tiny.smoke_sweep)."""

    sweep: Path  # the sweep file
    spec: object  # its SweepSpec
    root: Path  # the run's root: store/, mlflow.db, mlartifacts/, reports/
    run: object  # the SweepRun it returned

    def copy(self, dest: Path) -> Path:
        """Returns `dest`, a copy of the whole root (store, MLflow store, artifacts, reports), for a test that changes it."""
        shutil.copytree(self.root, dest)
        return dest


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """The smoke sweep run once per session with the local executor (about 40 s): every test that needs a clean run's
    outputs shares it; one that changes a root works on `smoke_run.copy(...)`, never on `smoke_run.root`."""
    from subnet_ray.orchestration.runner import run_sweep
    from subnet_ray.sweep.config import load_sweep
    from tiny import smoke_sweep

    d = tmp_path_factory.mktemp("smoke_run")
    sweep = d / "clean.yaml"
    sweep.write_text(smoke_sweep("clean"))
    spec = load_sweep(sweep)
    return SmokeRun(sweep, spec, d / "root", run_sweep(spec, d / "root", executor="local", progress=False))


@pytest.fixture(scope="session")
def synthetic_report(tmp_path_factory):
    """Returns (results, folder, summary, figure records) of the report on `test_analysis.make_synthetic_results()`
    with `test_report_style.PROVENANCE`, written once per session (every figure at the report's dpi, about 11 s of
    CPU): the tests that read a full synthetic report share it and never change it."""
    from subnet_ray.analysis.report import write_report
    from test_analysis import make_synthetic_results
    from test_report_style import PROVENANCE

    out = tmp_path_factory.mktemp("synthetic_report")
    t = make_synthetic_results()
    summary, records = write_report([t], out, "synthetic", provenance=PROVENANCE)
    return t, out, summary, records
