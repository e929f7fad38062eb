"""Regenerates the vendored schemas in this folder from local copies of their sources.

    python tests/data/schemas/vendor.py KUBERAY_GIT_DIR KUBERNETES_VALIDATE_DIR COMPOSE_SPEC_JSON

KUBERAY_GIT_DIR: a clone of ray-project/kuberay with its tags; KUBERNETES_VALIDATE_DIR: the
unpacked `kubernetes-validate` wheel (PyPI), which ships the Kubernetes OpenAPI schemas as
JSON Schema; COMPOSE_SPEC_JSON: compose-spec/compose-spec's schema/compose-spec.json.
Ray's ray-schema.json is copied from the installed ray package. Descriptions are dropped
(they are most of the bytes and no validator reads them); nothing else is changed."""
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KUBERAY_TAGS = ["v1.4.2", "v1.5.1", "v1.7.0"]  # the last without authOptions, the first with it, the newest
KUBERNETES = "v1.31.0"
CORE_KINDS = {"Deployment": "deployment-apps-v1", "Service": "service-v1", "ConfigMap": "configmap-v1",
              "Secret": "secret-v1", "PersistentVolumeClaim": "persistentvolumeclaim-v1",
              "NetworkPolicy": "networkpolicy-networking-v1"}


def strip(node):
    """Returns node without its free-text descriptions."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def write_gz(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime 0: same bytes on every run
        f.write(raw)


def kuberay(git_dir):
    for tag in KUBERAY_TAGS:
        commit = subprocess.run(["git", "-C", git_dir, "rev-parse", f"{tag}^{{commit}}"],
                                capture_output=True, text=True, check=True).stdout.strip()
        for plural in ["rayclusters", "rayjobs"]:
            path = f"ray-operator/config/crd/bases/ray.io_{plural}.yaml"
            crd = yaml.safe_load(subprocess.run(["git", "-C", git_dir, "show", f"{commit}:{path}"],
                                                capture_output=True, text=True, check=True).stdout)
            (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            schema = strip(v1["schema"]["openAPIV3Schema"])
            write_gz(HERE / f"kuberay-{tag}" / f"ray.io_{plural}.v1.json.gz",
                     {"source": f"ray-project/kuberay@{commit} ({tag}) {path}", "openAPIV3Schema": schema})


def kubernetes(wheel_dir):
    """Bundles the strict schemas of the core kinds the manifests use, with the definitions they reach."""
    base = Path(wheel_dir) / "kubernetes_validate" / "kubernetes-json-schema" / f"{KUBERNETES}-local-strict"
    defs = json.loads((base / "_definitions.json").read_text())["$defs"]
    needed, kinds = {}, {}

    def visit(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and "#/$defs/" in ref:  # "/api/_definitions.json#/$defs/X" or "#/$defs/X"
                name = ref.rsplit("/", 1)[1]
                node["$ref"] = f"#/$defs/{name}"
                if name not in needed:
                    needed[name] = None
                    needed[name] = visit(strip(defs[name]))
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)
        return node

    for kind, stem in CORE_KINDS.items():
        kinds[kind] = visit(strip(json.loads((base / f"{stem}.json").read_text())))
    write_gz(HERE / f"kubernetes-{KUBERNETES}-strict.json.gz",
             {"source": f"kubernetes-validate wheel, {KUBERNETES}-local-strict",
              "$schema": "https://json-schema.org/draft/2020-12/schema", "kinds": kinds, "$defs": needed})


def main(kuberay_dir, wheel_dir, compose_json):
    kuberay(kuberay_dir)
    kubernetes(wheel_dir)
    shutil.copyfile(compose_json, HERE / "compose-spec.json")
    import ray
    shutil.copyfile(Path(ray.__file__).parent / "autoscaler" / "ray-schema.json", HERE / f"ray-{ray.__version__}-schema.json")


if __name__ == "__main__":
    main(*sys.argv[1:4])
