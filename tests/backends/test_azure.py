"""Azure backend: the real azure-mgmt-compute / azure-mgmt-network clients against FakeArm, an ARM
endpoint on 127.0.0.1 with long-running operations (201/202 + polling). No traffic leaves loopback
and DefaultAzureCredential is never constructed (a guard makes it fail the test)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from contract import BackendContract, SpecFactory
from fake_arm import FakeArm

from backends.azure.backend import AzureBackend
from backends.base import (
    GpuRequirement,
    PermanentError,
    Range,
    ReplicaSpec,
    ReplicaStatus,
    Requirements,
    TemporaryError,
)
from backends.cloud.catalog import load_catalog
from backends.cloud.tunnels import CloudTunnels
from backends.settings import AzureSettings
from tests.support.userdata import RECONCILER_ONLY, check_tunnel_user_data, decoded_text

T4 = GpuRequirement(names=("T4",))
RG_PATH = "/subscriptions/sub-1/resourceGroups/rg-test/providers"
RESTRICTED = "Standard_NC64as_T4_v3"


class StaticCredential:
    """A token credential for the fake endpoint (the ARM clients ask for a bearer token)."""

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken("fake-arm-token", 4_102_444_800)


@pytest.fixture(autouse=True)
def no_default_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.identity

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("DefaultAzureCredential must not be used in tests")

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", refuse)


@pytest.fixture
def arm() -> Iterator[FakeArm]:
    fake = FakeArm()
    for offer in load_catalog():
        if offer.backend == "azure" and not offer.spot:
            sku: dict[str, Any] = {
                "resourceType": "virtualMachines",
                "name": offer.instance_type,
                "locations": [offer.region],
            }
            if offer.instance_type == RESTRICTED:
                sku["restrictions"] = [
                    {
                        "type": "Location",
                        "values": [offer.region],
                        "reasonCode": "NotAvailableForSubscription",
                    }
                ]
            fake.skus.append(sku)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def az_settings(arm: FakeArm) -> AzureSettings:
    return AzureSettings(
        subscription_id="sub-1",
        resource_group="rg-test",
        locations=["eastus"],
        base_url=arm.url,
        allowed_cidr="203.0.113.7/32",
        ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST tidegate@test",
        polling_interval=0,
        sdk_retries=0,
    )


@pytest.fixture
def make_azure(az_settings: AzureSettings, tmp_path: Path) -> Callable[..., AzureBackend]:
    catalog = load_catalog()

    def make(*, settings: AzureSettings | None = None, owner: str = "tg-azure-test") -> AzureBackend:
        tunnels = CloudTunnels(tmp_path / "state", "azure")  # keys only; no tunnel is opened here
        return AzureBackend(
            settings or az_settings, owner, catalog=catalog, credential=StaticCredential(), tunnels=tunnels
        )

    return make


def spec_for(service: str, ordinal: int = 0, **kw: Any) -> ReplicaSpec:
    base: dict[str, Any] = {
        "replica_id": f"{service}-abcdef12-{ordinal}",
        "service": service,
        "spec_hash": "abcdef12",
        "ordinal": ordinal,
        "port": 8000,
        "image": "ghcr.io/example/tiny:1",
        "env": {"HF_TOKEN": "s3cret-value"},
        "requirements": Requirements(gpu=T4),
    }
    base.update(kw)
    return ReplicaSpec(**base)


def resource(arm: FakeArm, kind: str, name: str) -> dict[str, Any] | None:
    return arm.resources.get(f"{RG_PATH}/{kind}/{name}".lower())


class TestAzureContract(BackendContract):
    @pytest.fixture
    def backend(self, make_azure: Callable[..., AzureBackend]) -> AzureBackend:
        return make_azure()

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        def make(ordinal: int = 0, service: str = "contract") -> ReplicaSpec:
            return spec_for(service, ordinal)

        return make


class TestSlowAzureContract(TestAzureContract):
    """VMs that take 3 s to provision: `create` returns within the budget with the VM Creating,
    and `describe` shows it finish (the operation is observed by resource state, not awaited)."""

    call_budget = 2.0

    @pytest.fixture
    def backend(self, make_azure: Callable[..., AzureBackend], arm: FakeArm) -> AzureBackend:
        arm.vm_create_seconds = 3.0
        backend = make_azure()
        backend.create_wait = 0.2
        return backend


def test_a_vm_still_provisioning_is_returned_as_provisioning_and_adopted(
    make_azure: Callable[..., AzureBackend], arm: FakeArm
) -> None:
    arm.vm_create_seconds = 30.0
    backend = make_azure()
    backend.create_wait = 0.2
    info = backend.create(spec_for("booting"))
    assert info.status is ReplicaStatus.PROVISIONING
    again = backend.create(spec_for("booting"))  # the next pass (or a restart) finds it
    assert again.status is ReplicaStatus.PROVISIONING and again.handle == info.handle
    assert arm.count("PUT", "/virtualMachines/") == 1, "the VM was not launched twice"


def test_spot_vm_with_tags_custom_data_and_its_network(
    make_azure: Callable[..., AzureBackend], arm: FakeArm, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in RECONCILER_ONLY.items():  # the reconciler's own secrets, in its environment
        monkeypatch.setenv(name, value)
    req = Requirements(gpu=T4, spot_policy="spot", max_price=0.5)
    backend = make_azure()
    info = backend.create(spec_for("spotty", requirements=req))
    assert info.status is ReplicaStatus.RUNNING
    assert backend.tunnels is not None
    # Never http://<ip>:<port>: the address is the tunnel's unix socket.
    assert info.address == backend.tunnels.address("spotty-abcdef12-0")
    vm = resource(arm, "Microsoft.Compute/virtualMachines", "spotty-abcdef12-0")
    assert vm is not None
    props = vm["properties"]
    assert (props["priority"], props["evictionPolicy"], props["billingProfile"]["maxPrice"]) == (
        "Spot",
        "Delete",
        0.5,
    )
    assert props["hardwareProfile"]["vmSize"] == "Standard_NC4as_T4_v3"
    assert vm["tags"]["tidegate:owner"] == "tg-azure-test"
    assert vm["tags"]["tidegate:replica"] == "spotty-abcdef12-0"
    assert props["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    script = base64.b64decode(props["osProfile"]["customData"]).decode()
    assert "--gpus all" in script and "-p 127.0.0.1:8000:8000" in script and "s3cret-value" not in script
    assert "s3cret-value" in decoded_text(script)  # the declared env is delivered (base64, root-only file)
    check_tunnel_user_data(
        script,
        client_public=backend.tunnels.keys.client_public(),
        pinned_host_key=vm["tags"]["tidegate:hostkey"],
        service_port=8000,
    )
    # The NSG allows SSH (22) from the gateway's address and denies every other inbound packet
    # (above Azure's default AllowVnetInBound): the service port is reachable from nowhere.
    nsg = resource(arm, "Microsoft.Network/networkSecurityGroups", "spotty-abcdef12-0-nsg")
    assert nsg is not None
    allow, deny = sorted(nsg["properties"]["securityRules"], key=lambda r: r["properties"]["priority"])
    assert (allow["properties"]["access"], allow["properties"]["direction"]) == ("Allow", "Inbound")
    assert allow["properties"]["destinationPortRange"] == "22"
    assert allow["properties"]["sourceAddressPrefix"] == "203.0.113.7/32"
    assert (deny["properties"]["access"], deny["properties"]["direction"]) == ("Deny", "Inbound")
    assert deny["properties"]["destinationPortRange"] == "*" and deny["properties"]["sourceAddressPrefix"] == "*"
    assert deny["properties"]["priority"] < 65000  # wins over AllowVnetInBound
    nic = resource(arm, "Microsoft.Network/networkInterfaces", "spotty-abcdef12-0-nic")
    assert nic is not None and nic["properties"]["networkSecurityGroup"]["id"].endswith("-nsg")
    # Every PUT went through ARM's long-running operation protocol (polled, not just fired).
    assert arm.count("GET", "/fake/operations/") >= 5


def test_delete_removes_vm_nic_ip_nsg_and_gone_is_success(
    make_azure: Callable[..., AzureBackend], arm: FakeArm
) -> None:
    backend = make_azure()
    backend.create(spec_for("gone"))
    backend.delete("gone-abcdef12-0")
    assert [k for k in arm.resources if "gone-abcdef12-0" in k] == []
    assert arm.count("GET", "/fake/operations/") > 0
    backend.delete("gone-abcdef12-0")
    assert backend.describe("gone-abcdef12-0") is None


def test_delete_returns_while_the_vm_deletes_and_list_owned_finishes_the_rest(
    make_azure: Callable[..., AzureBackend], arm: FakeArm
) -> None:
    """ARM takes minutes to delete a VM: `delete` starts it and returns (the worker is free); the
    NIC (which ARM refuses to delete while the VM holds it), IP and NSG follow on later passes."""
    arm.vm_delete_seconds = 2.0
    backend = make_azure()
    backend.delete_wait = 0.2
    backend.create(spec_for("slowgone"))
    started = time.monotonic()
    backend.delete("slowgone-abcdef12-0")
    assert time.monotonic() - started < 1.5
    info = backend.describe("slowgone-abcdef12-0")
    assert info is not None and info.status is ReplicaStatus.TERMINATING
    assert resource(arm, "Microsoft.Network/networkInterfaces", "slowgone-abcdef12-0-nic") is not None
    assert arm.count("DELETE", "slowgone-abcdef12-0-nic") == 0  # never tried while the VM holds it
    deadline = time.monotonic() + 15
    while [k for k in arm.resources if "slowgone-abcdef12-0" in k] and time.monotonic() < deadline:
        listed = backend.list_owned()
        assert all(i.status is ReplicaStatus.TERMINATING for i in listed)
        time.sleep(0.2)
    assert [k for k in arm.resources if "slowgone-abcdef12-0" in k] == []
    assert backend.describe("slowgone-abcdef12-0") is None


def test_the_sweep_finishes_a_teardown_a_crash_interrupted(
    make_azure: Callable[..., AzureBackend], arm: FakeArm
) -> None:
    arm.vm_delete_seconds = 0.5
    first = make_azure()
    first.delete_wait = 0.0
    first.create(spec_for("halfgone"))
    first.delete("halfgone-abcdef12-0")  # the process dies here: its teardown list is lost
    theirs = f"{RG_PATH}/Microsoft.Network/networkInterfaces/theirs-abcdef12-0-nic"
    arm.put_resource(theirs, {"location": "eastus", "tags": {"tidegate:owner": "tg-other"}, "properties": {}})
    time.sleep(0.6)
    again = make_azure()
    assert again.list_owned() == []
    assert resource(arm, "Microsoft.Network/networkInterfaces", "halfgone-abcdef12-0-nic") is not None
    swept: list[str] = []
    for _ in range(10):
        swept += again.sweep_security_groups()
        if not [k for k in arm.resources if "halfgone-abcdef12-0" in k]:
            break
        time.sleep(0.2)
    assert set(swept) == {"NIC, public IP and NSG of VM halfgone-abcdef12-0"}
    assert [k for k in arm.resources if "halfgone-abcdef12-0" in k] == []
    assert theirs.lower() in arm.resources  # another installation's leftovers are never touched


def test_foreign_resources_are_never_touched(make_azure: Callable[..., AzureBackend], arm: FakeArm) -> None:
    path = f"{RG_PATH}/Microsoft.Compute/virtualMachines/theirs-abcdef12-0"
    arm.put_resource(path, {"location": "eastus", "tags": {"team": "ml"}, "properties": {}})
    other = f"{RG_PATH}/Microsoft.Compute/virtualMachines/other-abcdef12-0"
    arm.put_resource(other, {"location": "eastus", "tags": {"tidegate:owner": "tg-other"}, "properties": {}})
    backend = make_azure()
    assert backend.list_owned() == []
    assert backend.describe("theirs-abcdef12-0") is None
    backend.delete("theirs-abcdef12-0")
    backend.delete("other-abcdef12-0")
    assert path.lower() in arm.resources and other.lower() in arm.resources
    with pytest.raises(PermanentError, match="not owned"):
        backend.create(spec_for("theirs"))
    assert arm.count("DELETE", "theirs") == 0


def test_restart_adopts_the_vm_instead_of_creating_again(
    make_azure: Callable[..., AzureBackend], arm: FakeArm
) -> None:
    first = make_azure().create(spec_for("adopt"))
    again = make_azure().create(spec_for("adopt"))
    assert again.handle == first.handle
    assert arm.count("PUT", "virtualMachines/adopt") == 1


def test_crash_between_network_and_vm_converges_on_one_vm(
    make_azure: Callable[..., AzureBackend], arm: FakeArm
) -> None:
    arm.fail("PUT", "virtualMachines/crashy", 503, "ServiceUnavailable")
    with pytest.raises(TemporaryError):
        make_azure().create(spec_for("crashy"))
    info = make_azure().create(spec_for("crashy"))
    assert info.status is ReplicaStatus.RUNNING
    vms = arm.of_type("virtualMachines")
    assert [v["name"] for v in vms] == ["crashy-abcdef12-0"]
    assert len(arm.of_type("networkInterfaces")) == 1


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        pytest.param(429, "TooManyRequests", TemporaryError, id="throttled"),
        pytest.param(500, "InternalServerError", TemporaryError, id="5xx"),
        pytest.param(400, "InvalidParameter", PermanentError, id="bad-request"),
        pytest.param(403, "AuthorizationFailed", PermanentError, id="forbidden"),
    ],
)
def test_arm_errors_are_classified(
    make_azure: Callable[..., AzureBackend], arm: FakeArm, status: int, code: str, expected: type[Exception]
) -> None:
    arm.fail("PUT", "virtualMachines/", status, code)
    with pytest.raises(expected):
        make_azure().create(spec_for("faulty"))


def test_no_capacity_moves_to_the_next_location_and_cleans_up(
    make_azure: Callable[..., AzureBackend], az_settings: AzureSettings, arm: FakeArm
) -> None:
    settings = az_settings.model_copy(update={"locations": ["eastus", "westus2"]})
    arm.no_capacity.add("eastus/Standard_NC4as_T4_v3")
    info = make_azure(settings=settings).create(spec_for("capacity"))
    assert info.offer is not None and info.offer.region == "westus2"
    vm = resource(arm, "Microsoft.Compute/virtualMachines", "capacity-abcdef12-0")
    assert vm is not None and vm["location"] == "westus2"
    nic = resource(arm, "Microsoft.Network/networkInterfaces", "capacity-abcdef12-0-nic")
    assert nic is not None and nic["location"] == "westus2"
    arm.no_capacity.add("westus2/Standard_NC4as_T4_v3")
    with pytest.raises(TemporaryError, match="no capacity"):
        make_azure(settings=settings).create(spec_for("capacity", 1))
    assert [k for k in arm.resources if "capacity-abcdef12-1" in k] == []


def test_offers_drop_restricted_skus_and_fall_back_to_the_catalog(
    make_azure: Callable[..., AzureBackend], arm: FakeArm
) -> None:
    t4_any = Requirements(gpu=GpuRequirement(names=("T4",), count=Range(1, None)))
    names = {o.instance_type for o in make_azure().offers(t4_any)}
    assert names == {"Standard_NC4as_T4_v3"}  # NC64as is NotAvailableForSubscription
    arm.fail("GET", "/skus", 500, "InternalServerError")
    names = {o.instance_type for o in make_azure().offers(t4_any)}
    assert names == {"Standard_NC4as_T4_v3", RESTRICTED}
    assert make_azure().offers(Requirements(gpu=T4, backends=("aws",))) == []


def test_the_static_credential_is_what_authenticates(az_settings: AzureSettings, arm: FakeArm) -> None:
    cred = StaticCredential()
    backend = AzureBackend(az_settings, "tg-cred", catalog=load_catalog(), credential=cred, tunnels=None)
    assert backend.list_owned() == []
    assert cred.calls >= 1


def test_a_vm_without_a_pinned_host_key_is_reported_exited_not_reached(
    make_azure: Callable[..., AzureBackend], arm: FakeArm
) -> None:
    """A VM from before tunnels (no `tidegate:hostkey` tag) is never reached in clear text: no
    address, reported exited, so the reconciler replaces it."""
    backend = make_azure()
    backend.create(spec_for("legacy"))
    vm = resource(arm, "Microsoft.Compute/virtualMachines", "legacy-abcdef12-0")
    assert vm is not None
    del vm["tags"]["tidegate:hostkey"]
    info = backend.describe("legacy-abcdef12-0")
    assert info is not None and info.status is ReplicaStatus.EXITED and info.address is None
    assert "without a pinned SSH host key" in (info.message or "")
    backend.delete("legacy-abcdef12-0")
