"""`subnet-ray submit --slurm`: the filled batch script, its refusals, and the smoke sweep on a real two-node Slurm.

The slow tests start Debian's slurmctld, two slurmd (node1, node2: one CPU each, on this machine)
and munge with services/slurm-local.sh, submit through `sbatch` as a user would, and check what
Slurm and Ray did: both nodes joined, trials ran on node2, `scancel` left no Ray process and no
open MLflow run, and the resubmitted job finished with the same outputs as the session's undisturbed local run.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from procs import kill_leftovers, live_processes
from subnet_ray.cli import main
from subnet_ray.sweep.config import load_sweep
from subnet_ray.sweep.graph import graph
from subnet_ray.orchestration import slurm
from subnet_ray.orchestration.runner import ledger
from subnet_ray.orchestration.watchdog import _stat, descendants
from subnet_ray.storage.store import store_for

PROJECT = Path(__file__).resolve().parents[1]
SMOKE = PROJECT / "sweeps" / "smoke.yaml"
LOCAL = PROJECT / "services" / "slurm-local.sh"
SETTINGS = ("SWEEP", "SUBNET_RAY_ROOT", "MLFLOW_TRACKING_URI", "PYTHON")


def sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def settings(script: Path) -> dict[str, str]:
    """Returns the settings as bash reads them from the filled script (quoting included)."""
    lines = "\n".join(line for line in script.read_text().splitlines() if line.startswith(tuple(f"{k}=" for k in SETTINGS)))
    out = subprocess.run(["bash", "-c", f'{lines}\nprintf "%s\\0" ' + " ".join(f'"${k}"' for k in SETTINGS)],
                         capture_output=True, text=True, check=True).stdout
    return dict(zip(SETTINGS, out.split("\0")))


def test_filled_script_asks_slurm_for_the_job_and_runs_this_sweep(tmp_path, capsys):
    root = tmp_path / "shared root"  # a space: the settings must stay one word each
    rc = main(["submit", str(SMOKE), "--slurm", "--dry-run", "--nodes", "3", "--cpus-per-node", "4", "--gpus-per-node", "2",
               "--time", "1-02:00:00", "--partition", "gpu", "--account", "proj-1", "--root", str(root),
               "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert rc == 0
    script = root / "slurm" / "smoke.sbatch"
    text = script.read_text()
    assert sbatch_lines(text) == ["#SBATCH --job-name=subnet-ray-smoke", "#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=1",
                                  "#SBATCH --cpus-per-task=4", "#SBATCH --gpus-per-node=2", "#SBATCH --time=1-02:00:00",
                                  "#SBATCH --partition=gpu", "#SBATCH --account=proj-1",
                                  f"#SBATCH --output={root}/slurm/smoke-%j.out", "#SBATCH --signal=B:TERM@120"]
    assert settings(script) == {"SWEEP": str(SMOKE), "SUBNET_RAY_ROOT": str(root), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
                                "PYTHON": os.path.abspath(sys.executable)}
    assert os.access(script, os.X_OK) and subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = capsys.readouterr().out
    assert f"wrote {script} (not submitted: --dry-run)" in out
    # the command it prints resubmits the same job
    again = out.strip().splitlines()[-1].split(" or: ", 1)[1]
    assert again.split()[:3] == ["subnet-ray", "submit", str(SMOKE)] and "--nodes 3 --cpus-per-node 4 --gpus-per-node 2" in again


def test_defaults_take_one_trial_per_node_and_leave_out_what_was_not_asked(tmp_path):
    root = tmp_path / "r"
    assert main(["submit", str(SMOKE), "--slurm", "--dry-run", "--root", str(root)]) == 0
    script = root / "slurm" / "smoke.sbatch"
    lines = sbatch_lines(script.read_text())
    # smoke's trials take 1 CPU and no GPU: no GPU line, no partition or account (the cluster's defaults)
    assert lines == ["#SBATCH --job-name=subnet-ray-smoke", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                     "#SBATCH --cpus-per-task=1", "#SBATCH --time=04:00:00", f"#SBATCH --output={root}/slurm/smoke-%j.out",
                     "#SBATCH --signal=B:TERM@120"]
    assert settings(script)["MLFLOW_TRACKING_URI"] == ""  # the driver's SQLite under the root


@pytest.mark.parametrize("args,error", [
    (["--nodes", "0"], "--nodes 0: expected at least 1"),
    (["--cpus-per-node", "0"], "--cpus-per-node 0: expected at least 1"),
    (["--gpus-per-node", "-1"], "--gpus-per-node -1: expected 0 or more"),
    (["--time", "2h"], "--time '2h': expected minutes, HH:MM:SS or D-HH:MM:SS"),
    (["--partition", "gpu; rm -rf ~"], "--partition 'gpu; rm -rf ~': expected letters, digits, '_', '.', '-' or ','"),
    (["--root", "s3://bucket/runs"], "--root s3://bucket/runs: expected a folder on the cluster's shared filesystem "
                                     "(the batch script and its log go there)"),
])
def test_bad_options_are_one_error_line_and_write_nothing(tmp_path, capsys, args, error):
    argv = ["submit", str(SMOKE), "--slurm", "--dry-run", "--root", str(tmp_path / "r"), *args]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {error}"]
    assert not (tmp_path / "r").exists()


def test_a_node_smaller_than_a_trial_is_refused(tmp_path, capsys):
    sweep = tmp_path / "big.yaml"
    sweep.write_text(SMOKE.read_text().replace("resources: {cpus: 1, gpus: 0", "resources: {cpus: 4, gpus: 1"))
    assert main(["submit", str(sweep), "--slurm", "--dry-run", "--root", str(tmp_path / "r"), "--cpus-per-node", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --cpus-per-node 2: a trial needs 4 (the sweep's resources.cpus); expected at least 4"]
    assert main(["submit", str(sweep), "--slurm", "--dry-run", "--root", str(tmp_path / "r"), "--gpus-per-node", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --gpus-per-node 0: a trial needs 1 (the sweep's resources.gpus); expected at least 1"]


def test_without_sbatch_it_says_so_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["submit", str(SMOKE), "--slurm", "--root", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: sbatch not found on PATH; expected a Slurm login node (--dry-run writes the script without submitting)"]
    assert not (tmp_path / "r" / "slurm").exists()


def test_sbatch_refusing_the_job_is_one_error_line(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert main(["submit", str(SMOKE), "--slurm", "--root", str(tmp_path / "r"), "--account", "nope"]) == 2
    script = tmp_path / "r" / "slurm" / "smoke.sbatch"
    assert capsys.readouterr().err.splitlines() == [f"error: sbatch refused {script}: Batch job submission failed: Invalid account"]


def test_submit_without_address_or_slurm_is_one_error_line(capsys):
    assert main(["submit", str(SMOKE)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: submit needs --address (a Ray dashboard, e.g. http://HEAD:8265) or --slurm"]


def test_every_setting_and_sbatch_line_the_submit_fills_is_in_the_template_once():
    text = slurm.TEMPLATE.read_text()
    for key in ("job-name", "nodes", "cpus-per-task", "gpus-per-node", "time", "partition", "account", "output"):
        assert len(re.findall(rf"^##?SBATCH --{key}=", text, flags=re.M)) == 1, key
    for key in SETTINGS:
        assert len(re.findall(rf"^{key}=", text, flags=re.M)) == 1, key
    broken = slurm.TEMPLATE.read_text().replace("#SBATCH --nodes=2\n", "")
    with pytest.raises(slurm.SlurmError, match="0 lines for #SBATCH --nodes"):
        slurm.render(slurm.SlurmJob(1, 1, 0, "10"), str(SMOKE), "/r", None, "smoke", template=_write(broken))


def _write(text: str) -> Path:
    path = Path(tempfile.mkdtemp()) / "t.sbatch"
    path.write_text(text)
    return path


# --- a real Slurm -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """Yields the environment for Slurm's commands and the job's Ray temp dir base of a two-node Slurm on this machine."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install -y slurmctld slurmd munge slurm-client (the README's test command does)")
    where = Path(tempfile.mkdtemp(prefix="srt", dir="/tmp"))  # short: Ray's temp dirs go under it too
    started = subprocess.run([str(LOCAL), "start", "--dir", str(where / "slurm")], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    conf = started.stdout.strip().removeprefix("export SLURM_CONF=")
    env = {**os.environ, "SLURM_CONF": conf, "SUBNET_RAY_TMP": str(where),
           "PYTHONPATH": f"{PROJECT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           # two Ray nodes beside the rest of the suite on one machine: a small object store each
           "SUBNET_RAY_START_ARGS": "--object-store-memory=100000000"}
    try:
        yield env, where
    finally:
        subprocess.run([str(LOCAL), "stop", "--dir", str(where / "slurm")], capture_output=True, timeout=120)
        kill_leftovers(marker=str(where))
        shutil.rmtree(where, ignore_errors=True)


def submit(env, root: Path) -> tuple[str, Path, str]:
    """Returns (job id, log path, the printed resume command) of the smoke sweep submitted on two nodes."""
    done = subprocess.run([sys.executable, "-m", "subnet_ray.cli", "submit", str(SMOKE), "--slurm", "--nodes", "2",
                           "--time", "15", "--root", str(root)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job = re.search(r"as Slurm job (\d+)", done.stdout).group(1)
    log = Path(re.search(r"log: +(\S+)", done.stdout).group(1))
    assert log == root / "slurm" / f"smoke-{job}.out"
    assert f"  stop:   scancel {job}" in done.stdout
    return job, log, re.search(r"resume: (.*)", done.stdout).group(1)


def running(env, job: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip())


def wait_done(env, job: str, log: Path, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while running(env, job):
        assert time.monotonic() < deadline, f"job {job} still running after {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(2)
    return log.read_text()


def outputs(root: Path) -> dict[str, str]:
    """Returns {key/file: SHA-256} of every output of the smoke sweep, from the manifests."""
    store = store_for(root)
    out = {}
    for n in graph(load_sweep(SMOKE)):
        files = json.loads((store.path(n.key) / "_manifest.json").read_text())["files"]
        out.update({f"{n.key}/{f}": v["sha256"] for f, v in files.items()})
    return out


def statuses(root: Path) -> list[str]:
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    return [r.info.status for r in client.search_runs([client.get_experiment_by_name("smoke").experiment_id])]


@pytest.mark.slow
def test_scancel_stops_ray_and_the_runs_and_the_resubmitted_job_finishes_on_two_nodes(cluster, smoke_run, tmp_path):
    """scancel mid-run, then the same command again: the second job joins both nodes, runs trials on node2 and ends
    with every output of the smoke sweep, each computed once over both jobs and byte-identical to the session's
    shared local run (`smoke_run`: the same stage keys; the executor changes no output's bytes)."""
    env, where = cluster
    spec = load_sweep(SMOKE)
    assert sorted(n.key for n in graph(spec)) == sorted(n.key for n in graph(smoke_run.spec))  # only the name differs
    root = tmp_path / "root"
    job, log, again = submit(env, root)
    deadline = time.monotonic() + 400
    while not list((root / "store" / "_ledger").glob("*.json")):  # wave 1 under way: the full model is published
        assert running(env, job) and time.monotonic() < deadline, log.read_text()[-3000:] if log.exists() else "no log"
        time.sleep(0.5)
    marker = f"{where}/subnet-ray-{job}-"
    ray_procs = {}
    for pid in live_processes(marker=marker):  # each node's `ray start` and all it started (retitled ray:: workers too)
        if (st := _stat(pid)) is not None:
            ray_procs.update({pid: st[1], **descendants(pid)})
    assert len(ray_procs) > 10  # two raylets, a GCS, their agents, trial workers
    subprocess.run(["scancel", job], env=env, check=True)
    text = wait_done(env, job, log, timeout=120)
    assert "received SIGTERM" in text
    alive = [p for p, start in ray_procs.items() if (st := _stat(p)) is not None and st[1] == start]
    assert not alive and not live_processes(marker=marker), text[-3000:]
    runs = statuses(root)
    assert runs and "RUNNING" not in runs and "KILLED" in runs, runs
    finished = {e["key"] for e in ledger(store_for(root))}
    assert finished  # something was kept to resume from

    # the same command again: it resumes on both nodes, finishes and recomputes nothing that was finished
    job2, log2, _ = submit(env, root)
    text2 = wait_done(env, job2, log2)
    assert "Ray cluster: 2 of 2 nodes joined" in text2, text2[-3000:]
    assert "sweep driver exited with status 0" in text2 and "Ray stopped" in text2, text2[-3000:]
    assert f"report: {root}/reports/smoke/report.html" in text2
    entries = ledger(store_for(root))
    keys = [e["key"] for e in entries]
    assert len(keys) == len(set(keys)) and set(keys) == {n.key for n in graph(spec)}  # every output computed once over both jobs
    assert finished <= set(keys)
    # where each output was computed, as Slurm named the node: trials ran on the second node
    assert "node2" in {e.get("slurm_node") for e in entries}, [(e["stage"], e.get("slurm_node")) for e in entries]
    assert outputs(root) == outputs(smoke_run.root)
    assert set(statuses(root)) == {"FINISHED"}, statuses(root)  # the runs the scancel ended KILLED were reused and finished
    assert not live_processes(marker=f"{where}/subnet-ray-{job2}-")  # no Ray process of the job is left
    assert not list(where.glob(f"subnet-ray-{job2}-*"))  # nor its temp dirs
    assert again.startswith(f"subnet-ray submit {SMOKE} --slurm --nodes 2")


@pytest.mark.slow
def test_sigterm_to_the_batch_script_stops_the_sweep_in_order(cluster, tmp_path):
    """What the time limit does (`#SBATCH --signal=B:TERM@120`), and `scancel --batch --signal=TERM`:
    only the batch script is signalled, so the driver stops while Ray still runs, then Ray stops."""
    env, where = cluster
    root = tmp_path / "root"
    job, log, _ = submit(env, root)
    deadline = time.monotonic() + 400
    while not list((root / "store" / "_ledger").glob("*.json")):
        assert running(env, job) and time.monotonic() < deadline, log.read_text()[-3000:] if log.exists() else "no log"
        time.sleep(0.5)
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], env=env, check=True)
    text = wait_done(env, job, log, timeout=120)
    assert "interrupted: finished stage outputs are kept; rerun the same command to resume" in text
    assert "sweep driver exited with status 143" in text and "Ray stopped" in text, text[-3000:]
    assert "did not exit within" not in text  # the driver stopped by itself: Ray was still there to stop Tune
    state = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    assert "ExitCode=143:0" in state, state
    runs = statuses(root)
    assert runs and "RUNNING" not in runs and "KILLED" in runs, runs
    assert not live_processes(marker=f"{where}/subnet-ray-{job}-")
    assert not list(where.glob(f"subnet-ray-{job}-*"))  # every node's temp dir went with its Ray
