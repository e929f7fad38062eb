"""Per-epoch fine-tuning metrics reach MLflow live, while a sweep runs, each epoch exactly once."""
import json
import warnings

import pytest
from mlflow import MlflowClient

from subnet_ray.sweep.config import load_sweep
from subnet_ray.orchestration.runner import run_sweep
from subnet_ray.orchestration.trial_runs import TrialLog, run_name
from subnet_ray.orchestration.mlflow_values import epoch_metrics
from subnet_ray.storage.store import store_for
from subnet_ray.orchestration.tracking import Tracker, TrialRun, default_tracking_uri
from subnet_ray.sweep.graph import graph
from subnet_ray.stages import HISTORY
from tiny import smoke_sweep

# the smoke sweep with fewer influence variants (no random-sft, no composition)
SWEEP = smoke_sweep("live", ("methods: [full, sft, random-sft]", "methods: [full, sft]"),
                    ("analysis: {random_test_language: xa, compose: [[xa, xb]]}", "analysis: {random_test_language: xa}"))

HISTORY_ROWS = [
    {"epoch": 1, "train_loss": 0.6931, "dev_accuracy": {"xa": 0.5, "xb": 0.25, "ya": 0.625}, "dev_accuracy_mean": 0.4583333333333333},
    {"epoch": 2, "train_loss": 0.4107, "dev_accuracy": {"xa": 0.75, "xb": 0.5, "ya": 0.875}, "dev_accuracy_mean": 0.7083333333333334},
]


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "live.yaml"
    p.write_text(SWEEP)
    return load_sweep(p)


class Calls:
    """Every TrialRun.log_epoch call of a sweep: (trial, epoch, whether its fine-tuning was already in
    the store, and whether it came before TrialLog.finish, i.e. from the live path)."""

    def __init__(self, monkeypatch, store, nodes):
        self.rows, self.after_waves = [], False
        finetune = {run_name(n, 0, False): n.key for n in nodes if n.stage == "finetune"}  # by run name
        log_epoch, finish = TrialRun.log_epoch, TrialLog.finish

        def spy_log_epoch(run, epoch, metrics):
            self.rows.append((run.name, epoch, store.done(finetune[run.name]), not self.after_waves))
            return log_epoch(run, epoch, metrics)

        def spy_finish(log, *args):
            self.after_waves = True
            try:
                return finish(log, *args)
            finally:
                self.after_waves = False

        monkeypatch.setattr(TrialRun, "log_epoch", spy_log_epoch)
        monkeypatch.setattr(TrialLog, "finish", spy_finish)


def children(client: MlflowClient, parent_id: str) -> dict:
    """Returns {run name: run} of the child runs of one sweep invocation."""
    exp = client.get_experiment_by_name("live")
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


def assert_metrics_are_history(client: MlflowClient, runs: dict, store, nodes) -> None:
    """Each fine-tuning trial's MLflow metrics are its history.json, one entry per epoch, no others."""
    tuned = [n for n in nodes if n.stage == "finetune"]
    assert len(tuned) == 2
    for n in tuned:
        history = json.loads((store.path(n.key) / HISTORY).read_text())
        expected: dict[str, list] = {}
        for r in history:
            for k, v in epoch_metrics(r).items():
                expected.setdefault(k, []).append((r["epoch"], v))
        run = runs[run_name(n, 0, False)]
        # the epochs' metrics, and besides them only the results logged once after the waves (step 0)
        per_epoch = {k for k in run.data.metrics if k.startswith(("dev_accuracy", "train_loss"))}
        assert per_epoch == set(expected), n.trial
        for k, want in expected.items():
            got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
            assert got == want, (n.trial, k)  # exact floats, one entry per epoch
        assert len(expected["dev_accuracy_mean"]) == 2 and {"dev_accuracy/xa", "dev_accuracy/ya"} <= set(expected)


def test_local_sweep_logs_each_epoch_while_it_trains_and_a_rerun_logs_history(spec, tmp_path, monkeypatch):
    root = tmp_path / "root"
    store, nodes = store_for(root), graph(spec)
    calls = Calls(monkeypatch, store, nodes)
    first = run_sweep(spec, root, executor="local", progress=False)
    trials = {run_name(n, 0, False) for n in nodes if n.stage == "finetune"}
    assert sorted((t, e) for t, e, _, _ in calls.rows) == sorted((t, e) for t in trials for e in (1, 2))
    # every epoch went to MLflow from inside the fine-tuning, before its stage was published
    assert all(not done and live for _, _, done, live in calls.rows), calls.rows
    client = MlflowClient(default_tracking_uri(root))
    assert_metrics_are_history(client, children(client, first.parent_run_id), store, nodes)

    calls.rows.clear()
    again = run_sweep(spec, root, executor="local", progress=False)
    assert again.computed == []
    # nothing trained, and the runs of the first invocation are reused: no epoch is logged again
    assert again.parent_run_id == first.parent_run_id and calls.rows == []
    assert_metrics_are_history(client, children(client, again.parent_run_id), store, nodes)


