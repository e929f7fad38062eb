"""The sweep driver: run the stage graph in waves, write the report, log everything to MLflow.

Waves: (1) full fine-tuning, subnetworks and random masks, (2) SFT / random-SFT, as Ray Tune
trials; (3) influence, one Tune trial per model x mask variant, or, when `influence.actors` > 1
(paper-sized jobs), each variant sharded on a Ray Data actor pool from the driver; then (4) the
report. With
`executor="local"` the same nodes run in this process, no Ray at all. Every node goes
through the artifact store, so a rerun, a resume or new random seeds compute only what is
missing; each computation is recorded in the store's ledger (`Store.record`), which is
how `status` and the tests count what ran. MLflow is written from this process only:
fine-tuning epochs as they end (Tune reports them here), the rest after the waves (TrialLog).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..config import SweepSpec, branches
from ..graph import Node, Stage, branch_of, graph
from ..lease import file_lock, held, lease
from ..stages import HISTORY, execute, task_data
from ..store import Store, store_for
from .tracking import epoch_metrics
from .workers import use_cpus


def _branch_label(values: dict) -> str:
    """Returns a branch's grid values as '/lr=0.001' (empty without a grid), the key of collected results."""
    return "".join(f"/{k.split('.')[-1]}={v}" for k, v in values.items())


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ledger(store: Store) -> list[dict]:
    """Returns every node computation recorded in the store, oldest first."""
    return store.ledger()


def report_dir(root: str | os.PathLike, spec: SweepSpec, branch: dict, seed: int) -> Path:
    """Returns where the report of one branch and seed goes: <root>/reports/<sweep>[/<branch>-seed<k>]."""
    base = Path(str(root)) / "reports" / spec.name
    if len(branches(spec)) == 1 and len(spec.training.seeds) == 1:
        return base
    label = "-".join(f"{k.split('.')[-1]}{_label(v)}" for k, v in branch.items()) or "base"
    return base / f"{label}-seed{seed}"


def _label(value) -> str:
    """Returns a grid value as a path component: itself if safe (config.SAFE_NAME), else a short hash."""
    import hashlib

    from ..config import safe_name

    try:
        return safe_name(str(value), "grid value")
    except ValueError:
        return "h" + hashlib.sha256(str(value).encode()).hexdigest()[:8]


@dataclass
class SweepRun:
    """What a sweep invocation did."""

    computed: list[str] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    parent_run_id: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per wave: train, sft, influence, report


def write_reports(spec: SweepSpec, root, store: Store, collected: dict | None = None, runs: dict | None = None) -> list[Path]:
    """Returns the report folders written from what the store holds, one per branch and seed.

    `collected`, if given, receives (branch label, seed) -> the TaskResults each report was built
    from; `runs` (trial name -> MLflow run id) is linked from each report's header.
    """
    from ..analysis.report import build_report
    from .provenance import provenance
    from .results import collect

    out = []
    verify_store(store, graph(spec), inputs=False)  # a damaged output is moved aside: missing, never read
    for values, b in branches(spec):
        nodes = graph(b)  # this branch's own nodes, including those it shares with other branches
        for seed in b.training.seeds:
            results = collect(store, b, nodes, seed)
            if collected is not None:
                collected[(_branch_label(values), seed)] = results
            if not results:
                continue
            folder = report_dir(root, spec, values, seed)
            mine = {n.trial for n in nodes if n.params.seed == seed}
            build_report(results, folder, spec.name,
                         provenance=provenance(spec, b, values, seed, {t: r for t, r in (runs or {}).items() if t in mine}))
            out.append(folder)
    return out


def save_sweep(spec: SweepSpec, root) -> Path | None:
    """Returns where the resolved sweep file was copied in the root (<root>/sweeps/<name>.yaml); None for a remote root."""
    import yaml

    if "://" in str(root):
        return None
    path = Path(str(root)) / "sweeps" / f"{spec.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return path


