"""The `subnet-ray` command line: one small table from subcommand to function."""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from .sweep.config import ConfigError
from .data.sources import DataError
from .storage.manifest import DamagedOutput
from .orchestration.faults import Fault
from .orchestration.slurm import SlurmError
from .planning.preflight import PreflightError
from .commands import (UsageError, cmd_compare, cmd_demo, cmd_estimate, cmd_report, cmd_rerun_random, cmd_run, cmd_status,
                       cmd_submit, cmd_ui, cmd_validate)


# Errors a user can fix: one line each, exit status 2, no traceback (unless --debug).
ANTICIPATED = (ConfigError, DataError, PreflightError, UsageError, SlurmError, ConnectionError, TimeoutError)


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
