"""The sweep's runs in MLflow's UI: the saved view each sweep stores (checked against the UI MLflow ships), the
URLs `subnet-ray ui` prints, and, in headless Chromium on a finished smoke sweep, what those URLs render."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from browser import Page, chromium
from procs import free_port, kill_leftovers
from subnet_ray.cli import main
from subnet_ray.orchestration.runs_view import (
    GROUPED_KEY,
    VIEW_KEY,
    VIEW_TAG,
    headline_keys,
    runs_url,
    sweep_views,
    view_state,
    view_tag,
)
from subnet_ray.orchestration.tracking import Tracker
from subnet_ray.orchestration.tracking_store import default_tracking_uri

BUNDLE = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SUBNET_RAY_TEST_ARTIFACTS", REPO / ".test-artifacts"))


def _bundle_list(*first: str) -> list[str]:
    """Returns the JS string array in MLflow's shipped UI that starts with the strings `first` (e.g. its UI-state fields)."""
    pattern = re.compile(r'\[' + ",".join(f'"{re.escape(f)}"' for f in first) + r'(?:,"[A-Za-z]+")*\]')
    for f in sorted(BUNDLE.glob("*.js")):
        m = pattern.search(f.read_text(errors="replace"))
        if m:
            return json.loads(m.group(0))
    raise AssertionError(f"MLflow's UI bundle has no list starting with {list(first)}: the UI changed, check runs_view.py")


def test_view_uses_only_what_the_shipped_mlflow_ui_reads():
    """Each key of the view is a search facet or UI-state field of this MLflow's UI, and none of those it drops
    from a shared view; the URL parameters and tag prefix are the ones its code reads."""
    facets = _bundle_list("searchFilter", "orderByKey")
    ui_fields = _bundle_list("selectedColumns", "columnOrder")
    dropped = _bundle_list("runsExpanded", "runsPinned")  # left out when a shared view loads
    assert {"orderByKey", "orderByAsc"} <= set(facets) and {"compareRunCharts", "columnOrder"} <= set(ui_fields)
    for grouped in (False, True):
        state = view_state(["xa", "xb"], ["training.lr"], grouped=grouped)
        assert set(state) <= set(facets) | set(ui_fields), set(state) - set(facets) - set(ui_fields)
        assert not set(state) & set(dropped)
    assert {"groupBy", "useGroupedValuesInCharts"} <= set(state)
    text = "".join(f.read_text(errors="replace") for f in BUNDLE.glob("*.js"))
    for needle in ('"mlflow.sharedViewState."', '"viewStateShareKey"', 'get("workflowType")', 'MACHINE_LEARNING="machine_learning"',
                   '"compareRunsMode"', 'e+".`"+t+"`"'):  # the last: how a column id is made, e.g. metrics.`test_accuracy_mean`
        assert needle in text, needle
    key, value = view_tag(["xa"], [], now_ms=1000)
    envelope = json.loads(value)  # the UI's saved-view parser wants a string name and state and a numeric createdAt
    assert key == f"mlflow.sharedViewState.{VIEW_KEY}" and envelope["createdAt"] == envelope["updatedAt"] == 1000
    assert isinstance(envelope["name"], str) and json.loads(envelope["state"]) == view_state(["xa"], [])
    assert json.loads(json.loads(view_tag(["xa"], [], key=GROUPED_KEY)[1])["state"]) == view_state(["xa"], [], grouped=True)


def test_a_long_view_is_deflated_as_mlflow_writes_it_and_fits_a_tag():
    import base64
    import zlib

    from mlflow.utils.validation import MAX_EXPERIMENT_TAG_VAL_LENGTH

    from subnet_ray.orchestration.runs_view import TAG_LIMIT

    assert TAG_LIMIT == MAX_EXPERIMENT_TAG_VAL_LENGTH
    langs = [f"lang{i:03d}" for i in range(400)]
    plain = json.loads(view_tag(langs[:3], [])[1])["state"]
    assert json.loads(plain) == view_state(langs[:3], [])  # short: plain JSON, as a person can read it
    _, value = view_tag(langs, ["training.lr"])
    state = json.loads(value)["state"]
    assert len(value) <= TAG_LIMIT and state.startswith("deflate;")  # 400 languages: ~95 k of JSON
    assert json.loads(zlib.decompress(base64.b64decode(state.removeprefix("deflate;")))) == view_state(langs, ["training.lr"])