@pytest.mark.slow  # ~105 s here (2 shared cores): Ray start-up and three waves of Tune trials
def test_ray_sweep_logs_epochs_from_the_tune_callback(spec, tmp_path, monkeypatch):
    import ray

    root = tmp_path / "root"
    store, nodes = store_for(root), graph(spec)
    calls = Calls(monkeypatch, store, nodes)
    seen = []
    tune_result = TrialLog.tune_result

    def spy_tune_result(log, result):
        if "node" in result:
            seen.append((result["node"], result["epoch"]))
        return tune_result(log, result)

    monkeypatch.setattr(TrialLog, "tune_result", spy_tune_result)
    try:
        run = run_sweep(spec, root, num_cpus=2, progress=False)
    finally:
        ray.shutdown()
    tuned = [n for n in nodes if n.stage == "finetune"]
    assert sorted(seen) == sorted((n.key, e) for n in tuned for e in (1, 2))  # the driver got every epoch from Tune
    assert sorted((t, e) for t, e, _, _ in calls.rows) == sorted((run_name(n, 0, False), e) for n in tuned for e in (1, 2))
    assert all(live for *_, live in calls.rows), calls.rows  # none left for after the waves
    client = MlflowClient(default_tracking_uri(root))
    assert_metrics_are_history(client, children(client, run.parent_run_id), store, nodes)


@pytest.fixture(scope="module")
def mlflow_root(tmp_path_factory):
    """One MLflow store for the unit tests (creating a SQLite schema takes seconds); each test has its own parent run."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def trial_log(spec, mlflow_root, request):
    """A TrialLog of the tiny sweep's graph on a started tracker (no stage computed); an experiment per test,
    so no test reuses another's runs."""
    with Tracker(f"live-{request.node.name[:60]}", mlflow_root) as tracker:
        tracker.start("invocation", {}, {})
        yield TrialLog(tracker, graph(spec), spec), tracker


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_an_epoch_reported_twice_is_logged_once_and_history_fills_only_the_gaps(trial_log, tmp_path):
    log, tracker = trial_log
    node = next(n for n in log.nodes.values() if n.stage == "finetune" and n.params.method == "sft")
    first = epoch_metrics(HISTORY_ROWS[0])
    # as Tune delivers it: our metrics among Tune's own fields; a retried trial reports epoch 1 again
    result = {"epoch": 1, "node": node.key, **first, "training_iteration": 1, "time_total_s": 3.2, "done": False,
              "config": {"trial": node.trial}}
    log.tune_result(result)
    log.tune_result({**result, "training_iteration": 2})
    log.tune_result({"done": 1, "computed": 1, "training_iteration": 3})  # the trial's last result is no epoch
    client = tracker.client
    run = log.run(node.trial)
    assert _history(client, run.run_id, "dev_accuracy/xb") == [(1, 0.25)]
    assert set(client.get_run(run.run_id).data.metrics) == set(first)  # no Tune fields, no 'epoch'

    store = store_for(tmp_path / "root")
    with store.writing(node.key) as out:  # the stage as it is published: epoch 1 was live, epoch 2 was not
        (out / HISTORY).write_text(json.dumps(HISTORY_ROWS))
    log.finish(store)
    for k, v in first.items():
        assert _history(client, run.run_id, k) == [(1, v), (2, epoch_metrics(HISTORY_ROWS[1])[k])], k
    assert client.get_run(run.run_id).info.status == "FINISHED"
    tags = client.get_run(run.run_id).data.tags
    assert tags["method"] == "sft" and tags["keys.finetune"] == node.key.split("/")[-1][:8]  # as after the waves
    assert client.get_run(run.run_id).data.params["method"] == "sft"


def test_stages_found_in_the_store_log_their_history_after_the_waves(trial_log, tmp_path):
    log, tracker = trial_log
    node = next(n for n in log.nodes.values() if n.stage == "finetune" and n.params.method == "full")
    store = store_for(tmp_path / "root")
    with store.writing(node.key) as out:
        (out / HISTORY).write_text(json.dumps(HISTORY_ROWS))
    log.finish(store)  # nothing was live in this invocation
    run = log.run(node.trial)
    for k in epoch_metrics(HISTORY_ROWS[0]):
        assert _history(tracker.client, run.run_id, k) == [(r["epoch"], epoch_metrics(r)[k]) for r in HISTORY_ROWS], k


