"""Ray: connecting (with a bounded wait), and running a wave of trials on Ray Tune.

A Tune trial runs the stage nodes one trial owns, in order, through the artifact store:
finished nodes are skipped, an interrupted fine-tuning resumes from its last epoch (its
partial folder lives in the store root, which a cluster shares), and Tune retries a
failed trial `max_failures` times. Trials report per-epoch metrics with `ray.tune.report`;
a driver-side callback hands each epoch result to `on_result` as it arrives (live MLflow metrics).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from ..sweep.config import SweepSpec
from ..sweep.graph import Node
from .progress import StepProgress

from .interrupts import graceful, raise_if_interrupted
from .workers import WORKER_ENV, freeze_heap, use_cpus


_WATCHDOG = None  # the watchdog of the local Ray instance this process started


class ClusterUnreachable(ConnectionError):
    """The Ray cluster address does not answer; the message names it."""


def check_address(address: str, timeout: float = 10.0) -> None:
    """Raises ClusterUnreachable within `timeout` s unless something listens at the Ray address."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    host, port = parts.hostname, parts.port or (10001 if parts.scheme == "ray" else 6379)
    if not host:
        raise ClusterUnreachable(f"Ray cluster address {address!r} is not host:port, ray://host:port or http://host:port")
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise ClusterUnreachable(f"Ray cluster at {address} is unreachable ({host}:{port}: {e.strerror or e})") from None
    if "://" not in address or address.startswith("ray://"):  # GCS host:port, or the Ray Client server
        _check_ray_rpc(address, host, port, address.startswith("ray://"), max(timeout - (time.monotonic() - t0), 1.0))


# A method every Ray server of that kind has; an empty request is a valid protobuf message.
_RAY_RPC = {True: "/ray.rpc.RayletDriver/ClusterInfo", False: "/ray.rpc.NodeInfoGcsService/GetClusterId"}


def _check_ray_rpc(address: str, host: str, port: int, client: bool, timeout: float) -> None:
    """Raises ClusterUnreachable unless a Ray server (GCS, or the Ray Client server for ray://) answers gRPC there.

    A proxy or another service on the port accepts the TCP connection too, and ray.init would then
    retry for ~30 s with a flood of warnings; one gRPC call tells them apart within `timeout`.
    """
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary(_RAY_RPC[client], request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(b"", timeout=timeout)
        except grpc.RpcError as e:
            code = e.code()
            # a Ray server that refuses us (token authentication, an odd request) still answered
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
                return
            what = "no answer" if code == grpc.StatusCode.DEADLINE_EXCEEDED else f"{code.name}: {e.details()}"
            server = "Ray Client server" if client else "Ray GCS"
            raise ClusterUnreachable(f"Ray cluster at {address} is unreachable: {host}:{port} accepts connections but is not a "
                                     f"{server} ({what})") from None


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connects to the cluster at `address`, or starts a local Ray bound to 127.0.0.1 when None."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0, Tune prints no status tables
    for name in ("ray.data", "ray.tune"):  # our own progress bars say where a sweep is
        logging.getLogger(name).setLevel(logging.WARNING)
    env = {"env_vars": dict(WORKER_ENV)}
    if address:
        check_address(address)
        # the driver of a Ray job (`subnet-ray submit`) already has WORKER_ENV in the job's runtime
        # env, and Ray refuses to merge a second one that repeats its keys
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        ray.init(address=address, runtime_env=None if in_job else env, log_to_driver=False)
    else:
        global _WATCHDOG
        if _WATCHDOG is None or _WATCHDOG.poll() is not None:
            from .watchdog import start

            _WATCHDOG = start()  # ends this Ray instance's processes if this driver dies (even by SIGKILL)
        temp = Path(tempfile.gettempdir()) / f"subnet-ray-{os.getuid()}"  # short: Ray's socket paths are length-limited
        ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=str(temp), runtime_env=env,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


def _trainable(config: dict, spec_json: str, store_uri: str, plan: dict) -> None:
    from ray import tune

    try:
        _run_trial(config, spec_json, store_uri, plan)
    except Exception as e:
        from .faults import NOT_RETRIED, detail, kind_of

        found = kind_of(e)
        if found is None or found[0] not in NOT_RETRIED:
            raise  # Tune retries it
        # a full disk or a read-only root fails every retry the same way: said once, to the driver (run_wave)
        during = next((n for n in getattr(e, "__notes__", ()) if n.startswith("while ")), f"while running trial {config['trial']}")
        tune.report({"fault": found[0], "fault_detail": detail(found[1]), "fault_during": during})


def _run_trial(config: dict, spec_json: str, store_uri: str, plan: dict) -> None:
    from ray import tune

    from ..storage.store import Store
    from ..stages import execute, execute_influence, influence_groups
    from .mlflow_values import epoch_metrics

    use_cpus(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))
    spec = SweepSpec.model_validate_json(spec_json)
    store = Store(store_uri)
    freeze_heap()  # the worker's imports: not rescanned by every full collection inside a stage output
    ran = []
    for group in influence_groups(plan[config["trial"]]):  # influence nodes of one model: shared loads and sketches
        steps = StepProgress(f"{group[0].trial} influence x{len(group)}", lambda text: tune.report({"progress": text}),
                             interval=10.0, unit="examples sketched")
        ran += execute_influence(group, spec, store, on_step=steps)
    restored = tune.get_checkpoint()  # a retried trial on a remote store: its partial folder comes back from Tune
    for node in plan[config["trial"]]:
        if restored is not None and node.stage == "finetune" and not store.done(node.key):
            restored.to_directory(str(store.partial(node.key)))
            restored = None

        def on_epoch(record: dict, node=node) -> None:
            metrics = {"epoch": record["epoch"], "node": node.key, **epoch_metrics(record)}
            # a shared-disk store keeps partial work where any node finds it; a remote one needs Tune's checkpoint
            ckpt = tune.Checkpoint.from_directory(str(store.partial(node.key))) if store.remote else None
            tune.report(metrics, checkpoint=ckpt)

        # step progress and an ETA for the driver's display: a fine-tuning epoch can take many minutes
        what = f"influence {node.params.variant}" if node.stage == "influence" else str(node.stage)
        steps = StepProgress(f"{node.trial} {what}", lambda text: tune.report({"progress": text}), interval=10.0,
                             unit={"subnetworks": "language", "influence": "examples sketched"}.get(node.stage, "step"))
        if execute(node, spec, store, on_epoch=on_epoch, progress=False, on_step=steps):
            ran.append(node.key)
    tune.report({"done": 1, "computed": len(ran)})


