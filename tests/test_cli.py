"""The command line: validation, bad input that must write nothing, unreachable services."""
import socket
import threading
import time
from pathlib import Path

import pytest

from subnet_ray.cli import main
from subnet_ray.sweep.config import ConfigError, load_sweep
from subnet_ray.sweep.graph import graph

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_validate(path, capsys):
    # --remote: the paper sweeps run on a GPU cluster with the hub; this machine has neither
    assert main(["validate", str(path), "--remote"]) == 0
    out = capsys.readouterr().out
    nodes = graph(load_sweep(path))
    assert f"{len({n.trial for n in nodes if n.stage != 'influence'})} trials, {len(nodes)} stage outputs" in out


def test_paper_settings_in_shipped_sweeps():
    want = {"xnli": (2e-5, 4, ["en", "fr", "de", "ru", "es"]), "pawsx": (9e-6, 5, ["en", "fr", "de", "ko", "es"]),
            "marc": (2e-5, 5, ["zh", "en", "fr", "de", "es"])}
    for name, (lr, epochs, langs) in want.items():
        s = load_sweep(Path(__file__).parent.parent / "sweeps" / f"{name}.yaml")
        assert (s.training.lr, s.training.epochs, s.tasks[0].languages, s.model.name) == (lr, epochs, langs, "xlm-roberta-base")
        assert (s.subnetworks.step_fraction, s.subnetworks.threshold, s.influence.proj_dim, s.influence.top_k) == (0.1, 0.95, 256, 100)


