"""MLflow tracking against a real SQLite store: nesting, statuses, metrics, artifacts, limits."""
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

from subnet_ray.orchestration.mlflow_values import TRUNCATED, flat_params, metric_name
from subnet_ray.orchestration.tracking import Tracker
from subnet_ray.orchestration.tracking_store import (
    TrackingUnreachable,
    check_tracking_uri,
    default_tracking_uri,
    start_ui,
    stop_ui,
    ui_command,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One sweep root (so one SQLite schema creation, which takes seconds) shared by the module."""
    return tmp_path_factory.mktemp("sweeproot")


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty current folder, to prove MLflow writes nothing relative to it."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def _client(root):
    return MlflowClient(tracking_uri=default_tracking_uri(root))


def _runs(root, sweep):
    c = _client(root)
    exp = c.get_experiment_by_name(sweep)
    return {r.info.run_name: r for r in c.search_runs([exp.experiment_id], max_results=100)}


def test_parent_with_children_one_failed(root, cwd, tmp_path):
    mask = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=np.float32)
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "xa.npy", mask)
    sweep_cfg = {"training": {"lr": 2e-5, "epochs": 3}, "tasks": [{"id": "babel", "languages": ["xa", "xb"]}]}
    dev = {0: 0.5, 1: 0.75, 2: 0.875}

    with Tracker("t-nesting", root) as tr:
        parent_id = tr.start("invocation-1", params=sweep_cfg, tags={"subnet_ray.command": "run"})
        ok = tr.trial("babel/sft/seed1", tags={"task": "babel", "method": "sft", "seed": 1, "stage.train": "train/abc"}, params={"lr": 2e-5})
        for epoch in range(3):
            ok.log_epoch(epoch, {"loss": 1.0 / (epoch + 1), "dev_accuracy/xa": dev[epoch]})
        ok.log_metrics({"test_accuracy/xa": 0.8})
        ok.log_artifact(tmp_path / "masks" / "xa.npy", "masks")
        ok.log_dict({"xa": [1, 2]}, "summary.json")
        ok.end()
        bad = tr.trial("babel/random-sft/seed1/rand2", tags={"task": "babel", "method": "random-sft", "seed": 1, "random_seed": 2}, params={})
        bad.log_epoch(0, {"loss": 0.7})
        bad.end("FAILED")

    runs = _runs(root, "t-nesting")
    assert set(runs) == {"invocation-1", "babel/sft/seed1", "babel/random-sft/seed1/rand2"}
    assert all(r.info.status != "RUNNING" for r in runs.values())
    parent = runs["invocation-1"]
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.data.params == {"training.lr": "2e-05", "training.epochs": "3", "tasks.0.id": "babel", "tasks.0.languages": "[xa, xb]"}

    c = _client(root)
    children = c.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert {r.info.run_name: r.info.status for r in children} == {"babel/sft/seed1": "FINISHED", "babel/random-sft/seed1/rand2": "FAILED"}
    child = runs["babel/sft/seed1"]
    assert {k: child.data.tags[k] for k in ("task", "method", "seed", "stage.train")} == {"task": "babel", "method": "sft", "seed": "1", "stage.train": "train/abc"}
    assert runs["babel/random-sft/seed1/rand2"].data.tags["random_seed"] == "2"
    assert child.data.params == {"lr": "2e-05"}

    history = c.get_metric_history(child.info.run_id, "dev_accuracy/xa")
    assert sorted((m.step, m.value) for m in history) == sorted(dev.items())
    assert [m.step for m in c.get_metric_history(child.info.run_id, "test_accuracy/xa")] == [0]

    # the artifacts live under the root and are addressed relative to it (served by `subnet-ray ui`)
    exp = c.get_experiment_by_name("t-nesting")
    assert exp.artifact_location == "mlflow-artifacts:/t-nesting"
    assert child.info.artifact_uri == f"mlflow-artifacts:/t-nesting/{child.info.run_id}/artifacts"
    on_disk = root / "mlartifacts" / "t-nesting" / child.info.run_id / "artifacts"
    assert sorted(p.relative_to(on_disk).as_posix() for p in on_disk.rglob("*") if p.is_file()) == ["masks/xa.npy", "summary.json"]
    assert (on_disk / "masks" / "xa.npy").read_bytes() == (tmp_path / "masks" / "xa.npy").read_bytes()
    assert np.array_equal(np.load(on_disk / "masks" / "xa.npy", allow_pickle=False), mask)
    assert list(cwd.iterdir()) == []


def test_exception_inside_tracker_leaves_open_runs_failed(root, cwd):
    with pytest.raises(RuntimeError, match="trial crashed"):
        with Tracker("t-crash", root) as tr:
            tr.start("inv", params={}, tags={})
            done = tr.trial("babel/full/seed1", tags={}, params={})
            done.end()
            tr.trial("babel/full/seed2", tags={}, params={}).log_epoch(0, {"loss": 1.0})
            tr.trial("babel/full/seed3", tags={}, params={})
            raise RuntimeError("trial crashed")
    statuses = {name: r.info.status for name, r in _runs(root, "t-crash").items()}
    # the run that ended before the crash keeps its own status; everything still open is FAILED
    assert statuses == {"inv": "FAILED", "babel/full/seed1": "FINISHED", "babel/full/seed2": "FAILED", "babel/full/seed3": "FAILED"}
    assert list(cwd.iterdir()) == []


def test_finish_is_idempotent_and_a_rerun_adds_a_parent(root, cwd):
    tr = Tracker("t-rerun", root)
    first = tr.start("inv1", params={"a": 1}, tags={})
    t1 = tr.trial("babel/full/seed1", tags={"seed": 1}, params={})
    assert tr.trial("babel/full/seed1", tags={"attempt": 2}, params={}).run_id == t1.run_id  # a retry keeps its child
    forgotten = tr.trial("babel/full/seed2", tags={}, params={})
    tr.finish()
    tr.finish("FAILED")  # no effect: already finished
    with pytest.raises(RuntimeError, match="start"):
        tr.start("again", params={}, tags={})
    with pytest.raises(RuntimeError, match="finished"):
        tr.trial("babel/full/seed3", tags={}, params={})
    with pytest.raises(ValueError, match="RUNNING"):
        t1.end("RUNNING")

    with pytest.warns(UserWarning, match="keeps its artifact location"):
        Tracker("t-rerun", root, artifact_location=str(root / "elsewhere"))  # MLflow cannot move it
    tr2 = Tracker("t-rerun", root)
    assert tr2.experiment_id == tr.experiment_id
    assert tr2.artifact_location == "mlflow-artifacts:/t-rerun"
    second = tr2.start("inv2", params={"a": 1}, tags={})
    tr2.finish()

    runs = _runs(root, "t-rerun")
    assert {n: r.info.status for n, r in runs.items()} == {
        "inv1": "FINISHED",
        "inv2": "FINISHED",
        "babel/full/seed1": "KILLED",  # never ended by its trial: not claimed FINISHED
        "babel/full/seed2": "KILLED",
    }
    assert runs["babel/full/seed1"].data.tags["attempt"] == "2"
    assert forgotten.status == "KILLED"
    assert {runs["inv1"].info.run_id, runs["inv2"].info.run_id} == {first, second}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_naming_it():
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingUnreachable) as e:
        check_tracking_uri(uri)
    elapsed = time.monotonic() - t0
    assert elapsed < 30
    assert uri in str(e.value) and "unreachable" in str(e.value)
    # a Tracker on it fails the same way, before any MLflow client retries for minutes
    t0 = time.monotonic()
    with pytest.raises(TrackingUnreachable, match=uri):
        Tracker("t-unreachable", Path("."), tracking_uri=uri)
    assert time.monotonic() - t0 < 30


def test_silent_host_is_bounded_by_the_timeout():
    # 192.0.2.0/24 is TEST-NET-1 (never routed): either dropped (timeout) or refused at once
    t0 = time.monotonic()
    with pytest.raises(TrackingUnreachable, match="192.0.2.1"):
        check_tracking_uri("http://192.0.2.1:5000", timeout=2)
    assert time.monotonic() - t0 < 4
    with pytest.raises(TrackingUnreachable, match=r"postgresql://u:\*\*\*@127.0.0.1"):
        check_tracking_uri(f"postgresql://u:secret@127.0.0.1:{_closed_port()}/db", timeout=2)


def test_local_store_checks(tmp_path):
    deep = tmp_path / "a" / "b"
    check_tracking_uri(f"sqlite:///{deep}/mlflow.db")  # creatable is enough ...
    assert not (tmp_path / "a").exists()  # ... and checking creates nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrackingUnreachable, match=r"sqlite:///.*/file/sub/mlflow.db.*is not a folder"):
        check_tracking_uri(f"sqlite:///{tmp_path}/file/sub/mlflow.db")
    with pytest.raises(TrackingUnreachable, match="is a folder, not a database"):
        check_tracking_uri(f"sqlite:///{tmp_path}")
    with pytest.raises(ValueError, match="in-memory"):
        check_tracking_uri("sqlite:///:memory:")
    with pytest.raises(ValueError, match="unsupported scheme 'sqlit'"):
        check_tracking_uri("sqlit:///x.db")
    with pytest.raises(TrackingUnreachable, match="not a folder"):
        check_tracking_uri((tmp_path / "file" / "mlruns").as_uri())
    assert default_tracking_uri(tmp_path / "r") == f"sqlite:///{(tmp_path / 'r').resolve()}/mlflow.db"
    with pytest.raises(ValueError, match="remote"):
        default_tracking_uri("s3://bucket/root")


def test_flat_params_fit_mlflow_limits_and_are_accepted(root, cwd):
    long = "x" * (MAX_PARAM_VAL_LENGTH + 10)
    exact = "y" * MAX_PARAM_VAL_LENGTH
    params = flat_params({
        "model": {"name": "tiny", "layers": 2, "dropout": None},
        "grid": {},
        "long": long,
        "exact": exact,
        "seeds": [1, 2, 3],
        "ids": list(range(1000)),
        "mask": np.ones((12, 12), dtype=np.float32),
        "k" * 300: 1,
        "odd key!": "v",
    })
    assert params["model.name"] == "tiny" and params["model.layers"] == "2" and params["model.dropout"] == "None"
    assert params["grid"] == "{}"
    assert len(params["long"]) == MAX_PARAM_VAL_LENGTH and params["long"].endswith(TRUNCATED)
    assert params["exact"] == exact
    assert params["seeds"] == "[1, 2, 3]"
    assert params["ids"] == "<1000 items: 0, 1, 2, ...>"
    assert params["mask"] == "<array shape=(12, 12) dtype=float32>"
    assert "odd key_" in params
    assert all(isinstance(v, str) and len(v) <= MAX_PARAM_VAL_LENGTH for v in params.values())
    assert all(len(k) <= MAX_ENTITY_KEY_LENGTH for k in params)

    # and MLflow takes every one of them, plus awkward metric names, as they are
    with Tracker("t-limits", root) as tr:
        tr.start("inv", params=params, tags={"long": "z" * 20000})
        t = tr.trial("t", tags={}, params={})
        t.log_epoch(1, {"dev acc:xa": 0.5, "/a//b/../c/": 0.25})
    run = _runs(root, "t-limits")["inv"]
    assert run.data.params == params
    assert len(run.data.tags["long"]) == 8000 and run.data.tags["long"].endswith(TRUNCATED)
    assert set(_runs(root, "t-limits")["t"].data.metrics) == {"dev acc_xa", "a/b/c"}
    assert metric_name("dev_accuracy/xa") == "dev_accuracy/xa"
    with pytest.raises(ValueError, match="no usable"):
        metric_name("/../")


def test_ui_command_serves_the_sweep_store(root, tmp_path):
    Tracker("t-ui", root)  # the store exists once a sweep has used it
    cmd = ui_command(root, None, port=5123)
    assert cmd[cmd.index("--backend-store-uri") + 1] == default_tracking_uri(root)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--artifacts-destination") + 1] == (root / "mlartifacts").resolve().as_uri()
    assert cmd[1:4] == ["-m", "mlflow", "ui"] and os.path.isabs(cmd[0])
    with pytest.raises(FileNotFoundError, match="no MLflow store"):
        ui_command(tmp_path / "empty")
    with pytest.raises(ValueError, match="server already"):
        ui_command(root, "http://127.0.0.1:5000")


@pytest.mark.slow
def test_ui_serves_the_store_and_a_tracker_writes_through_it(root, cwd, tmp_path, capsys):
    """A real `mlflow ui` on the sweep store: reachable, takes runs and the saved views over HTTP (as a user's own
    tracking server would), `subnet-ray ui` names the views on it, and it stops completely."""
    Tracker("t-ui", root)
    port = _closed_port()
    uri = f"http://127.0.0.1:{port}"
    proc = start_ui(root, port=port)
    try:
        deadline = time.monotonic() + 240  # the server takes ~40 s to come up on a busy 2-core machine
        while True:
            try:
                check_tracking_uri(uri, timeout=5)
                break
            except TrackingUnreachable:
                assert proc.poll() is None, "mlflow ui exited"
                assert time.monotonic() < deadline, "mlflow ui not healthy in time"
                time.sleep(0.5)
        (tmp_path / "report.md").write_text("# report\n")
        with Tracker("t-http", root, tracking_uri=uri) as tr:
            tr.start("inv", params={"a": 1}, tags={})
            t = tr.trial("babel/full/seed1", tags={"task": "babel"}, params={})
            t.log_epoch(0, {"loss": 0.5})
            t.log_artifact(tmp_path / "report.md", "report")
            t.end()
            tr.set_view(["xa"], [])
        from subnet_ray.cli import main
        from subnet_ray.orchestration.runs_view import GROUPED_KEY, runs_url

        capsys.readouterr()
        assert main(["ui", "--tracking-uri", uri, "--sweep", "t-http"]) == 0  # a server: nothing started, URLs on it
        exp = _client(root).get_experiment_by_name("t-http").experiment_id
        assert capsys.readouterr().out.splitlines() == [
            f"MLflow UI: {uri}", f"  sweep t-http, runs table: {runs_url(uri, exp)}",
            f"  sweep t-http, charts:     {runs_url(uri, exp, chart=True, key=GROUPED_KEY)}"]
        runs = _runs(root, "t-http")  # read straight from the SQLite file the server writes
        assert {n: r.info.status for n, r in runs.items()} == {"inv": "FINISHED", "babel/full/seed1": "FINISHED"}
        child = runs["babel/full/seed1"]
        stored = root / "mlartifacts" / child.info.experiment_id / child.info.run_id / "artifacts" / "report" / "report.md"
        assert stored.read_text() == "# report\n"  # proxied by the server into the sweep root
        assert list(cwd.iterdir()) == []
    finally:
        t0 = time.monotonic()
        stop_ui(proc)
        print(f"mlflow ui stopped in {time.monotonic() - t0:.1f} s")
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of the server's process group is left
