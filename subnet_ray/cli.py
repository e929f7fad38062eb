"""The `subnet-ray` command line: one small table from subcommand to function."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections import Counter
from pathlib import Path

from .sweep.config import ConfigError, SweepSpec, load_sweep
from .data.sources import DataError
from .storage.manifest import DamagedOutput
from .orchestration.faults import Fault
from .orchestration.slurm import SlurmError
from .planning.preflight import Preflight, PreflightError, check


class UsageError(ValueError):
    """A command line that cannot be carried out (a busy port, a root with no store); one line."""


# Errors a user can fix: one line each, exit status 2, no traceback (unless --debug).
ANTICIPATED = (ConfigError, DataError, PreflightError, UsageError, SlurmError, ConnectionError, TimeoutError)


def _demo_sweep() -> str:
    """Returns the demo sweep file: the checkout's (editable install) or ./sweeps/demo.yaml."""
    for path in (Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml", Path("sweeps") / "demo.yaml"):
        if path.exists():
            return str(path)
    raise ConfigError("sweeps/demo.yaml not found: run `subnet-ray demo` from the project folder")


def _root(args) -> str:
    return args.root or os.environ.get("SUBNET_RAY_ROOT") or "runs"


def _tracking(args) -> str | None:
    return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")


def _address(args) -> str | None:
    if getattr(args, "executor", "ray") == "local":
        return None  # no Ray at all
    return getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")


def _preflight(args, spec: SweepSpec, *, local_run: bool = True, service_checks: bool = True, dashboard: str | None = None) -> Preflight:
    """Returns the preflight of `spec` for this command line after printing its warnings; raises PreflightError on any error."""
    address = _address(args) if service_checks else None
    pf = check(spec, root=_root(args) if service_checks else None, tracking_uri=_tracking(args) if service_checks else None,
               address=address, dashboard=dashboard, local_run=local_run and not address,
               local_ray=local_run and not address and getattr(args, "executor", "ray") == "ray")
    for w in pf.warnings:
        print(f"warning: {w}", file=sys.stderr)
    pf.raise_errors()
    return pf


def _load(path: str) -> tuple[SweepSpec, list]:
    """Returns the sweep and its stage graph; any problem is a ConfigError naming the file."""
    from .sweep.graph import graph

    spec = load_sweep(path)
    try:
        return spec, graph(spec)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"{path}: {e}") from None


def cmd_validate(args) -> int:
    spec, nodes = _load(args.sweep)
    pf = _preflight(args, spec, local_run=not args.remote)
    trials = list(dict.fromkeys(n.trial for n in nodes if n.stage != "influence"))  # training trials, in graph order
    print(f"{args.sweep}: sweep {spec.name!r} is valid: {len(trials)} trials, {len(nodes)} stage outputs")
    for t in trials:
        print(f"  {t}")
    counts = Counter(str(n.stage) for n in nodes)
    print("  stages: " + ", ".join(f"{k} x{v}" for k, v in counts.items()))
    from .planning.sizes import headline  # sizes from the config alone: validate imports no torch

    print("  " + headline(spec, nodes))
    print(pf.summary())
    return 0


def cmd_estimate(args) -> int:
    import json

    from .planning.sizes import memory_report

    spec, _ = _load(args.sweep)
    lines, mem = memory_report(spec)  # from the model's shape alone: what the GPU must hold, before any calibration
    if args.memory:
        print("\n".join(lines))
        print(json.dumps({"sweep": spec.name, "memory": mem}))
        return 0
    from .planning.cost import check_inputs, project, ray_data_summary, table

    check_inputs(spec, args.sweep)  # a model or data timing cannot use: one line, before the fixed costs are measured
    root = _root(args)  # an existing local root: its masks tell which influence masks are equal (the Ray Data wave's passes)
    store = None
    if "://" not in root and (Path(root) / "store").is_dir():
        from .storage.store import store_for

        store = store_for(root)
    est = project(spec, pruned=args.pruned, executor=args.executor, store=store)
    stages = est.by_stage(spec.resources.cpus, spec.resources.gpus)
    total = stages["total"]["seconds"]
    print(f"sweep {spec.name}: projected cost on {est.device}, executor {args.executor} (calibrated here)")
    print(table(est, spec.resources.cpus, spec.resources.gpus))
    print("\n".join(lines))
    print(json.dumps({"sweep": spec.name, "device": est.device, "executor": args.executor, "pruned": args.pruned,
                      "total_seconds": total, "total_hours": total / 3600, "stages": stages,
                      "fixed": {k: stages[k]["seconds"] for k in est.fixed}, "tune": est.tune, "waves": est.waves(),
                      "at_load": est.at_load(), "ray_data": ray_data_summary(est), "assumptions": est.assumptions,
                      "memory": mem}))
    return 0


