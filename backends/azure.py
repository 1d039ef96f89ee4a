"""The Azure backend: one VM per replica (with its own NIC, NSG and public IP), named by replica id.

Why this module exists: it maps the `Backend` protocol onto Azure Resource Manager. ARM PUTs are
idempotent by resource name, and every resource is named after the deterministic replica id, so a
retried `create` after a crash converges on the same VM instead of starting a second one; before
creating, an existing VM is adopted only when it carries our owner tag (anything else is never
touched). Spot offers use Spot priority with eviction policy Delete and a max price. Capacity or
quota failures move to the next offer after the failed VM's leftovers are removed; 429, 5xx and
transport errors become `TemporaryError`. The SDKs are imported lazily; a test passes its own
credential and a `base_url` (plain http is allowed only for such an explicit endpoint).
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from backends.base import (
    Offer,
    PermanentError,
    ReplicaInfo,
    ReplicaSpec,
    ReplicaStatus,
    Requirements,
    TemporaryError,
    owner_tags,
)
from backends.catalog import select_offers
from backends.settings import AzureSettings
from backends.startup import render_startup_script

log = logging.getLogger(__name__)

OWNER, REPLICA, SERVICE, SPEC, PORT = (
    "tidegate:owner",
    "tidegate:replica",
    "tidegate:service",
    "tidegate:spec",
    "tidegate:port",
)
CAPACITY_CODES = frozenset(
    {
        "SkuNotAvailable",
        "AllocationFailed",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "OverconstrainedZonalAllocationRequest",
        "QuotaExceeded",
        "OperationNotAllowed",
    }
)
ARM_SCOPE = "https://management.azure.com/.default"
_NAME = re.compile(r"[^A-Za-z0-9-]")


def vm_name(replica_id: str) -> str:
    return _NAME.sub("-", replica_id)[:64].strip("-")


def _code(e: Exception) -> tuple[str, int]:
    error = getattr(e, "error", None)
    code = str(getattr(error, "code", "") or "")
    status = int(getattr(e, "status_code", 0) or 0)
    if not code:
        match = re.search(r"\(([A-Za-z]+)\)", str(getattr(e, "message", "") or e))
        code = match.group(1) if match else ""
    return code, status


def classify(e: Exception, what: str) -> Exception:
    code, status = _code(e)
    if status == 429 or status >= 500 or not status:
        return TemporaryError(f"{what}: {code or type(e).__name__}: {e}")
    return PermanentError(f"{what}: {code or status}: {e}")


class _NoCapacity(Exception):
    """This offer has no capacity or quota right now; the caller tries the next one."""


class AzureBackend:
    """Azure VMs in one resource group, tagged with this installation's owner id."""

    name = "azure"

    def __init__(
        self,
        settings: AzureSettings,
        owner: str,
        *,
        catalog: Sequence[Offer] = (),
        credential: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.owner = owner
        self._catalog = [o for o in catalog if o.backend == self.name]
        self._credential = credential
        self._clock = clock
        self._compute_client: Any = None
        self._network_client: Any = None
        self._live: dict[str, tuple[float, list[Offer]]] = {}

    # ---- clients -------------------------------------------------------------------------
    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "retry_total": self.settings.sdk_retries,
            "polling_interval": self.settings.polling_interval,
        }
        if self.settings.base_url:
            kwargs["base_url"] = self.settings.base_url
            kwargs["credential_scopes"] = [ARM_SCOPE]
            if self.settings.base_url.startswith("http://"):
                kwargs["per_call_policies"] = [_allow_http_policy()]
        return kwargs

    def _cred(self) -> Any:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    @property
    def compute(self) -> Any:
        if self._compute_client is None:
            from azure.mgmt.compute import ComputeManagementClient

            self._compute_client = ComputeManagementClient(
                self._cred(), self.settings.subscription_id, **self._client_kwargs()
            )
        return self._compute_client

    @property
    def network(self) -> Any:
        if self._network_client is None:
            from azure.mgmt.network import NetworkManagementClient

            self._network_client = NetworkManagementClient(
                self._cred(), self.settings.subscription_id, **self._client_kwargs()
            )
        return self._network_client

    def _run(self, what: str, fn: Callable[[], Any], *, missing_ok: bool = False) -> Any:
        """Call the SDK, mapping its errors: 404 -> None when `missing_ok`, else Temporary/Permanent."""
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        try:
            return fn()
        except ResourceNotFoundError:
            if missing_ok:
                return None
            raise PermanentError(f"azure {what}: not found") from None
        except HttpResponseError as e:
            if missing_ok and getattr(e, "status_code", None) == 404:
                return None
            if _code(e)[0] in CAPACITY_CODES:
                raise _NoCapacity(f"{what}: {_code(e)[0]}") from e
            raise classify(e, f"azure {what}") from e
        except AzureError as e:  # transport errors, timeouts
            raise TemporaryError(f"azure {what}: {type(e).__name__}: {e}") from e

    # ---- offers --------------------------------------------------------------------------
    def offers(self, requirements: Requirements) -> Sequence[Offer]:
        if requirements.backends and self.name not in requirements.backends:
            return []
        locations = [
            loc for loc in self.settings.locations if not requirements.regions or loc in requirements.regions
        ]
        found: list[Offer] = []
        for loc in locations:
            found.extend(self._location_offers(loc))
        return select_offers(found, requirements)

    def _location_offers(self, location: str) -> list[Offer]:
        base = [o for o in self._catalog if o.region == location]
        if not self.settings.live_offers or not base:
            return base
        now = self._clock()
        cached = self._live.get(location)
        if cached and now - cached[0] < self.settings.offers_ttl:
            return cached[1]
        try:
            available: set[str] = set()
            for sku in self.compute.resource_skus.list(filter=f"location eq '{location}'"):
                if sku.resource_type != "virtualMachines":
                    continue
                if sku.locations and location.lower() not in {str(x).lower() for x in sku.locations}:
                    continue
                if any(r.reason_code == "NotAvailableForSubscription" for r in sku.restrictions or []):
                    continue
                available.add(str(sku.name))
            refined = [o for o in base if o.instance_type in available]
        except Exception as e:  # unreachable API: the catalog alone answers
            log.info("azure %s: using catalog offers only (%s)", location, e)
            refined = base
        self._live[location] = (now, refined)
        return refined

    # ---- describe ------------------------------------------------------------------------
    def _get_vm(self, name: str) -> Any:
        rg = self.settings.resource_group
        return self._run(
            f"get vm {name}",
            lambda: self.compute.virtual_machines.get(rg, name, expand="instanceView"),
            missing_ok=True,
        )

    def _owned(self, resource: Any) -> bool:
        return resource is not None and (resource.tags or {}).get(OWNER) == self.owner

    def _info(self, vm: Any) -> ReplicaInfo:
        tags = dict(vm.tags or {})
        state = str(vm.provisioning_state or "Creating")
        codes = [str(s.code or "") for s in ((vm.instance_view.statuses or []) if vm.instance_view else [])]
        power = next((c.split("/", 1)[1] for c in codes if c.startswith("PowerState/")), "")
        message = None
        if state in ("Creating", "Updating"):
            status = ReplicaStatus.PROVISIONING
        elif state == "Deleting" or power in ("stopping", "deallocating"):
            status = ReplicaStatus.TERMINATING
        elif state == "Failed":
            status, message = ReplicaStatus.EXITED, f"provisioning failed ({', '.join(codes)})"
        elif power in ("stopped", "deallocated"):
            status, message = ReplicaStatus.EXITED, f"VM is {power}"
            if vm.priority == "Spot":
                message = f"spot VM evicted or stopped ({power})"
        elif power in ("running", ""):
            status = ReplicaStatus.RUNNING
        else:
            status = ReplicaStatus.PROVISIONING
        address = None
        if status is ReplicaStatus.RUNNING and tags.get(PORT):
            ip = self._address(vm.name)
            address = f"http://{ip}:{tags[PORT]}" if ip else None
        spot = vm.priority == "Spot"
        size = vm.hardware_profile.vm_size if vm.hardware_profile else None
        offer = next(
            (
                o
                for o in self._catalog
                if o.region == vm.location and o.instance_type == size and o.spot == spot
            ),
            None,
        )
        return ReplicaInfo(
            replica_id=tags.get(REPLICA, vm.name),
            backend=self.name,
            status=status,
            address=address,
            handle=vm.name,
            service=tags.get(SERVICE),
            spec_hash=tags.get(SPEC),
            message=message,
            offer=offer,
            tags=tags,
        )

    def _address(self, name: str) -> str | None:
        if self.settings.address_host:
            return self.settings.address_host
        rg = self.settings.resource_group
        if not self.settings.use_private_ip:
            ip = self._run(
                "get public ip",
                lambda: self.network.public_ip_addresses.get(rg, f"{name}-ip"),
                missing_ok=True,
            )
            if ip is not None and ip.ip_address:
                return str(ip.ip_address)
        nic = self._run(
            "get nic", lambda: self.network.network_interfaces.get(rg, f"{name}-nic"), missing_ok=True
        )
        if nic is not None and nic.ip_configurations:
            private = nic.ip_configurations[0].private_ip_address
            return str(private) if private else None
        return None

    def describe(self, replica_id: str) -> ReplicaInfo | None:
        vm = self._get_vm(vm_name(replica_id))
        return self._info(vm) if self._owned(vm) else None

    def list_owned(self) -> Sequence[ReplicaInfo]:
        rg = self.settings.resource_group
        vms = self._run("list vms", lambda: list(self.compute.virtual_machines.list(rg)))
        out = []
        for vm in vms:
            if not self._owned(vm):
                continue
            full = self._get_vm(str(vm.name))
            if self._owned(full):
                out.append(self._info(full))
        return out

    # ---- create --------------------------------------------------------------------------
    def create(self, spec: ReplicaSpec) -> ReplicaInfo:
        name = vm_name(spec.replica_id)
        existing = self._get_vm(name)
        if existing is not None:
            if not self._owned(existing):
                raise PermanentError(f"azure: VM {name} exists and is not owned by this installation")
            if existing.provisioning_state != "Failed":
                log.info("azure: adopting VM %s for replica %s", name, spec.replica_id)
                return self._info(existing)
            self._delete_resources(name)  # a failed attempt: clear it and launch again
        if not self.settings.allowed_cidr:
            raise PermanentError("azure: settings.allowed_cidr is not set (who may reach the service port)")
        if not self.settings.ssh_public_key:
            raise PermanentError("azure: settings.ssh_public_key is required for Linux VMs")
        candidates: list[Offer] = []
        if spec.offer is not None and spec.offer.backend == self.name:
            candidates.append(spec.offer)
        candidates += [o for o in self.offers(spec.requirements) if o not in candidates]
        if not candidates:
            raise PermanentError("azure: no offer matches the requirements")
        reasons = []
        for offer in candidates[: self.settings.max_offer_attempts]:
            try:
                return self._launch(spec, name, offer)
            except _NoCapacity as e:
                log.info("azure: no capacity for %s in %s: %s", offer.instance_type, offer.region, e)
                reasons.append(f"{offer.instance_type} in {offer.region} (spot={offer.spot}): {e}")
                self._delete_resources(name)
        raise TemporaryError("azure: no capacity: " + "; ".join(reasons))

    def _subnet_id(self, location: str) -> str:
        rg, s = self.settings.resource_group, self.settings
        vnet = f"{s.vnet_name}-{location}" if len(s.locations) > 1 else s.vnet_name
        subnet = self._run(
            "get subnet", lambda: self.network.subnets.get(rg, vnet, s.subnet_name), missing_ok=True
        )
        if subnet is None:
            body: dict[str, Any] = {
                "location": location,
                "tags": {OWNER: self.owner},
                "properties": {
                    "addressSpace": {"addressPrefixes": [s.vnet_cidr]},
                    "subnets": [{"name": s.subnet_name, "properties": {"addressPrefix": s.subnet_cidr}}],
                },
            }
            self._run(
                "create vnet",
                lambda: self.network.virtual_networks.begin_create_or_update(rg, vnet, body).result(),
            )
            subnet = self._run("get subnet", lambda: self.network.subnets.get(rg, vnet, s.subnet_name))
        return str(subnet.id)

    def _launch(self, spec: ReplicaSpec, name: str, offer: Offer) -> ReplicaInfo:
        rg, s, loc = self.settings.resource_group, self.settings, offer.region
        tags = {**owner_tags(self.owner, spec), PORT: str(spec.port)}
        net = self.network
        subnet_id = self._subnet_id(loc)
        # Request bodies are ARM's REST JSON (what the service and the test endpoint see).
        nsg_body: dict[str, Any] = {
            "location": loc,
            "tags": tags,
            "properties": {
                "securityRules": [
                    {
                        "name": "tidegate-service",
                        "properties": {
                            "protocol": "Tcp",
                            "sourceAddressPrefix": s.allowed_cidr,
                            "sourcePortRange": "*",
                            "destinationAddressPrefix": "*",
                            "destinationPortRange": str(spec.port),
                            "access": "Allow",
                            "direction": "Inbound",
                            "priority": 100,
                        },
                    }
                ]
            },
        }
        nsg = self._run(
            "create nsg",
            lambda: net.network_security_groups.begin_create_or_update(rg, f"{name}-nsg", nsg_body).result(),
        )
        ip_body: dict[str, Any] = {
            "location": loc,
            "tags": tags,
            "sku": {"name": "Standard"},
            "properties": {"publicIPAllocationMethod": "Static"},
        }
        ip = self._run(
            "create public ip",
            lambda: net.public_ip_addresses.begin_create_or_update(rg, f"{name}-ip", ip_body).result(),
        )
        nic_body: dict[str, Any] = {
            "location": loc,
            "tags": tags,
            "properties": {
                "networkSecurityGroup": {"id": nsg.id},
                "ipConfigurations": [
                    {
                        "name": "ipconfig",
                        "properties": {"subnet": {"id": subnet_id}, "publicIPAddress": {"id": ip.id}},
                    }
                ],
            },
        }
        nic = self._run(
            "create nic",
            lambda: net.network_interfaces.begin_create_or_update(rg, f"{name}-nic", nic_body).result(),
        )
        custom_data = base64.b64encode(render_startup_script(spec).encode()).decode()
        disk = int(max(spec.requirements.disk_gb.min or 100, 30))
        image = s.image
        props: dict[str, Any] = {
            "hardwareProfile": {"vmSize": offer.instance_type},
            "storageProfile": {
                "imageReference": {
                    "publisher": image.publisher,
                    "offer": image.offer,
                    "sku": image.sku,
                    "version": image.version,
                },
                "osDisk": {
                    "createOption": "FromImage",
                    "diskSizeGB": disk,
                    "deleteOption": "Delete",
                    "managedDisk": {"storageAccountType": "Premium_LRS"},
                },
            },
            "osProfile": {
                "computerName": name,
                "adminUsername": s.admin_username,
                "customData": custom_data,
                "linuxConfiguration": {
                    "disablePasswordAuthentication": True,
                    "ssh": {
                        "publicKeys": [
                            {
                                "path": f"/home/{s.admin_username}/.ssh/authorized_keys",
                                "keyData": s.ssh_public_key,
                            }
                        ]
                    },
                },
            },
            "networkProfile": {
                "networkInterfaces": [
                    {"id": nic.id, "properties": {"primary": True, "deleteOption": "Delete"}}
                ]
            },
        }
        if offer.spot:
            max_price = spec.requirements.max_price
            props["priority"] = "Spot"
            props["evictionPolicy"] = "Delete"
            props["billingProfile"] = {"maxPrice": max_price if max_price is not None else -1}
        vm_body: dict[str, Any] = {"location": loc, "tags": tags, "properties": props}
        self._run(
            "create vm",
            lambda: self.compute.virtual_machines.begin_create_or_update(rg, name, vm_body).result(),
        )
        log.info(
            "azure: created VM %s (%s, %s) for replica %s", name, offer.instance_type, loc, spec.replica_id
        )
        vm = self._get_vm(name)
        if vm is None:
            raise TemporaryError(f"azure: VM {name} not visible yet after create")
        return self._info(vm)

    # ---- delete --------------------------------------------------------------------------
    def _delete_resources(self, name: str) -> None:
        rg = self.settings.resource_group
        net = self.network
        steps: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
            (
                "vm",
                lambda: self.compute.virtual_machines.get(rg, name),
                lambda: self.compute.virtual_machines.begin_delete(rg, name).result(),
            ),
            (
                "nic",
                lambda: net.network_interfaces.get(rg, f"{name}-nic"),
                lambda: net.network_interfaces.begin_delete(rg, f"{name}-nic").result(),
            ),
            (
                "public ip",
                lambda: net.public_ip_addresses.get(rg, f"{name}-ip"),
                lambda: net.public_ip_addresses.begin_delete(rg, f"{name}-ip").result(),
            ),
            (
                "nsg",
                lambda: net.network_security_groups.get(rg, f"{name}-nsg"),
                lambda: net.network_security_groups.begin_delete(rg, f"{name}-nsg").result(),
            ),
        ]
        for kind, get, delete in steps:
            resource = self._run(f"get {kind} {name}", get, missing_ok=True)
            if resource is None or not self._owned(resource):
                continue  # gone already, or not ours: never touched
            self._run(f"delete {kind} {name}", delete, missing_ok=True)
            log.info("azure: deleted %s of %s", kind, name)

    def delete(self, replica_id: str) -> None:
        self._delete_resources(vm_name(replica_id))

    def logs(self, replica_id: str, lines: int = 100) -> list[str]:
        return []  # boot diagnostics need a storage account; not collected


def _allow_http_policy() -> Any:
    """A per-call policy that lets the bearer policy send its token to an explicit http:// endpoint."""
    from azure.core.pipeline import PipelineRequest
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class AllowHttp(SansIOHTTPPolicy):  # type: ignore[type-arg]
        def on_request(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
            request.context["enforce_https"] = False

    return AllowHttp()
