"""A watchdog that ends the local Ray instance a sweep driver started when the driver dies, however it dies.

Ray's own fate sharing ends the GCS and the raylet with the driver, but not the raylet's
DashboardAgent and RuntimeEnvAgent (~210 MB, they ignore SIGTERM and outlive a SIGKILLed
driver, re-parented to init). This watchdog is a separate process in its own session (a
Ctrl-C to the terminal does not reach it), started before `ray.init()`. The driver first
sets MARKER=<random id> in its environment, which every process of its Ray instance inherits
(GCS, raylet, agents, workers, whatever they start). Every POLL s the watchdog also records
the driver's Ray descendants (pid and start time, from /proc). Once the driver is gone it
SIGKILLs every process of this user whose environment carries the id, and every recorded
process still running with the same start time (a reused pid is never hit), then exits.
The environment catches what the tree misses: a worker started in the last POLL s whose
raylet died with the driver is re-parented to init and is no one's descendant any more. The
tree catches what the environment may miss: a process that renames itself (`ray::IDLE`,
setproctitle) can overwrite the start-up environment /proc shows.

Run as `python -m subnet_ray.orchestration.watchdog <driver pid> <id>`; `start()` does that.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

POLL = 0.5
MARKER = "SUBNET_RAY_INSTANCE"


def _stat(pid: int) -> tuple[int, str] | None:
    """Returns (parent pid, start time in clock ticks) of `pid`, None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


def _is_ray(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return cmd.startswith("ray::") or "/ray/" in cmd


def marked(instance: str) -> dict[int, str]:
    """Returns {pid: start time} of this user's live processes whose environment has MARKER=instance."""
    want = f"{MARKER}={instance}".encode()
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes()
        except OSError:
            continue
        if want in env.split(b"\0") and (st := _stat(int(d))) is not None:
            out[int(d)] = st[1]
    return out


def descendants(root: int) -> dict[int, str]:
    """Returns {pid: start time} of every live process below `root` in the process tree."""
    parents: dict[int, list[int]] = {}
    starts = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _stat(int(d))) is not None:
            parents.setdefault(st[0], []).append(int(d))
            starts[int(d)] = st[1]
    out, todo = {}, [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            out[child] = starts[child]
            todo.append(child)
    return out


def watch(driver: int, instance: str | None = None) -> list[int]:
    """Returns the pids it killed, after waiting for `driver` to end (see the module docstring)."""
    me = os.getpid()
    first = _stat(driver)
    if first is None:
        return []
    known: dict[int, str] = {}
    while (st := _stat(driver)) is not None and st[1] == first[1]:
        known.update({p: s for p, s in descendants(driver).items() if p != me and _is_ray(p)})
        time.sleep(POLL)
    targets = dict(known) | (marked(instance) if instance else {})
    for pid in list(targets):
        if (st := _stat(pid)) is not None and st[1] == targets[pid]:
            targets.update(descendants(pid))
    killed = []
    for pid, start in targets.items():
        st = _stat(pid)
        if pid != me and st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    return killed


def start() -> subprocess.Popen:
    """Returns the started watchdog of this process, in its own session; marks this process's environment
    (MARKER) so every process it starts from now on, Ray's included, carries the mark."""
    instance = uuid.uuid4().hex
    os.environ[MARKER] = instance
    return subprocess.Popen([sys.executable, "-m", "subnet_ray.orchestration.watchdog", str(os.getpid()), instance],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