def _run(args, sweep: str, random_seeds=None) -> int:
    from .orchestration.runner import run_sweep

    spec, _ = _load(sweep)  # a malformed sweep starts no Ray and writes nothing
    print(_preflight(args, spec).summary(), flush=True)  # nor does one that would fail at run time
    run = run_sweep(spec, _root(args), address=args.address or os.environ.get("RAY_ADDRESS"), tracking_uri=_tracking(args),
                    executor=args.executor, random_seeds=random_seeds, progress=not args.quiet)
    print(f"sweep {spec.name}: computed {len(run.computed)} stage outputs (the rest were in the store)")
    for folder in run.reports:
        print(f"report: {folder / 'report.html'}")
    print(f"MLflow: parent run {run.parent_run_id}; {_browse_hint(_root(args), _tracking(args))}")
    return 0


def _browse_hint(root: str, uri: str | None) -> str:
    """Returns where the sweep's runs are and how to browse them: the server's own UI, or `subnet-ray ui` over the store."""
    from .orchestration.tracking_store import default_tracking_uri, redact, uri_scheme

    if uri and uri_scheme(uri) in ("http", "https"):
        return f"runs on the tracking server {redact(uri)}: browse with `subnet-ray ui --tracking-uri {redact(uri)}`"
    if uri and "://" not in root and uri != default_tracking_uri(root):
        return f"runs in {redact(uri)}: browse with `subnet-ray ui --root {root} --tracking-uri {redact(uri)}`"
    if uri and "://" in root:
        return f"runs in {redact(uri)}"
    return f"browse with `subnet-ray ui --root {root}`"


def cmd_run(args) -> int:
    return _run(args, args.sweep)


def cmd_demo(args) -> int:
    return _run(args, _demo_sweep())


def cmd_rerun_random(args) -> int:
    return _run(args, args.sweep, random_seeds=args.seeds)


def _existing_store(root: str):
    """Returns the store under `root`, or None when a local root holds none (never creating one)."""
    from .storage.store import store_for

    if "://" not in root or root.startswith("file://"):
        if not (Path(root.removeprefix("file://")) / "store").is_dir():
            return None
    return store_for(root)


def cmd_status(args) -> int:
    from .influence.engines import stale
    from .storage.lease import held

    spec, nodes = _load(args.sweep)
    store = _existing_store(_root(args))
    states, notes = {}, {}
    for n in nodes:
        if store is None or not store.done(n.key):
            holder = held(store, n.key) if store is not None else None
            states[n.key] = "running" if holder else "missing"
            notes[n.key] = [f"being computed by {holder}"] if holder else []
            continue
        problems = store.check(n.key, "all" if args.verify else "small")
        why = stale(store, n)
        states[n.key] = "stale" if why else "legacy" if problems is None else "damaged" if problems else "done"
        notes[n.key] = [why] if why else problems or []
    ok = sum(s in ("done", "legacy") for s in states.values())
    where = store.uri if store is not None else f"{_root(args)} (no store there yet)"
    how = "sizes and every SHA-256" if args.verify else "sizes, and SHA-256 of files up to 4 MiB"
    print(f"sweep {spec.name}: {ok}/{len(nodes)} stage outputs in {where} (checked: {how})")
    for n in nodes:
        label = getattr(n.params, "variant", None) or getattr(n.params, "method", "")
        if n.stage == "random_masks":
            label = f"seed {n.params.random_seed}"
        print(f"  [{states[n.key]}] {n.stage:<12} {n.trial:<32} {label:<22} {n.key}")
        for note in notes[n.key]:
            print(f"      {n.key}: {note}")
    damaged = [k for k, s in states.items() if s == "damaged"]
    n_stale = sum(s == "stale" for s in states.values())
    if any(s == "legacy" for s in states.values()):
        print("  legacy: published before manifests, not checked")
    if damaged:
        print(f"{len(damaged)} damaged stage output(s): `subnet-ray run` moves them aside and recomputes them")
    if n_stale:
        print(f"{n_stale} stale stage output(s), not to be used: `subnet-ray run` moves them aside and recomputes them")
    return 1 if damaged or n_stale else 0