def verify_store(store: Store, nodes: list[Node], inputs: bool = True, say=_say) -> list[str]:
    """Returns the keys of damaged outputs found and moved aside (so they count as missing and are recomputed).

    Every finished node is checked against its manifest: sizes, and hashes of small files (masks, JSON,
    tables); with `inputs`, every hash of the finished inputs of nodes still to compute (the
    checkpoints and masks this invocation will load). Outputs without a manifest (legacy) are
    used unchecked, and said so once.
    """
    damaged, level, legacy = [], {}, []
    while True:
        missing = {n.key for n in nodes if not store.done(n.key)}
        wanted = {i for n in nodes if n.key in missing for i in n.inputs} if inputs else set()
        found = False
        for n in nodes:
            need = "all" if n.key in wanted else "small"
            if n.key in missing or level.get(n.key) in (need, "all"):
                continue
            problems = store.check(n.key, need)
            level[n.key] = need
            if problems is None:
                legacy.append(n.key)
            elif problems:
                where = store.set_aside(n.key, problems)
                say(f"damaged stage output {n.key} ({n.stage}, {n.trial}): {'; '.join(problems)}; moved aside to {where}, recomputing it")
                damaged.append(n.key)
                found = True
        if not found:
            break
    if legacy:
        say(f"{len(set(legacy))} stage output(s) predate manifests (legacy): used without size or hash checks")
    return damaged


def _announce_held(store: Store, plan: dict[str, list[Node]]) -> None:
    """Says which of the wave's outputs another live invocation is computing (this one will wait for them)."""
    for trial_nodes in plan.values():
        for n in trial_nodes:
            holder = held(store, n.key)
            if holder is not None:
                _say(f"stage output {n.key} ({n.stage}, {n.trial}) is being computed by {holder}: this invocation waits for it")


def _log_reports(tracker, spec: SweepSpec, folders: list[Path]) -> None:
    """Logs the report folders to the parent run, unless an earlier finished run logged the same bytes."""
    import hashlib

    from .tracking import LOGGED_TAG

    earlier = tracker.logged_artifacts()
    for folder in folders:
        h = hashlib.sha256()
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
        tag = f"{LOGGED_TAG}report.{h.hexdigest()[:20]}"
        if tag in earlier:
            tracker.parent.set_tags({tag: earlier[tag]})
            continue
        tracker.parent.log_artifacts(folder, f"report/{folder.name}" if folder.name != spec.name else "report")
        tracker.parent.set_tags({tag: tracker.parent.run_id})


def report_lease(store: Store, spec: SweepSpec):
    """Returns the lease (a context manager) on the sweep's report folders: one invocation writes and logs them at a time."""
    return lease(store, Store.key("report", {"sweep": spec.name}), on_wait=_say)


def _plan(nodes: list[Node], store: Store, wave: int) -> dict[str, list[Node]]:
    """Returns the wave's missing nodes by Tune trial: a training trial's stages run in order in one
    trial; each influence node is a trial of its own, so variants score in parallel."""
    plan: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        if n.wave == wave and not store.done(n.key):
            plan[f"{n.trial}/{n.params.variant}" if n.stage == Stage.INFLUENCE else n.trial].append(n)
    return dict(plan)


def run_sweep(spec: SweepSpec, root: str | os.PathLike, *, address: str | None = None, tracking_uri: str | None = None,
              executor: str = "ray", random_seeds: list[int] | None = None, progress: bool = True,
              num_cpus: int | None = None) -> SweepRun:
    """Returns what was computed and where the reports are, after running the whole sweep.

    Fails fast, before any compute, on an unreachable tracking server or cluster. SIGINT and SIGTERM
    stop it where it is (no later stage or wave starts, running trials are stopped, finished outputs
    kept, this invocation's MLflow runs end KILLED) and raise interrupts.Interrupted.
    """
    from .interrupts import handling

    with handling():
        return _run_sweep(spec, root, address=address, tracking_uri=tracking_uri, executor=executor,
                          random_seeds=random_seeds, progress=progress, num_cpus=num_cpus)


