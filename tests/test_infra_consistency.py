"""The deployment files agree with each other and are safe on first launch: one Ray version
everywhere, one tag per image, every host a pod names is a Service of the manifests (or
documented as external), nothing listens on all interfaces without authentication or a
NetworkPolicy, /dev/shm holds the object store, the head may pass the workers' role, and
every placeholder is explicit and in the README's checklist. Each check is also shown to
reject a deliberately broken copy. Plus the line `subnet-ray submit` prints when the
client's and the cluster's Ray versions differ."""
import copy
import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import yaml

from test_services_infra import dotenv, interpolate

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
LOOPBACK = {"127.0.0.1", "localhost"}
PLACEHOLDER = re.compile(r"REPLACE_WITH_[A-Z_]+")


def load_all():
    """Returns every deployment file, parsed: the manifests as (file, doc) and the rest by name."""
    compose_text = interpolate((REPO / "services" / "compose.yaml").read_text(), dotenv(REPO / "services" / ".env.example"))
    return {
        "k8s": [(p.name, d) for p in sorted((INFRA / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d],
        "ray_up": yaml.safe_load((INFRA / "ray-up.yaml").read_text()),
        "compose": yaml.safe_load(compose_text),
        "head_policy": json.loads((INFRA / "aws" / "head-policy.json").read_text()),
        "worker_policy": json.loads((INFRA / "aws" / "worker-policy.json").read_text()),
        "texts": {name: (REPO / name).read_text() for name in
                  ["pyproject.toml", "infra/Dockerfile", "services/mlflow.Dockerfile", "infra/README.md"]},
    }


def docs_of(files, kind):
    return [d for _, d in files["k8s"] if d["kind"] == kind]


def cluster_specs(files):
    """Returns (name, RayCluster spec) for the RayCluster and each RayJob's cluster."""
    return ([(d["metadata"]["name"], d["spec"]) for d in docs_of(files, "RayCluster")]
            + [(d["metadata"]["name"], d["spec"]["rayClusterSpec"]) for d in docs_of(files, "RayJob")])


def groups(spec):
    """Returns (group name, rayStartParams, pod spec) of the head and every worker group."""
    head = spec["headGroupSpec"]
    return [("head", head["rayStartParams"], head["template"]["spec"])] + [
        (g["groupName"], g["rayStartParams"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]


def containers(files):
    """Returns (owner, container) for every container of every Deployment and Ray pod."""
    out = [(d["metadata"]["name"], c) for d in docs_of(files, "Deployment") for c in d["spec"]["template"]["spec"]["containers"]]
    for name, spec in cluster_specs(files):
        out += [(f"{name}/{group}", c) for group, _, pod in groups(spec) for c in pod["containers"]]
    return out


# ---------------------------------------------------------------- checks

def ray_version_problems(files):
    """Returns a line listing every Ray version the files name when they do not all agree."""
    found = [("installed ray", importlib.metadata.version("ray")),
             ("infra/ray-up.yaml docker.image", files["ray_up"]["docker"]["image"].split(":")[1].split("-")[0])]
    texts = files["texts"]
    found += [("pyproject.toml", v) for v in re.findall(r'"ray\[[^\]]*\]==([\d.]+)"', texts["pyproject.toml"])]
    found += [("infra/Dockerfile", v) for v in re.findall(r"rayproject/ray:([\d.]+)-|ray.__version__ == '([\d.]+)'", texts["infra/Dockerfile"])]
    found += [(f"{name} rayVersion", str(spec["rayVersion"])) for name, spec in cluster_specs(files)]
    found = [(where, v if isinstance(v, str) else "".join(v)) for where, v in found]
    if len({v for _, v in found}) != 1 or len(found) < 7:
        return ["Ray versions differ: " + ", ".join(f"{w}={v}" for w, v in found)]
    return []


def image_problems(files):
    """Returns a line per image whose tags differ between files or from the version it packages."""
    images = [(f"k8s {owner}", c["image"]) for owner, c in containers(files)]
    images += [(f"compose {name}", svc["image"]) for name, svc in files["compose"]["services"].items() if "image" in svc]
    tags = {}
    for where, image in images:
        repo, _, tag = image.rpartition(":")
        tags.setdefault(repo.rsplit("/", 1)[-1], set()).add((tag, where))
    expected = {"subnet-ray": re.search(r'^version = "([^"]+)"', files["texts"]["pyproject.toml"], re.M)[1],
                "subnet-ray-mlflow": importlib.metadata.version("mlflow")}
    out = []
    for repo, seen in sorted(tags.items()):
        versions = {t for t, _ in seen} | ({expected[repo]} if repo in expected else set())
        if len(versions) > 1:
            out.append(f"image {repo} has tags {sorted(versions)} in {sorted(w for _, w in seen)}")
    mlflow_arg = re.search(r"ARG MLFLOW_VERSION=(\S+)", files["texts"]["services/mlflow.Dockerfile"])[1]
    if mlflow_arg != expected["subnet-ray-mlflow"]:
        out.append(f"services/mlflow.Dockerfile builds MLflow {mlflow_arg}, the clients run {expected['subnet-ray-mlflow']}")
    return out


URL = re.compile(r"\b(?:https?|postgresql(?:\+\w+)?|redis)://(?:[^@/\s\"']*@)?([A-Za-z0-9.-]+)")


def external_hosts(readme):
    """Returns the hosts infra/README.md documents as outside the cluster (between its markers)."""
    section = re.search(r"<!-- external-hosts -->(.*?)<!-- /external-hosts -->", readme, re.S)
    return set(re.findall(r"`([A-Za-z0-9.-]+)`", section[1])) if section else set()


def hostname_problems(files):
    """Returns a line per host name a pod uses that no Service routes to and the README does not list."""
    services = {}
    for s in docs_of(files, "Service"):
        services[s["metadata"]["name"]] = s
    out = []
    for name, s in services.items():  # a Service must reach a container that listens on its port
        targets = [d for d in docs_of(files, "Deployment")
                   if s["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        ports = {p["containerPort"] for d in targets for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in s["spec"]["ports"]:
            if p.get("targetPort", p["port"]) not in ports:
                out.append(f"Service {name} port {p['port']} reaches no container port (selector {s['spec']['selector']})")
    texts = [(f"ConfigMap {d['metadata']['name']}.{k}", v) for d in docs_of(files, "ConfigMap") for k, v in d["data"].items()]
    for owner, c in containers(files):
        texts += [(f"{owner} env {e['name']}", e["value"]) for e in c.get("env", []) if "value" in e]
        texts += [(f"{owner} command", " ".join(c.get("command", []) + c.get("args", [])))]
    known = set(services) | LOOPBACK | external_hosts(files["texts"]["infra/README.md"])
    for where, text in texts:
        for host in URL.findall(str(text)):
            if host.split(".")[0] not in known and host not in known:
                out.append(f"{where} names host {host!r}: no Service of infra/k8s creates it and infra/README.md does not list it as external")
    return out


def open_listener_problems(files):
    """Returns a line per service that listens beyond loopback without authentication."""
    out = []
    config = files["ray_up"]
    head = " ".join(config["head_start_ray_commands"])
    for host in re.findall(r"mlflow\.sh start .*?--host (\S+)", head):
        if host not in LOOPBACK:
            out.append(f"ray-up: MLflow listens on {host} with no authentication; bind 127.0.0.1 and tunnel")
    for host in re.findall(r"--dashboard-host[= ](\S+)", head):
        if host not in LOOPBACK:
            out.append(f"ray-up: the Ray dashboard listens on {host}")
    if "RAY_AUTH_MODE=token" not in " ".join(config["setup_commands"]):
        out.append("ray-up: Ray's GCS and raylets listen on all interfaces but RAY_AUTH_MODE=token is not set")
    for name, svc in files["compose"]["services"].items():
        out += [f"compose {name}: port {p} is published beyond 127.0.0.1"
                for p in svc.get("ports", []) if not str(p).startswith("127.0.0.1:")]
    for name, spec in cluster_specs(files):
        if (spec.get("authOptions") or {}).get("mode") != "token":
            out.append(f"{name}: the dashboard, GCS and Ray Client listen in the pod without authOptions.mode: token")
        elif tuple(map(int, str(spec["rayVersion"]).split("."))) < (2, 52, 0):  # KubeRay's own rule
            out.append(f"{name}: authOptions.mode token needs rayVersion >= 2.52.0, not {spec['rayVersion']}")
    policies = [p["spec"] for p in docs_of(files, "NetworkPolicy")]
    for d in docs_of(files, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        guarded = [p for p in policies if "Ingress" in p.get("policyTypes", [])
                   and p["podSelector"].get("matchLabels", {}).items() <= labels.items() and p["podSelector"].get("matchLabels")
                   and all(r.get("from") and all(set(f) == {"podSelector"} and f["podSelector"].get("matchLabels") for f in r["from"])
                           for r in p.get("ingress", []))]
        if not guarded:
            out.append(f"Deployment {d['metadata']['name']} listens in its pod with no NetworkPolicy admitting only named pods")
    return out


def quantity(q):
    """Returns a Kubernetes memory quantity ('5Gi', '512Mi') or a byte count in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(q))
    return int(m[1]) * units.get(m[2], 1)


def shm_problems(files):
    """Returns a line per Ray group whose /dev/shm cannot hold its object store (Ray would spill to /tmp)."""
    out = []
    for name, spec in cluster_specs(files):
        for group, params, pod in groups(spec):
            shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"
                   and any(m["name"] == v["name"] and m["mountPath"] == "/dev/shm" for c in pod["containers"] for m in c["volumeMounts"])]
            store = params.get("object-store-memory")
            if not shm or store is None:
                out.append(f"{name}/{group}: needs object-store-memory and a memory-backed /dev/shm")
                continue
            size, limit = quantity(shm[0]["emptyDir"]["sizeLimit"]), quantity(pod["containers"][0]["resources"]["limits"]["memory"])
            if size < 1.1 * int(store) or size > limit / 2:
                out.append(f"{name}/{group}: /dev/shm {shm[0]['emptyDir']['sizeLimit']} must be >= 1.1 x object store "
                           f"({int(store) / 2**30:.1f} GiB) and <= half the memory limit")
    return out


def aws_problems(files):
    """Returns a line per node type with no explicit ImageId placeholder or AMI, or a role the head may not pass."""
    out = []
    config = files["ray_up"]
    passable = {s["Resource"].rsplit("/", 1)[1] for s in files["head_policy"]["Statement"] if s["Action"] == "iam:PassRole"}
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        ami = str(node.get("ImageId", ""))
        if ami.lower() in ("", "latest_dlami") or not (ami == "REPLACE_WITH_AMI_ID" or re.fullmatch(r"ami-[0-9a-f]{8,17}", ami)):
            out.append(f"{name}: ImageId {ami!r} must be REPLACE_WITH_AMI_ID or an ami- id (Ray's default AMI has a CUDA 11.2 driver)")
        profile = node.get("IamInstanceProfile", {}).get("Name")
        if name == config["head_node_type"]:
            if profile != "subnet-ray-head":
                out.append(f"{name}: IamInstanceProfile must be subnet-ray-head, which head-policy.json is for")
        elif profile not in passable:
            out.append(f"{name}: the head may not pass instance profile {profile!r} (iam:PassRole in head-policy.json is on {sorted(passable)})")
    bucket = re.search(r"SUBNET_RAY_ROOT=s3://([^/']+)", " ".join(config["setup_commands"]))[1]
    for policy in ("head_policy", "worker_policy"):
        arns = {r for s in files[policy]["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
                if r.startswith("arn:aws:s3")}
        if {a.split(":::")[1].split("/")[0] for a in arns} != {bucket}:
            out.append(f"{policy}: S3 resources {sorted(arns)} are not the store's bucket {bucket}")
    return out


def placeholder_problems(files):
    """Returns a line per REPLACE_WITH_ placeholder in infra/ that the README's checklist does not name."""
    readme = files["texts"]["infra/README.md"]
    used = set()
    for path in [*INFRA.glob("*.yaml"), *INFRA.glob("k8s/*.yaml"), *INFRA.glob("aws/*.json")]:
        used |= set(PLACEHOLDER.findall(path.read_text()))
    for name, doc in files["k8s"]:
        used |= set(PLACEHOLDER.findall(yaml.safe_dump(doc)))
    return [f"{p} is used in infra/ but the README's checklist does not say how to replace it"
            for p in sorted(used) if f"`{p}`" not in readme]


CHECKS = [ray_version_problems, image_problems, hostname_problems, open_listener_problems, shm_problems,
          aws_problems, placeholder_problems]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_deployment_files_agree(check):
    assert check(load_all()) == []


def _k8s(files, kind, name):
    (doc,) = [d for _, d in files["k8s"] if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _ray_version(f):
    _k8s(f, "RayJob", "subnet-ray-xnli")["spec"]["rayClusterSpec"]["rayVersion"] = "2.59.0"


def _mlflow_tag(f):
    _k8s(f, "Deployment", "subnet-ray-mlflow")["spec"]["template"]["spec"]["containers"][0]["image"] = "REPLACE_WITH_REGISTRY/subnet-ray-mlflow:3.16.0"


def _missing_service(f):
    _k8s(f, "ConfigMap", "subnet-ray-config")["data"]["MLFLOW_TRACKING_URI"] = "http://mlflow:5000"


def _selector_typo(f):
    _k8s(f, "Service", "subnet-ray-postgres")["spec"]["selector"] = {"app.kubernetes.io/name": "postgres"}


def _mlflow_on_all_interfaces(f):
    cmds = f["ray_up"]["head_start_ray_commands"]
    f["ray_up"]["head_start_ray_commands"] = [c.replace("--host 127.0.0.1", "--host 0.0.0.0") for c in cmds]


def _no_token_auth(f):
    del _k8s(f, "RayCluster", "subnet-ray")["spec"]["authOptions"]


def _no_network_policy(f):
    f["k8s"] = [(n, d) for n, d in f["k8s"] if not (d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "subnet-ray-mlflow")]


def _compose_on_all_interfaces(f):
    f["compose"]["services"]["mlflow"]["ports"] = ["5000:5000"]


def _small_shm(f):
    pod = _k8s(f, "RayCluster", "subnet-ray")["spec"]["headGroupSpec"]["template"]["spec"]
    [v for v in pod["volumes"] if v["name"] == "dshm"][0]["emptyDir"]["sizeLimit"] = "4Gi"


def _no_image_id(f):
    del f["ray_up"]["available_node_types"]["ray.worker.gpu"]["node_config"]["ImageId"]


def _default_ami(f):
    f["ray_up"]["available_node_types"]["ray.head.default"]["node_config"]["ImageId"] = "latest_dlami"


def _unpassable_profile(f):
    f["ray_up"]["available_node_types"]["ray.worker.gpu"]["node_config"]["IamInstanceProfile"] = {"Name": "ray-autoscaler-v1"}


def _undocumented_placeholder(f):
    _k8s(f, "PersistentVolumeClaim", "subnet-ray-store")["metadata"]["namespace"] = "REPLACE_WITH_NAMESPACE"


@pytest.mark.parametrize("check, breaks, where", [
    (ray_version_problems, _ray_version, "subnet-ray-xnli rayVersion=2.59.0"),
    (image_problems, _mlflow_tag, "image subnet-ray-mlflow has tags ['3.16.0', '3.17.2']"),
    (hostname_problems, _missing_service, "ConfigMap subnet-ray-config.MLFLOW_TRACKING_URI names host 'mlflow'"),
    (hostname_problems, _selector_typo, "Service subnet-ray-postgres port 5432 reaches no container port"),
    (open_listener_problems, _mlflow_on_all_interfaces, "ray-up: MLflow listens on 0.0.0.0"),
    (open_listener_problems, _no_token_auth, "subnet-ray: the dashboard, GCS and Ray Client listen in the pod without authOptions"),
    (open_listener_problems, _no_network_policy, "Deployment subnet-ray-mlflow listens in its pod with no NetworkPolicy"),
    (open_listener_problems, _compose_on_all_interfaces, "compose mlflow: port 5000:5000 is published beyond 127.0.0.1"),
    (shm_problems, _small_shm, "subnet-ray/head: /dev/shm 4Gi must be >= 1.1 x object store (4.0 GiB)"),
    (aws_problems, _no_image_id, "ray.worker.gpu: ImageId '' must be REPLACE_WITH_AMI_ID or an ami- id"),
    (aws_problems, _default_ami, "ray.head.default: ImageId 'latest_dlami' must be"),
    (aws_problems, _unpassable_profile, "ray.worker.gpu: the head may not pass instance profile 'ray-autoscaler-v1'"),
    (placeholder_problems, _undocumented_placeholder, "REPLACE_WITH_NAMESPACE is used in infra/"),
], ids=lambda x: x.__name__.strip("_") if callable(x) else None)
def test_consistency_checks_reject_broken_copies(check, breaks, where):
    files = copy.deepcopy(load_all())
    assert check(files) == []
    breaks(files)
    found = check(files)
    assert len(found) == 1 and where in found[0], found


# ---------------------------------------------------------------- subnet-ray submit

def test_submit_says_when_client_and_cluster_ray_differ(monkeypatch, capsys):
    import ray
    import ray.job_submission
    from subnet_ray.orchestration import jobs

    class Client:
        def __init__(self, address):
            self._server_ray_version = cluster  # what Ray's client reads from /api/version

        def submit_job(self, **kwargs):
            return "raysubmit_1"

    monkeypatch.setattr(jobs, "check_dashboard", lambda address: None)
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)
    for cluster, expected in [(ray.__version__, ""), ("2.59.0", f"warning: Ray {ray.__version__} here but 2.59.0 on the cluster at http://h:8265: install ray==2.59.0 here")]:
        assert jobs.submit(str(REPO / "sweeps" / "smoke.yaml"), "http://h:8265") == "raysubmit_1"
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == (1 if expected else 0), err