def cmd_report(args) -> int:
    from .orchestration.runner import report_lease, write_reports

    spec, _ = _load(args.sweep)
    store = _existing_store(_root(args))
    if store is None:
        raise UsageError(f"no store under root {_root(args)}, --root; expected the root of a sweep that has run")
    try:
        with report_lease(store, spec):
            reports = write_reports(spec, _root(args), store)
    except Exception as e:
        from .sweep.graph import graph
        from .orchestration.faults import Context, explain

        fault = explain(e, Context(_root(args), keys=[n.key for n in graph(spec)]))  # a full disk, a read-only root
        if fault is None:
            raise
        raise fault from e
    if not reports:
        print(f"sweep {spec.name}: nothing in the store under {_root(args)} yet; run it first", file=sys.stderr)
        return 1
    for folder in reports:
        print(f"report: {folder / 'report.html'}")
    return 0


def _submit_slurm(args, spec: SweepSpec) -> int:
    from .orchestration.slurm import SlurmJob, submit_sweep

    job = SlurmJob.for_sweep(spec, args.nodes, args.cpus_per_node, args.gpus_per_node, args.time, args.partition, args.account)
    # the preflight of `validate --remote`: the root (shared) and tracking store from here, devices are the nodes'
    submit_sweep(args.sweep, spec, job, _root(args), _tracking(args), dry_run=args.dry_run,
                 preflight=lambda: print(_preflight(args, spec, local_run=False).summary(), flush=True))
    return 0


def cmd_submit(args) -> int:
    from .orchestration.jobs import entrypoint, submit

    spec, _ = _load(args.sweep)
    if args.slurm:
        return _submit_slurm(args, spec)
    if not args.address:
        raise UsageError("submit needs --address (a Ray dashboard, e.g. http://HEAD:8265) or --slurm")
    try:
        entrypoint(args.sweep, args.root, _tracking(args))
    except ValueError as e:
        raise UsageError(f"{e}; expected a sweep file under the project folder") from None
    # the root, tracking store and devices are the cluster's: only their form can be checked from here
    print(_preflight(args, spec, local_run=False, service_checks=False, dashboard=args.address).summary(), flush=True)
    job = submit(args.sweep, args.address, root=args.root, tracking_uri=_tracking(args), wait=args.wait)
    print(f"submitted sweep {spec.name} as Ray job {job} to {args.address}")
    return 0


def _view_lines(views: dict[str, str], base: str, sweep: str | None) -> tuple[list[str], str | None]:
    """Returns the lines naming each sweep's runs table and chart view under `base`, and the first runs table's URL."""
    from .orchestration.runs_view import GROUPED_KEY, runs_url

    if sweep is not None:
        if sweep not in views:
            known = ", ".join(views) or "none"
            raise UsageError(f"sweep {sweep!r}, --sweep: no such sweep in this MLflow store (sweeps with subnet-ray's view: {known})")
        views = {sweep: views[sweep]}
    if not views:
        return ["  no sweep here has subnet-ray's runs view yet: run a sweep again (any rerun adds it)"], None
    lines = []
    for name, exp in views.items():
        lines += [f"  sweep {name}, runs table: {runs_url(base, exp)}",
                  f"  sweep {name}, charts:     {runs_url(base, exp, chart=True, key=GROUPED_KEY)}"]
    return lines, runs_url(base, next(iter(views.values())))


