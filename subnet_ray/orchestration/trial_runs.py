"""The trials' child runs in MLflow: their names, settings and results, logged live and after the waves.

One child run per Tune trial (found again by its identity tag, so a rerun adds no run): every
resolved setting of its branch as params, per-epoch fine-tuning metrics as the epochs end, and
after the waves the headline results (test accuracy, heads disabled, shares and their changes),
the report's correlations and verdicts on the paper's findings about its model (metric and tag
names in analysis/headline.py and the README), and the artifacts of its stage outputs, each
logged once per experiment. A pooled report's correlations and verdicts go on the parent run.
"""
from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path

from ..sweep.config import SweepSpec, branches
from ..sweep.graph import Node, branch_of
from ..train.pretrain import HISTORY as PRETRAIN_HISTORY
from ..stages import HISTORY
from ..storage.store import Store
from .mlflow_values import epoch_metrics


def branch_label(values: dict) -> str:
    """Returns a branch's grid values as '/lr=0.001' (empty without a grid), the key of collected results."""
    return "".join(f"/{k.split('.')[-1]}={v}" for k, v in values.items())


def run_identity(*parts: str) -> str:
    """Returns a short stable id of what a run stands for (found again by its tag on a rerun)."""
    import hashlib

    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


METHOD_SHORT = {"full": "full", "sft": "sft", "random-sft": "rsft", "pretrain": "pretrain"}
NAME_LIMIT = 39  # MLflow's runs table shows about this much of a name


def run_name(node: Node, branch_index: int, multi_task: bool) -> str:
    """Returns a trial's run name, what tells it apart first: grid values, method, seed, random seed (task last
    when the sweep has several), e.g. 'lr=0.001 rsft s1 r2'; under NAME_LIMIT characters."""
    p = node.params
    tail = [METHOD_SHORT.get(getattr(p, "method", "full"), getattr(p, "method", "")), f"s{p.seed}"]
    if getattr(p, "random_seed", None) is not None and getattr(p, "method", None) == "random-sft":
        tail.append(f"r{p.random_seed}")
    if multi_task:
        tail.append(p.task)
    grid = ",".join(f"{k.split('.')[-1]}={v}" for k, v in p.branch.items())
    name = " ".join([grid, *tail]) if grid else " ".join(tail)
    if len(name) > NAME_LIMIT:  # long grid values: the branch's number instead (its values are params)
        name = " ".join([f"b{branch_index}", *tail])
    return name[:NAME_LIMIT]


def _trial_run_fields(spec: SweepSpec, trial_nodes: list[Node]) -> tuple[dict, dict, str]:
    """Returns (tags, params, identity) of a trial's child run: every resolved setting of its branch as
    params, what it is as short tags, and an identity that is the same on every invocation."""
    first = next((n for n in trial_nodes if n.stage == "finetune"), trial_nodes[0])
    p = first.params
    keys: dict[str, list[str]] = defaultdict(list)
    for n in trial_nodes:
        keys[n.stage].append(n.key.split("/")[-1][:8])
    branch = branch_of(spec, p.branch).model_dump(mode="json", exclude={"random_seeds", "grid", "name"})
    branch["training"].pop("seeds", None)  # this run's seed is `seed`
    branch["tasks"] = [t for t in branch["tasks"] if t["id"] == p.task]
    method = getattr(p, "method", "full")  # no fine-tuning node of its own: it shares the full model of another branch
    tags = {"task": p.task, "seed": p.seed, "method": method, "random_seed": getattr(p, "random_seed", None) if method == "random-sft" else None,
            "branch": ",".join(f"{k}={v}" for k, v in p.branch.items()) or None, "trial": first.trial,
            **{f"keys.{stage}": " ".join(ks) for stage, ks in keys.items()}}
    params = {"sweep": spec.name, "method": method, "seed": p.seed, **branch,
              **({"random_seed": p.random_seed} if getattr(p, "method", None) == "random-sft" else {}),
              **{f"grid.{k}": v for k, v in p.branch.items()}}
    return tags, params, run_identity(spec.name, first.trial, first.key)


