"""infra/aws_preflight.py, which `ray up` runs on the head and on each GPU worker so that a
wrong AMI, a missing instance profile or iam:PassRole, an unusable bucket or an old NVIDIA
driver stop the launch with one line naming it. AWS is replaced by fakes that answer as
EC2 and S3 do (botocore's ClientError carries the error code in .response)."""
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"


def preflight():
    spec = importlib.util.spec_from_file_location("aws_preflight", INFRA / "aws_preflight.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ClientError(Exception):
    """Shaped like botocore's: the AWS error code and message in .response."""

    def __init__(self, code, message=""):
        super().__init__(f"{code}: {message}")
        self.response = {"Error": {"Code": code, "Message": message}}


class FakeEC2:
    def __init__(self, codes):
        self.codes, self.calls = codes, []

    def run_instances(self, **kwargs):
        self.calls.append(kwargs)
        raise ClientError(self.codes[kwargs["IamInstanceProfile"]["Name"]], "encoded message")


def bootstrapped(ami="ami-0123456789abcdef0"):
    """Returns ray-up.yaml as Ray writes it to the head: AMIs replaced, subnets and groups filled in."""
    config = yaml.safe_load((INFRA / "ray-up.yaml").read_text())
    for node_type in config["available_node_types"].values():
        node_type["node_config"].update(ImageId=ami, SubnetIds=["subnet-1", "subnet-2"], SecurityGroupIds=["sg-1"])
    return config


def test_preflight_dry_runs_each_worker_type_as_the_autoscaler_would():
    ec2 = FakeEC2({"subnet-ray-worker": "DryRunOperation"})
    assert preflight().dry_run_workers(bootstrapped(), ec2) == []
    (call,) = ec2.calls  # the worker type only: the head is already running
    assert call["DryRun"] is True and call["MinCount"] == call["MaxCount"] == 1
    assert call["SubnetId"] == "subnet-1" and "SubnetIds" not in call and call["SecurityGroupIds"] == ["sg-1"]
    assert call["InstanceType"] == "g5.2xlarge" and call["IamInstanceProfile"] == {"Name": "subnet-ray-worker"}


def test_preflight_names_a_head_role_without_pass_role():
    found = preflight().dry_run_workers(bootstrapped(), FakeEC2({"subnet-ray-worker": "UnauthorizedOperation"}))
    assert len(found) == 1 and found[0].startswith("node type ray.worker.gpu: EC2 would refuse to launch it (UnauthorizedOperation")
    assert "iam:PassRole" in found[0] and "head-policy.json" in found[0]


def test_preflight_stops_on_placeholders_before_calling_aws(capsys, tmp_path, monkeypatch):
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrapped(ami="REPLACE_WITH_AMI_ID")))
    monkeypatch.setitem(sys.modules, "boto3", None)  # any AWS client would raise ImportError
    assert preflight().main([str(path)]) == 1
    found = capsys.readouterr().err.splitlines()
    assert [line.split(":")[:2] for line in found] == [["error", " node type ray.head.default"], ["error", " node type ray.worker.gpu"]]
    assert all("node_config.ImageId is still the placeholder 'REPLACE_WITH_AMI_ID'" in line for line in found)


class FakeS3:
    def __init__(self, error=None):
        self.error, self.calls = error, []

    def put_object(self, **kwargs):
        self.calls.append(("put", kwargs["Bucket"], kwargs["Key"]))
        if self.error:
            raise ClientError(self.error, "denied")

    def delete_object(self, **kwargs):
        self.calls.append(("delete", kwargs["Bucket"], kwargs["Key"]))


def test_preflight_bucket_check():
    p = preflight()
    s3 = FakeS3()
    assert p.check_bucket("s3://team-bucket/sweeps", s3) == []
    assert s3.calls == [("put", "team-bucket", "sweeps/.preflight"), ("delete", "team-bucket", "sweeps/.preflight")]
    (line,) = p.check_bucket("s3://team-bucket/sweeps", FakeS3("AccessDenied"))
    assert line.startswith("SUBNET_RAY_ROOT=s3://team-bucket/sweeps: cannot write s3://team-bucket/sweeps/.preflight (AccessDenied")
    (line,) = p.check_bucket("s3://REPLACE_WITH_BUCKET/sweeps", FakeS3())
    assert "still the placeholder" in line
    assert p.check_bucket("/mnt/subnet-ray", FakeS3("never called")) == []


@pytest.mark.parametrize("reported, ok", [("580.65.06", True), ("590.12", True), ("570.172.08", False), ("", False)])
def test_preflight_driver_floor(reported, ok):
    found = preflight().check_driver("580.65.06", query=lambda: reported + "\n")
    assert (found == []) == ok, found
    if reported and not ok:
        assert found == ["NVIDIA driver 570.172.08 is older than 580.65.06, which torch's CUDA build needs; use a newer AMI (ImageId)"]


def test_ray_up_runs_the_preflight_with_the_dockerfile_driver_floor():
    config = yaml.safe_load((INFRA / "ray-up.yaml").read_text())
    floor = re.search(r"driver: it must be >= ([\d.]+)", (INFRA / "Dockerfile").read_text())[1]
    assert config["head_setup_commands"] == [
        "source ~/subnet-ray.env && python ~/subnet-ray/infra/aws_preflight.py ~/ray_bootstrap_config.yaml"]
    assert shlex.split(config["worker_setup_commands"][0])[-2:] == ["--check-driver", floor]
