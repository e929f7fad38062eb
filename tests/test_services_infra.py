"""Checks services/ and infra/: the fields that matter in every YAML file and the
Dockerfile, the scripts' syntax, help and bad-input errors, and real start / health /
stop round trips of the MLflow server and a Ray head through the scripts."""
import importlib.metadata
import json
import os
import re
import shlex
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from procs import free_port, kill_leftovers, live_processes

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "services"
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
STORE_PATH = "/mnt/subnet-ray"
RAY_VERSION = importlib.metadata.version("ray")
MLFLOW_VERSION = importlib.metadata.version("mlflow")
SCRIPTS = sorted(SERVICES.glob("*.sh"))
COMMANDS = {"mlflow.sh": ["start", "stop", "health"], "ray.sh": ["head", "worker", "stop", "health"]}


def load(path):
    """Returns the one YAML document in path."""
    with open(path) as f:
        return yaml.safe_load(f)


# ---------------------------------------------------------------- compose

def dotenv(path):
    """Returns the KEY=VALUE pairs of an env file."""
    pairs = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text, env):
    """Returns text with compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ resolved."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"${{{name}}} is neither in services/.env.example nor defaulted")
    return VAR.sub(sub, text)


@pytest.fixture(scope="module")
def compose():
    """Returns compose.yaml with every variable resolved from .env.example."""
    env = dotenv(SERVICES / ".env.example")
    text = interpolate((SERVICES / "compose.yaml").read_text(), env)
    return yaml.safe_load(text)


def test_compose_variables_are_documented_in_env_example():
    text = (SERVICES / "compose.yaml").read_text()
    env = dotenv(SERVICES / ".env.example")
    used = {m.group(1) for m in VAR.finditer(text) if m.group(1)}
    defaulted = {m.group(1) for m in VAR.finditer(text) if m.group(2) == ":-"}
    assert used - defaulted <= set(env), f"undocumented: {sorted(used - defaulted - set(env))}"
    assert set(env) <= used, f".env.example documents unused {sorted(set(env) - used)}"
    interpolate(text, env)  # raises on anything unresolvable


def test_compose_publishes_only_on_loopback(compose):
    published = {name: svc.get("ports", []) for name, svc in compose["services"].items()}
    assert published["postgres"] == []
    assert published["create-bucket"] == []
    assert published["mlflow"] == ["127.0.0.1:5000:5000"]
    assert published["minio"] == ["127.0.0.1:9000:9000", "127.0.0.1:9001:9001"]


def test_compose_images_are_pinned(compose):
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    for name, repo in [("minio", "quay.io/minio/minio"), ("create-bucket", "quay.io/minio/mc")]:
        image, tag = services[name]["image"].rsplit(":", 1)
        assert image == repo and re.fullmatch(r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", tag)
    build = services["mlflow"]["build"]
    dockerfile = (SERVICES / build["context"] / build["dockerfile"]).read_text()
    assert f"ARG MLFLOW_VERSION={MLFLOW_VERSION}" in dockerfile  # server == client version
    assert "FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}" in dockerfile
    assert "psycopg2-binary" in dockerfile and "boto3" in dockerfile


def test_compose_wiring_health_and_volumes(compose):
    services = compose["services"]
    for name in ["postgres", "minio", "mlflow"]:
        assert services[name]["healthcheck"]["test"], name
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "create-bucket": {"condition": "service_completed_successfully"}}
    assert services["create-bucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://mlflow:change-me-postgres@postgres:5432/mlflow"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://subnet-ray/mlflow"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == services["create-bucket"]["environment"]["MLFLOW_S3_ACCESS_KEY"]
    # The init container creates the bucket the artifacts go to.
    script = services["create-bucket"]["command"][0]
    assert 'mc mb --ignore-existing "store/$S3_BUCKET"' in script
    assert services["create-bucket"]["environment"]["S3_BUCKET"] == "subnet-ray"
    assert services["postgres"]["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert services["minio"]["volumes"] == ["minio-data:/data"]
    assert set(compose["volumes"]) == {"postgres-data", "minio-data"}


def test_compose_keeps_secrets_in_the_env_file():
    raw = load(SERVICES / "compose.yaml")
    for name, svc in raw["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|USER", key):
                assert str(value).startswith("${"), f"{name}.{key} is written inline"
    assert (SERVICES / ".gitignore").read_text().splitlines()[-1] == ".env"


# ---------------------------------------------------------------- Kubernetes

@pytest.fixture(scope="module")
def k8s():
    """Returns the Ray manifests by kind (mlflow.yaml's are checked in test_infra_schemas.py)."""
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "mlflow.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert set(docs) == {"RayCluster", "RayJob", "PersistentVolumeClaim", "ConfigMap"}
    return docs


def pod_templates(cluster_spec):
    """Returns (group name, pod spec, rayStartParams) for the head and each worker group."""
    head = cluster_spec["headGroupSpec"]
    out = [("head", head["template"]["spec"], head["rayStartParams"])]
    for group in cluster_spec["workerGroupSpecs"]:
        out.append((group["groupName"], group["template"]["spec"], group["rayStartParams"]))
    return out


def test_rayjob_runs_the_raycluster_spec(k8s):
    assert k8s["RayCluster"]["apiVersion"] == k8s["RayJob"]["apiVersion"] == "ray.io/v1"
    assert k8s["RayJob"]["spec"]["rayClusterSpec"] == k8s["RayCluster"]["spec"]


def test_rayjob_entrypoint_and_lifecycle(k8s):
    spec = k8s["RayJob"]["spec"]
    assert shlex.split(spec["entrypoint"]) == [
        "subnet-ray", "run", "sweeps/xnli.yaml",
        "--root", "$SUBNET_RAY_ROOT", "--tracking-uri", "$MLFLOW_TRACKING_URI"]
    assert (REPO / "sweeps" / "xnli.yaml").is_file()
    assert spec["shutdownAfterJobFinishes"] is True
    # Variables expand in the head pod, which has the ConfigMap.
    assert spec["submissionMode"] == "HTTPMode"
    config = k8s["ConfigMap"]["data"]
    for var in re.findall(r"\$([A-Z_]+)", spec["entrypoint"]):
        assert var in config, var


def test_entrypoints_use_options_the_cli_has(k8s):
    cli = Path(sys.executable).parent / "subnet-ray"
    usage = subprocess.run([str(cli), "run", "--help"], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    # The documented `ray exec` line in ray-up.yaml's header.
    ray_up = re.search(r"ray exec infra/ray-up.yaml '([^']+)'", (INFRA / "ray-up.yaml").read_text())
    for command in [k8s["RayJob"]["spec"]["entrypoint"], ray_up.group(1)]:
        words = shlex.split(command)
        assert words[:2] == ["subnet-ray", "run"]
        for option in [w for w in words if w.startswith("--")]:
            assert f"{option} " in usage, (option, command)


def test_raycluster_images_versions_and_ports(k8s):
    spec = k8s["RayCluster"]["spec"]
    assert spec["rayVersion"] == RAY_VERSION
    images = {c["image"] for _, pod, _ in pod_templates(spec) for c in pod["containers"]}
    assert images == {"REPLACE_WITH_REGISTRY/subnet-ray:0.1.0"}  # fails with InvalidImageName until replaced
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["gcs-server"] == 6379 and ports["dashboard"] == 8265
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for _, _, params in pod_templates(spec):  # KubeRay wants map[string]string
        assert all(isinstance(v, str) for v in params.values()), params


def test_gpu_requests_limits_and_num_gpus_agree(k8s):
    spec = k8s["RayCluster"]["spec"]
    gpu_groups = 0
    for name, pod, params in pod_templates(spec):
        res = pod["containers"][0]["resources"]
        requested = int(res["requests"].get("nvidia.com/gpu", 0))
        limited = int(res["limits"].get("nvidia.com/gpu", 0))
        assert requested == limited == int(params.get("num-gpus", 0)), name
        for kind in ["cpu", "memory"]:
            assert res["requests"][kind] == res["limits"][kind], (name, kind)
        if name != "head" and limited > 0:
            gpu_groups += 1
            tolerations = {t["key"] for t in pod.get("tolerations", [])}
            assert "nvidia.com/gpu" in tolerations
    assert gpu_groups == 1
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    group = spec["workerGroupSpecs"][0]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_store_is_one_shared_path_everywhere(k8s):
    claim = k8s["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert k8s["ConfigMap"]["data"]["SUBNET_RAY_ROOT"] == STORE_PATH
    for name, pod, _ in pod_templates(k8s["RayCluster"]["spec"]):
        volumes = {v["name"]: v for v in pod["volumes"]}
        store = [v for v in volumes.values()
                 if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]]
        assert len(store) == 1, name
        mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert mounts[store[0]["name"]] == STORE_PATH, name
        assert pod["securityContext"]["fsGroup"] == 100  # the ray user's group writes it


def test_pods_take_their_environment_from_the_configmap(k8s):
    config = k8s["ConfigMap"]
    data = config["data"]
    assert all(isinstance(v, str) for v in data.values())
    assert data["OMP_WAIT_POLICY"] == "PASSIVE" and data["RAY_USAGE_STATS_ENABLED"] == "0"
    assert data["MLFLOW_TRACKING_URI"].startswith("http")
    for name, pod, _ in pod_templates(k8s["RayCluster"]["spec"]):
        for container in pod["containers"]:
            sources = container["envFrom"]
            assert {"configMapRef": {"name": config["metadata"]["name"]}} in sources, name
            secrets = [s["secretRef"] for s in sources if "secretRef" in s]
            assert all(s["optional"] is True for s in secrets), name


# ---------------------------------------------------------------- Dockerfile

def dockerfile_instructions(path):
    """Returns (INSTRUCTION, arguments) pairs with continuation lines joined."""
    text = re.sub(r"\\\n", " ", Path(path).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_base_install_workdir_env():
    steps = dockerfile_instructions(INFRA / "Dockerfile")
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    froms = [a for i, a in steps if i == "FROM"]
    assert froms == ["${RAY_IMAGE}"]
    assert args["RAY_IMAGE"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    assert [a for i, a in steps if i == "WORKDIR"] == ["/home/ray/subnet-ray"]
    installs = [shlex.split(a) for i, a in steps if i == "RUN" and "pip install" in a]
    project = [cmd for cmd in installs if "." in cmd[cmd.index("install"):]]
    assert len(project) == 1
    # torch is pinned to the version this environment runs, and installed before the project
    torch_steps = [i for i, cmd in enumerate(installs) if "torch==${TORCH_VERSION}" in cmd]
    assert torch_steps == [0] and project == installs[1:]
    assert args["TORCH_VERSION"] == importlib.metadata.version("torch").split("+")[0]
    sources = set()
    for i, a in steps:
        if i == "COPY":
            parts = [p for p in shlex.split(a) if not p.startswith("--")]
            sources.update(parts[:-1])  # the last one is the destination
    assert {"pyproject.toml", "subnet_ray", "sweeps"} <= sources
    assert all((REPO / src).exists() for src in sources), sources
    env = {}
    for i, a in steps:
        if i == "ENV":
            env.update(kv.split("=", 1) for kv in shlex.split(a))
    assert env["SUBNET_RAY_ROOT"] == STORE_PATH
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert any(i == "RUN" and f"mkdir -p {STORE_PATH}" in a for i, a in steps)


# ---------------------------------------------------------------- ray up

def test_ray_up_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = load(INFRA / "ray-up.yaml")
    validate_config(prepare_config(config))
    broken = load(INFRA / "ray-up.yaml")
    broken["setup_command"] = broken.pop("setup_commands")  # a typo must not pass
    with pytest.raises(Exception, match="setup_command"):
        validate_config(prepare_config(broken))


def test_ray_up_nodes_image_and_commands():
    config = load(INFRA / "ray-up.yaml")
    assert config["provider"]["type"] == "aws"
    assert config["docker"]["image"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for name, t in types.items() if t.get("resources", {}).get("GPU")]
    assert len(gpu) == 1
    # g5.2xlarge: 8 vCPUs and one A10G.
    assert gpu[0]["node_config"]["InstanceType"] == "g5.2xlarge"
    assert gpu[0]["resources"] == {"CPU": 8, "GPU": 1}
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]
    # the project, and the Ray token every node needs (RAY_AUTH_MODE=token)
    assert config["file_mounts"] == {"~/subnet-ray": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    assert "RAY_AUTH_MODE=token" in " ".join(config["setup_commands"])
    setup = " ".join(config["setup_commands"])
    assert "pip install --no-cache-dir ~/subnet-ray" in setup
    assert "SUBNET_RAY_ROOT=s3://" in setup and "OMP_WAIT_POLICY=PASSIVE" in setup
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "services/mlflow.sh start --host 127.0.0.1" in head
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in setup  # only the driver, on the head, writes
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker


# ---------------------------------------------------------------- scripts: static

def script_env(**extra):
    """Returns an environment in which the scripts find this venv's mlflow and ray."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "MLFLOW_", "SUBNET_RAY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0",
               OMP_WAIT_POLICY="PASSIVE", **extra)
    return env


def run(script, *args, timeout=120):
    """Returns the finished process of services/SCRIPT ARGS."""
    return subprocess.run(["bash", str(SERVICES / script), *map(str, args)], env=script_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in script.read_text() or script.name == "lib.sh"


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_script_help(script):
    assert os.stat(SERVICES / script).st_mode & stat.S_IXUSR
    result = run(script, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: services/" + script)
    for command in COMMANDS[script]:
        assert f"services/{script} {command}" in result.stdout
    sub = run(script, COMMANDS[script][0], "--help")
    assert sub.returncode == 0 and sub.stdout == result.stdout
    bare = run(script)
    assert bare.returncode == 2 and bare.stderr.startswith("Usage:")


def test_ray_status_parsing_counts_running_nodes_only():
    # `ray status` of autoscaler v1 lists running nodes under Active; v2 splits Active/Idle.
    status = ("======== Autoscaler status ========\nNode status\n-----\nActive:\n"
              " 1 node_aa11\n 1 node_bb22\nIdle:\n 1 node_cc33\nPending:\n 1 node_dd44\n"
              "Recent failures:\n (no failures)\n\nResources\n-----\nTotal Usage:\n 0.0/2.0 CPU\n")
    script = f'source "{SERVICES}/lib.sh"; eval "$(sed -n "/^active_nodes()/,/^}}/p" "{SERVICES}/ray.sh")"; active_nodes'
    result = subprocess.run(["bash", "-c", script], input=status, capture_output=True, text=True)
    assert result.stdout.split() == ["aa11", "bb22", "cc33"]


@pytest.mark.parametrize("args, message", [
    (["mlflow.sh", "start", "--port", "http"], "--port must be a non-negative integer, got 'http'"),
    (["mlflow.sh", "start", "--port", "70000"], "--port must be in 1..65535, got 70000"),
    (["mlflow.sh", "start", "--colour", "red"], "unknown start option '--colour'"),
    (["mlflow.sh", "launch"], "unknown command 'launch'"),
    (["ray.sh", "worker"], "a worker needs --address HEAD_IP:PORT"),
    (["ray.sh", "worker", "--address", "head-node"], "--address must be HOST:PORT, got 'head-node'"),
    (["ray.sh", "head", "--temp-dir", "/tmp/" + "x" * 40], "use at most 40"),
    (["ray.sh", "head", "--auth", "password"], "--auth must be 'token' or 'disabled', got 'password'"),
])
def test_bad_input_fails_before_starting_anything(tmp_path, args, message):
    state = tmp_path / "state"
    result = run(*args, "--state-dir", state)
    assert result.returncode == 1
    assert message in result.stderr
    assert not list(state.glob("*.pid"))


# ---------------------------------------------------------------- scripts: live

def listening(port):
    """Returns whether something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def http(url, data=None):
    """Returns the decoded body of a GET, or of a JSON POST when data is given."""
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


@pytest.fixture
def mlflow_state(tmp_path):
    """Yields a state dir; afterwards stops whatever server the test started there."""
    state = tmp_path / "services"
    yield state
    pid_file = state / "mlflow.pid"
    if pid_file.exists():
        pgid = int(pid_file.read_text())
        run("mlflow.sh", "stop", "--state-dir", state, "--grace", 3)
        kill_leftovers(pgid)


def test_mlflow_server_round_trip(mlflow_state):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    started = run("mlflow.sh", "start", "--state-dir", mlflow_state, "--port", port)
    start_seconds = time.monotonic() - t0
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == url
    pgid = int((mlflow_state / "mlflow.pid").read_text())
    assert live_processes(pgid)
    assert (mlflow_state / "mlflow.url").read_text().strip() == url
    assert (mlflow_state / "mlflow.log").stat().st_size > 0

    health = run("mlflow.sh", "health", "--state-dir", mlflow_state, "--timeout", 10)
    assert health.returncode == 0, health.stderr
    assert http(f"{url}/health") == "OK"
    # The server really stores in this state dir: an experiment made over REST is in its SQLite.
    made = json.loads(http(f"{url}/api/2.0/mlflow/experiments/create", {"name": "round-trip"}))
    got = json.loads(http(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={made['experiment_id']}"))
    assert got["experiment"]["artifact_location"].startswith("mlflow-artifacts:")
    with sqlite3.connect(mlflow_state / "mlflow.db") as db:
        names = {r[0] for r in db.execute("select name from experiments")}
    assert "round-trip" in names

    again = run("mlflow.sh", "start", "--state-dir", mlflow_state, "--port", free_port())
    assert again.returncode == 1 and "already running" in again.stderr

    t0 = time.monotonic()
    stopped = run("mlflow.sh", "stop", "--state-dir", mlflow_state)
    stop_seconds = time.monotonic() - t0
    assert stopped.returncode == 0, stopped.stderr
    assert not (mlflow_state / "mlflow.pid").exists()
    assert live_processes(pgid) == []
    assert not listening(port)
    print(f"\nmlflow server: start {start_seconds:.1f}s, stop {stop_seconds:.1f}s")


def test_mlflow_start_that_fails_shows_the_error_and_leaves_nothing(mlflow_state):
    port = free_port()
    result = run("mlflow.sh", "start", "--state-dir", mlflow_state, "--port", port,
                 "--backend-store-uri", "bogus://nowhere")
    assert result.returncode == 1
    assert "MLflow server exited during start-up" in result.stderr
    assert "unsupported URI 'bogus://nowhere'" in result.stderr  # the server's own words
    assert not (mlflow_state / "mlflow.pid").exists()
    assert live_processes(marker=f"--port {port}") == []


def test_mlflow_health_fails_fast_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    result = run("mlflow.sh", "health", "--url", url, "--timeout", 3)
    assert result.returncode == 1
    assert time.monotonic() - t0 < 30
    assert f"MLflow tracking server at {url} did not answer" in result.stderr


def test_ray_health_fails_fast_naming_the_address(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    result = run("ray.sh", "health", "--address", address, "--timeout", 3, "--auth", "disabled",
                 "--state-dir", tmp_path)
    assert result.returncode == 1
    assert time.monotonic() - t0 < 30
    assert f"Ray cluster at {address} not healthy within 3s" in result.stderr


@pytest.fixture
def ray_nodes(tmp_path):
    """Yields (state dir, make temp dir); afterwards stops every node the test started."""
    state = tmp_path / "services"
    temp_dirs = []

    def temp_dir():
        # Short on purpose: Ray's socket paths below it must fit in 107 bytes.
        temp_dirs.append(tempfile.mkdtemp(prefix="sr", dir="/tmp"))
        return temp_dirs[-1]

    yield state, temp_dir
    for pid_file in sorted(state.glob("ray-*.pid"), reverse=True):  # workers before head
        name = pid_file.name[len("ray-"):-len(".pid")]
        pgid = int(pid_file.read_text())
        run("ray.sh", "stop", "--name", name, "--state-dir", state, "--grace", 3)
        kill_leftovers(pgid)
    for path in temp_dirs:
        kill_leftovers(marker=path)
        subprocess.run(["rm", "-rf", path])


def test_ray_head_round_trip(ray_nodes):
    state, temp_dir = ray_nodes
    port, dashboard, tmp = free_port(), free_port(), temp_dir()
    t0 = time.monotonic()
    started = run("ray.sh", "head", "--state-dir", state, "--port", port,
                  "--dashboard-port", dashboard, "--temp-dir", tmp, "--num-cpus", 1)
    start_seconds = time.monotonic() - t0
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == f"127.0.0.1:{port}"
    pgid = int((state / "ray-head.pid").read_text())
    assert live_processes(pgid) and live_processes(marker=tmp)
    assert re.fullmatch(r"[0-9a-f]{56}", (state / "ray-head.node-id").read_text().strip())
    assert stat.S_IMODE((state / "ray-auth-token").stat().st_mode) == 0o600
    assert f"RAY_AUTH_TOKEN_PATH={state / 'ray-auth-token'}" in started.stderr

    health = run("ray.sh", "health", "--state-dir", state, "--name", "head", "--timeout", 20)
    assert health.returncode == 0, health.stderr
    assert "(node 'head' active)" in health.stderr
    # Clients must present the token: `ray status` without it is refused.
    bare = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "--address",
                           f"127.0.0.1:{port}"], env=script_env(RAY_AUTH_MODE="disabled"),
                          capture_output=True, text=True, timeout=60)
    assert bare.returncode != 0

    t0 = time.monotonic()
    stopped = run("ray.sh", "stop", "--state-dir", state)
    stop_seconds = time.monotonic() - t0
    assert stopped.returncode == 0, stopped.stderr
    assert not (state / "ray-head.pid").exists()
    assert live_processes(pgid) == [] and live_processes(marker=tmp) == []
    assert not listening(port)
    print(f"\nray head: start {start_seconds:.1f}s, stop {stop_seconds:.1f}s")


@pytest.mark.slow
def test_ray_worker_joins_and_leaves(ray_nodes):
    state, temp_dir = ray_nodes
    port = free_port()
    head = run("ray.sh", "head", "--state-dir", state, "--port", port,
               "--dashboard-port", free_port(), "--temp-dir", temp_dir(), "--num-cpus", 1)
    assert head.returncode == 0, head.stderr
    worker_tmp = temp_dir()
    worker = run("ray.sh", "worker", "--state-dir", state, "--address", f"127.0.0.1:{port}",
                 "--temp-dir", worker_tmp, "--num-cpus", 1)
    assert worker.returncode == 0, worker.stderr
    both = run("ray.sh", "health", "--state-dir", state, "--min-nodes", 2, "--name", "worker")
    assert both.returncode == 0, both.stderr

    stopped = run("ray.sh", "stop", "--state-dir", state, "--name", "worker")
    assert stopped.returncode == 0, stopped.stderr
    assert live_processes(marker=worker_tmp) == []
    # The head is untouched by the worker's stop.
    alone = run("ray.sh", "health", "--state-dir", state, "--name", "head", "--timeout", 20)
    assert alone.returncode == 0, alone.stderr
