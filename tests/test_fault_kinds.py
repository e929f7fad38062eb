"""Which fault an error is (orchestration/faults.py), on real exception objects: what Ray, torch, numpy,
safetensors and MLflow raise when the cluster, the memory, the disk or the tracking server fails.

The end-to-end tests that cause a full disk, a read-only root, a lost tracking server and a lost local Ray
for real are in tests/test_machine_faults.py. A trial out of memory is checked here only, on the errors
numpy, torch and Ray raise (making a Tune trial run out of memory for real costs minutes on this machine),
and so are Ray's errors of a partly lost cluster (a dead node or actor) against a cluster that answers.
"""
import errno
import os
import socket
import subprocess

import numpy as np
import pytest

from procs import free_port
from subnet_ray.orchestration.faults import EXIT, Context, Observed, explain, kind_of

ROOT_KEYS = ["finetune/" + "0" * 20, "subnetworks/" + "1" * 20]


@pytest.fixture
def ctx(tmp_path):
    """A root with one of its two stage outputs published."""
    (tmp_path / "store" / ROOT_KEYS[0]).mkdir(parents=True)
    (tmp_path / "store" / ROOT_KEYS[0] / "_SUCCESS").write_bytes(b"")
    return Context(str(tmp_path), keys=ROOT_KEYS)


def test_exit_statuses_are_distinct_and_clear_of_the_existing_ones():
    assert len(set(EXIT.values())) == len(EXIT)
    assert not set(EXIT.values()) & {0, 1, 2, 4, 129, 130, 143}  # cli.main's own statuses


def test_memory_errors_of_numpy_torch_and_ray_are_memory(ctx):
    import ray.exceptions as rx
    import torch

    with pytest.raises(MemoryError) as numpy_oom:
        np.empty(2**62, dtype=np.uint8)  # a real allocation failure
    errors = [numpy_oom.value, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              rx.OutOfMemoryError("Task was killed due to the node running low on memory."),
              rx.RayTaskError("train", "Traceback ...", MemoryError()).as_instanceof_cause()]
    for e in errors:
        assert kind_of(e)[0] == "memory", repr(e)
        f = explain(e, ctx)
        assert f.exit_code == 8 and f.kind == "memory"
        assert "1 of 2 stage outputs are in the store" in str(f) and "batch_size" in str(f)


def test_a_lost_cluster_is_told_from_a_dead_worker_by_asking_the_cluster(ctx):
    import ray.exceptions as rx

    lost = [rx.RaySystemError("connection to GCS lost"), rx.GetTimeoutError("Get timed out: some object(s) not ready."),
            rx.ActorDiedError(), rx.NodeDiedError("node 10.0.0.2 died"), rx.LocalRayletDiedError()]
    port = free_port()
    for e in lost:
        assert kind_of(e)[0] == "cluster"
        f = explain(e, Context(ctx.root, keys=ROOT_KEYS, address=f"127.0.0.1:{port}"))  # nothing listens there
        assert f.exit_code == 7 and f"the Ray cluster at 127.0.0.1:{port} went away" in str(f), str(f)
        assert "start it again" in f.todo
    no_address = explain(rx.RaySystemError("raylet died"), ctx)  # no Ray in this process: the local one is gone
    assert no_address.kind == "cluster" and "(it starts a new local Ray)" in no_address.todo
    with socket.socket() as s:  # a cluster that answers: a worker died, not the cluster
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"127.0.0.1:{s.getsockname()[1]}"
        assert explain(rx.ActorDiedError(), Context(ctx.root, address=address)) is None
        assert explain(rx.WorkerCrashedError(), Context(ctx.root, address=address)) is None
        oom = rx.RayActorError(error_msg="The actor died unexpectedly. Worker exit detail: (1) The process is killed "
                                         "by SIGKILL by OOM killer due to high memory usage.")
        f = explain(oom, Context(ctx.root, address=address))
        assert f.kind == "memory" and f.exit_code == 8 and "OOM killer" in f.what


def test_a_full_disk_as_safetensors_and_sqlite_say_it(ctx):
    from safetensors import SafetensorError

    e = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    e.add_note("while computing finetune of babel/sft/seed1")
    f = explain(e, ctx)
    assert f.exit_code == 5
    assert f"the disk holding the root {ctx.root} is full" in f.what and "while computing finetune of babel/sft/seed1" in f.what
    assert "1 of 2 stage outputs are in the store" in f.kept and f"free space under {ctx.root}" in f.todo
    wrapped = RuntimeError("MLflow: (sqlite3.OperationalError) database or disk is full")
    assert kind_of(wrapped)[0] == "disk_full"
    assert kind_of(OSError(errno.EDQUOT, "Disk quota exceeded"))[0] == "disk_full"


def test_a_permission_error_is_the_roots_only_when_the_root_refuses_writes(ctx, tmp_path):
    e = PermissionError(errno.EACCES, "Permission denied", "/etc/some-data.csv")
    assert explain(e, ctx) is None  # the root is writable: someone else's file, a plain error
    assert kind_of(OSError(errno.EROFS, "Read-only file system"))[0] == "unwritable"
    chained = RuntimeError("could not publish")
    chained.__cause__ = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "store" / "x"))
    f = explain(chained, ctx)
    assert f.exit_code == 6 and "Read-only file system" in f.what


def test_an_unreachable_mlflow_server_is_the_tracking_kind(ctx, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Exception) as got:
        MlflowClient(uri).search_experiments()  # what mlflow really raises when nothing answers
    assert kind_of(got.value)[0] == "tracking"
    f = explain(got.value, Context(ctx.root, keys=ROOT_KEYS, tracking_uri=uri))
    assert f.exit_code == 3 and f"the MLflow tracking server {uri} went away" in f.what
    hidden = explain(got.value, Context(ctx.root, tracking_uri="http://me:secret@mlflow:5000"))
    assert "secret" not in str(hidden) and "http://me:***@mlflow:5000" in hidden.what


def test_a_bug_is_no_fault(ctx):
    for e in (ValueError("bad shape"), KeyError("xa"), RuntimeError("mat1 and mat2 shapes cannot be multiplied")):
        assert kind_of(e) is None and explain(e, ctx) is None
    assert explain(Observed("disk_full", "No space left on device", "while running trial t"), ctx).exit_code == 5


def test_the_cluster_watch_raises_in_the_main_thread_once_the_gcs_stops_answering(ctx):
    import time

    from subnet_ray.orchestration.faults import ClusterWatch

    gcs = socket.socket()
    gcs.bind(("127.0.0.1", 0))
    gcs.listen()
    address = f"127.0.0.1:{gcs.getsockname()[1]}"
    watch = ClusterWatch(address, Context(ctx.root, keys=ROOT_KEYS, address=address), every=0.2, misses=2, grace=30)
    watch.start()
    try:
        time.sleep(1.0)  # answering: nothing happens
        gcs.close()  # the cluster goes away
        t0 = time.monotonic()
        with pytest.raises(Observed) as got:
            while time.monotonic() - t0 < 10:
                time.sleep(0.05)
        assert time.monotonic() - t0 < 2  # two missed asks 0.2 s apart, not Ray's 60 s
    finally:
        watch.stop()
    f = explain(got.value, Context(ctx.root, keys=ROOT_KEYS, address=address))
    assert f.exit_code == 7 and f"GCS at {address} has not answered" in f.what and "1 of 2 stage outputs" in f.kept
