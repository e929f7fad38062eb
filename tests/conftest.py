"""Shared test set-up: single-threaded torch, passive OpenMP, and tiny fixtures."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

import fcntl  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
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


# --- both cores: `pytest -n 2` (pytest-xdist) ---------------------------------------------------------------------
# Run serially, most tests keep one core busy: two workers take 0.6 of the serial time (21 vs 35 min on 2 cores;
# the CPUs were busy 92% of the run). Three rules keep that safe and balanced:
# 1. a file goes whole to one worker, so its module fixtures (the demo run, the Slurm cluster) are built once;
# 2. the files that take longest go first (their seconds in a -n 2 run on 2 cores, 2026-12-07), so that the end of
#    the run is small files on both workers, not one long file on one while the other idles;
# 3. a test marked `alone` (it times CPU work) runs while the other worker is between files: each worker holds a
#    shared lock from a file's first test to its last (module fixtures' services, such as a Ray head, live that
#    long), an `alone` test an exclusive one. Files with such tests go last, so that the wait is for the other
#    worker's last file.
FILE_SECONDS = {
    "test_slurm.py": 290, "test_demo.py": 274, "test_sweep.py": 262, "test_machine_faults.py": 249,
    "test_faults.py": 228, "test_influence.py": 220, "test_compare_runs.py": 123, "test_submit.py": 116,
    "test_live_metrics.py": 96, "test_estimate.py": 94, "test_services_infra.py": 65, "test_architecture_sweeps.py": 62,
    "test_runs_view.py": 53, "test_analysis.py": 45, "test_gpu_check.py": 30, "test_preflight.py": 27,
}


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False  # keep the order of rule 2, not xdist's "most tests first"
    return LoadFileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker sorts alike; a serial run keeps the files' order
        alone = {item.path for item in items if item.get_closest_marker("alone")}
        items.sort(key=lambda item: (item.path in alone, -FILE_SECONDS.get(item.path.name, 0)))


_LOCK: dict = {}  # this worker's open lock file ("file") and the test file it holds the lock for ("for")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest -n, rule 3: flock on one file per run, shared for a whole test file, exclusive for an `alone` test."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        yield
        return
    if "file" not in _LOCK:
        _LOCK["file"] = open(Path(tempfile.gettempdir()) / f"subnet-ray-tests-{run}.lock", "a")  # noqa: SIM115 - held for the run
    lock = _LOCK["file"]
    alone = item.get_closest_marker("alone") is not None
    if alone or _LOCK.get("for") != item.path:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)  # a held lock is converted
        _LOCK["for"] = item.path
    yield
    if nextitem is None or nextitem.path != item.path:  # the file's last test: its module fixtures are torn down
        fcntl.flock(lock, fcntl.LOCK_UN)
        _LOCK["for"] = None
    elif alone and not nextitem.get_closest_marker("alone"):  # (another `alone` test next: it keeps the lock)
        fcntl.flock(lock, fcntl.LOCK_SH)