BAD = {
    "unknown field": ("name: x\ntasks: [{id: babel, languages: [a]}]\ntraining: {lrr: 1}\n", "training.lrr"),
    "unknown task": ("name: x\ntasks: [{id: xnlii, languages: [en]}]\n", "unknown task 'xnlii'"),
    "unknown language": ("name: x\ntasks: [{id: pawsx, languages: [en, ru]}]\n", "no language(s) ['ru']"),
    "wrong type": ("name: x\ntasks: [{id: babel, languages: [a]}]\ntraining: {epochs: many}\n", "training.epochs"),
    "not yaml": ("name: [unclosed\n", "not valid YAML"),
    "not a mapping": ("- 1\n- 2\n", "expected a mapping"),
    "sft without full": ("name: x\ntasks: [{id: babel, languages: [a]}]\nmethods: [sft]\n", "need 'full'"),
    "bad grid path": ("name: x\ntasks: [{id: babel, languages: [a]}]\ngrid: {training.lrr: [1, 2]}\n", "unknown setting 'training.lrr'"),
    "bad grid value": ("name: x\ntasks: [{id: babel, languages: [a]}]\ngrid: {training.lr: [0.1, -1]}\n", "training.lr"),
    "compose outside": ("name: x\ntasks: [{id: babel, languages: [a, b]}]\nanalysis: {compose: [[a, c]]}\n", "outside"),
    "babel longer than max_length": (
        "name: x\ntasks: [{id: babel, languages: [a, b], babel: {length: 20, families: [[a], [b]]}}]\ntraining: {max_length: 32}\n",
        "sentences have up to 40 tokens plus [CLS] and [SEP], more than training.max_length=32",
    ),
    "embedding layers": ("name: x\ntasks: [{id: babel, languages: [a]}]\ninfluence: {layers: [encoder, embeddings]}\n", "embedding layers are not sketched"),
    "non-square proj": ("name: x\ntasks: [{id: babel, languages: [a]}]\ninfluence: {proj_dim: 10}\n", "perfect square"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_names_file_and_field_and_writes_nothing(case, tmp_path, capsys):
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    root = tmp_path / "root"
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err
    assert main(["run", str(path), "--root", str(root), "--executor", "local"]) == 2
    assert not root.exists()  # no store, no MLflow db, no Ray


def test_missing_sweep_file_is_named(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: cannot read" in capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_copy(tmp_path) -> str:
    text = (Path(__file__).parent.parent / "sweeps" / "demo.yaml").read_text()
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    return str(path)


def test_unreachable_tracking_server_fails_fast_naming_it(tmp_path, capsys):
    uri = f"http://127.0.0.1:{closed_port()}"
    t = time.monotonic()
    rc = main(["run", demo_copy(tmp_path), "--root", str(tmp_path / "root"), "--tracking-uri", uri, "--executor", "local"])
    assert rc == 2 and time.monotonic() - t < 30
    assert uri in capsys.readouterr().err
    assert not (tmp_path / "root" / "store").exists()


def test_unreachable_cluster_fails_fast_naming_it(tmp_path, capsys):
    addr = f"127.0.0.1:{closed_port()}"
    t = time.monotonic()
    rc = main(["run", demo_copy(tmp_path), "--root", str(tmp_path / "root"), "--address", addr])
    assert rc == 2 and time.monotonic() - t < 30
    assert addr in capsys.readouterr().err
    assert not (tmp_path / "root" / "store").exists()


def test_unreachable_dashboard_for_submit(tmp_path, capsys):
    addr = f"http://127.0.0.1:{closed_port()}"
    t = time.monotonic()
    assert main(["submit", "sweeps/demo.yaml", "--address", addr]) == 2
    assert time.monotonic() - t < 30 and addr in capsys.readouterr().err


def test_graph_keys_are_shared_across_sweeps_that_agree():
    # baselines.yaml grids the threshold; its 0.95 branch trains exactly pawsx.yaml's full model
    pawsx = {n.key for n in graph(load_sweep(Path("sweeps/pawsx.yaml")))}
    base = {n.key for n in graph(load_sweep(Path("sweeps/baselines.yaml")))}
    shared_stages = {k.split("/")[0] for k in pawsx & base}
    assert {"finetune", "subnetworks", "random_masks"} <= shared_stages


def test_new_random_seeds_add_nodes_without_changing_existing_keys():
    spec = load_sweep(Path("sweeps/demo.yaml"))
    old = {n.key for n in graph(spec)}
    new = graph(spec, random_seeds=[1, 2, 3, 7])
    added = [n for n in new if n.key not in old]
    assert old <= {n.key for n in new}
    assert sorted((n.stage, getattr(n.params, "variant", None) or getattr(n.params, "method", None)) for n in added) == [
        ("finetune", "random-sft"), ("influence", "full+random:7"), ("influence", "random-sft:7"), ("random_masks", None)]


def test_submit_entrypoint_runs_the_sweep_from_the_working_dir():
    from subnet_ray.orchestration.jobs import entrypoint

    cmd = entrypoint("sweeps/xnli.yaml", "/mnt/store", "http://mlflow:5000")
    assert cmd == ("python -m subnet_ray.cli run sweeps/xnli.yaml --quiet --address auto "
                   "--root /mnt/store --tracking-uri http://mlflow:5000")
    with pytest.raises(ValueError, match="must be inside the project"):
        entrypoint("/tmp/elsewhere.yaml", None, None)


def test_local_data_folder_is_resolved_from_where_the_sweep_is_launched(tmp_path, monkeypatch):
    (tmp_path / "data" / "en").mkdir(parents=True)
    (tmp_path / "s.yaml").write_text("name: x\ntasks: [{id: pawsx, languages: [en], source: data}]\n")
    monkeypatch.chdir(tmp_path)
    spec = load_sweep("s.yaml")
    assert spec.tasks[0].source == str(tmp_path / "data")
    hub = tmp_path / "h.yaml"
    hub.write_text("name: x\ntasks: [{id: pawsx, languages: [en], source: google-research-datasets/paws-x}]\n")
    assert load_sweep(hub).tasks[0].source == "google-research-datasets/paws-x"  # a hub id stays as it is


@pytest.mark.parametrize("code, reachable", [(401, True), (403, True), (404, False), (500, False)])
def test_dashboard_check_tells_token_auth_from_a_wrong_server(code, reachable):
    import http.server

    from subnet_ray.orchestration.jobs import check_dashboard
    from subnet_ray.orchestration.tune import ClusterUnreachable

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        if reachable:  # a dashboard with token authentication answers 401/403 without the token
            check_dashboard(address, timeout=5)
        else:
            with pytest.raises(ClusterUnreachable, match=f"{address} answered HTTP {code} to /api/version"):
                check_dashboard(address, timeout=5)
    finally:
        server.shutdown()


def test_the_closing_hint_names_the_tracking_store_the_runs_are_in(tmp_path):
    from subnet_ray.commands import _browse_hint

    root = str(tmp_path / "runs")
    assert _browse_hint(root, None) == f"browse with `subnet-ray ui --root {root}`"
    assert _browse_hint(root, f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db") == f"browse with `subnet-ray ui --root {root}`"
    assert _browse_hint(root, "http://u:secret@mlflow:5000") == \
        "runs on the tracking server http://u:***@mlflow:5000: browse with `subnet-ray ui --tracking-uri http://u:***@mlflow:5000`"
    other = f"sqlite:///{tmp_path}/elsewhere.db"
    assert _browse_hint(root, other) == f"runs in {other}: browse with `subnet-ray ui --root {root} --tracking-uri {other}`"
