"""Where a report came from: the sweep, its resolved settings, seeds, package and code versions, date, MLflow runs."""
from __future__ import annotations

import subprocess
import time
from importlib import metadata
from pathlib import Path

from ..sweep.config import SweepSpec

PACKAGES = ("subnet-ray", "torch", "transformers", "numpy", "pandas", "ray", "mlflow", "matplotlib")


def package_versions() -> dict[str, str]:
    """Returns the installed version of each package the results depend on ('not installed' if absent)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def code_version() -> str:
    """Returns `git describe --always --dirty` of the package's checkout, else the installed package version."""
    here = Path(__file__).resolve().parent
    try:
        got = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        if got.returncode == 0 and got.stdout.strip():
            return f"git {got.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass  # no git, or not a checkout: the package version is all we know
    return f"subnet-ray {package_versions()['subnet-ray']}"


def provenance(spec: SweepSpec, branch: SweepSpec, values: dict, seed: int, runs: dict[str, dict]) -> dict:
    """Returns the report header of one branch and seed: sweep, grid values, model, settings, seeds,
    versions, date (UTC) and MLflow runs (trial -> {name, run_id, url})."""
    return {
        "sweep": spec.name,
        "sweep_file": f"sweeps/{spec.name}.yaml",  # relative to the root (runner.save_sweep)
        "branch": values,
        "model": branch.model.model_dump(mode="json"),
        "settings": {k: branch.model_dump(mode="json")[k] for k in ("training", "subnetworks", "influence", "analysis", "methods")},
        "tasks": [t.model_dump(mode="json") for t in branch.tasks],
        "seed": seed,
        "random_seeds": list(branch.random_seeds),
        "packages": package_versions(),
        "code_version": code_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "mlflow_runs": runs,
    }