def cmd_ui(args) -> int:
    from .orchestration.runs_view import sweep_views
    from .orchestration.tracking_store import check_port, check_tracking_uri, default_tracking_uri, open_ui, ui_command, ui_host, uri_scheme

    uri = _tracking(args)
    if uri and uri_scheme(uri) in ("http", "https"):  # a tracking server serves its own UI: name the views on it
        check_tracking_uri(uri)
        lines, first = _view_lines(sweep_views(uri), uri, args.sweep)
        print(f"MLflow UI: {uri.rstrip('/')}", *lines, sep="\n")
        if args.open and first:
            import webbrowser

            if not webbrowser.open(first):
                print(f"no web browser to open here: open {first}")
        return 0
    try:
        ui_command(_root(args), uri, host=args.host, port=args.port)  # no store, bad URI or port: before reading it
        check_port(ui_host(args.host), args.port)  # a host or port the server cannot take: before reading the store
        lines, first = _view_lines(sweep_views(uri or default_tracking_uri(_root(args))), f"http://{ui_host(args.host)}:{args.port}", args.sweep)
        return open_ui(_root(args), uri, host=args.host, port=args.port, urls=lines, browse=first if args.open else None)
    except (ValueError, FileNotFoundError) as e:  # UIError, a bad port or URI: found before anything starts
        raise UsageError(str(e)) from None


def cmd_compare(args) -> int:
    from .orchestration.compare import FORMATS, compare, find_sweeps, render, write

    if not Path(args.root).is_dir():
        raise ConfigError(f"root {args.root}: not a folder")
    tables = compare(args.root, find_sweeps(args.root, args.sweeps))
    if args.out:
        for path in write(tables, args.out, FORMATS if args.format == "all" else (args.format,)):
            print(f"wrote {path}")
        return 0
    for fmt in (FORMATS if args.format == "all" else (args.format,)):
        for name, df in tables.items():
            print(f"## {name} ({fmt})\n")
            print(render(name, df, fmt))
    return 0


COMMANDS = {
    "validate": (cmd_validate, "check a sweep file and print its plan (trials and stage outputs)"),
    "run": (cmd_run, "run a sweep (local Ray unless --address) and write its report"),
    "demo": (cmd_demo, "run the demo sweep (tiny model, synthetic babel task) and print where the report is"),
    "rerun-random": (cmd_rerun_random, "add random-mask seeds: only the random-mask branch is computed"),
    "estimate": (cmd_estimate, "calibrate a few batches on this device and project the sweep's hours, memory and bytes per stage"),
    "status": (cmd_status, "list which stage outputs of a sweep are done and which are missing"),
    "report": (cmd_report, "regenerate the report from the store, without training or scoring"),
    "submit": (cmd_submit, "submit a sweep to a Ray cluster as a Ray job"),
    "ui": (cmd_ui, "serve the MLflow UI for the sweep root on 127.0.0.1 and print each sweep's runs table and charts"),
    "compare": (cmd_compare, "the sweeps and branches in a root side by side: status, headline results, Tables 1-2"),
}


