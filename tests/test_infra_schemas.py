"""Every deployment file against the real schemas of the systems that read it (vendored in
tests/data/schemas, see vendor.py there), and against each other: one Ray version, one
image tag per image, every host name a pod uses created by a manifest, nothing listening
on all interfaces without authentication, every placeholder failing fast and documented.
Each check is also run on a deliberately broken copy, which it must reject."""
import copy
import gzip
import importlib.metadata
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from test_services_infra import dotenv, interpolate

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "data" / "schemas"
RAY_VERSION = importlib.metadata.version("ray")
KUBERAY_WITH_AUTH = ["v1.5.1", "v1.7.0"]  # the first KubeRay with authOptions, and the newest vendored
OBJECT_META = "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def read_gz(name):
    with gzip.open(SCHEMAS / name) as f:
        return json.load(f)


CORE = read_gz("kubernetes-v1.31.0-strict.json.gz")


def strict(node):
    """Returns a CRD schema as the API server applies it with strict field validation: an
    object lists all its fields unless it says x-kubernetes-preserve-unknown-fields."""
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_validator(tag, plural):
    """Returns a validator for ray.io/v1 `plural` of KubeRay `tag`, metadata checked as ObjectMeta."""
    schema = strict(read_gz(f"kuberay-{tag}/ray.io_{plural}.v1.json.gz")["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"$ref": OBJECT_META}
    schema["$defs"] = CORE["$defs"]
    return jsonschema.Draft202012Validator(schema)


def core_validator(kind):
    schema = {k: v for k, v in CORE["kinds"][kind].items() if k != "$id"}  # refs resolve against this root
    return jsonschema.Draft202012Validator({**schema, "$defs": CORE["$defs"]})


def errors(validator, doc):
    """Returns 'path: message' for every schema violation of doc."""
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def manifests():
    """Returns (file name, document) for every Kubernetes manifest in infra/k8s."""
    return [(p.name, d) for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def manifest_errors(docs, kuberay_tag):
    """Returns the schema violations of the manifests, each naming the file, kind and path."""
    plural = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}
    out = []
    for name, doc in docs:
        kind = doc["kind"]
        v = crd_validator(kuberay_tag, plural[kind]) if kind in plural else core_validator(kind)
        out += [f"{name} {kind}/{doc['metadata']['name']} {e}" for e in errors(v, doc)]
    return out


def by_kind(docs, kind):
    return [d for _, d in docs if d["kind"] == kind]


def find(docs, kind, name):
    (doc,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


# ---------------------------------------------------------------- Kubernetes: schemas

@pytest.mark.parametrize("tag", KUBERAY_WITH_AUTH)
def test_manifests_pass_kuberay_and_kubernetes_schemas(tag):
    docs = manifests()
    assert {d["kind"] for _, d in docs} == {"RayCluster", "RayJob", "ConfigMap", "PersistentVolumeClaim",
                                            "Deployment", "Service", "NetworkPolicy"}
    assert manifest_errors(docs, tag) == []


def test_kuberay_before_1_5_1_rejects_token_auth():
    # the version floor the manifests state: KubeRay 1.4's CRD has no authOptions
    found = manifest_errors([d for d in manifests() if d[1]["kind"] in ("RayCluster", "RayJob")], "v1.4.2")
    assert found and all("authOptions" in e for e in found), found


def _unknown_field(docs):
    find(docs, "RayCluster", "subnet-ray")["spec"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}


def _wrong_type(docs):
    find(docs, "RayJob", "subnet-ray-xnli")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"


def _unknown_container_field(docs):
    container = find(docs, "Deployment", "subnet-ray-mlflow")["spec"]["template"]["spec"]["containers"][0]
    container["environment"] = container.pop("env")  # compose's word, not Kubernetes'


def _string_port(docs):
    find(docs, "Service", "subnet-ray-mlflow")["spec"]["ports"][0]["port"] = "5000"


def _unknown_pvc_field(docs):
    find(docs, "PersistentVolumeClaim", "subnet-ray-store")["spec"]["storageClass"] = "efs-sc"


@pytest.mark.parametrize("breaks, where", [
    (_unknown_field, "headGroupSpec: Additional properties are not allowed ('rayStartParam'"),
    (_wrong_type, "workerGroupSpecs.0.maxReplicas: '8' is not of type 'integer'"),
    (_unknown_container_field, "containers.0: Additional properties are not allowed ('environment'"),
    (_string_port, "ports.0.port: '5000' is not of type 'integer'"),
    (_unknown_pvc_field, "spec: Additional properties are not allowed ('storageClass'"),
])
def test_manifest_schemas_reject_broken_copies(breaks, where):
    docs = copy.deepcopy(manifests())
    breaks(docs)
    found = manifest_errors(docs, KUBERAY_WITH_AUTH[-1])
    assert len(found) == 1 and where in found[0], found


# ---------------------------------------------------------------- ray up: schemas

def ray_up():
    return yaml.safe_load((INFRA / "ray-up.yaml").read_text())


def ray_up_problems(config):
    """Returns what Ray's own schema and validate_config, and the ImageId rule, find wrong in config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((SCHEMAS / f"ray-{RAY_VERSION}-schema.json").read_text())
    out = errors(jsonschema.Draft7Validator(schema), config)
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as e:  # noqa: BLE001 - Ray raises ValueError or jsonschema's ValidationError
        out.append(f"validate_config: {str(e).splitlines()[0]}")
    for name, node_type in config["available_node_types"].items():
        # without ImageId Ray falls back to its default DLAMI, whose CUDA 11.2 driver cannot run torch
        if not str(node_type["node_config"].get("ImageId", "")).strip():
            out.append(f"available_node_types.{name}.node_config: no ImageId")
    return out


def test_vendored_ray_schema_is_the_installed_rays():
    import ray

    installed = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    assert json.loads(installed.read_text()) == json.loads((SCHEMAS / f"ray-{RAY_VERSION}-schema.json").read_text())


def test_ray_up_passes_ray_schema_and_validate_config():
    assert ray_up_problems(ray_up()) == []


def _no_image_id(c):
    del c["available_node_types"]["ray.worker.gpu"]["node_config"]["ImageId"]


def _string_max_workers(c):
    c["max_workers"] = "8"


def _unknown_key(c):
    c["head_setup_command"] = c.pop("head_setup_commands")


@pytest.mark.parametrize("breaks, where", [
    (_no_image_id, "ray.worker.gpu.node_config: no ImageId"),
    (_string_max_workers, "max_workers: '8' is not of type 'integer'"),
    (_unknown_key, "Additional properties are not allowed ('head_setup_command'"),
])
def test_ray_up_checks_reject_broken_copies(breaks, where):
    config = ray_up()
    breaks(config)
    found = ray_up_problems(config)
    assert found and where in found[0], found


# ---------------------------------------------------------------- compose: schema

def compose_errors(text):
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    doc = yaml.safe_load(interpolate(text, dotenv(REPO / "services" / ".env.example")))
    return errors(jsonschema.Draft7Validator(schema), doc)


def test_compose_passes_the_compose_specification():
    assert compose_errors((REPO / "services" / "compose.yaml").read_text()) == []


@pytest.mark.parametrize("old, new, where", [
    ("    restart: unless-stopped\n\n  minio:", "    restart_policy: unless-stopped\n\n  minio:", "services.postgres: 'restart_policy' does not match any of the regexes"),
    ("      retries: 12\n      start_period: 10s\n    restart: unless-stopped\n\n  minio:",
     "      retries: [12]\n      start_period: 10s\n    restart: unless-stopped\n\n  minio:", "retries: [12] is not of type"),
], ids=["unknown-field", "wrong-type"])
def test_compose_schema_rejects_broken_copies(old, new, where):
    text = (REPO / "services" / "compose.yaml").read_text()
    assert text.count(old) == 1
    found = compose_errors(text.replace(old, new))
    assert len(found) == 1 and where in found[0], found