def _run_sweep(spec, root, *, address, tracking_uri, executor, random_seeds, progress, num_cpus) -> SweepRun:
    from .interrupts import raise_if_interrupted, reinstall
    from .tracking import Tracker, flat_params
    from .tracking_store import check_tracking_uri, default_tracking_uri

    if executor not in ("ray", "local"):
        raise ValueError(f"executor must be 'ray' or 'local', got {executor!r}")
    if random_seeds is not None:
        spec = spec.model_copy(update={"random_seeds": sorted(set(spec.random_seeds) | set(random_seeds))})
    nodes = graph(spec)
    use_cpus(spec.resources.cpus)  # as every trial and actor does: the same numbers on every executor
    root_s = str(root)
    for values, b in branches(spec):  # missing data or columns fail here, before Ray, MLflow or the root
        for task in b.tasks:
            task_data(b, task.id)
    check_tracking_uri(tracking_uri or default_tracking_uri(root))  # writes nothing: fail before Ray starts
    if executor == "ray":  # before the root and MLflow: a cluster that will not take us leaves nothing behind
        from .tune import init_ray

        init_ray(address, num_cpus)
        reinstall()  # ray.init replaced the SIGTERM handler with one that aborts the driver
    if "://" not in root_s:
        Path(root_s).mkdir(parents=True, exist_ok=True)
    # MLflow creates (migrates) a new SQLite database without a lock: two invocations starting together would break it
    with file_lock(Path(root_s) / ".mlflow.lock") if "://" not in root_s else contextlib.nullcontext():
        tracker = Tracker(spec.name, root, tracking_uri)
    for run_id in tracker.close_dead():
        _say(f"MLflow run {run_id} was left RUNNING by an invocation that is gone: ended KILLED")
    store = store_for(root)
    run = SweepRun()
    verify_store(store, nodes)
    before = {e["key"] for e in ledger(store)}
    sweep_copy = save_sweep(spec, root)
    with tracker:
        settings = spec.model_dump(mode="json", exclude={"random_seeds"})  # rerun-random adds seeds to the same sweep
        run.parent_run_id = tracker.start(
            spec.name, flat_params(settings),
            {"executor": executor, "address": address or "local", "nodes": len(nodes),
             "random_seeds": ",".join(map(str, spec.random_seeds)), "last_invocation": time.strftime("%Y-%m-%d %H:%M:%S")},
            identity=_identity(spec.name, json.dumps(settings, sort_keys=True)),
        )
        if sweep_copy is not None:
            tracker.parent.log_artifact(sweep_copy)
        trials = TrialLog(tracker, nodes, spec)
        for wave, label in ((1, "train"), (2, "sft"), (3, "influence")):
            raise_if_interrupted()
            t0 = time.perf_counter()
            plan = _plan(nodes, store, wave)
            _announce_held(store, plan)
            if executor == "ray" and wave == 3 and spec.influence.actors > 1:
                # big influence jobs: the driver runs each variant on a Ray Data actor pool of
                # `influence.actors` (Ray Data inside a Tune trial would sit in its placement group)
                from .influence_ray import influence_ray

                for trial_nodes in tqdm(list(plan.values()), desc=label, disable=not progress):
                    for n in trial_nodes:
                        execute(n, spec, store, influence_fn=influence_ray, progress=False)
            elif executor == "ray":
                from .tune import run_wave

                storage = f"{root_s.rstrip('/')}/ray_results" if "://" in root_s else str(Path(root_s).resolve() / "ray_results")
                run_wave(spec, store.uri, plan, storage, f"{spec.name}-{label}", progress, on_result=trials.tune_result)
            else:
                for trial_nodes in tqdm(list(plan.values()), desc=label, disable=not progress or wave != 3):
                    for n in trial_nodes:
                        execute(n, spec, store, progress=progress and wave != 3,
                                on_epoch=lambda r, key=n.key: trials.live(key, r["epoch"], epoch_metrics(r)))
            run.seconds[label] = time.perf_counter() - t0
        t0 = time.perf_counter()
        collected: dict = {}
        run_ids = trials.run_ids()
        with report_lease(store, spec):  # another invocation may be rewriting these report folders
            run.reports = write_reports(spec, root, store, collected, run_ids)
            trials.finish(store, collected)  # the runs' headline metrics come from the reports' results
            tracker.link_children()
            _log_reports(tracker, spec, run.reports)
        run.seconds["report"] = time.perf_counter() - t0
        tracker.parent.log_metrics({f"seconds/{k}": v for k, v in run.seconds.items()})
    run.computed = [e["key"] for e in ledger(store) if e["key"] not in before]
    return run


