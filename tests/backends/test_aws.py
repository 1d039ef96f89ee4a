"""AWS backend against moto in server mode (real HTTP on 127.0.0.1), plus EC2 doubles for what
moto does not model: ClientToken idempotency, eventual consistency, throttling, 5xx, capacity."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import boto3
import conftest_cloud as cloud
import pytest
from conftest_cloud import REGION, FaultyEc2, IdempotentEc2, client_error, instances_tagged
from contract import BackendContract, SpecFactory

from backends.aws.backend import AwsBackend, client_token, replica_status
from backends.base import (
    GpuRequirement,
    PermanentError,
    Range,
    ReplicaSpec,
    ReplicaStatus,
    Requirements,
    TemporaryError,
)
from backends.cloud.orphans import OrphanSweeper
from backends.settings import AwsSettings
from tests.support.userdata import RECONCILER_ONLY, check_tunnel_user_data, decoded_text

# Fixtures shared with the other cloud test modules (tests/backends/conftest.py is not ours).
moto_url, ec2, linux_ami, owner = cloud.moto_url, cloud.ec2, cloud.linux_ami, cloud.owner
aws_settings, make_aws = cloud.aws_settings, cloud.make_aws

T4 = GpuRequirement(names=("T4",))


def spec_for(service: str, ordinal: int = 0, **kw: Any) -> ReplicaSpec:
    base: dict[str, Any] = {
        "replica_id": f"{service}-abcdef12-{ordinal}",
        "service": service,
        "spec_hash": "abcdef12",
        "ordinal": ordinal,
        "port": 8000,
        "image": "ghcr.io/example/tiny:1",
        "env": {"HF_TOKEN": "s3cret-value"},
        "requirements": Requirements(gpu=T4, disk_gb=Range(150, None)),
    }
    base.update(kw)
    return ReplicaSpec(**base)


class TestAwsContract(BackendContract):
    eventually_timeout = 20.0

    @pytest.fixture
    def backend(self, make_aws: Callable[..., AwsBackend]) -> AwsBackend:
        return make_aws(real_clients=True)  # boto3 built from settings.endpoint_url

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        def make(ordinal: int = 0, service: str = "contract") -> ReplicaSpec:
            return spec_for(service, ordinal)

        return make


def test_create_tags_sizes_and_opens_only_ssh_to_the_gateway(
    make_aws: Callable[..., AwsBackend], ec2: Any, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in RECONCILER_ONLY.items():  # the reconciler's own secrets, in its environment
        monkeypatch.setenv(name, value)
    backend = make_aws()
    spec = spec_for("tagged")
    info = backend.create(spec)
    (inst,) = instances_tagged(ec2, "tidegate:replica", spec.replica_id)
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["tidegate:owner"] == owner
    assert tags["tidegate:service"] == "tagged"
    assert tags["tidegate:spec"] == "abcdef12"
    assert tags["Name"] == spec.replica_id
    assert tags["tidegate:hostkey"].startswith("ssh-ed25519 ")
    assert inst["InstanceType"] == "g4dn.xlarge"  # cheapest on-demand T4 offer
    assert info.handle == inst["InstanceId"]
    # Never http://<ip>:<port>: the address is the tunnel's unix socket.
    assert info.address is None or info.address == backend.tunnels.address(spec.replica_id)  # type: ignore[union-attr]
    # The root volume has the requested size and carries the same tags.
    volumes = ec2.describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [inst["InstanceId"]]}]
    )
    (volume,) = volumes["Volumes"]
    assert volume["Size"] == 150
    assert {t["Key"]: t["Value"] for t in volume.get("Tags", [])}.get("tidegate:replica") == spec.replica_id
    # One security group, tagged, opening only SSH (22) to the gateway's address: never 8000.
    (group,) = inst["SecurityGroups"]
    sg = ec2.describe_security_groups(GroupIds=[group["GroupId"]])["SecurityGroups"][0]
    assert {t["Key"]: t["Value"] for t in sg["Tags"]}["tidegate:owner"] == owner
    (perm,) = sg["IpPermissions"]
    assert (perm["FromPort"], perm["ToPort"], perm["IpProtocol"]) == (22, 22, "tcp")
    assert [r["CidrIp"] for r in perm["IpRanges"]] == ["203.0.113.7/32"]
    assert not perm.get("Ipv6Ranges") and not perm.get("UserIdGroupPairs")
    # User data: the pinned host key and the installation's forward-only key; the image with the
    # GPUs, its port published on the instance's loopback only; env only base64 inside it, and
    # nothing from the reconciler's environment.
    raw = ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
    script = base64.b64decode(raw["UserData"]["Value"]).decode()
    assert "--gpus all" in script and "-p 127.0.0.1:8000:8000" in script and "ghcr.io/example/tiny:1" in script
    assert "s3cret-value" not in script and "s3cret-value" in decoded_text(script)  # declared: delivered
    assert backend.tunnels is not None
    check_tunnel_user_data(
        script,
        client_public=backend.tunnels.keys.client_public(),
        pinned_host_key=tags["tidegate:hostkey"],
        service_port=8000,
    )
    backend.delete(spec.replica_id)
    assert instances_tagged(ec2, "tidegate:replica", spec.replica_id) == []
    # The group went with its last instance.
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [group["GroupId"]]}])[
        "SecurityGroups"
    ]


def test_an_adopted_group_is_reset_to_ssh_only(make_aws: Callable[..., AwsBackend], ec2: Any) -> None:
    """A group found again (made by an older tidegate that opened the service port, or widened by
    hand) is brought back to the one SSH rule before an instance is launched into it."""
    backend = make_aws()
    spec = spec_for("widened")
    backend.create(spec)
    (inst,) = instances_tagged(ec2, "tidegate:replica", spec.replica_id)
    group_id = inst["SecurityGroups"][0]["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 8000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ],
    )
    backend.create(spec_for("widened", ordinal=1))
    (perm,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]["IpPermissions"]
    assert (perm["FromPort"], [r["CidrIp"] for r in perm["IpRanges"]]) == (22, ["203.0.113.7/32"])
    for ordinal in (0, 1):
        backend.delete(spec_for("widened", ordinal=ordinal).replica_id)


def test_a_retried_launch_sends_byte_identical_user_data(make_aws: Callable[..., AwsBackend], ec2: Any) -> None:
    """The host key is derived from the ClientToken, so a retry after a lost response is the same
    request (EC2 answers a token reused with other parameters with IdempotentParameterMismatch)."""
    faulty = FaultyEc2(ec2)
    backend = make_aws(client_factory=lambda region: faulty)
    spec = spec_for("retried")
    backend._launch(spec, backend._offers.candidates(spec)[0], 0)
    first = [kw for name, kw in faulty.calls if name == "run_instances"][-1]
    backend.delete(spec.replica_id)
    again = make_aws(client_factory=lambda region: faulty)  # a new process, same state dir
    again._launch(spec, again._offers.candidates(spec)[0], 0)
    second = [kw for name, kw in faulty.calls if name == "run_instances"][-1]
    assert first["ClientToken"] == second["ClientToken"]
    assert first["UserData"] == second["UserData"]
    other = again._offers.candidates(spec_for("retried", ordinal=1))[0]
    third = spec_for("retried", ordinal=1)
    again._launch(third, other, 0)
    assert [kw for name, kw in faulty.calls if name == "run_instances"][-1]["UserData"] != first["UserData"]
    for s in (spec, third):
        again.delete(s.replica_id)


def test_spot_offer_launches_a_spot_instance_priced_from_spot_history(
    make_aws: Callable[..., AwsBackend], ec2: Any
) -> None:
    backend = make_aws()
    req = Requirements(gpu=T4, spot_policy="spot")
    offers = backend.offers(req)
    assert offers and all(o.spot for o in offers)
    # moto's describe_spot_price_history answers 0.00001: the live price replaced the catalog's.
    assert offers[0].price == pytest.approx(0.00001)
    spec = spec_for("spotty", requirements=req, offer=offers[0])
    info = backend.create(spec)
    (inst,) = instances_tagged(ec2, "tidegate:replica", spec.replica_id)
    assert inst.get("InstanceLifecycle") == "spot"
    assert info.offer is not None and info.offer.spot
    backend.delete(spec.replica_id)


def test_offers_follow_spot_policy_and_gpu_facts_from_the_api(make_aws: Callable[..., AwsBackend]) -> None:
    backend = make_aws()
    on_demand = backend.offers(Requirements(gpu=GpuRequirement(names=("A100",), count=Range(8, 8))))
    assert [o.instance_type for o in on_demand] == ["p4d.24xlarge", "p4de.24xlarge"]
    assert not any(o.spot for o in on_demand)
    assert on_demand[0].gpu is not None and on_demand[0].gpu.memory_gb == 40  # GpuInfo 40960 MiB
    both = backend.offers(Requirements(gpu=T4, spot_policy="auto"))
    assert {o.spot for o in both} == {True, False}
    assert [o.price for o in both] == sorted(o.price for o in both)
    assert backend.offers(Requirements(gpu=T4, backends=("azure",))) == []


def test_a_new_backend_adopts_the_instance_after_a_crash(
    make_aws: Callable[..., AwsBackend], ec2: Any
) -> None:
    spec = spec_for("crashy")
    first = make_aws().create(spec)  # ... and the process dies before writing state
    again = make_aws().create(spec)  # restart: a fresh backend, no memory of the first call
    assert again.handle == first.handle
    assert len(instances_tagged(ec2, "tidegate:replica", spec.replica_id)) == 1
    assert {r.replica_id for r in make_aws().list_owned()} == {spec.replica_id}
    make_aws().delete(spec.replica_id)


def test_client_token_returns_the_same_instance_when_describe_lags(
    make_aws: Callable[..., AwsBackend], ec2: Any
) -> None:
    double = IdempotentEc2(ec2)
    double.hide_new = True  # describe does not see the new instance yet (eventual consistency)
    double.lose_next_response = True  # and the answer of the launch is lost (timeout)
    backend = make_aws(client_factory=lambda region: double)
    spec = spec_for("tokened")
    with pytest.raises(TemporaryError):
        backend.create(spec)
    info = make_aws(client_factory=lambda region: double).create(spec)
    assert double.launches == 1
    assert len(instances_tagged(ec2, "tidegate:replica", spec.replica_id)) == 1
    assert info.handle == instances_tagged(ec2, "tidegate:replica", spec.replica_id)[0]["InstanceId"]
    make_aws().delete(spec.replica_id)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(client_error("RequestLimitExceeded", 503), TemporaryError, id="throttled"),
        pytest.param(client_error("InternalError", 500), TemporaryError, id="5xx"),
        pytest.param(client_error("ServiceUnavailable", 503), TemporaryError, id="unavailable"),
        pytest.param(client_error("InvalidAMIID.NotFound", 400), PermanentError, id="bad-ami"),
        pytest.param(client_error("UnauthorizedOperation", 403), PermanentError, id="unauthorized"),
    ],
)
def test_run_instances_errors_are_classified(
    make_aws: Callable[..., AwsBackend], ec2: Any, error: Exception, expected: type[Exception]
) -> None:
    faulty = FaultyEc2(ec2)
    faulty.inject("run_instances", error)
    backend = make_aws(client_factory=lambda region: faulty)
    spec = spec_for("faulty")
    with pytest.raises(expected):
        backend.create(spec)
    assert instances_tagged(ec2, "tidegate:replica", spec.replica_id) == []


def test_describe_throttled_is_temporary(make_aws: Callable[..., AwsBackend], ec2: Any) -> None:
    faulty = FaultyEc2(ec2)
    faulty.inject("get_paginator", client_error("Throttling", 400, "DescribeInstances"))
    with pytest.raises(TemporaryError):
        make_aws(client_factory=lambda region: faulty).list_owned()


def test_capacity_errors_move_to_the_next_offer_then_stay_pending(
    make_aws: Callable[..., AwsBackend], ec2: Any
) -> None:
    faulty = FaultyEc2(ec2)
    faulty.inject("run_instances", client_error("InsufficientInstanceCapacity", 500))
    backend = make_aws(client_factory=lambda region: faulty)
    spec = spec_for("capacity", requirements=Requirements(gpu=T4, spot_policy="auto"))
    info = backend.create(spec)
    launched = [kw for name, kw in faulty.calls if name == "run_instances"]
    assert len(launched) == 2 and launched[0]["ClientToken"] != launched[1]["ClientToken"]
    # spot_policy auto: no spot capacity falls back to on-demand.
    assert "InstanceMarketOptions" in launched[0] and "InstanceMarketOptions" not in launched[1]
    assert info.status in (ReplicaStatus.PROVISIONING, ReplicaStatus.RUNNING)
    backend.delete(spec.replica_id)

    faulty.inject("run_instances", *[client_error("InsufficientInstanceCapacity", 500)] * 3)
    with pytest.raises(TemporaryError, match="no capacity"):
        backend.create(spec_for("capacity", 1, requirements=Requirements(gpu=T4, spot_policy="auto")))
    assert instances_tagged(ec2, "tidegate:service", "capacity") == []


def test_orphan_sweep_deletes_only_unknown_owned_instances_after_grace(
    make_aws: Callable[..., AwsBackend], ec2: Any, owner: str, linux_ami: str
) -> None:
    backend = make_aws()
    known, orphan = spec_for("swept", 0), spec_for("swept", 1)
    backend.create(known)
    backend.create(orphan)
    make_aws(owner_id="tg-someoneelse").create(spec_for("foreign"))
    untagged = ec2.run_instances(ImageId=linux_ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    untagged_id = untagged["Instances"][0]["InstanceId"]

    now = [1000.0]
    sweeper = OrphanSweeper([backend], owner, grace=600, clock=lambda: now[0])
    first = sweeper.sweep({known.replica_id})
    assert first.deleted == [] and [i.replica_id for i in first.waiting] == [orphan.replica_id]
    now[0] += 600
    second = sweeper.sweep({known.replica_id})
    assert [i.replica_id for i in second.deleted] == [orphan.replica_id]
    assert instances_tagged(ec2, "tidegate:replica", orphan.replica_id) == []
    assert len(instances_tagged(ec2, "tidegate:replica", known.replica_id)) == 1
    assert len(instances_tagged(ec2, "tidegate:replica", "foreign-abcdef12-0")) == 1
    state = ec2.describe_instances(InstanceIds=[untagged_id])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "running"
    backend.delete(known.replica_id)
    make_aws(owner_id="tg-someoneelse").delete("foreign-abcdef12-0")
    ec2.terminate_instances(InstanceIds=[untagged_id])


def test_ami_lookup_by_name_then_fallback(
    make_aws: Callable[..., AwsBackend], aws_settings: AwsSettings, ec2: Any, linux_ami: str
) -> None:
    base = ec2.run_instances(ImageId=linux_ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    base_id = base["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=base_id, Name="tidegate-test-dlami-2026.01")["ImageId"]
    ec2.terminate_instances(InstanceIds=[base_id])
    by_name = aws_settings.model_copy(
        update={"ami": None, "ami_name_filter": "tidegate-test-dlami-*", "ami_owners": ["self"]}
    )
    assert make_aws(settings=by_name)._image(REGION)[0] == image_id
    fallback = by_name.model_copy(update={"ami_name_filter": "no-such-image-*", "ami_fallback": linux_ami})
    assert make_aws(settings=fallback)._image(REGION)[0] == linux_ami
    nothing = fallback.model_copy(update={"ami_fallback": None})
    with pytest.raises(PermanentError, match="no AMI"):
        make_aws(settings=nothing)._image(REGION)


def test_missing_allowed_cidr_is_permanent(
    make_aws: Callable[..., AwsBackend], aws_settings: AwsSettings
) -> None:
    backend = make_aws(settings=aws_settings.model_copy(update={"allowed_cidr": None}))
    with pytest.raises(PermanentError, match="allowed_cidr"):
        backend.create(spec_for("nocidr"))


@pytest.mark.parametrize(
    ("state", "spot", "code", "expected"),
    [
        pytest.param("pending", False, "", ReplicaStatus.PROVISIONING, id="pending"),
        pytest.param("running", False, "", ReplicaStatus.RUNNING, id="running"),
        pytest.param("stopping", False, "", ReplicaStatus.TERMINATING, id="stopping"),
        pytest.param("shutting-down", False, "", ReplicaStatus.TERMINATING, id="shutting-down"),
        pytest.param("stopped", False, "", ReplicaStatus.EXITED, id="stopped"),
        pytest.param(
            "terminated", False, "Client.UserInitiatedShutdown", ReplicaStatus.GONE, id="terminated"
        ),
        pytest.param(
            "terminated", True, "Server.SpotInstanceTermination", ReplicaStatus.EXITED, id="spot-interrupted"
        ),
    ],
)
def test_instance_state_mapping(state: str, spot: bool, code: str, expected: ReplicaStatus) -> None:
    status, message = replica_status(state, spot=spot, reason_code=code, reason="")
    assert status is expected
    if code.startswith("Server.Spot"):
        assert message is not None and "spot instance interrupted" in message


def test_client_token_is_deterministic_and_short() -> None:
    backend_offer = AwsBackend(AwsSettings(), "o", catalog=[]).offers  # no catalog: no offers
    assert backend_offer(Requirements()) == []
    from backends.cloud.catalog import load_catalog

    offer = next(o for o in load_catalog() if o.backend == "aws")
    long_id = "a-very-long-service-name-that-goes-on-and-on-and-on-abcdef12-3"
    token = client_token(long_id, 0, offer)
    assert token == client_token(long_id, 0, offer) and len(token) <= 64
    assert token != client_token(long_id, 1, offer)


def test_no_real_aws_endpoint_is_configured(moto_url: str) -> None:
    assert moto_url.startswith("http://127.0.0.1:")
    session = boto3.session.Session()
    assert session.get_credentials().access_key == "testing"


def test_an_instance_without_a_pinned_host_key_is_reported_exited_not_reached(
    make_aws: Callable[..., AwsBackend], ec2: Any
) -> None:
    """An instance from before tunnels (no `tidegate:hostkey` tag, its service port open) gets no
    address — it would only be reachable in clear text — and is reported exited, so the reconciler
    replaces it."""
    backend = make_aws()
    spec = spec_for("legacy")
    backend.create(spec)
    (inst,) = instances_tagged(ec2, "tidegate:replica", spec.replica_id)
    ec2.delete_tags(Resources=[inst["InstanceId"]], Tags=[{"Key": "tidegate:hostkey"}])
    info = backend.describe(spec.replica_id)
    assert info is not None and info.status is ReplicaStatus.EXITED and info.address is None
    assert "without a pinned SSH host key" in (info.message or "")
    backend.delete(spec.replica_id)
