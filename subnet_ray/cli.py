"""The `subnet-ray` command line: one small table from subcommand to function."""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from .config import ConfigError, SweepSpec, load_sweep

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


def _load(path: str) -> tuple[SweepSpec, list]:
    """Returns the sweep and its stage graph; any problem is a ConfigError naming the file."""
    from .graph import graph

    spec = load_sweep(path)
    try:
        return spec, graph(spec)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"{path}: {e}") from None


def cmd_validate(args) -> int:
    spec, nodes = _load(args.sweep)
    trials = list(dict.fromkeys(n.trial for n in nodes if n.stage != "influence"))  # training trials, in graph order
    print(f"{args.sweep}: sweep {spec.name!r} is valid: {len(trials)} trials, {len(nodes)} stage outputs")
    for t in trials:
        print(f"  {t}")
    counts = Counter(str(n.stage) for n in nodes)
    print("  stages: " + ", ".join(f"{k} x{v}" for k, v in counts.items()))
    return 0


def _run(args, sweep: str, random_seeds=None) -> int:
    from .orchestration.runner import run_sweep

    spec, _ = _load(sweep)  # a malformed sweep starts no Ray and writes nothing
    run = run_sweep(spec, _root(args), address=args.address or os.environ.get("RAY_ADDRESS"), tracking_uri=_tracking(args),
                    executor=args.executor, random_seeds=random_seeds, progress=not args.quiet)
    print(f"sweep {spec.name}: computed {len(run.computed)} stage outputs (the rest were in the store)")
    for folder in run.reports:
        print(f"report: {folder / 'report.html'}")
    print(f"MLflow: parent run {run.parent_run_id}; browse with `subnet-ray ui --root {_root(args)}`")
    return 0


def cmd_run(args) -> int:
    return _run(args, args.sweep)


def cmd_demo(args) -> int:
    return _run(args, _demo_sweep())


def cmd_rerun_random(args) -> int:
    return _run(args, args.sweep, random_seeds=args.seeds)


def cmd_status(args) -> int:
    from .store import store_for

    spec, nodes = _load(args.sweep)
    store = store_for(_root(args))
    done = [n for n in nodes if store.done(n.key)]
    print(f"sweep {spec.name}: {len(done)}/{len(nodes)} stage outputs in {store.uri}")
    for n in nodes:
        label = getattr(n.params, "variant", None) or getattr(n.params, "method", "")
        if n.stage == "random_masks":
            label = f"seed {n.params.random_seed}"
        print(f"  [{'done' if store.done(n.key) else 'missing'}] {n.stage:<12} {n.trial:<32} {label:<22} {n.key}")
    return 0


def cmd_report(args) -> int:
    from .orchestration.runner import write_reports
    from .store import store_for

    spec, _ = _load(args.sweep)
    reports = write_reports(spec, _root(args), store_for(_root(args)))
    if not reports:
        print(f"sweep {spec.name}: nothing in the store under {_root(args)} yet; run it first", file=sys.stderr)
        return 1
    for folder in reports:
        print(f"report: {folder / 'report.html'}")
    return 0


def cmd_submit(args) -> int:
    from .orchestration.jobs import submit

    spec, _ = _load(args.sweep)
    job = submit(args.sweep, args.address, root=args.root, tracking_uri=_tracking(args), wait=args.wait)
    print(f"submitted sweep {spec.name} as Ray job {job} to {args.address}")
    return 0


def cmd_ui(args) -> int:
    from .orchestration.tracking_store import open_ui

    return open_ui(_root(args), _tracking(args), host=args.host, port=args.port)


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
    "status": (cmd_status, "list which stage outputs of a sweep are done and which are missing"),
    "report": (cmd_report, "regenerate the report from the store, without training or scoring"),
    "submit": (cmd_submit, "submit a sweep to a Ray cluster as a Ray job"),
    "ui": (cmd_ui, "serve the MLflow UI for the sweep root on 127.0.0.1"),
    "compare": (cmd_compare, "the sweeps and branches in a root side by side: status, headline results, Tables 1-2"),
}


def parser() -> argparse.ArgumentParser:
    """Returns the argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="subnet-ray", description="Ray sweeps of language-specialised subnetworks and TracIn influence.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (fn, help_) in COMMANDS.items():
        s = sub.add_parser(name, help=help_, description=help_)
        s.set_defaults(fn=fn)
        if name == "compare":
            s.add_argument("root", help="sweep root holding the store and the sweep files (sweeps/<name>.yaml)")
            s.add_argument("sweeps", nargs="*", help="sweep names or files (default: every sweep copied into the root)")
            s.add_argument("--format", choices=["md", "csv", "tex", "all"], default="md", help="output format (default md)")
            s.add_argument("--out", help="write <table>.<format> files into this folder instead of printing")
            continue
        if name not in ("demo", "ui"):
            s.add_argument("sweep", help="sweep file (YAML)")
        if name != "validate":
            s.add_argument("--root", help="sweep root: store, MLflow db, reports (default $SUBNET_RAY_ROOT or ./runs)")
            s.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///<root>/mlflow.db)")
        if name in ("run", "demo", "rerun-random"):
            s.add_argument("--address", help="Ray cluster address (default: a local Ray)")
            s.add_argument("--executor", choices=["ray", "local"], default="ray", help="local: run everything in this process, no Ray")
            s.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "rerun-random":
            s.add_argument("--seeds", type=int, nargs="+", required=True, help="random-mask seeds to add")
        if name == "submit":
            s.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
            s.add_argument("--wait", action="store_true", help="follow the job until it ends")
        if name == "ui":
            s.add_argument("--host", default="127.0.0.1")
            s.add_argument("--port", type=int, default=5000)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConnectionError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: finished stage outputs are kept; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
