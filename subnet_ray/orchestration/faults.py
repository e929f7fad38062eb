"""Failures of the machine or a service during a sweep: one line saying what failed and where, what is
kept and what to do, and an exit status per kind.

An overnight sweep meets a full disk, a root that became read-only or unwritable, a tracking server
or a Ray cluster that went away, or a trial out of memory. None of them is a bug to show a traceback
for, and none loses a finished stage output (the store publishes atomically), so each ends in
`Fault`, whose text the CLI prints as one `error:` line and whose `exit_code` is its kind's:

    3  the MLflow tracking server went away (stages and report are written; MLflow catches up on the
       next invocation)
    5  the disk holding the root is full
    6  the root became read-only or unwritable
    7  the Ray cluster went away
    8  a trial ran out of memory

`kind_of` recognises a kind from any error a run ends with, walking its causes and Ray's wrapped
task errors and reading the text native code leaves (safetensors says only "No space left on device
(os error 28)"). It imports neither Ray nor MLflow: classes are recognised by name.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

EXIT = {"tracking": 3, "disk_full": 5, "unwritable": 6, "cluster": 7, "memory": 8}
NOT_RETRIED = ("disk_full", "unwritable")  # a Tune retry of these fails the same way: the trial reports them instead

_TEXT = {  # what native code and wrapped errors say, when no errno survives
    "disk_full": re.compile(r"No space left on device|os error 28\b|database or disk is full|Disk quota exceeded|os error 122\b"),
    "unwritable": re.compile(r"Read-only file system|os error 30\b|attempt to write a readonly database"),
    "memory": re.compile(r"CUDA out of memory|running low on memory|OOM killer|out of memory", re.IGNORECASE),
    "tracking": re.compile(r"API request to .* failed|Max retries exceeded with url"),
}
_ERRNO = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "unwritable"}
# Ray's errors that a lost cluster raises in the driver (and a dead worker too: a probe tells them apart)
_RAY_LOST = {"RaySystemError", "LocalRayletDiedError", "NodeDiedError", "GetTimeoutError", "RayActorError",
             "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "OwnerDiedError", "ObjectLostError"}


class Fault(RuntimeError):
    """A failure of the machine or a service; str() is the one line to print, `exit_code` its kind's status."""

    def __init__(self, kind: str, what: str, kept: str, todo: str):
        self.kind, self.what, self.kept, self.todo = kind, what, kept, todo
        super().__init__(f"{what}; {kept}; {todo}")

    @property
    def exit_code(self) -> int:
        return EXIT[self.kind]


class Observed(RuntimeError):
    """A fault seen where its context is not known (a Tune trial, the tracking calls after the waves):
    its kind, the failing error's own words, and during what; `explain` turns it into a Fault."""

    def __init__(self, kind: str, detail: str, during: str | None = None):
        self.kind, self.detail, self.during = kind, detail, during
        super().__init__(f"{kind}: {detail}" + (f" (during {during})" if during else ""))


