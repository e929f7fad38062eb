"""Submitting a sweep as a Slurm batch job: a Ray cluster on the allocation's nodes, the sweep's driver on the first.

The batch script is `infra/slurm/subnet-ray.sbatch` with its `#SBATCH` lines and settings filled
in; the filled copy is kept under the root (`<root>/slurm/<sweep>.sbatch`), beside the job's log.
Submitting the same command again resumes the sweep from the store.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .jobs import PROJECT

TEMPLATE = PROJECT / "infra" / "slurm" / "subnet-ray.sbatch"
# Slurm's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}")
NAME = re.compile(r"[A-Za-z0-9_.,-]+")  # partition (a comma list) and account names; nothing a shell would read


class SlurmError(ValueError):
    """A Slurm submission that cannot be carried out (bad option, no sbatch, sbatch refused); one line."""


@dataclass(frozen=True)
class SlurmJob:
    """What the batch job asks Slurm for."""

    nodes: int  # nodes in the allocation: the first runs the Ray head and the driver, every one runs trials
    cpus_per_node: int  # CPUs Ray offers on each node (one task per node, this many CPUs per task)
    gpus_per_node: int  # GPUs per node (0: none requested)
    time: str  # wall-clock limit in Slurm's form, e.g. 04:00:00 or 1-12:00:00
    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None  # None: the user's default account

    @classmethod
    def for_sweep(cls, spec, nodes: int, cpus: int | None, gpus: int | None, time: str, partition: str | None,
                  account: str | None) -> "SlurmJob":
        """Returns the job for `spec`; CPUs and GPUs per node default to what one trial asks for."""
        return cls(nodes, math.ceil(spec.resources.cpus) if cpus is None else cpus,
                   math.ceil(spec.resources.gpus) if gpus is None else gpus, time, partition, account)


def check(job: SlurmJob, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Raises SlurmError naming the option unless Slurm could run `job` and one trial fits on a node."""
    if job.nodes < 1:
        raise SlurmError(f"--nodes {job.nodes}: expected at least 1")
    if job.cpus_per_node < 1:
        raise SlurmError(f"--cpus-per-node {job.cpus_per_node}: expected at least 1")
    if job.gpus_per_node < 0:
        raise SlurmError(f"--gpus-per-node {job.gpus_per_node}: expected 0 or more")
    if not TIME.fullmatch(job.time):
        raise SlurmError(f"--time {job.time!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
    for option, value in (("--partition", job.partition), ("--account", job.account)):
        if value is not None and not NAME.fullmatch(value):
            raise SlurmError(f"{option} {value!r}: expected letters, digits, '_', '.', '-' or ','")
    # a trial larger than a node would wait in Tune forever, with the allocation's clock running
    if job.cpus_per_node < cpus_per_trial:
        raise SlurmError(f"--cpus-per-node {job.cpus_per_node}: a trial needs {cpus_per_trial:g} (the sweep's resources.cpus); "
                         f"expected at least {math.ceil(cpus_per_trial)}")
    if job.gpus_per_node < gpus_per_trial:
        raise SlurmError(f"--gpus-per-node {job.gpus_per_node}: a trial needs {gpus_per_trial:g} (the sweep's resources.gpus); "
                         f"expected at least {math.ceil(gpus_per_trial)}")


def paths(root: str, sweep_name: str) -> tuple[Path, Path]:
    """Returns the filled script's path and the job's log path pattern (`%j`: the job id) under `root`."""
    if "://" in root and not root.startswith("file://"):
        raise SlurmError(f"--root {root}: expected a folder on the cluster's shared filesystem (the batch script and its log go there)")
    folder = Path(root.removeprefix("file://")).absolute() / "slurm"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", sweep_name)
    return folder / f"{name}.sbatch", folder / f"{name}-%j.out"


def _set(text: str, pattern: str, line: str | None, what: str) -> str:
    """Returns `text` with the one line matching `pattern` replaced by `line` (None: removed)."""
    found = re.findall(pattern, text, flags=re.M)
    if len(found) != 1:
        raise SlurmError(f"{TEMPLATE}: {len(found)} lines for {what}; expected exactly one (the template as shipped)")
    return re.sub(pattern, (line + "\n") if line is not None else "", text, flags=re.M)


def render(job: SlurmJob, sweep: str, root: str, tracking_uri: str | None, sweep_name: str,
           python: str | None = None, template: Path = TEMPLATE) -> str:
    """Returns the batch script: the template with this job's #SBATCH lines and settings."""
    try:
        text = template.read_text()
    except OSError as e:
        raise SlurmError(f"batch script template {template}: {e.strerror}; expected the project checkout's infra/slurm/") from None
    _, log = paths(root, sweep_name)
    sbatch = {"job-name": f"subnet-ray-{sweep_name}", "nodes": str(job.nodes), "cpus-per-task": str(job.cpus_per_node),
              "gpus-per-node": str(job.gpus_per_node) if job.gpus_per_node else None, "time": job.time,
              "partition": job.partition, "account": job.account, "output": str(log)}
    for key, value in sbatch.items():
        text = _set(text, rf"^##?SBATCH --{key}=.*\n", f"#SBATCH --{key}={value}" if value is not None else None, f"#SBATCH --{key}")
    settings = {"SWEEP": str(Path(sweep).absolute()), "SUBNET_RAY_ROOT": str(Path(root.removeprefix("file://")).absolute()),
                "MLFLOW_TRACKING_URI": tracking_uri or "", "PYTHON": os.path.abspath(python or sys.executable)}
    for key, value in settings.items():
        text = _set(text, rf"^{key}=.*\n", f"{key}={shlex.quote(value) if value else ''}", f"the setting {key}=")
    return text


def write(script: Path, text: str) -> Path:
    """Returns `script` after writing `text` there (executable, atomically: a queued job keeps its own copy anyway)."""
    script.parent.mkdir(parents=True, exist_ok=True)
    tmp = script.with_name(script.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(script)
    return script


def sbatch() -> str:
    """Returns the path of `sbatch`; raises SlurmError when this machine has none."""
    found = shutil.which("sbatch")
    if found is None:
        raise SlurmError("sbatch not found on PATH; expected a Slurm login node (--dry-run writes the script without submitting)")
    return found


def submit(script: Path) -> str:
    """Returns the Slurm job id of the submitted `script`; raises SlurmError when sbatch is missing or refuses it."""
    done = subprocess.run([sbatch(), "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise SlurmError(f"sbatch refused {script}: {last.removeprefix('sbatch: ').removeprefix('error: ')}")
    job = done.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"
    if not job.isdigit():
        raise SlurmError(f"sbatch answered {done.stdout.strip()!r}; expected a job id")
    return job


def command(sweep: str, job: SlurmJob, root: str, tracking_uri: str | None) -> str:
    """Returns the `subnet-ray submit` command line that submits this job (again: it resumes)."""
    cmd = ["subnet-ray", "submit", sweep, "--slurm", "--nodes", str(job.nodes), "--cpus-per-node", str(job.cpus_per_node),
           "--gpus-per-node", str(job.gpus_per_node), "--time", job.time]
    cmd += ["--partition", job.partition] if job.partition else []
    cmd += ["--account", job.account] if job.account else []
    cmd += ["--root", root] + (["--tracking-uri", tracking_uri] if tracking_uri else [])
    return shlex.join(cmd)


def follow_lines(job_id: str, log: Path, again: str) -> list[str]:
    """Returns the lines telling how to follow, stop and resume job `job_id`."""
    out = str(log).replace("%j", job_id)
    return [f"  log:    {out}",
            f"  follow: tail -F {shlex.quote(out)}   (state: squeue -j {job_id})",
            f"  stop:   scancel {job_id}   (the sweep stops where it is; finished outputs are kept)",
            f"  resume: {again}"]


def submit_sweep(sweep: str, spec, job: SlurmJob, root: str, tracking_uri: str | None, dry_run: bool,
                 preflight: Callable[[], None]) -> str | None:
    """Returns the Slurm job id (None with `dry_run`) after checking, preflight, writing and submitting; prints what to do next.

    Nothing is written unless every check passes: the options, sbatch being there, then `preflight`.
    """
    check(job, spec.resources.cpus, spec.resources.gpus)
    script, log = paths(root, spec.name)
    if not dry_run:
        sbatch()  # no Slurm here: say so before writing anything
    preflight()
    write(script, render(job, sweep, root, tracking_uri, spec.name))
    again = command(sweep, job, root, tracking_uri)
    if dry_run:
        print(f"wrote {script} (not submitted: --dry-run); submit it with `sbatch {script}` or: {again}")
        return None
    job_id = submit(script)
    print(f"submitted sweep {spec.name} as Slurm job {job_id}: {job.nodes} node(s) x {job.cpus_per_node} CPU(s), "
          f"{job.gpus_per_node} GPU(s), time {job.time}; script {script}")
    print(*follow_lines(job_id, log, again), sep="\n")
    return job_id


def close_runs_of(tracking_uri: str, pid: int) -> int:
    """Returns how many MLflow runs the driver `pid` of this host left RUNNING, after ending them KILLED.

    The batch script calls this when it had to SIGKILL its driver: on a plain `scancel` Slurm
    stops the Ray nodes together with the driver, which then may not finish stopping Tune within
    Slurm's KillWait, so its runs are closed from outside (as the next invocation on this host would).
    """
    from mlflow import MlflowClient

    from .tracking import HOST_TAG, PID_TAG

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return 0
    runs = client.search_runs(experiments, f"attributes.status = 'RUNNING' and tags.`{PID_TAG}` = '{pid}'", max_results=5000)
    mine = [r for r in runs if r.data.tags.get(HOST_TAG) == socket.gethostname()]
    for r in mine:
        client.set_terminated(r.info.run_id, "KILLED")
    return len(mine)


if __name__ == "__main__":  # the batch script: python -m subnet_ray.orchestration.slurm close-runs TRACKING_URI PID
    if len(sys.argv) != 4 or sys.argv[1] != "close-runs" or not sys.argv[3].isdigit():
        sys.exit("usage: python -m subnet_ray.orchestration.slurm close-runs TRACKING_URI PID")
    print(f"closed {close_runs_of(sys.argv[2], int(sys.argv[3]))} MLflow run(s) left RUNNING by the driver (pid {sys.argv[3]}): KILLED")
