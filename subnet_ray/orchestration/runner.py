"""The sweep driver: run the stage graph in waves, write the report, log everything to MLflow.

Waves: (1) full fine-tuning, subnetworks and random masks, (2) SFT / random-SFT, (3) influence,
each handed to an executor (executors.py: this process, Ray Tune trials, or Ray Data actor
pools for paper-sized influence); then (4) the report. Every node goes
through the artifact store, so a rerun, a resume or new random seeds compute only what is
missing; each computation is recorded in the store's ledger (`Store.record`), which is
how `status` and the tests count what ran. MLflow is written from this process only:
fine-tuning epochs as they end (Tune reports them here), the rest after the waves (trial_runs.TrialLog).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..sweep.config import SweepSpec, branches
from ..sweep.graph import Node, Stage, graph
from ..influence.engines import stale
from ..storage.lease import file_lock, held, lease
from ..stages import task_data
from ..storage.store import Store, store_for
from .executors import make_executor
from .trial_runs import TrialLog, branch_label, run_identity
from .workers import freeze_heap, use_cpus


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

    from ..sweep.config import safe_name

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


def write_reports(spec: SweepSpec, root, store: Store, collected: dict | None = None, runs: dict | None = None,
                  summaries: dict | None = None, parent_run: dict | None = None) -> list[Path]:
    """Returns the report folders written from what the store holds: one per branch and seed, and
    where a branch has several seeds with results, one pooling them (<branch>-seeds, analysis/seeds.py).

    `collected`, if given, receives (branch label, seed) -> the TaskResults each report was built
    from, and `summaries` (branch label, seed or 'pooled') -> each report's summary.json; `runs`
    (trial name -> MLflow run id) is linked from each report's header, and `parent_run` (the
    invocation's parent run, which holds the pooled numbers) from the pooled report's.
    """
    from ..analysis.report import build_report
    from ..analysis.seeds import build_seeds_report
    from .provenance import provenance
    from .results import collect

    out = []
    verify_store(store, graph(spec), inputs=False)  # a damaged output is moved aside: missing, never read
    for values, b in branches(spec):
        nodes = graph(b)  # this branch's own nodes, including those it shares with other branches
        by_seed, folder, branch_runs = {}, None, {}
        for seed in b.training.seeds:
            results = collect(store, b, nodes, seed)
            if collected is not None:
                collected[(branch_label(values), seed)] = results
            if not results:
                continue
            folder = report_dir(root, spec, values, seed)
            mine = {n.trial for n in nodes if n.params.seed == seed}
            prov = provenance(spec, b, values, seed, {t: r for t, r in (runs or {}).items() if t in mine})
            summary = build_report(results, folder, spec.name, provenance=prov)
            if summaries is not None:
                summaries[(branch_label(values), seed)] = summary
            branch_runs |= prov["mlflow_runs"]
            out.append(folder)
            by_seed[seed] = results
        if len(by_seed) >= 2:
            pooled = folder.with_name(folder.name.rsplit("-seed", 1)[0] + "-seeds")
            summary = build_seeds_report(by_seed, pooled, spec.name,
                                         provenance=prov | {"seed": ", ".join(map(str, by_seed)),
                                                            "mlflow_runs": branch_runs | ({"parent": parent_run} if parent_run else {})})
            if summaries is not None:
                summaries[(branch_label(values), "pooled")] = summary
            out.append(pooled)
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
    """Returns the keys of damaged or stale outputs found and moved aside (so they count as missing and are recomputed).

    Every finished node is checked against its manifest: sizes, and hashes of small files (masks, JSON,
    tables); with `inputs`, every hash of the finished inputs of nodes still to compute (the
    checkpoints and masks this invocation will load). Outputs without a manifest (legacy) are
    used unchecked, and said so once; stale influence outputs (stages.stale) are moved aside too.
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
            why = stale(store, n)
            if why is not None:
                where = store.set_aside(n.key, [why])
                say(f"stale stage output {n.key} ({n.stage}, {n.trial}): {why}; moved aside to {where}, recomputing it")
                damaged.append(n.key)
                found = True
            elif problems is None:
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