def test_a_failed_live_write_warns_and_the_epoch_is_logged_after_the_waves(trial_log, tmp_path, monkeypatch):
    log, tracker = trial_log
    node = next(n for n in log.nodes.values() if n.stage == "finetune" and n.params.method == "full")
    log_epoch = TrialRun.log_epoch

    def down(run, epoch, metrics):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(TrialRun, "log_epoch", down)
    with pytest.warns(UserWarning, match=f"{node.key} epoch 1.*tracking server went away"):
        log.live(node.key, 1, epoch_metrics(HISTORY_ROWS[0]))  # the training goes on
    monkeypatch.setattr(TrialRun, "log_epoch", log_epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log.live(node.key, 2, epoch_metrics(HISTORY_ROWS[1]))
    store = store_for(tmp_path / "root")
    with store.writing(node.key) as out:
        (out / HISTORY).write_text(json.dumps(HISTORY_ROWS))
    log.finish(store)
    run = log.run(node.trial)
    assert _history(tracker.client, run.run_id, "train_loss") == [(1, 0.6931), (2, 0.4107)]


def _corr(figure, variant, r, task="babel", **ids):
    """A report correlation as summary.json holds it (FigureWriter.correlation): Spearman's interval undefined."""
    return {"figure": figure, "task": task, "what": "x vs y", "x": "x", "y": "y", "variant": variant, **ids, "pearson_r": r, "pearson_p": 0.01,
            "spearman_r": r - 0.125, "spearman_p": 0.02, "n": 12, "pearson_ci": [r - 0.25, r + 0.125], "spearman_ci": [None, None]}


def test_report_correlations_and_verdicts_land_on_the_run_of_their_model(trial_log, tmp_path):
    log, tracker = trial_log
    summary = {
        "correlations": [_corr("fig07", "full", -0.5, split="test"), _corr("fig07", "full+subnet", -0.375),
                         _corr("fig07", "sft+subnet", 0.25), _corr("fig08", "sft+subnet", 0.625),
                         _corr("fig09", "sft+subnet", 0.125, layer=1), _corr("fig07", "full", 0.875, task="other")],
        "effects": {"babel": {
            "checks": {"full_cross_language": "holds", "subnet_raises_in_language": "inconclusive",
                       "random_below_subnet": None, "similarity_tracks_influence": "contradicted"},
            "evidence": {"similarity_tracks_influence": {"variant": "sft+subnet"}}}},
    }
    pooled = {"effects": {"babel": {
        "checks": {"subnet_raises_in_language": "holds", "similarity_tracks_influence": "inconclusive"},
        "evidence": {"similarity_tracks_influence": {"variant": "sft+subnet"}},
        "similarity_vs_positive_share": {"variant": "sft+subnet", "pearson_r": 0.375, "pearson_p": 0.5, "pearson_ci": [-0.5, 0.875],
                                         "spearman_r": 0.25, "spearman_p": 0.625, "spearman_ci": [-0.75, 0.875], "n": 24, "seeds": 2}}}}
    log.finish(store_for(tmp_path / "root"), {}, {("", 1): summary, ("", "pooled"): pooled})
    client = tracker.client  # read back from the SQLite store
    runs = {client.get_run(log.run(t).run_id).data.tags["method"]: client.get_run(log.run(t).run_id).data for t in log.by_trial}
    full, sft = runs["full"], runs["sft"]
    assert {k: v for k, v in full.metrics.items() if k.startswith("corr/")} == {
        "corr/fig07/full/pearson_r": -0.5, "corr/fig07/full/pearson_p": 0.01, "corr/fig07/full/pearson_low": -0.75,
        "corr/fig07/full/pearson_high": -0.375, "corr/fig07/full/spearman_r": -0.625, "corr/fig07/full/spearman_p": 0.02,
        "corr/fig07/full/n": 12.0,  # Spearman's undefined interval is left out, the other task's correlation too
        "corr/fig07/full_subnet/pearson_r": -0.375, "corr/fig07/full_subnet/pearson_p": 0.01,
        "corr/fig07/full_subnet/pearson_low": -0.625, "corr/fig07/full_subnet/pearson_high": -0.25,
        "corr/fig07/full_subnet/spearman_r": -0.5, "corr/fig07/full_subnet/spearman_p": 0.02, "corr/fig07/full_subnet/n": 12.0}
    assert {k: v for k, v in sft.metrics.items() if k.endswith("pearson_r")} == {
        "corr/fig07/sft_subnet/pearson_r": 0.25, "corr/fig08/sft_subnet/pearson_r": 0.625, "corr/fig09/sft_subnet/layer1/pearson_r": 0.125}
    assert {k: v for k, v in full.tags.items() if k.startswith("verdict/")} == {
        "verdict/full_cross_language": "holds", "verdict/subnet_raises_in_language": "inconclusive", "verdict/random_below_subnet": "null"}
    assert {k: v for k, v in full.metrics.items() if k.startswith("verdict/")} == {
        "verdict/full_cross_language": 1.0, "verdict/subnet_raises_in_language": 0.0}
    # Fig 8 used the SFT model's subnetworks: its verdict is about the SFT run
    assert sft.tags["verdict/similarity_tracks_influence"] == "contradicted" and sft.metrics["verdict/similarity_tracks_influence"] == -1.0
    parent = client.get_run(tracker.parent.run_id).data
    assert parent.metrics["pooled/babel/corr/fig08/sft_subnet/pearson_r"] == 0.375
    assert parent.metrics["pooled/babel/corr/fig08/sft_subnet/spearman_low"] == -0.75
    assert parent.tags["pooled/babel/verdict/subnet_raises_in_language"] == "holds"
    assert parent.metrics["pooled/babel/verdict/similarity_tracks_influence"] == 0.0
    assert not [k for k in full.metrics if k.startswith("pooled/")]