def _names(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def chain(e: BaseException) -> Iterator[BaseException]:
    """Yields `e` and every error behind it: causes, contexts, and the task error a Ray error wraps."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        inner = getattr(x, "cause", None)
        todo += [inner if isinstance(inner, BaseException) else None, x.__cause__, x.__context__]


def detail(e: BaseException) -> str:
    """Returns the error's own words in one short line (its first line, at most 200 characters)."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _one(x: BaseException) -> str | None:
    """Returns the kind of this one error (not its causes), None if it is no fault of the machine or a service."""
    if isinstance(x, Observed):
        return x.kind
    if isinstance(x, Fault):
        return x.kind
    if isinstance(x, OSError) and x.errno in _ERRNO:
        return _ERRNO[x.errno]
    names = _names(x)
    text = str(x)
    if _TEXT["disk_full"].search(text) or "OutOfDiskError" in names:
        return "disk_full"
    if _TEXT["unwritable"].search(text):
        return "unwritable"
    if isinstance(x, MemoryError) or "OutOfMemoryError" in names or _TEXT["memory"].search(text) and not names & _RAY_LOST:
        return "memory"
    if names & _RAY_LOST:
        return "cluster"  # or a worker that died: `explain` asks the cluster
    if "TrackingUnreachable" in names or _TEXT["tracking"].search(text) and "MlflowException" in names:
        return "tracking"
    if isinstance(x, PermissionError):
        return "unwritable?"  # only if it was the root that refused: `explain` probes it
    return None


ORDER = ("disk_full", "unwritable", "memory", "cluster", "tracking", "unwritable?")


def kind_of(e: BaseException) -> tuple[str, BaseException] | None:
    """Returns (kind, the error that shows it) for the first kind in ORDER anywhere behind `e`, None if none."""
    found = {}
    for x in chain(e):
        k = _one(x)
        if k is not None:
            found.setdefault(k, x)
    for k in ORDER:
        if k in found:
            return k, found[k]
    return None


@dataclass
class Context:
    """What a sweep invocation had when it failed: enough to say what is kept and what to do."""

    root: str
    keys: list[str] = field(default_factory=list)  # every stage output of the sweep
    address: str | None = None  # the Ray cluster, None: a local Ray (or none)
    tracking_uri: str | None = None
    executor: str = "ray"
    reports: list[Path] = field(default_factory=list)  # written before the failure
    tracker: object = None  # the invocation's tracking.Tracker, once made (its `left_open`: runs it could not end)
    watch: object = None  # the ClusterWatch of its Ray, if any


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _local(root: str) -> Path | None:
    return None if "://" in root and not root.startswith("file://") else Path(root.removeprefix("file://"))


def _writable(root: str) -> OSError | None:
    """Returns the error writing a file under a local root gives now (None: writable, or not a local root)."""
    base = _local(root)
    if base is None:
        return None
    probe = base / f".subnet-ray-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return e
    return None


def _kept(ctx: Context) -> str:
    """Returns how many of the sweep's stage outputs are in the store, read without writing anything."""
    base = _local(ctx.root)
    if not ctx.keys:
        return "finished stage outputs are kept in the store"
    if base is not None:
        done = sum((base / "store" / k / "_SUCCESS").exists() for k in ctx.keys)
        where = base / "store"
    else:
        try:
            from ..storage.store import store_for

            store = store_for(ctx.root)
            done, where = sum(store.done(k) for k in ctx.keys), store.uri
        except Exception:  # noqa: BLE001 - the count is a courtesy; the message must still come out
            return f"finished stage outputs are kept in the store under {ctx.root}"
    return f"{done} of {len(ctx.keys)} stage outputs are in the store {where}"


def cluster_answers(address: str | None, timeout: float = 3.0) -> bool:
    """Returns whether the Ray cluster this driver is connected to (its GCS) still accepts connections."""
    target = _gcs(address)
    if target is None:
        return False
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def _gcs(address: str | None) -> str | None:
    """Returns host:port of the GCS of the Ray this driver is connected to (else of `address`), None if unknown."""
    try:
        import ray

        gcs = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - a driver whose Ray is gone may fail anywhere here
        gcs = None
    return gcs or (address if address and address not in ("auto", "local") and "://" not in address else None)


class ClusterWatch(threading.Thread):
    """Asks the Ray cluster's GCS every `every` s whether it is there; after `misses` asks in a row without an
    answer (30 s by default: a GCS that restarts, or a network that blips, has that long, and `grace` after
    it still ends before Ray's 60 s), raises Observed("cluster") in the main thread (through SIGUSR2).

    Without it a lost cluster gives no error to explain: Ray's native code ends the driver process
    60 s after its GCS went away ("Failed to connect to GCS within 60 seconds ... The program will
    terminate"), so the user would see that line, not what is kept and what to do. The main thread
    may be blocked inside Ray then (seen: the handler never ran before that abort): if it has not taken
    the exception within `grace` s, this thread ends what MLflow runs it can, prints the line and exits
    with the cluster's status itself.
    """

    def __init__(self, gcs: str, ctx: "Context", every: float = 5.0, misses: int = 6, grace: float = 10.0):
        super().__init__(daemon=True, name="ray-cluster-watch")
        self.gcs, self.ctx, self.every, self.misses, self.grace = gcs, ctx, every, misses, grace
        self.done, self.taken = threading.Event(), threading.Event()
        self.lost: str | None = None
        self.previous = signal.signal(signal.SIGUSR2, self._raise)

    def _raise(self, signum, frame) -> None:
        if self.lost is not None and not self.done.is_set():
            self.taken.set()
            raise Observed("cluster", self.lost)

    def _exit(self) -> None:
        """Ends this process as the main thread would have: the runs FAILED (as far as 10 s allow), one line, status 7."""
        import sys

        tracker = self.ctx.tracker
        if tracker is not None:
            ender = threading.Thread(target=lambda: _quietly(lambda: tracker.finish("FAILED")), daemon=True)
            ender.start()
            ender.join(10)
            tracker.left_open = ender.is_alive() or not tracker.finished
        fault = explain(Observed("cluster", self.lost), self.ctx)
        print(f"error: {fault or self.lost}", file=sys.stderr, flush=True)
        os._exit(EXIT["cluster"])

    def run(self) -> None:
        host, _, port = self.gcs.rpartition(":")
        missed = 0
        while not self.done.wait(self.every):
            try:
                socket.create_connection((host, int(port)), timeout=self.every).close()
                missed = 0
            except OSError as e:
                missed += 1
                if missed >= self.misses and not self.done.is_set():
                    self.lost = f"its GCS at {self.gcs} has not answered for {missed * self.every:.0f} s ({e.strerror or e})"
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR2)
                    if not self.taken.wait(self.grace) and not self.done.is_set():
                        self._exit()
                    return

    def stop(self) -> None:
        """Stops watching and puts the previous SIGUSR2 handler back."""
        self.done.set()
        signal.signal(signal.SIGUSR2, self.previous)