def test_headline_columns_come_first_in_order():
    cols = view_state(["xa", "xb"], ["training.lr"])["selectedColumns"]
    assert cols == ["params.`method`", "params.`seed`", "params.`random_seed`", "params.`grid.training.lr`",
                    "metrics.`test_accuracy_mean`", "metrics.`test_accuracy/xa`", "metrics.`test_accuracy/xb`",
                    # the headline correlations beside accuracy (names: analysis/headline.correlation_metrics)
                    "metrics.`corr/fig07/full/pearson_r`", "metrics.`corr/fig07/sft_subnet/pearson_r`",
                    "metrics.`corr/fig08/sft_subnet/pearson_r`",
                    "metrics.`change_in_pos_mean`", "metrics.`change_in_pos/xa`", "metrics.`change_in_pos/xb`",
                    "metrics.`change_in_neg_mean`", "metrics.`heads_disabled/xa`", "metrics.`heads_disabled/xb`"]
    state = view_state(["xa", "xb"], ["training.lr"])
    assert state["columnOrder"] == ["attributes.`Run Name`", *cols]
    assert state["orderByKey"] == "tags.`mlflow.runName`"  # not start time: children are rows, not folded in their parent
    assert headline_keys(["xa"], [], multi_task=True)[0] == ("tags", "task")
    charts = state["compareRunCharts"]
    assert {c["type"] for c in charts} == {"BAR", "SCATTER", "PARALLEL"}
    assert next(c for c in charts if c["type"] == "PARALLEL")["selectedParams"] == ["method", "grid.training.lr"]
    assert {c["metricSectionId"] for c in charts} == {s["uuid"] for s in state["compareRunSections"]}
    assert runs_url("http://h:1/", "7") == f"http://h:1/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    assert runs_url("http://h:1", "7", chart=True).endswith("&compareRunsMode=CHART")
    grouped = view_state(["xa"], ["training.lr"], multi_task=True, grouped=True)
    assert grouped["groupBy"] == {"aggregateFunction": "average", "groupByKeys": [
        {"mode": "tag", "groupByData": "task"}, {"mode": "param", "groupByData": "method"},
        {"mode": "param", "groupByData": "grid.training.lr"}]}
    assert grouped["searchFilter"] == "tags.`subnet_ray.role` = 'trial'" and state["searchFilter"] == ""
    assert "groupBy" not in state
    # each headline correlation has a chart in both views; a sweep without SFT has Fig 8 of full+subnet
    for view in (state, grouped):
        assert {c.get("metricKey") for c in view["compareRunCharts"]} >= {
            "corr/fig07/full/pearson_r", "corr/fig07/sft_subnet/pearson_r", "corr/fig08/sft_subnet/pearson_r"}
    full_only = view_state(["xa"], [], methods=["full"])
    corr = [c for c in full_only["selectedColumns"] if "corr/" in c]
    assert corr == ["metrics.`corr/fig07/full/pearson_r`", "metrics.`corr/fig08/full_subnet/pearson_r`"]


def test_each_invocation_rewrites_the_view_and_ui_names_it(tmp_path, capsys):
    root = tmp_path / "root"
    tracker = Tracker("viewsweep", root)
    tracker.set_view(["xa"], [])
    client = MlflowClient(default_tracking_uri(root))
    tags = client.get_experiment(tracker.experiment_id).tags
    first = json.loads(tags[VIEW_TAG])
    assert json.loads(tags[f"mlflow.sharedViewState.{GROUPED_KEY}"])["name"] == "subnet-ray: method x branch (mean over seeds)"
    time.sleep(0.01)
    Tracker("viewsweep", root).set_view(["xa", "yb"], ["training.lr"])  # a second invocation that added a language
    again = json.loads(client.get_experiment(tracker.experiment_id).tags[VIEW_TAG])
    assert again["createdAt"] == first["createdAt"] and again["updatedAt"] > first["updatedAt"]
    assert "metrics.`test_accuracy/yb`" in json.loads(again["state"])["selectedColumns"]
    Tracker("plain", root)  # an experiment without the view (made before it existed) is not listed
    assert sweep_views(default_tracking_uri(root)) == {"viewsweep": tracker.experiment_id}
    capsys.readouterr()
    assert main(["ui", "--root", str(root), "--sweep", "nosuch", "--port", str(free_port())]) == 2
    assert "sweep 'nosuch', --sweep: no such sweep in this MLflow store (sweeps with subnet-ray's view: viewsweep)" in capsys.readouterr().err