def parser() -> argparse.ArgumentParser:
    """Returns the argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="subnet-ray", description="Ray sweeps of language-specialised subnetworks and TracIn influence.")
    p.add_argument("--version", action="version", version=f"subnet-ray {version()}")
    p.add_argument("--debug", action="store_true", dest="debug_first", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (fn, help_) in COMMANDS.items():
        s = sub.add_parser(name, help=help_, description=help_, parents=[common])
        s.set_defaults(fn=fn)
        if name == "compare":
            s.add_argument("root", help="sweep root holding the store and the sweep files (sweeps/<name>.yaml)")
            s.add_argument("sweeps", nargs="*", help="sweep names or files (default: every sweep copied into the root)")
            s.add_argument("--format", choices=["md", "csv", "tex", "all"], default="md", help="output format (default md)")
            s.add_argument("--out", help="write <table>.<format> files into this folder instead of printing")
            continue
        if name not in ("demo", "ui"):
            s.add_argument("sweep", help="sweep file (YAML)")
        if name == "validate":
            s.add_argument("--address", help="also check this Ray cluster address answers (default $RAY_ADDRESS)")
            s.add_argument("--remote", action="store_true",
                           help="the sweep runs on a cluster: its devices and hub access are not this machine's, so they are not checked here")
        s.add_argument("--root", help="sweep root: store, MLflow db, reports (default $SUBNET_RAY_ROOT or ./runs)")
        s.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///<root>/mlflow.db)")
        if name in ("run", "demo", "rerun-random"):
            s.add_argument("--address", help="Ray cluster address (default: a local Ray)")
            s.add_argument("--executor", choices=["ray", "local"], default="ray", help="local: run everything in this process, no Ray")
            s.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "status":
            s.add_argument("--verify", action="store_true", help="also check the SHA-256 of every file (reads the whole store)")
        if name == "estimate":
            s.add_argument("--pruned", type=float, default=1.0,
                           help="fraction of heads the subnetwork search is assumed to disable before stopping (default 1.0: an upper bound)")
            s.add_argument("--executor", choices=["ray", "local"], default="ray",
                           help="the executor `run` will use: local Ray (default; Ray start, Tune trials) or this process")
            s.add_argument("--memory", action="store_true",
                           help="only the sizes and memory (training, influence, sketches, which GPU), from the model's shape: no calibration")
        if name == "rerun-random":
            s.add_argument("--seeds", type=int, nargs="+", required=True, help="random-mask seeds to add")
        if name == "submit":
            s.add_argument("--address", help="Ray dashboard address, e.g. http://HEAD:8265 (or --slurm)")
            s.add_argument("--wait", action="store_true", help="follow the job until it ends")
            s.add_argument("--slurm", action="store_true", help="submit a Slurm batch job that starts Ray on its nodes and runs the sweep")
            s.add_argument("--nodes", type=int, default=1, help="--slurm: nodes (default 1)")
            s.add_argument("--cpus-per-node", type=int, help="--slurm: CPUs per node (default: one trial's, resources.cpus)")
            s.add_argument("--gpus-per-node", type=int, help="--slurm: GPUs per node (default: one trial's, resources.gpus)")
            s.add_argument("--time", default="04:00:00", help="--slurm: time limit, e.g. 04:00:00 or 1-00:00:00 (default 04:00:00)")
            s.add_argument("--partition", help="--slurm: partition (default: the cluster's)")
            s.add_argument("--account", help="--slurm: account to charge (default: yours)")
            s.add_argument("--dry-run", action="store_true", help="--slurm: write the batch script under the root, do not submit it")
        if name == "ui":
            s.add_argument("--host", default="127.0.0.1")
            s.add_argument("--port", type=int, default=5000)
            s.add_argument("--sweep", help="name only this sweep's views (default: every sweep in the store)")
            s.add_argument("--open", action="store_true", help="open the (first) sweep's runs table in a web browser once the UI is up")
    return p


def version() -> str:
    """Returns the installed package's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("subnet-ray")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    """Returns the exit status: 0 done, 1 `status` found damaged outputs (or an unforeseen error), 2 an error
    the user can fix before any compute (one line each), 4 a damaged stage output, 3 / 5 / 6 / 7 / 8 the tracking
    server / disk / root / Ray cluster / a trial's memory failed mid-run (orchestration/faults.py), 130 / 143 / 129
    interrupted by SIGINT / SIGTERM / SIGHUP."""
    args = parser().parse_args(argv)
    if args.debug or args.debug_first:
        os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "1"  # Tune's traceback of every failed trial attempt
    if args.command in ("run", "demo", "rerun-random", "estimate"):
        from .orchestration.workers import WORKER_ENV

        for k, v in WORKER_ENV.items():  # before torch loads: the driver's threads wait as the workers' do (and as estimate times them)
            os.environ.setdefault(k, v)
    try:
        return args.fn(args)
    except ANTICIPATED as e:
        if args.debug or args.debug_first:
            traceback.print_exc()
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except DamagedOutput as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except Fault as e:  # the machine or a service failed mid-run: what, what is kept, what to do (faults.EXIT)
        if args.debug or args.debug_first:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        from .orchestration.interrupts import MESSAGE, Interrupted

        print(MESSAGE, file=sys.stderr)
        return e.exit_code if isinstance(e, Interrupted) else 130


if __name__ == "__main__":
    sys.exit(main())
