"""Submitting a sweep to a Ray cluster as a Ray job, with the project as its working dir."""
from __future__ import annotations

import shlex
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .tune import ClusterUnreachable
from .workers import WORKER_ENV

PROJECT = Path(__file__).resolve().parents[2]
EXCLUDES = [".venv", ".git", "runs", "*.egg-info", "__pycache__", ".subnet-ray"]


def check_dashboard(address: str, timeout: float = 10.0) -> None:
    """Raises ClusterUnreachable within `timeout` s unless a Ray dashboard answers at `address`."""
    if not address.startswith(("http://", "https://")):
        raise ClusterUnreachable(f"Ray job address {address!r} must be the dashboard URL, e.g. http://HEAD:8265")
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=timeout) as r:
            r.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return  # it answers, with token authentication on (Ray >= 2.59 locally): the job client sends the token
        raise ClusterUnreachable(f"{address} answered HTTP {e.code} to /api/version: is it a Ray dashboard?") from None
    except (urllib.error.URLError, OSError) as e:
        raise ClusterUnreachable(f"Ray dashboard at {address} is unreachable: {getattr(e, 'reason', e)}") from None


def entrypoint(sweep: str, root: str | None, tracking_uri: str | None) -> str:
    """Returns the job's command line: the sweep run with the working dir's own code."""
    path = Path(sweep).resolve()
    try:
        rel = path.relative_to(PROJECT)
    except ValueError:
        raise ValueError(f"sweep file {sweep} must be inside the project ({PROJECT}) so the job's working dir holds it") from None
    cmd = ["python", "-m", "subnet_ray.cli", "run", str(rel), "--quiet", "--address", "auto"]
    if root:
        cmd += ["--root", root]
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    return shlex.join(cmd)


def version_mismatch(client_version: str, cluster_version: str | None, address: str) -> str | None:
    """Returns one line saying that this machine's Ray differs from the cluster's, or None when they agree or the cluster's is unknown."""
    if not cluster_version or cluster_version == client_version:
        return None
    return (f"warning: Ray {client_version} here but {cluster_version} on the cluster at {address}: "
            f"install ray=={cluster_version} here (pyproject.toml pins the version infra/ deploys)")


def submit(sweep: str, address: str, root: str | None = None, tracking_uri: str | None = None, wait: bool = False) -> str:
    """Returns the Ray job id of the submitted sweep; with `wait`, returns once the job has ended (raising if it failed)."""
    check_dashboard(address)
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - Ray raises plain RuntimeError / ConnectionError for refused tokens
        raise ClusterUnreachable(f"Ray dashboard at {address} refused the job client: {e}") from None
    import ray

    # the client read the cluster's version from /api/version when it connected
    if line := version_mismatch(ray.__version__, getattr(client, "_server_ray_version", None), address):
        print(line, file=sys.stderr)
    job = client.submit_job(
        entrypoint=entrypoint(sweep, root, tracking_uri),
        runtime_env={"working_dir": str(PROJECT), "excludes": EXCLUDES, "env_vars": dict(WORKER_ENV)},
    )
    if wait:
        while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            time.sleep(5)
        if status != JobStatus.SUCCEEDED:
            raise RuntimeError(f"Ray job {job} ended {status}; logs:\n{client.get_job_logs(job)[-4000:]}")
    return job