def log_reports(tracker, spec: SweepSpec, folders: list[Path]) -> None:
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
    trial; the influence nodes of one fine-tuned model are one trial, which loads each checkpoint
    once and shares sketches between them (stages.execute_influence), each still published under its own key."""
    plan: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        if n.wave == wave and not store.done(n.key):
            plan[f"{n.trial}/influence" if n.stage == Stage.INFLUENCE else n.trial].append(n)
    return dict(plan)


def run_sweep(spec: SweepSpec, root: str | os.PathLike, *, address: str | None = None, tracking_uri: str | None = None,
              executor: str = "ray", random_seeds: list[int] | None = None, progress: bool = True,
              num_cpus: int | None = None) -> SweepRun:
    """Returns what was computed and where the reports are, after running the whole sweep.

    Fails fast, before any compute, on an unreachable tracking server or cluster. SIGINT and SIGTERM
    stop it where it is (no later stage or wave starts, running trials are stopped, finished outputs
    kept, this invocation's MLflow runs end KILLED) and raise interrupts.Interrupted.
    """
    from .faults import Context, explain
    from .interrupts import handling

    ctx = Context(str(root), address=address, tracking_uri=tracking_uri, executor=executor)
    with handling():
        try:
            return _run_sweep(spec, root, address=address, tracking_uri=tracking_uri, executor=executor,
                              random_seeds=random_seeds, progress=progress, num_cpus=num_cpus, ctx=ctx)
        except Exception as e:
            fault = explain(e, ctx)  # a full disk, a read-only root, a lost server or cluster, a trial out of memory
            if fault is None:
                raise
            raise fault from e
        finally:
            if ctx.watch is not None:
                ctx.watch.stop()


def _tracking_lost(e: BaseException) -> bool:
    from .faults import kind_of

    found = kind_of(e)
    return found is not None and found[0] == "tracking"


def _tracking_back(tracker) -> BaseException | None:
    """Returns None if the tracking server that stopped answering mid-run (tracker.lost) answers again, else the error."""
    from .tracking_store import TrackingUnreachable, check_tracking_uri

    if tracker.lost is None:
        return None
    try:
        check_tracking_uri(tracker.tracking_uri, timeout=5)
    except TrackingUnreachable as e:
        return e
    _say(f"MLflow tracking server {tracker.tracking_uri} answers again: logging what this invocation has")
    tracker.lost = None
    return None


def _run_sweep(spec, root, *, address, tracking_uri, executor, random_seeds, progress, num_cpus, ctx) -> SweepRun:
    from .interrupts import raise_if_interrupted, reinstall
    from .mlflow_values import flat_params
    from .tracking import Tracker
    from .tracking_store import check_tracking_uri, default_tracking_uri

    if executor not in ("ray", "local"):
        raise ValueError(f"executor must be 'ray' or 'local', got {executor!r}")
    if random_seeds is not None:
        spec = spec.model_copy(update={"random_seeds": sorted(set(spec.random_seeds) | set(random_seeds))})
    nodes = graph(spec)
    ctx.keys = [n.key for n in nodes]
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
        from .faults import watch_cluster

        ctx.watch = watch_cluster(ctx)  # a lost cluster ends in our line, not in Ray's abort 60 s later
    if "://" not in root_s:
        Path(root_s).mkdir(parents=True, exist_ok=True)
    # MLflow creates (migrates) a new SQLite database without a lock: two invocations starting together would break it
    with file_lock(Path(root_s) / ".mlflow.lock") if "://" not in root_s else contextlib.nullcontext():
        tracker = Tracker(spec.name, root, tracking_uri)
    ctx.tracker, ctx.tracking_uri = tracker, tracker.tracking_uri
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
            identity=run_identity(spec.name, json.dumps(settings, sort_keys=True)),
        )
        tracker.set_view(list(dict.fromkeys(lang for t in spec.tasks for lang in t.languages)), sorted(spec.grid),
                         multi_task=len(spec.tasks) > 1, methods=list(spec.methods))
        if sweep_copy is not None:
            tracker.parent.log_artifact(sweep_copy)
        trials = TrialLog(tracker, nodes, spec)
        executor_ = make_executor(executor, spec, store, root_s, trials, progress)
        freeze_heap()  # every import is done: full collections no longer rescan them inside a stage
        for wave, label in ((0, "pretrain"), (1, "train"), (2, "sft"), (3, "influence")):
            raise_if_interrupted()
            t0 = time.perf_counter()
            plan = _plan(nodes, store, wave)
            _announce_held(store, plan)
            executor_.run_wave(wave, label, plan)
            run.seconds[label] = time.perf_counter() - t0
        t0 = time.perf_counter()
        collected, summaries = {}, {}
        lost = _tracking_back(tracker)  # a server that went away mid-run costs MLflow's part, never the report
        run_ids = {}
        if lost is None:
            try:
                run_ids = trials.run_ids()
            except Exception as e:
                if not _tracking_lost(e):
                    raise
                lost = e
        with report_lease(store, spec):  # another invocation may be rewriting these report folders
            parent = {"name": f"{spec.name} (parent)", "run_id": run.parent_run_id,
                      "url": f"#/experiments/{tracker.experiment_id}/runs/{run.parent_run_id}"}
            run.reports = ctx.reports = write_reports(spec, root, store, collected, run_ids, summaries, parent)
            if lost is None:
                try:
                    trials.finish(store, collected, summaries)  # the runs' headline metrics come from the reports' results
                    tracker.link_children()
                    log_reports(tracker, spec, run.reports)
                except Exception as e:
                    if not _tracking_lost(e):
                        raise
                    lost = e
        run.seconds["report"] = time.perf_counter() - t0
        if lost is not None:  # the next invocation logs what is missing (runs found by identity, artifacts once)
            from .faults import Observed, detail

            tracker.lost = lost
            raise Observed("tracking", detail(lost)) from lost
        tracker.parent.log_metrics({f"seconds/{k}": v for k, v in run.seconds.items()})
    run.computed = [e["key"] for e in ledger(store) if e["key"] not in before]
    return run
