"""End to end: `subnet-ray submit` to a real Ray head with a dashboard (job server), as a user would."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from subnet_ray.sweep.config import load_sweep
from subnet_ray.orchestration.runner import ledger
from subnet_ray.storage.store import store_for
from subnet_ray.sweep.graph import graph
from procs import free_ports, kill_leftovers, live_processes

PROJECT = Path(__file__).resolve().parents[1]
SMOKE = PROJECT / "sweeps" / "smoke.yaml"


@pytest.fixture
def head():
    """A Ray head with its dashboard on 127.0.0.1, in its own temp dir so no other Ray on the machine finds it."""
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("the `ray` command is not beside this Python: install the dev extra (ray[default])")
    ray_bin = str(Path(sys.executable).parent / "ray")
    # the job's `python` must be this environment's, as on a real node's image; token authentication
    # on, with a token of the test's own (Ray >= 2.59 turns it on for local clusters anyway)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}
    env.pop("RAY_ADDRESS", None)
    for attempt in range(3):
        temp = Path(tempfile.gettempdir()) / f"srs-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths are length-limited
        gcs, dash, client, agent_http, agent_grpc, env_agent, metrics = free_ports(7)
        cmd = [ray_bin, "start", "--head", "--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp),
               "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
               "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
               "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
               "--metrics-export-port", str(metrics), "--disable-usage-stats"]
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        # `ray start` can return 0 while its raylet exits at once (an agent lost its port to another
        # process: "Address already in use"); a job would then wait forever. Start again on new ports.
        time.sleep(3)
        if started.returncode != 0 or any(c.split()[0].endswith("/raylet") for c in _cmdlines(temp)):
            break
        kill_leftovers(marker=str(temp), sig=signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield f"http://127.0.0.1:{dash}", env
    finally:
        # `ray stop` stops every Ray of this user (other tests' too): stop only ours, the processes
        # whose command line names its temp dir, politely first
        for sig in (signal.SIGTERM, signal.SIGKILL):
            kill_leftovers(marker=str(temp), sig=sig)
            deadline = time.monotonic() + 10
            while live_processes(marker=str(temp)) and time.monotonic() < deadline:
                time.sleep(0.2)
        assert not live_processes(marker=str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def _cmdlines(marker) -> list[str]:
    """Returns the command lines of live processes that name `marker`."""
    out = subprocess.run(["ps", "-ww", "-e", "-o", "stat=", "-o", "args="], capture_output=True, text=True, check=True).stdout
    return [line.split(None, 1)[1] for line in out.splitlines() if str(marker) in line and not line.startswith("Z")]


@pytest.mark.slow
def test_submit_runs_the_sweep_as_a_ray_job_on_the_cluster(head, tmp_path):
    address, env = head
    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "subnet_ray.cli", "submit", str(SMOKE), "--address", address, "--root", str(root), "--wait"]
    # a wrong token: refused in seconds, by name, and nothing submitted or written
    wrong = subprocess.run(cmd, env={**env, "RAY_AUTH_TOKEN": "0" * 64}, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert wrong.returncode == 2 and f"Ray dashboard at {address} refused the job client" in wrong.stderr, wrong.stderr[-3000:]
    assert not root.exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    assert f"to {address}" in done.stdout
    # the job ran the whole sweep on the cluster: every stage once, in other processes, and the report
    spec = load_sweep(SMOKE)
    entries = ledger(store_for(root))
    assert sorted(e["key"] for e in entries) == sorted(n.key for n in graph(spec))
    assert os.getpid() not in {e["pid"] for e in entries}
    assert (root / "reports" / "smoke" / "report.html").exists()
    assert (root / "mlflow.db").exists()
