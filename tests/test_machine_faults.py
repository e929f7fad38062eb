"""A full disk, a root made read-only, a tracking server killed and a local Ray killed, each caused for real
in the middle of a smoke sweep (the local executor where Ray is not what is under test): one `error:`
line with its own exit status, nothing half-published, every MLflow run it could reach ended, and the
same command, once the machine is mended, finishes with the outputs of an undisturbed run.

Mounting needs root (CAP_SYS_ADMIN); where it is refused the tests say so and skip.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow import MlflowClient

from procs import free_port, kill_leftovers
from subnet_ray.sweep.graph import graph
from subnet_ray.storage.store import store_for
from test_faults import clean, cli, outputs, runs, wait_for_ledger  # noqa: F401 - clean: the undisturbed run (a fixture)


@pytest.fixture
def mount():
    """Returns mount(*args, target): runs `mount ARGS TARGET` (skips the test if this machine refuses it);
    every target is unmounted (lazily: a test's process may still hold files there) at teardown."""
    made = []

    def do(*args, target):
        r = subprocess.run(["mount", *map(str, args), str(target)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"`mount {' '.join(map(str, args))}` is not permitted here ({r.stderr.strip()}): needs root")
        made.append(target)

    yield do
    for target in reversed(made):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _error_line(err: str) -> str:
    """Returns the one `error:` line the command ended with; fails if there are others or a traceback."""
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return errors[0]


def _kept_is_true(line: str, root, spec) -> list[str]:
    """Asserts the line's "N of M stage outputs are in the store" is what the store holds, and that each
    of them is whole (every file's SHA-256 as its manifest says); returns their keys."""
    store = store_for(root)
    done = [n.key for n in graph(spec) if store.done(n.key)]
    m = re.search(r"(\d+) of (\d+) stage outputs are in the store", line)
    assert m and (int(m[1]), int(m[2])) == (len(done), len(graph(spec))), line
    for key in done:
        assert store.check(key, "all") == [], key
    assert not list((root / "store" / "_partial").rglob("_SUCCESS"))  # nothing half-published
    return done


def _same_as_clean(root, ref, spec) -> None:
    """Every output file is byte-identical to the undisturbed run's; a resumed fine-tuning's history.json
    holds the same values (its bytes, keys in another order after a resume, are issue 34 part 6's)."""
    got, want = outputs(root, spec), outputs(ref, spec)
    assert got.keys() == want.keys()
    for name in got:
        if name.endswith("/history.json") and got[name] != want[name]:
            key = name.rsplit("/", 1)[0]
            assert json.loads((store_for(root).path(key) / "history.json").read_text()) == \
                json.loads((store_for(ref).path(key) / "history.json").read_text()), name
            continue
        assert got[name] == want[name], name


@pytest.mark.slow  # ~1 min here: two smoke runs
def test_a_full_disk_ends_in_one_line_and_the_same_command_finishes_once_there_is_space(clean, tmp_path, mount):
    sweep, spec, ref = clean
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=1600k", "tmpfs", target=disk)  # MLflow's SQLite (~1.1 MB) and a few outputs
    root = disk / "root"
    cmd = ("run", sweep, "--root", root, "--executor", "local", "--quiet")
    proc = cli(*cmd)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 5, err[-3000:]
    line = _error_line(err)
    print(line)
    assert line.startswith(f"error: the disk holding the root {root} is full (") and "No space left on device" in line
    assert f"free space under {root}" in line and "rerun the same command" in line
    done = _kept_is_true(line, root, spec)
    assert len(done) < len(graph(spec))
    statuses = [r.info.status for r in runs(root, spec.name)]
    assert statuses and "RUNNING" not in statuses and "FAILED" in statuses

    mount("-o", "remount,size=64m", target=disk)  # space freed
    again = cli(*cmd)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    _same_as_clean(root, ref, spec)
    after = runs(root, spec.name)
    assert {r.info.status for r in after} == {"FINISHED"} and len(after) == len(runs(ref, spec.name))


@pytest.mark.slow  # ~1 min here: two smoke runs
def test_a_root_made_read_only_mid_run_ends_in_one_line_and_resumes_once_writable(clean, tmp_path, mount):
    sweep, spec, ref = clean
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    mount("--bind", backing, target=mnt)
    root = mnt / "root"
    cmd = ("run", sweep, "--root", root, "--executor", "local", "--quiet")
    proc = cli(*cmd)
    wait_for_ledger(root, 1, proc)
    # A remount read-only is refused while files are open for writing there (the stage's lease, SQLite), so
    # the root is swapped for a read-only view of the same folder: every write opened from now on gets EROFS,
    # as on a file system the kernel remounted read-only after an I/O error.
    subprocess.run(["umount", "-l", str(mnt)], check=True)
    mount("--bind", "-o", "ro", backing, target=mnt)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 6, err[-3000:]
    line = _error_line(err)
    print(line)
    assert line.startswith(f"error: the root {root} became read-only (") and "rerun the same command" in line
    done = _kept_is_true(line, root, spec)
    assert 1 <= len(done) < len(graph(spec))
    statuses = [r.info.status for r in runs(root, spec.name)]
    left = statuses.count("RUNNING")
    # SQLite under a read-only root may refuse to end the runs: then the line says who ends them
    assert left == 0 or "ended KILLED by the next invocation" in line, (statuses, line)

    subprocess.run(["umount", "-l", str(mnt)], check=True)  # lazily: this process's MLflow client holds the database
    mount("--bind", backing, target=mnt)  # writable again
    again = cli(*cmd)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert err.count("was left RUNNING by an invocation that is gone: ended KILLED") == left
    _same_as_clean(root, ref, spec)
    assert {r.info.status for r in runs(root, spec.name)} == {"FINISHED"}


class MlflowServer:
    """An MLflow tracking server on 127.0.0.1 (its own process group, SQLite and artifacts under `state`)."""

    def __init__(self, state):
        self.state, self.port, self.proc = state, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        self.state.mkdir(exist_ok=True)
        log = open(self.state / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.state}/mlflow.db", "--artifacts-destination", str(self.state / "artifacts")],
            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.state / "server.log").read_text()[-2000:]
            time.sleep(0.5)

    def kill(self) -> None:
        if self.proc is not None:
            kill_leftovers(pgid=self.proc.pid)
            self.proc.wait(30)


@pytest.fixture
def server(tmp_path):
    s = MlflowServer(tmp_path / "mlflow-server")
    yield s
    s.kill()


@pytest.mark.slow  # ~2 min here: two server starts and two smoke runs
def test_a_tracking_server_killed_mid_run_costs_no_report_and_the_next_run_catches_mlflow_up(clean, tmp_path, server):
    sweep, spec, ref = clean
    root = tmp_path / "root"
    server.start()
    cmd = ("run", sweep, "--root", root, "--executor", "local", "--quiet", "--tracking-uri", server.url)
    proc = cli(*cmd)
    wait_for_ledger(root, 1, proc)
    server.kill()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err[-3000:]
    line = _error_line(err)
    print(line)
    assert line.startswith(f"error: the MLflow tracking server {server.url} went away (")
    n = len(graph(spec))
    assert f"{n} of {n} stage outputs are in the store" in line  # every stage ran on
    report = root / "reports" / spec.name
    assert f"the report is written ({report})" in line and (report / "report.html").is_file()
    results = [json.loads((r / "reports" / spec.name / "summary.json").read_text()) for r in (root, ref)]
    for r in results:  # the date, and the run links: none, as the runs could not be asked for their ids
        r.pop("provenance")
    assert results[0] == results[1]
    assert "rerun the same command once it answers" in line
    assert "no more live metrics in this invocation" in err  # said once, then the epochs went on without MLflow

    server.start()  # back, with what it had
    again = cli(*cmd)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "computed 0 stage outputs" in out  # nothing recomputed: only MLflow caught up
    assert f"runs on the tracking server {server.url}: browse with `subnet-ray ui --tracking-uri {server.url}`" in out
    client = MlflowClient(server.url)
    got = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    want = runs(ref, spec.name)
    assert {r.info.status for r in got} == {"FINISHED"} and len(got) == len(want)
    # every run has the metrics of the undisturbed run's namesake, to the float (besides the timings)
    ref_metrics = {r.info.run_name: {k: v for k, v in r.data.metrics.items() if not k.startswith("seconds/")} for r in want}
    for r in got:
        assert {k: v for k, v in r.data.metrics.items() if not k.startswith("seconds/")} == ref_metrics[r.info.run_name]
    parent = next(r for r in got if r.data.tags.get("subnet_ray.role") == "sweep")
    assert any(a.path == "report" for a in client.list_artifacts(parent.info.run_id))


@pytest.mark.slow  # ~1-3 min here: a local Ray's start and the first Tune wave
def test_a_local_ray_killed_mid_run_ends_in_one_line_with_its_status(clean, tmp_path):
    from subnet_ray.orchestration.watchdog import descendants

    sweep, spec, _ = clean
    root = tmp_path / "root"
    proc = cli("run", sweep, "--root", root, "--quiet", start_new_session=True)
    try:
        wait_for_ledger(root, 1, proc)
        tree = descendants(proc.pid)
        gcs = [p for p in tree if "gcs_server" in _cmd(p) or "/raylet/raylet" in _cmd(p)]
        assert gcs, [(p, _cmd(p)) for p in tree]
        for p in gcs:  # `ray stop --force` of the cluster's heart: the GCS and the raylet
            os.kill(p, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=180)
        waited = time.monotonic() - t0
    finally:
        kill_leftovers(pgid=proc.pid)
    assert proc.returncode == 7, err[-3000:]
    line = _error_line(err)
    print(line, f"({waited:.0f} s after the kill)")
    assert line.startswith("error: the Ray cluster this invocation started (local) went away (") and "has not answered" in line
    _kept_is_true(line, root, spec)
    assert waited < 60  # before Ray's own abort of the driver (60 s without its GCS)
    assert "RUNNING" not in [r.info.status for r in runs(root, spec.name)]


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow  # the undisturbed run it copies takes a minute or more here
def test_report_on_a_full_disk_ends_in_one_line(clean, tmp_path, mount, capsys):
    import shutil

    from subnet_ray.cli import main

    sweep, spec, ref = clean
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=1400k", "tmpfs", target=disk)  # the store (~1 MB) fits, its report (~4 MB) does not
    shutil.copytree(ref / "store", disk / "root" / "store")
    assert main(["report", str(sweep), "--root", str(disk / "root")]) == 5
    line = _error_line(capsys.readouterr().err)
    n = len(graph(spec))
    assert line.startswith(f"error: the disk holding the root {disk / 'root'} is full (") and f"{n} of {n} stage outputs" in line