def _progress(total: int, desc: str, enabled: bool, on_result: Callable[[dict], None] | None = None):
    from ray.tune import Callback
    from tqdm.auto import tqdm

    class Progress(Callback):
        """A progress bar of finished trials, in the driver (Tune's own tables are off); passes every
        trial result to `on_result` there, so MLflow keeps one writer."""

        def __init__(self):
            self.bar = tqdm(total=total, desc=desc, disable=not enabled)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "progress" in result:  # a trial's step progress line, e.g. 'epoch 2/4, step 120/626 (19%), ETA 3m05s'
                self.bar.set_postfix_str(result["progress"], refresh=True)
            if on_result is not None:
                on_result(result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.bar.update(1)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.bar.set_postfix_str(f"failed: {trial.config['trial']}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            # in place of Tune's traceback per failed attempt (TUNE_PRINT_ALL_TRIAL_ERRORS; `--debug` shows them)
            try:
                from .faults import detail

                error = trial.get_pickled_error()
                why = f" ({detail(error)})" if error is not None else ""
            except Exception:  # noqa: BLE001 - the line is a courtesy; Tune goes on either way
                why = ""
            print(f"trial {trial.config['trial']} failed{why}; Tune retries it (it resumes from its last finished epoch)",
                  file=sys.stderr, flush=True)

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return Progress()


def _stop_tune() -> bool:
    """Returns True after asking the running Tune loop to stop its trials (Tune's own SIGUSR1 handler), False
    if Tune has not installed it yet (then the caller raises at once)."""
    tune_handler = signal.getsignal(signal.SIGUSR1)
    if not callable(tune_handler):
        return False
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # its "stop signal received" lines: we say it in one line
    tune_handler(signal.SIGUSR1, None)
    return True


def run_wave(spec: SweepSpec, store_uri: str, plan: dict[str, list[Node]], storage: str, name: str,
             progress: bool = True, on_result: Callable[[dict], None] | None = None) -> None:
    """Runs one Tune trial per entry of `plan` (trial name -> its nodes); raises if any trial failed for good.

    `on_result(result)` is called in this process with each result a trial reports (per epoch:
    epoch, node, train_loss, dev_accuracy_mean, dev_accuracy/<lang>). Through Ray Client
    (ray://) Tune's loop runs on the head node, not here, so it is not called.
    """
    import ray
    from ray import tune

    if not plan:
        return
    if ray.util.client.ray.is_connected():
        on_result = None  # it would run on the head node, a second MLflow writer; the runner logs after the waves
    res = spec.resources
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, spec_json=spec.model_dump_json(), store_uri=store_uri, plan=plan),
        {"cpu": res.cpus, "gpu": res.gpus},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(sorted(plan))},
        tune_config=tune.TuneConfig(reuse_actors=False),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, callbacks=[_progress(len(plan), name, progress, on_result)],
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # a line per retry instead (Progress); cli --debug sets 1
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # our handler asks Tune to stop (below), and remembers the signal
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # not the last wave's handler: Tune installs this wave's in fit()
    with graceful(_stop_tune):
        results = tuner.fit()
    raise_if_interrupted()  # Tune returns normally after a stop: no later wave may start
    faults = [r.metrics for r in results if r.error is None and r.metrics and "fault" in r.metrics]
    if faults:
        from .faults import Observed

        raise Observed(faults[0]["fault"], faults[0]["fault_detail"], faults[0]["fault_during"])
    failed = [(r.config["trial"], r.error) for r in results if r.error is not None]
    if failed:
        names = ", ".join(t for t, _ in failed)
        err = RuntimeError(f"{len(failed)} trial(s) failed after {res.max_failures} retries: {names}; first error: {failed[0][1]}")
        err.add_note(f"while running trial {failed[0][0]}")  # faults.explain names it if the machine or Ray failed
        raise err from failed[0][1]