class TrialLog:
    """The trials' child runs of one invocation: per-epoch metrics logged live, as each epoch ends,
    then whatever is left (stages found in the store, epochs missed live), the headline results and the
    artifacts after the waves.

    Each (trial, node, epoch) is logged once: a retried trial may report an epoch again, and a run an
    earlier invocation made for the same trial (found by its identity tag) is reused, adding only what is new.
    """

    def __init__(self, tracker, nodes: list[Node], spec: SweepSpec):
        self.tracker, self.spec = tracker, spec
        self.nodes = {n.key: n for n in nodes}
        self.by_trial: dict[str, list[Node]] = defaultdict(list)
        for n in nodes:
            self.by_trial[n.trial].append(n)
        labels = [branch_label(v) for v, _ in branches(spec)]
        multi_task = len(spec.tasks) > 1
        self.names = {}
        for trial, tn in self.by_trial.items():
            first = next((n for n in tn if n.stage == "finetune"), tn[0])
            self.names[trial] = run_name(first, labels.index(branch_label(first.params.branch)), multi_task)
        self.logged: set[tuple[str, int]] = set()  # (node key, epoch): a key names its trial
        self._runs: dict = {}  # trial -> its TrialRun, so live epochs do not re-send the tags

    def run(self, trial: str):
        """Returns the trial's child run, created (or found from an earlier invocation) on first use."""
        if trial not in self._runs:
            tags, params, identity = _trial_run_fields(self.spec, self.by_trial[trial])
            self._runs[trial] = self.tracker.trial(self.names[trial], tags, params, identity=identity)
        return self._runs[trial]

    def run_ids(self) -> dict[str, dict]:
        """Returns trial name -> {name, run_id, url} of every trial's MLflow run (opening the runs not yet open);
        url is the run's page relative to the MLflow UI's address."""
        exp = self.tracker.experiment_id
        return {trial: {"name": self.names[trial], "run_id": self.run(trial).run_id,
                        "url": f"#/experiments/{exp}/runs/{self.run(trial).run_id}"} for trial in self.by_trial}

    def epoch(self, node_key: str, epoch: int, metrics: dict[str, float]) -> bool:
        """Returns True after logging `metrics` of the node's epoch, False if that epoch was already logged."""
        node = self.nodes[node_key]
        seen = (node.key, int(epoch))
        if seen in self.logged:
            return False
        run = self.run(node.trial)
        if int(epoch) in run.logged_steps("train_loss"):  # logged by an earlier invocation
            self.logged.add(seen)
            return False
        run.log_epoch(int(epoch), metrics)
        self.logged.add(seen)
        return True

    def live(self, node_key: str, epoch: int, metrics: dict[str, float]) -> None:
        """Logs a fine-tuning epoch as it ends; a failure only warns: the epoch is logged after the waves.

        After a tracking server stopped answering, no epoch tries again (each try would wait out the
        client's retries while the training waits): the runner asks the server again after the waves.
        """
        if self.tracker.lost is not None:
            return
        try:
            self.epoch(node_key, epoch, metrics)
        except Exception as e:  # noqa: BLE001 - hours of training must not die on a tracking hiccup
            from .faults import kind_of

            found = kind_of(e)
            lost = found is not None and found[0] == "tracking"
            if lost:
                self.tracker.lost = e
            warnings.warn(f"live MLflow metrics of {node_key} epoch {epoch}: {e!r}; logged after the waves instead"
                          + ("; no more live metrics in this invocation (the tracking server does not answer)" if lost else ""),
                          stacklevel=2)

    def tune_result(self, result: dict) -> None:
        """Logs a Tune trial's epoch result (one that names its node); other results are not epochs."""
        if "node" in result and "epoch" in result:
            metrics = {k: v for k, v in result.items() if k in ("train_loss", "dev_accuracy_mean") or k.startswith("dev_accuracy/")}
            self.live(result["node"], result["epoch"], metrics)

    def _results(self, trial_nodes: list[Node], collected: dict, summaries: dict) -> tuple[dict[str, float], dict[str, str]]:
        """Returns (metrics, tags) of a trial's model: its headline metrics (test accuracy, shares, changes, heads
        disabled), and from its report (`summaries`: (branch label, seed) -> summary.json) the correlations of the
        variants it scores and the verdicts on the findings about it."""
        from ..analysis.headline import correlation_metrics, model_metrics, verdict_fields

        first = next((n for n in trial_nodes if n.stage == "finetune"), trial_nodes[0])
        p = first.params
        method = getattr(p, "method", "full")  # a trial without its own fine-tuning (shared with another branch) is a full one
        if method == "pretrain":
            return {}, {}
        model = method if method != "random-sft" else f"random-sft:{p.random_seed}"
        results = collected.get((branch_label(p.branch), p.seed), [])
        t = next((r for r in results if r.task == p.task), None)
        metrics = model_metrics(t, model) if t is not None else {}
        tags = {}
        summary = summaries.get((branch_label(p.branch), p.seed))
        if summary is not None:
            metrics |= correlation_metrics([c for c in summary.get("correlations", []) if c["task"] == p.task], model)
            if p.task in summary.get("effects", {}):
                m, tags = verdict_fields(summary["effects"][p.task], model)
                metrics |= m
        return metrics, tags

    def _artifacts(self, child, path: str, folder: Path, masks: bool = False) -> None:
        """Logs a stage folder once (a reused run keeps what it has), with a PNG and JSON view beside each mask."""
        if child.has_artifact(path):
            return
        if not masks:
            child.log_artifacts(folder, path)
            return
        import shutil
        import tempfile

        from ..analysis.mask_figures import write_mask_views

        with tempfile.TemporaryDirectory() as tmp:
            view = Path(tmp) / "masks"
            shutil.copytree(folder, view)
            write_mask_views(view)
            child.log_artifacts(view, path)

    def finish(self, store: Store, collected: dict | None = None, summaries: dict | None = None) -> None:
        """Logs each trial's epochs not logged live (from history.json), its headline metrics, correlations and
        verdicts (`summaries`: (branch label, seed) -> its report's summary.json; (branch label, 'pooled') -> the
        pooled report's, logged on the parent run), masks and influence tables; ends its run.

        A stage output's artifacts are logged once per experiment: when an earlier finished run holds
        them, this run gets a tag naming that run instead of another copy.
        """
        from .mlflow_values import metric_name
        from .tracking import LOGGED_TAG

        earlier = self.tracker.logged_artifacts()
        for trial, tn in self.by_trial.items():
            child = self.run(trial)
            for n in tn:
                if not store.done(n.key):
                    continue
                folder = store.path(n.key)
                if n.stage == "finetune":
                    for r in json.loads((folder / HISTORY).read_text()):
                        self.epoch(n.key, r["epoch"], epoch_metrics(r))
                    continue
                if n.stage == "pretrain":  # its run's train_loss is the masked-LM loss
                    for r in json.loads((folder / PRETRAIN_HISTORY).read_text()):
                        self.epoch(n.key, r["epoch"], {"train_loss": r["mlm_loss"]})
                    continue
                tag = LOGGED_TAG + n.key.replace("/", ".")
                if tag in earlier:
                    child.set_tags({tag: earlier[tag]})
                    continue
                if n.stage == "subnetworks":
                    self._artifacts(child, "masks", folder, masks=True)
                elif n.stage == "random_masks":
                    self._artifacts(child, f"random_masks/seed{n.params.random_seed}", folder, masks=True)
                elif n.stage == "influence":
                    self._artifacts(child, f"influence/{n.params.variant.replace(':', '_')}", folder)
                child.set_tags({tag: child.run_id})
            metrics, tags = self._results(tn, collected or {}, summaries or {})
            if tags:
                child.set_tags(tags)
            if child.reused:  # only what is new or changed: a rerun does not repeat the history
                have = self.tracker.client.get_run(child.run_id).data.metrics
                metrics = {k: v for k, v in metrics.items() if have.get(metric_name(k)) != v}
            if metrics:
                child.log_metrics(metrics)
            child.end("FINISHED")
        self._pooled(summaries or {})

    def _pooled(self, summaries: dict) -> None:
        """Logs each pooled report's correlations and verdicts on the parent run, named
        'pooled/[<setting>_<value>/...]<task>/...' (the branch's grid values, none without a grid)."""
        from ..analysis.headline import pooled_fields

        for (label, seed), summary in summaries.items():
            if seed != "pooled":
                continue
            prefix = "pooled/" + "".join(f"{part.replace('=', '_')}/" for part in label.split("/") if part)
            metrics, tags = pooled_fields(summary, prefix)
            self.tracker.parent.set_tags(tags)
            self.tracker.parent.log_metrics(metrics)
