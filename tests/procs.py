"""Process and port helpers for tests that start services (Ray heads, MLflow servers)."""
import os
import random
import signal
import socket
import subprocess


def free_ports(n: int) -> list[int]:
    """Returns n distinct TCP ports on 127.0.0.1 that nothing listens on right now.

    Drawn from 20000-32767, below Linux's ephemeral range (32768-60999, where the kernel picks
    ports for outgoing connections and `bind(0)`) and above Ray's worker ports (10002-19999), so a
    busy Ray in the same test run is unlikely to take one before the service under test binds it.
    """
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(20000, 32768)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def live_processes(pgid=None, marker=None) -> list[int]:
    """Returns pids (not zombies) in process group pgid or whose command line has marker."""
    out = subprocess.run(["ps", "-ww", "-e", "-o", "pid=", "-o", "pgid=", "-o", "stat=", "-o", "args="],
                         capture_output=True, text=True, check=True).stdout
    pids = []
    for line in out.splitlines():
        pid, group, state, cmd = (line.split(None, 3) + [""])[:4]
        if state.startswith("Z") or int(pid) == os.getpid():
            continue
        if (pgid is not None and int(group) == pgid) or (marker and marker in cmd):
            pids.append(int(pid))
    return pids


def kill_leftovers(pgid=None, marker=None, sig=signal.SIGKILL) -> None:
    """Sends sig to what a test left running: its process group and its marked processes."""
    for pid in live_processes(pgid, marker):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
