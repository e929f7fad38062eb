"""A watchdog that ends the local Ray instance a sweep driver started when the driver dies, however it dies.

Ray's own fate sharing ends the GCS and the raylet with the driver, but not the raylet's
DashboardAgent and RuntimeEnvAgent (~210 MB, they ignore SIGTERM and outlive a SIGKILLed
driver, re-parented to init). This watchdog is a separate process in its own session (a
Ctrl-C to the terminal does not reach it), started before `ray.init()`: every POLL s it
records the driver's Ray descendants (pid and start time, from /proc); once the driver is
gone it SIGKILLs every recorded process that still runs with the same start time (so a
reused pid is never hit), and whatever those have started since, then exits.

Run as `python -m subnet_ray.orchestration.watchdog <driver pid>`; `start(pid)` does that.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL = 0.5


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


def watch(driver: int) -> list[int]:
    """Returns the pids it killed, after waiting for `driver` to end (see the module docstring)."""
    me = os.getpid()
    first = _stat(driver)
    if first is None:
        return []
    known: dict[int, str] = {}
    while (st := _stat(driver)) is not None and st[1] == first[1]:
        known.update({p: s for p, s in descendants(driver).items() if p != me and _is_ray(p)})
        time.sleep(POLL)
    targets = dict(known)
    for pid in known:
        if (st := _stat(pid)) is not None and st[1] == known[pid]:
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


def start(driver: int | None = None) -> subprocess.Popen:
    """Returns the started watchdog process of `driver` (default: this process), in its own session."""
    driver = driver or os.getpid()
    return subprocess.Popen([sys.executable, "-m", "subnet_ray.orchestration.watchdog", str(driver)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]))