def test_open_waits_for_the_server_before_opening_the_browser(monkeypatch):
    import threading
    import webbrowser
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from subnet_ray.orchestration.tracking_store import open_when_up

    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    port = free_port()
    waiter = open_when_up(f"http://127.0.0.1:{port}", "http://view", timeout=60)
    time.sleep(1.5)
    assert opened == [] and waiter.is_alive()  # nothing answers yet: no browser on a dead page
    server = HTTPServer(("127.0.0.1", port), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        waiter.join(30)
        assert opened == ["http://view"] and not waiter.is_alive()
    finally:
        server.shutdown()


def _printed_urls(proc: subprocess.Popen, timeout: float = 120) -> dict[str, str]:
    """Returns {'runs table': url, 'charts': url} as `subnet-ray ui` prints them for the one sweep in the root."""
    urls, deadline = {}, time.monotonic() + timeout
    while len(urls) < 2:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "subnet-ray ui exited before printing its URLs"
        assert time.monotonic() < deadline, "subnet-ray ui printed no URLs in time"
        m = re.match(r"\s+sweep \S+, (runs table|charts):\s+(http://\S+)", line)
        if m:
            urls[m.group(1)] = m.group(2)
    return urls


@pytest.mark.slow
def test_printed_url_shows_child_runs_and_headline_columns_in_chromium(smoke_run, tmp_path):
    """sweeps/smoke.yaml run to the end (the shared run, copied); `subnet-ray ui` as a user starts it; its printed URLs in a fresh headless
    Chromium: the runs table in model-training mode with every child run as a row and the test-accuracy column
    showing the runs' values, and the chart view of the runs grouped by method with the comparison section."""
    if chromium() is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (the README's test command does it)")
    root, name = smoke_run.copy(tmp_path / "root"), smoke_run.spec.name
    client = MlflowClient(default_tracking_uri(root))
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name(name).experiment_id])}
    children = {n: r for n, r in runs.items() if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == ["full s1", "rsft s1 r1", "sft s1"]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "subnet_ray.cli", "ui", "--root", str(root), "--port", str(port)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        urls = _printed_urls(proc)
        exp = runs[name].info.experiment_id
        assert urls == {"runs table": runs_url(f"http://127.0.0.1:{port}", exp),
                        "charts": runs_url(f"http://127.0.0.1:{port}", exp, chart=True, key=GROUPED_KEY)}
        with Page(tmp_path / "chrome") as page:
            # this UI opens its assistant panel on a browser's first visit: closed, as a user closes it once
            page.goto(f"http://127.0.0.1:{port}/health")
            page.wait_for("OK", timeout=240)  # the server takes ~40 s to come up on a busy 2-core machine
            page.eval("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')")
            page.goto(urls["runs table"])
            text = page.wait_for(*children, "test_accuracy_mean", "method", "random-sft")
            assert "Sort: Run Name" in text and "GenAI apps" not in text
            for name, run in children.items():  # the column's cell in each child's row holds that run's metric
                shown = page.eval(f"""(() => {{
                    const row = [...document.querySelectorAll('[role=row]')].find(r => r.innerText.includes({json.dumps(name)}));
                    const id = row && row.getAttribute('row-id');
                    const cell = id && document.querySelector(`[role=row][row-id="${{id}}"] [col-id="metrics.\\`test_accuracy_mean\\`"]`);
                    return cell ? cell.innerText : null; }})()""")
                assert shown is not None and float(shown) == pytest.approx(run.data.metrics["test_accuracy_mean"]), name
            page.screenshot(ARTIFACTS / "mlflow_view_runs_table.png")
            # a long view is stored deflated (sweeps with hundreds of languages): the UI reads that form too
            client.set_experiment_tag(exp, *view_tag(["xa", "xb", "ya"], [], key="deflated", compress=True))
            page.goto(runs_url(f"http://127.0.0.1:{port}", exp, key="deflated"))
            text = page.wait_for("deflated", *children, "test_accuracy_mean")  # the active view's name in the views menu
            assert "Sort: Run Name" in text and "share key" not in text  # not MLflow's 'share key is invalid'
            page.goto(urls["charts"])
            # grouped by method: one bar per method, the mean over its seeds (one seed here)
            page.wait_for("subnet-ray: methods and branches", "test_accuracy_mean", "change_in_pos_mean", "Group by: method",
                          "Group: full", "Group: sft", "Group: random-sft")
            plots = page.eval("document.querySelectorAll('.js-plotly-plot').length")
            assert plots >= 3, f"{plots} charts drawn"
            page.screenshot(ARTIFACTS / "mlflow_view_charts.png")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # `subnet-ray ui` stops its MLflow server on SIGTERM
        try:
            proc.wait(timeout=30)
        finally:
            kill_leftovers(pgid=proc.pid)
