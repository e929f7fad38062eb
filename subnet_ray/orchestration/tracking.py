"""MLflow tracking of a sweep: one experiment per sweep, a parent run per invocation, a child per trial.

Every MLflow write happens in the sweep driver process (Ray trials report to the driver,
never to MLflow), so there is one writer and the embedded SQLite store is safe. Runs are
opened and ended through `MlflowClient` with explicit run ids rather than the fluent
active-run stack, so nesting does not depend on global state and no run is left RUNNING.

The store itself (its URI, the usability check, the local UI) is in tracking_store.py.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking.context.registry import resolve_tags  # noqa: E402
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH  # noqa: E402

from .mlflow_values import flat_params, metric_name, tag_value  # noqa: E402

from .tracking_store import (  # noqa: E402, F401 - the UI functions are re-exported for callers of this module
    TrackingUnreachable,
    uri_scheme,
    check_tracking_uri,
    default_tracking_uri,
    open_ui,
    start_ui,
    stop_ui,
    ui_command,
)

STATUSES = ("FINISHED", "FAILED", "KILLED")
SKIPPED_FILES = ("_SUCCESS",)  # store markers: bookkeeping, not results
ARTIFACTS_SCHEME = "mlflow-artifacts:"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
IDENTITY_TAG = "subnet_ray.identity"  # what a run stands for (sweep, branch, trial, stage keys): found again by it
def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"run status {status!r}: expected one of {', '.join(STATUSES)}")
    return status


class TrialRun:
    """One MLflow run (a trial's child run, or the sweep's parent run) addressed by its id."""

    def __init__(self, client: MlflowClient, run_id: str, name: str, local_artifacts: Path | None = None,
                 reused: bool = False):
        self.client, self.run_id, self.name = client, run_id, name
        self.status: str | None = None  # set when ended
        self.reused = reused  # found by its identity tag, made by an earlier invocation
        self.artifact_dir: Path | None = None
        if local_artifacts is not None:
            # the run's artifact URI is mlflow-artifacts:/<sweep>/<run>/artifacts, which `subnet-ray ui`
            # serves from <root>/mlartifacts: write there directly (no server in the sweep driver)
            uri = client.get_run(run_id).info.artifact_uri
            self.artifact_dir = local_artifacts / uri.removeprefix(ARTIFACTS_SCHEME).lstrip("/")

    @property
    def open(self) -> bool:
        return self.status is None

    def _log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(metric_name(k), float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Returns None; logs `metrics` (e.g. {'loss': .., 'dev_accuracy/xa': ..}) at step=epoch."""
        self._log(metrics, epoch)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Returns None; logs final (not per-epoch) metrics at step 0."""
        self._log(metrics, 0)

    def log_params(self, params: dict) -> None:
        """Returns None; logs `params` flattened by flat_params."""
        flat = flat_params(params)
        if self.reused:  # MLflow refuses to change a param: a reused run keeps the values it was made with
            have = self.client.get_run(self.run_id).data.params
            flat = {k: v for k, v in flat.items() if k not in have}
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def set_tags(self, tags: dict) -> None:
        """Returns None; sets `tags` (values as strings, None skipped)."""
        items = [RunTag(str(k), tag_value(v)) for k, v in tags.items() if v is not None]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        """Returns None; copies the folder `local_dir` into the run's artifacts (under `artifact_path`), store
        markers (SKIPPED_FILES) left out."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise FileNotFoundError(f"log_artifacts: {local_dir} is not a folder")
        for f in sorted(local_dir.rglob("*")):
            if f.is_file() and f.name not in SKIPPED_FILES:
                rel = f.parent.relative_to(local_dir).as_posix()
                sub = "/".join(p for p in (artifact_path, rel if rel != "." else None) if p)
                self.log_artifact(f, sub or None)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Returns None; copies the file `path` into the run's artifacts (under `artifact_path`)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"log_artifact: {path} is not a file")
        if self.artifact_dir is None:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
            return
        dest = self.artifact_dir / (artifact_path or "")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / Path(path).name)

    def has_artifact(self, artifact_path: str) -> bool:
        """Returns True if the run already holds a file or folder at `artifact_path`."""
        if self.artifact_dir is not None:
            return (self.artifact_dir / artifact_path).exists()
        parent, _, name = artifact_path.rstrip("/").rpartition("/")
        return any(a.path == artifact_path.rstrip("/") for a in self.client.list_artifacts(self.run_id, parent or None))

    def log_dict(self, obj: dict, name: str) -> None:
        """Returns None; stores `obj` as the artifact `name` (JSON, or YAML for .yaml/.yml)."""
        if self.artifact_dir is None:
            self.client.log_dict(self.run_id, obj, name)
            return
        import json

        import yaml

        path = self.artifact_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(obj, sort_keys=False) if name.endswith((".yaml", ".yml")) else json.dumps(obj, indent=2)
        path.write_text(text)

    def logged_steps(self, metric: str) -> set[int]:
        """Returns the steps at which the run already holds `metric` (empty for a new run)."""
        if not self.reused:
            return set()
        return {m.step for m in self.client.get_metric_history(self.run_id, metric_name(metric))}

    def end(self, status: str = "FINISHED") -> None:
        """Returns None; ends the run with `status` (FINISHED, FAILED or KILLED); a second call does nothing."""
        _check_status(status)
        if self.status is None:
            self.client.set_terminated(self.run_id, status)
            self.status = status


