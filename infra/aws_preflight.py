"""First-launch checks for infra/ray-up.yaml, run by `ray up` on the nodes themselves.

On the head (head_setup_commands), with the bootstrapped cluster config Ray wrote there:
    python aws_preflight.py ~/ray_bootstrap_config.yaml
  - no node type still has a REPLACE_WITH_... placeholder;
  - EC2 would launch every worker node type as configured (a DryRun RunInstances from the
    head's own role, which is what the autoscaler does later): this catches a wrong AMI, an
    instance profile that does not exist, and a head role without iam:PassRole on it;
  - the store's bucket ($SUBNET_RAY_ROOT) takes a write and a delete.
On a GPU worker (worker_setup_commands):
    python aws_preflight.py --check-driver 580.65.06
  - the host's NVIDIA driver is at least the version torch's CUDA build needs.
Each problem is one line naming the node type or bucket and what to fix; the exit code is 1
when there is any, so `ray up` (or the worker's setup) stops there instead of at the first
sweep that asks for a GPU."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

PLACEHOLDER = "REPLACE_WITH_"
HINTS = {
    "UnauthorizedOperation": "the head's role may not do this: attach infra/aws/head-policy.json "
                             "(iam:PassRole on the worker role, EC2) to the subnet-ray-head role",
    "InvalidAMIID.Malformed": "set ImageId to an AMI id (ami-...) of provider.region",
    "InvalidAMIID.NotFound": "the AMI does not exist in provider.region: use the region's id",
    "InvalidParameterValue": "check IamInstanceProfile: create the instance profile (infra/README.md)",
}


def _error_code(exc: Exception) -> tuple[str, str]:
    """Returns (code, message) of a botocore ClientError, or the exception's class and text."""
    error = (getattr(exc, "response", None) or {}).get("Error", {})
    return error.get("Code") or type(exc).__name__, error.get("Message") or str(exc)


def placeholders(config: dict) -> list[str]:
    """Returns one line per node_config value that still holds a REPLACE_WITH_ placeholder."""
    out = []
    for name, node_type in config["available_node_types"].items():
        for key, value in node_type.get("node_config", {}).items():
            if PLACEHOLDER in str(value):
                out.append(f"node type {name}: node_config.{key} is still the placeholder {value!r}; "
                           "replace it (infra/README.md, first-launch checklist)")
    return out


def run_instances_args(node_config: dict) -> dict:
    """Returns the RunInstances arguments of a Ray node_config for a one-instance DryRun."""
    args = {k: v for k, v in node_config.items() if k not in ("SubnetIds", "SecurityGroupIds")}
    if node_config.get("SubnetIds"):  # Ray picks one of the subnets per launch
        args["SubnetId"] = node_config["SubnetIds"][0]
    if node_config.get("SecurityGroupIds"):
        args["SecurityGroupIds"] = node_config["SecurityGroupIds"]
    return {**args, "MinCount": 1, "MaxCount": 1, "DryRun": True}


def dry_run_workers(config: dict, ec2) -> list[str]:
    """Returns one line per worker node type that EC2 would refuse to launch from this role."""
    out = []
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue  # it is running: this script runs on it
        try:
            ec2.run_instances(**run_instances_args(node_type["node_config"]))
        except Exception as e:  # noqa: BLE001 - botocore's ClientError; DryRunOperation means "would succeed"
            code, message = _error_code(e)
            if code != "DryRunOperation":
                hint = HINTS.get(code, "see infra/README.md")
                out.append(f"node type {name}: EC2 would refuse to launch it ({code}: {message[:300]}); {hint}")
            continue
        out.append(f"node type {name}: EC2 launched an instance although DryRun was set; terminate it")
    return out


def check_bucket(root: str, s3) -> list[str]:
    """Returns a line naming the bucket when an object cannot be written to and deleted from `root`."""
    if not root.startswith("s3://"):
        return []
    bucket, _, prefix = root[len("s3://"):].partition("/")
    if PLACEHOLDER in bucket:
        return [f"SUBNET_RAY_ROOT={root}: the bucket is still the placeholder; replace REPLACE_WITH_BUCKET"]
    key = f"{prefix.rstrip('/')}/.preflight" if prefix else ".preflight"
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"ok")
        s3.delete_object(Bucket=bucket, Key=key)
    except Exception as e:  # noqa: BLE001 - botocore's ClientError
        code, message = _error_code(e)
        return [f"SUBNET_RAY_ROOT={root}: cannot write s3://{bucket}/{key} ({code}: {message[:200]}); "
                "create the bucket and grant infra/aws/*-policy.json on it"]
    return []


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.strip().split("."))


def check_driver(floor: str, query=None) -> list[str]:
    """Returns a line when the NVIDIA driver is missing or older than `floor`."""
    query = query or (lambda: subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    try:
        found = query().split()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        return [f"no NVIDIA driver visible to the container ({e}); use a GPU AMI with driver >= {floor}"]
    if _version(found) < _version(floor):
        return [f"NVIDIA driver {found} is older than {floor}, which torch's CUDA build needs; "
                "use a newer AMI (ImageId)"]
    return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", help="the bootstrapped cluster config (~/ray_bootstrap_config.yaml)")
    p.add_argument("--check-driver", metavar="VERSION", help="only check the NVIDIA driver against VERSION")
    args = p.parse_args(argv)
    if args.check_driver:
        problems = check_driver(args.check_driver)
    else:
        if not args.config:
            p.error("give the cluster config, or --check-driver VERSION")
        import yaml

        with open(os.path.expanduser(args.config)) as f:
            config = yaml.safe_load(f)
        problems = placeholders(config)
        if not problems:  # boto3 only now: a placeholder fails without any AWS call
            import boto3

            region = config["provider"]["region"]
            problems = dry_run_workers(config, boto3.client("ec2", region_name=region))
            problems += check_bucket(os.environ.get("SUBNET_RAY_ROOT", ""), boto3.client("s3", region_name=region))
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
