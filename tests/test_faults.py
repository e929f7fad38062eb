"""Faults on the smoke sweep: damaged outputs, concurrent runs, SIGKILL, SIGINT and SIGTERM under Ray.

Each test compares with a clean run's outputs (by the SHA-256 their manifests record) and counts
what was computed through the store's ledger.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from procs import kill_leftovers
from subnet_ray.cli import main
from subnet_ray.orchestration.interrupts import MESSAGE
from subnet_ray.orchestration.runner import ledger, run_sweep, store_for
from subnet_ray.orchestration.watchdog import MARKER, descendants, marked
from subnet_ray.sweep.graph import graph
from subnet_ray.stages import TOPK
from tiny import smoke_sweep

ROOT = Path(__file__).resolve().parents[1]
WAVE1 = {"finetune:full", "subnetworks", "random_masks"}


@pytest.fixture
def clean(smoke_run):
    """Returns (sweep file, spec, root) of an undisturbed local run of the smoke sweep (shared: read it, never change it)."""
    return smoke_run.sweep, smoke_run.spec, smoke_run.root


def outputs(root: Path, spec) -> dict[str, str]:
    """Returns {key/file: SHA-256} of every output of the sweep, from the manifests."""
    store = store_for(root)
    out = {}
    for n in graph(spec):
        files = json.loads((store.path(n.key) / "_manifest.json").read_text())["files"]
        out.update({f"{n.key}/{f}": v["sha256"] for f, v in files.items()})
    return out


def cli(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "subnet_ray.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def stage_of(entry: dict) -> str:
    return "finetune:full" if entry["stage"] == "finetune" and entry["trial"].split("/")[1] == "full" else entry["stage"]


def runs(root: Path, name: str):
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


def wait_for_ledger(root: Path, n: int, proc, timeout=240) -> None:
    led = root / "store" / "_ledger"
    deadline = time.monotonic() + timeout
    while len(list(led.glob("*.json"))) < n:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:] if proc.poll() is not None else "timeout"
        time.sleep(0.1)


def test_damaged_outputs_are_named_by_status_and_recomputed_by_run(clean, tmp_path, capsys):
    sweep, spec, ref = clean
    root = tmp_path / "root"
    shutil.copytree(ref / "store", root / "store")  # the outputs only: MLflow starts afresh
    nodes = graph(spec)
    store = store_for(root)
    full = next(n for n in nodes if n.stage == "finetune" and n.params.method == "full")
    sub = next(n for n in nodes if n.stage == "subnetworks")
    inf = next(n for n in nodes if n.stage == "influence" and n.params.variant == "sft+subnet")
    ckpt = store.local / full.key / "epoch_1" / "model.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated, as by a full disk
    (store.local / inf.key / TOPK).unlink()
    mask_file = store.local / sub.key / "xa" / "mask.npy"
    mask = np.load(mask_file)
    np.save(mask_file, ~mask)  # same size, other values
    (store.local / "_ledger" / "00000000000000000000-bad.json").write_text("{")  # and a malformed ledger entry

    capsys.readouterr()
    assert main(["status", str(sweep), "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"{full.key}: epoch_1/model.safetensors: {ckpt.stat().st_size} bytes, the manifest says" in out
    assert f"{inf.key}: {TOPK}: missing" in out
    assert f"{sub.key}: xa/mask.npy: content differs from the manifest (SHA-256)" in out
    assert out.count("[damaged]") == 3

    before = len(ledger(store))
    with pytest.warns(UserWarning, match="00000000000000000000-bad.json is unreadable"):
        run_sweep(spec, root, executor="local", progress=False)
        again = [e["key"] for e in ledger(store)][before - 0 :]
    assert sorted(again) == sorted([full.key, sub.key, inf.key])  # exactly the damaged three, once each
    assert outputs(root, spec) == outputs(ref, spec)
    assert len(list((store.local / "_damaged").glob("*/*"))) == 3
    capsys.readouterr()
    assert main(["status", str(sweep), "--root", str(root), "--verify"]) == 0

    # `report` reads no damaged output either: it moves it aside and reports without it
    (store.local / inf.key / TOPK).write_bytes(b"garbage")
    assert main(["report", str(sweep), "--root", str(root)]) == 0
    assert not store.done(inf.key)


def test_influence_outputs_of_an_untrusted_engine_are_stale_named_by_status_and_recomputed(clean, tmp_path, capsys):
    """Influence outputs without an engine record (published before it, possibly by the Ray Data engine issue 33
    doubted) or of a version below the trusted one are stale: status says so, run moves aside and recomputes them."""
    from subnet_ray.influence.engines import ENGINE

    sweep, spec, ref = clean
    root = tmp_path / "root"
    shutil.copytree(ref / "store", root / "store")
    store = store_for(root)
    inf = [n for n in graph(spec) if n.stage == "influence"]
    assert json.loads((store.local / inf[0].key / ENGINE).read_text()) == {"engine": "single-process", "version": 1}
    (store.local / inf[0].key / ENGINE).unlink()  # as published before the record
    (store.local / inf[1].key / ENGINE).write_text(json.dumps({"engine": "ray-data", "version": 0}))
    capsys.readouterr()
    assert main(["status", str(sweep), "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.count("[stale]") == 2 and out.count("[done]") == len(graph(spec)) - 2
    assert f"{inf[0].key}: {ENGINE}: missing (computed before influence outputs recorded their engine" in out
    assert f"{inf[1].key}: {ENGINE}: computed by ray-data engine version 0, older than the trusted 1" in out
    assert "2 stale stage output(s)" in out

    before = len(ledger(store))
    run_sweep(spec, root, executor="local", progress=False)
    assert sorted(e["key"] for e in ledger(store)[before:]) == sorted([inf[0].key, inf[1].key])
    assert outputs(root, spec) == outputs(ref, spec)
    capsys.readouterr()
    assert main(["status", str(sweep), "--root", str(root)]) == 0


@pytest.mark.slow
def test_two_concurrent_runs_compute_every_output_once(clean, tmp_path):
    sweep, spec, ref = clean
    root = tmp_path / "root"
    cmd = ("run", sweep, "--root", root, "--executor", "local", "--quiet")
    a, b = cli(*cmd), cli(*cmd)  # together: both want the full fine-tuning first
    (_, err_a), (_, err_b) = a.communicate(timeout=600), b.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, (err_a[-2000:], err_b[-2000:])
    keys = [e["key"] for e in ledger(store_for(root))]
    assert len(keys) == len(set(keys)) == len(graph(spec))  # nobody computed anything twice
    assert "is being computed by pid" in err_a + err_b  # the later one said it waited
    assert {e["pid"] for e in ledger(store_for(root))} <= {a.pid, b.pid}
    assert outputs(root, spec) == outputs(ref, spec)
    assert {r.info.status for r in runs(root, spec.name)} == {"FINISHED"}


@pytest.mark.slow  # ~35 s idle: a real SIGKILL mid-run, then a resume of the whole sweep; quick guard below
def test_sigkilled_invocations_runs_are_killed_by_the_next(clean, tmp_path):
    sweep, spec, ref = clean
    root = tmp_path / "root"
    cmd = ("run", sweep, "--root", root, "--executor", "local", "--quiet")
    first = cli(*cmd)
    wait_for_ledger(root, 1, first)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    left = [r for r in runs(root, spec.name) if r.info.status == "RUNNING"]
    assert left and all(r.data.tags["subnet_ray.pid"] == str(first.pid) for r in left)
    second = cli(*cmd)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    assert err.count("was left RUNNING by an invocation that is gone: ended KILLED") == len(left)
    after = runs(root, spec.name)
    status = {r.info.run_id: r.info.status for r in after}
    # ended KILLED, then reused by the resume (one run per thing, issue 13), which finishes them
    assert {status[r.info.run_id] for r in left} == {"FINISHED"} and "RUNNING" not in status.values()
    assert len(after) == 4  # the parent and one run per trial: the resume made no duplicate
    assert outputs(root, spec) == outputs(ref, spec)


def test_runs_a_dead_invocation_left_running_are_ended_killed_reused_and_finished(smoke_run, tmp_path, capsys):
    """The quick guard of the SIGKILL test above (slow): a copy of the clean run whose runs all say a dead invocation
    left them RUNNING. The next run ends each KILLED and says so once per run, then reuses them (one run per thing:
    no new run) and finishes them, computing nothing."""
    from subnet_ray.orchestration.tracking import PID_TAG

    spec, root = smoke_run.spec, smoke_run.copy(tmp_path / "root")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process has exited; were the pid reused, the recorded start time would not match
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    before = runs(root, spec.name)
    for r in before:  # as a SIGKILL leaves them: RUNNING, owned by an invocation that is gone
        client.set_tag(r.info.run_id, PID_TAG, str(gone.pid))
        client.update_run(r.info.run_id, status="RUNNING")
    assert len(before) == 4 and {r.info.status for r in runs(root, spec.name)} == {"RUNNING"}
    capsys.readouterr()
    again = run_sweep(spec, root, executor="local", progress=False)
    assert again.computed == []
    err = capsys.readouterr().err
    for r in before:
        assert f"MLflow run {r.info.run_id} was left RUNNING by an invocation that is gone: ended KILLED" in err, err[-3000:]
    assert err.count("was left RUNNING by an invocation that is gone: ended KILLED") == len(before)
    after = runs(root, spec.name)
    assert {r.info.run_id for r in after} == {r.info.run_id for r in before}  # reused: the resume made no duplicate
    assert {r.info.status for r in after} == {"FINISHED"}


def _ray_interrupt(sweep, root, sig) -> tuple[int, str, dict[int, str]]:
    proc = cli("run", sweep, "--root", root, "--quiet", start_new_session=True)
    try:
        wait_for_ledger(root, 1, proc)  # wave 1 is under way: the full model is published, masks are next
        ray_procs = descendants(proc.pid)
        proc.send_signal(sig)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=120)
        print(f"{signal.Signals(sig).name}: exited {time.monotonic() - t0:.1f} s after the signal")
        return proc.returncode, err, ray_procs
    finally:
        kill_leftovers(pgid=proc.pid)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_under_ray_stops_in_wave_1(clean, tmp_path, sig, code):
    sweep, spec, _ = clean
    root = tmp_path / "root"
    rc, err, ray_procs = _ray_interrupt(sweep, root, sig)
    assert rc == code, err[-3000:]
    assert err.strip().splitlines()[-1] == MESSAGE
    assert "Traceback" not in err
    stages = {stage_of(e) for e in ledger(store_for(root))}
    assert stages and stages <= WAVE1  # no SFT, no random-SFT, no influence output was computed
    assert not [k for k in store_for(root).keys() if not k.startswith(("finetune", "subnetworks", "random_masks"))]
    statuses = [r.info.status for r in runs(root, spec.name)]
    assert statuses and "RUNNING" not in statuses and "KILLED" in statuses
    assert ray_procs  # the Ray instance it started: none outlives the driver
    deadline = time.monotonic() + 15
    while (alive := [p for p in ray_procs if _alive(p, ray_procs[p])]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, [(p, _cmd(p)) for p in alive]


@pytest.mark.slow
def test_sigkilled_ray_driver_leaves_no_ray_process(tmp_path):
    sweep = tmp_path / "k.yaml"
    sweep.write_text(smoke_sweep("killed"))
    proc = cli("run", sweep, "--root", tmp_path / "root", "--quiet", start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(_cmd(p).startswith("ray::DashboardAgent") for p in descendants(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)
        tree = descendants(proc.pid)
        agent = next(p for p in tree if "/raylet/raylet" in _cmd(p))  # not retitled: its environ is intact
        env = dict(v.split(b"=", 1) for v in Path(f"/proc/{agent}/environ").read_bytes().split(b"\0") if b"=" in v)
        instance = env[MARKER.encode()].decode()  # the driver's own /proc environ is its start-up one
        assert len(marked(instance)) > len(tree) // 2  # the mark reaches the Ray instance's processes
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while (alive := [p for p in tree if _alive(p, tree[p])] + list(marked(instance))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive, [(p, _cmd(p)) for p in alive]  # not one process of the tree, nor any started since
    finally:
        kill_leftovers(pgid=proc.pid)


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int, start: str) -> bool:
    from subnet_ray.orchestration.watchdog import _stat

    st = _stat(pid)
    return st is not None and st[1] == start


def test_sigterm_with_the_local_executor_stops_and_kills_the_runs(clean, tmp_path):
    sweep, spec, _ = clean
    root = tmp_path / "root"
    proc = cli("run", sweep, "--root", root, "--executor", "local", "--quiet")
    wait_for_ledger(root, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == MESSAGE, err[-3000:]
    done = len(ledger(store_for(root)))
    assert 1 <= done < len(graph(spec))
    statuses = [r.info.status for r in runs(root, spec.name)]
    assert "RUNNING" not in statuses and "KILLED" in statuses
    assert not list((root / "store" / "_partial").rglob("_SUCCESS"))  # nothing half-published