class Tracker:
    """The MLflow side of one sweep invocation: its experiment, parent run and child runs.

    Use as a context manager: an exception inside the block ends every open run as FAILED.
    """

    def __init__(
        self,
        sweep_name: str,
        root: str | os.PathLike,
        tracking_uri: str | None = None,
        artifact_location: str | None = None,
    ):
        self.sweep_name = sweep_name
        root_s = str(root)
        local_root = "://" not in root_s or root_s.startswith("file://")
        self.root = Path(root_s.removeprefix("file://")).resolve() if local_root else None
        self.tracking_uri = tracking_uri or default_tracking_uri(root)
        remote = uri_scheme(self.tracking_uri) in ("http", "https", "databricks")
        if remote:
            # mlflow's own HTTP client retries for minutes by default; a dead server should fail a
            # sweep in seconds. setdefault: the user's own settings win.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        check_tracking_uri(self.tracking_uri)
        if artifact_location is None and not remote:
            if self.root is None:
                raise ValueError(f"store root {root} is remote: give an artifact location for MLflow")
            # relative to the root, so a copied or moved root keeps its artifacts: `subnet-ray ui`
            # serves mlflow-artifacts:/ from <root>/mlartifacts wherever the root now is
            artifact_location = f"{ARTIFACTS_SCHEME}/{sweep_name}"
        elif artifact_location is not None and "://" not in artifact_location and not artifact_location.startswith("file:"):
            artifact_location = Path(artifact_location).resolve().as_uri()  # never relative to the cwd
        # its ERROR lines carry a traceback of what the exception raised from the same call says again: a full
        # disk under SQLite must end in one line (faults.py), and any other error still reaches the caller
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment_id = self._experiment(artifact_location)
        self.local_artifacts: Path | None = None
        if not remote and self.artifact_location.startswith(ARTIFACTS_SCHEME):
            if self.root is None:
                raise ValueError(f"MLflow experiment {sweep_name!r} proxies its artifacts: give a local root")
            self.local_artifacts = self.root / "mlartifacts"
        self.parent: TrialRun | None = None
        self.children: dict[str, TrialRun] = {}
        self.finished = False
        self.lost: BaseException | None = None  # the error that said the tracking server went away: no more calls
        self.left_open = False  # runs this invocation could not end (close_dead of the next one ends them)

    def _experiment(self, artifact_location: str | None) -> str:
        exp = self.client.get_experiment_by_name(self.sweep_name)
        if exp is None:
            # experimentKind: MLflow's experiment list shows it as a machine-learning one (the mode the UI opens in
            # is the URL's workflowType in 3.17, not this tag: runs_view.py)
            return self.client.create_experiment(self.sweep_name, artifact_location=artifact_location,
                                                 tags={"subnet_ray.sweep": self.sweep_name, **EXPERIMENT_KIND})
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        if artifact_location is not None and exp.artifact_location.rstrip("/") != artifact_location.rstrip("/"):
            # MLflow cannot move an experiment's artifact location; new runs follow the old one.
            warnings.warn(
                f"MLflow experiment {self.sweep_name!r} keeps its artifact location {exp.artifact_location} "
                f"(not {artifact_location}): it was created with it",
                stacklevel=3,
            )
        return exp.experiment_id

    def set_view(self, languages: list[str], grid_keys: list[str], multi_task: bool = False,
                 methods: list[str] | None = None) -> str:
        """Returns the runs view's tag key after storing on the experiment the saved views `subnet-ray ui` opens:
        headline columns, child runs as rows, comparison charts, and the same grouped by method and branch
        (runs_view.py). Each invocation rewrites them, so a sweep that gained languages or grid settings shows them."""
        from .runs_view import SWEEP_TAG, TAG_LIMIT, TAG_PREFIX, VIEW_NAMES, VIEW_TAG, view_tag

        tags = self.client.get_experiment(self.experiment_id).tags
        for key in VIEW_NAMES:
            try:
                created = json.loads(tags[TAG_PREFIX + key])["createdAt"] if TAG_PREFIX + key in tags else None
            except (ValueError, KeyError, TypeError):
                created = None  # not our envelope (edited by hand): start afresh
            tag, value = view_tag(languages, grid_keys, multi_task, key, created_ms=created, methods=methods)
            if len(value) > TAG_LIMIT:  # hundreds of languages: the runs are all there, only the view is not
                warnings.warn(f"MLflow saved view {key} of sweep {self.sweep_name}: {len(value)} characters, over MLflow's "
                              f"{TAG_LIMIT}; not stored", stacklevel=2)
                continue
            self.client.set_experiment_tag(self.experiment_id, tag, value)
        self.client.set_experiment_tag(self.experiment_id, SWEEP_TAG, self.sweep_name)  # experiments made before the tag
        return VIEW_TAG

    @property
    def artifact_location(self) -> str:
        return self.client.get_experiment(self.experiment_id).artifact_location

    def close_dead(self) -> list[str]:
        """Returns the ids of runs left RUNNING by dead invocations on this host, after ending them KILLED.

        A run records the host, pid and process start time of its invocation (tags, set when it is
        created or reused); the invocation is dead when no process with that pid and start time exists.
        Runs of other hosts are left alone: from here their process cannot be seen.
        """
        closed = []
        host = socket.gethostname()
        runs = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
        for r in runs:
            t = r.data.tags
            if t.get(HOST_TAG) != host or not t.get(PID_TAG) or _alive(int(t[PID_TAG]), t.get(START_TAG)):
                continue
            self.client.set_terminated(r.info.run_id, "KILLED")
            closed.append(r.info.run_id)
        return closed

    def logged_artifacts(self) -> dict[str, str]:
        """Returns {artifact tag: id of the run that holds those artifacts} over the experiment's finished
        runs: what an earlier invocation already logged (tags `subnet_ray.logged.<what>`)."""
        out = {}
        for r in self.client.search_runs([self.experiment_id], "attributes.status = 'FINISHED'", max_results=5000):
            for k, v in r.data.tags.items():
                if k.startswith(LOGGED_TAG):
                    out.setdefault(k, v)
        return out

    def _find(self, identity: str) -> Any:
        """Returns the newest live run of this experiment tagged with `identity`, or None."""
        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{IDENTITY_TAG}` = '{identity}'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
        return found[0] if found else None

    def _open(self, run_name: str, tags: dict, identity: str | None) -> TrialRun:
        """Returns a run: the one already tagged `identity` (reopened: RUNNING again, owned by this
        invocation), else a new one."""
        old = self._find(identity) if identity else None
        if old is not None:
            self.client.update_run(old.info.run_id, status="RUNNING", name=run_name)
            run = TrialRun(self.client, old.info.run_id, run_name, self.local_artifacts, reused=True)
            run.set_tags(_owner_tags())  # close_dead must see this invocation, not the one that made the run
            return run
        tags = {**tags, IDENTITY_TAG: identity} if identity else tags
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={k: tag_value(v) for k, v in tags.items()})
        return TrialRun(self.client, run.info.run_id, run_name, self.local_artifacts)

    def start(self, run_name: str, params: dict, tags: dict, identity: str | None = None) -> str:
        """Returns the id of this invocation's parent run, created with `params` (flattened) and `tags`.

        With `identity`, a parent run already tagged with it (the same sweep invoked again) is reused.
        """
        if self.parent is not None:
            raise RuntimeError(f"sweep {self.sweep_name}: the parent run was already started ({self.parent.run_id})")
        self.parent = self._open(run_name, resolve_tags({"subnet_ray.role": "sweep", **_owner_tags()}), identity)
        self.parent.set_tags(tags)
        self.parent.log_params(params)
        return self.parent.run_id

    def trial(self, name: str, tags: dict, params: dict, identity: str | None = None) -> TrialRun:
        """Returns the child run of trial `name` (e.g. 'pawsx/sft/seed1') in this invocation, creating it once.

        A trial that is retried in the same invocation keeps its one child run; with `identity`, a run
        an earlier invocation made for the same thing (same identity tag) is reused instead of a new one.
        """
        if self.parent is None:
            raise RuntimeError(f"sweep {self.sweep_name}: call start() before trial({name!r})")
        if self.finished:
            raise RuntimeError(f"sweep {self.sweep_name}: the parent run has finished; no new trial {name!r}")
        if name in self.children:
            child = self.children[name]
            if not child.open:
                raise RuntimeError(f"trial {name!r} already ended as {child.status} in this invocation")
            child.set_tags(tags)
            return child
        base = resolve_tags({"mlflow.parentRunId": self.parent.run_id, "subnet_ray.role": "trial", **_owner_tags()})
        child = self._open(name, base, identity)
        self.children[name] = child
        child.set_tags(tags)
        child.log_params(params)
        return child

    def link_children(self) -> None:
        """Returns None; records on the parent run (note and runs.json) the child runs of this invocation,
        including those an earlier invocation made and this one reused."""
        if self.parent is None:
            return
        rows = [{"name": c.name, "run_id": c.run_id, "reused": c.reused} for c in self.children.values()]
        self.parent.log_dict({"children": rows}, "runs.json")
        lines = [f"- [{r['name']}](#/experiments/{self.experiment_id}/runs/{r['run_id']})"
                 + (" (from an earlier invocation)" if r["reused"] else "") for r in rows]
        self.parent.set_tags({"mlflow.note.content": "Runs of this sweep invocation:\n\n" + "\n".join(lines)})

    def finish(self, status: str = "FINISHED") -> None:
        """Returns None; ends open child runs, then the parent, with `status`; a second call does nothing.

        A child still open when the sweep finishes normally never reported its own end, so it
        is ended KILLED rather than claimed FINISHED; if the sweep failed, it is FAILED too.
        """
        _check_status(status)
        if self.finished:
            return
        leftover = "KILLED" if status == "FINISHED" else status
        try:
            for child in self.children.values():
                child.end(leftover)
            if self.parent is not None:  # a child created just before an interrupt, never handed back to us
                orphans = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent.run_id}' "
                                                  "and attributes.status = 'RUNNING'")
                for r in orphans:
                    self.client.set_terminated(r.info.run_id, leftover)
        finally:
            if self.parent is not None:
                self.parent.end(status)
            self.finished = True

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        # an interrupt (SIGINT, SIGTERM: KeyboardInterrupt) is KILLED; a second one while the runs end is
        # ignored so they still end
        # (or any error after a signal: native code may have replaced the interrupt with its own error)
        from .interrupts import signalled

        killed = exc_type is not None and (issubclass(exc_type, KeyboardInterrupt) or signalled() is not None)
        status = "FINISHED" if exc_type is None else "KILLED" if killed else "FAILED"
        if self.lost is not None:  # each call would wait out the client's retries: the next invocation closes them
            self.left_open = True
            return False
        for _ in range(3):
            try:
                self.finish(status)
                break
            except KeyboardInterrupt:
                continue
            except Exception:
                if exc_type is None:
                    raise
                # the store failed too (a full disk under SQLite, a read-only root, a lost server): the error
                # that ended the sweep is the one to report; close_dead of the next invocation ends these runs
                self.left_open = True
                break
        return False


LOGGED_TAG = "subnet_ray.logged."  # + what was logged (a stage key, a report's hash): value = the run holding it
HOST_TAG, PID_TAG, START_TAG = "subnet_ray.host", "subnet_ray.pid", "subnet_ray.pid_start"


def _process_start(pid: int) -> str | None:
    """Returns the start time of process `pid` (clock ticks since boot, from /proc), None if unknown or gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_tags() -> dict:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), START_TAG: _process_start(os.getpid()) or ""}


def _alive(pid: int, start: str | None) -> bool:
    """Returns whether the process `pid` that started at `start` still runs (a reused pid is not it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _process_start(pid)
    return not start or now is None or now == start