def _identity(*parts: str) -> str:
    """Returns a short stable id of what a run stands for (found again by its tag on a rerun)."""
    import hashlib

    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


METHOD_SHORT = {"full": "full", "sft": "sft", "random-sft": "rsft"}
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
    return tags, params, _identity(spec.name, first.trial, first.key)


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
        labels = [_branch_label(v) for v, _ in branches(spec)]
        multi_task = len(spec.tasks) > 1
        self.names = {}
        for trial, tn in self.by_trial.items():
            first = next((n for n in tn if n.stage == "finetune"), tn[0])
            self.names[trial] = run_name(first, labels.index(_branch_label(first.params.branch)), multi_task)
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
        """Logs a fine-tuning epoch as it ends; a failure only warns: the epoch is logged after the waves."""
        try:
            self.epoch(node_key, epoch, metrics)
        except Exception as e:  # noqa: BLE001 - hours of training must not die on a tracking hiccup
            warnings.warn(f"live MLflow metrics of {node_key} epoch {epoch}: {e!r}; logged after the waves instead", stacklevel=2)

    def tune_result(self, result: dict) -> None:
        """Logs a Tune trial's epoch result (one that names its node); other results are not epochs."""
        if "node" in result and "epoch" in result:
            metrics = {k: v for k, v in result.items() if k in ("train_loss", "dev_accuracy_mean") or k.startswith("dev_accuracy/")}
            self.live(result["node"], result["epoch"], metrics)

    def _results(self, trial_nodes: list[Node], collected: dict) -> dict[str, float]:
        """Returns the headline metrics of a trial's model (test accuracy, shares, changes, heads disabled)."""
        from ..analysis.headline import model_metrics

        first = next((n for n in trial_nodes if n.stage == "finetune"), trial_nodes[0])
        p = first.params
        results = collected.get((_branch_label(p.branch), p.seed), [])
        t = next((r for r in results if r.task == p.task), None)
        if t is None:
            return {}
        method = getattr(p, "method", "full")  # a trial without its own fine-tuning (shared with another branch) is a full one
        model = method if method != "random-sft" else f"random-sft:{p.random_seed}"
        return model_metrics(t, model)

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

    def finish(self, store: Store, collected: dict | None = None) -> None:
        """Logs each trial's epochs not logged live (from history.json), its headline metrics, masks and
        influence tables; ends its run.

        A stage output's artifacts are logged once per experiment: when an earlier finished run holds
        them, this run gets a tag naming that run instead of another copy.
        """
        from .tracking import LOGGED_TAG, metric_name

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
            metrics = self._results(tn, collected or {})
            if child.reused:  # only what is new or changed: a rerun does not repeat the history
                have = self.tracker.client.get_run(child.run_id).data.metrics
                metrics = {k: v for k, v in metrics.items() if have.get(metric_name(k)) != v}
            if metrics:
                child.log_metrics(metrics)
            child.end("FINISHED")