def _quietly(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - best effort on the way out; the next invocation ends what is left
        pass


def watch_cluster(ctx: "Context", every: float = 5.0, misses: int = 6) -> ClusterWatch | None:
    """Returns a started ClusterWatch of the connected Ray (call its stop() at the end), None where it cannot
    watch (no GCS address known, not the main thread)."""
    gcs = _gcs(ctx.address)
    if gcs is None or threading.current_thread() is not threading.main_thread():
        return None
    watch = ClusterWatch(gcs, ctx, every, misses)
    watch.start()
    return watch


def explain(e: BaseException, ctx: Context) -> Fault | None:
    """Returns the Fault that `e` is (what failed and where, what is kept, what to do), None if it is none."""
    found = kind_of(e)
    if found is None:
        # whatever a library made of it (SQLite: "unable to open database file"), a root that refuses writes
        # now is what failed
        refused = _writable(ctx.root)
        if refused is None or refused.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            return None
        found = ("unwritable", refused)
    kind, x = found
    during = next((o.during for o in chain(e) if isinstance(o, Observed) and o.during), None)
    during = during or next((n for o in chain(e) for n in getattr(o, "__notes__", ()) if n.startswith("while ")), None)
    words = x.detail if isinstance(x, Observed) else detail(x)
    at = f", {during}" if during else ""
    kept = _kept(ctx)
    if getattr(ctx.tracker, "left_open", False) and kind != "tracking":
        kept += " (the MLflow runs it could not end are ended KILLED by the next invocation)"
    rerun = "rerun the same command: finished outputs are reused and an interrupted fine-tuning resumes from its last epoch"
    if kind == "unwritable?":  # a permission error: the root's fault only if the root refuses writes now
        refused = _writable(ctx.root)
        if refused is None:
            return None
        kind, words = "unwritable", detail(refused)
    if kind == "disk_full":
        base = _local(ctx.root)
        free = ""
        if base is not None and base.exists():
            u = shutil.disk_usage(base)
            free = f"; {_size(u.free)} free of {_size(u.total)}"
        return Fault(kind, f"the disk holding the root {ctx.root} is full ({words}{at}{free})", kept,
                     f"free space under {ctx.root} (or use a --root with room), then {rerun}")
    if kind == "unwritable":
        refused = _writable(ctx.root)
        state = "read-only" if (refused is not None and refused.errno == errno.EROFS) or "ead-only" in words or "readonly" in words \
            else "not writable"
        return Fault(kind, f"the root {ctx.root} became {state} ({words}{at})", kept,
                     f"make {ctx.root} writable again (remount it read-write, or fix its owner and permissions), then {rerun}")
    if kind == "memory":
        return Fault(kind, f"a trial ran out of memory ({words}{at})", kept,
                     "give each trial more memory (a smaller training.batch_size or influence.batch_size, or more "
                     f"resources.cpus per trial so fewer run at once), then {rerun}")
    if kind == "cluster":
        if cluster_answers(ctx.address):
            if "OOM" in str(x) or "SIGKILL" in str(x):
                return Fault("memory", f"a trial's process was killed ({words}{at}; Ray names the OOM killer as the likely cause)",
                             kept, "give each trial more memory (a smaller training.batch_size or influence.batch_size, or "
                                   f"more resources.cpus per trial so fewer run at once), then {rerun}")
            return None  # the cluster is there: a worker died for its own reasons, not a lost cluster
        where = f"at {ctx.address}" if ctx.address else "this invocation started (local)"
        todo = (f"start it again (services/ray.sh start, or `ray start --head`), then {rerun}" if ctx.address
                else f"{rerun} (it starts a new local Ray)")
        return Fault(kind, f"the Ray cluster {where} went away ({words}{at})", kept, todo)
    if kind == "tracking":
        from .tracking_store import redact

        uri = redact(ctx.tracking_uri) if ctx.tracking_uri else "(default)"
        if ctx.reports:
            kept = kept + f"; the report is written ({', '.join(str(p) for p in ctx.reports[:2])}" + \
                (f" and {len(ctx.reports) - 2} more" if len(ctx.reports) > 2 else "") + ")"
        return Fault(kind, f"the MLflow tracking server {uri} went away ({words}{at})", kept,
                     "rerun the same command once it answers: nothing is recomputed, and MLflow gets every run, metric and "
                     "artifact it missed (runs left RUNNING are closed KILLED)")
    return None
