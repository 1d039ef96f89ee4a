"""The Azure backend: one VM per replica (with its own NIC, NSG and public IP), named by replica id.

Why this module exists: it maps the `Backend` protocol onto Azure Resource Manager. ARM PUTs are
idempotent by resource name, and every resource is named after the deterministic replica id, so a
retried `create` after a crash converges on the same VM instead of starting a second one; before
creating, an existing VM is adopted only when it carries our owner tag (anything else is never
touched). Spot offers use Spot priority with eviction policy Delete and a max price. Capacity or
quota failures move to the next offer after the failed VM's leftovers are removed; 429, 5xx and
transport errors become `TemporaryError`. The SDKs are imported lazily; a test passes its own
credential and a `base_url` (plain http is allowed only for such an explicit endpoint).

The gateway reaches a VM only through SSH (backends/cloud/tunnels.py): its NSG allows the SSH
port from `allowed_cidr` and denies every other inbound packet (the virtual network included), its
custom data carries the pinned host key generated for it, and its `tidegate:hostkey` tag is the
public half the tunnel trusts. A replica's address is the tunnel's unix socket.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from backends.azure.arm import ARM_SCOPE, CAPACITY_CODES, classify, error_code, log, vm_name
from backends.azure.network import AzureNetwork
from backends.base import Offer, PermanentError, ReplicaInfo, ReplicaSpec, ReplicaStatus, TemporaryError
from backends.cloud.backend import CloudBackend
from backends.cloud.common import CloudOffers, NoCapacity, launch_first_with_capacity
from backends.cloud.tunnels import CloudTunnels
from backends.settings import AzureSettings

__all__ = ["ARM_SCOPE", "CAPACITY_CODES", "AzureBackend", "classify", "error_code", "vm_name"]


class AzureBackend(AzureNetwork, CloudBackend):
    """Azure VMs in one resource group, tagged with this installation's owner id."""

    name = "azure"
    # Seconds `create` waits on the VM's long-running operation before it returns PROVISIONING
    # (within base.CALL_BUDGET with the network calls before it).
    create_wait = 15.0
    # Seconds `delete` waits on each long-running deletion (VM, then NIC, IP, NSG) before it
    # returns with the rest under way; every `list_owned` (each pass) moves them on, the orphan
    # sweep finishes what a crash interrupted.
    delete_wait = 5.0

    def __init__(
        self,
        settings: AzureSettings,
        owner: str,
        *,
        catalog: Sequence[Offer] = (),
        credential: Any = None,
        clock: Callable[[], float] = time.time,
        tunnels: CloudTunnels | None = None,
    ) -> None:
        super().__init__(settings, owner, credential)
        self.tunnels = tunnels
        self._teardowns: set[str] = set()  # VM names whose deletion is under way (this process)
        self._teardown_lock = threading.Lock()
        self._offers = CloudOffers(
            self.name,
            catalog,
            settings.locations,
            live=settings.live_offers,
            ttl=settings.offers_ttl,
            clock=clock,
            refine=self._refine,
        )

    # ---- offers --------------------------------------------------------------------------
    def _refine(self, location: str, base: list[Offer]) -> list[Offer]:
        """The catalog offers whose VM size the subscription may use in `location`."""
        available: set[str] = set()
        for sku in self.compute.resource_skus.list(filter=f"location eq '{location}'"):
            if sku.resource_type != "virtualMachines":
                continue
            if sku.locations and location.lower() not in {str(x).lower() for x in sku.locations}:
                continue
            if any(r.reason_code == "NotAvailableForSubscription" for r in sku.restrictions or []):
                continue
            available.add(str(sku.name))
        return [o for o in base if o.instance_type in available]

    # ---- describe ------------------------------------------------------------------------
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
        s = self.settings
        size = vm.hardware_profile.vm_size if vm.hardware_profile else None
        return self._replica_info(
            tags,
            handle=vm.name,
            status=status,
            message=message,
            address=lambda rid, st: self._tunnel_address(
                rid, st, tags, lambda: self._address(vm.name), s.ssh_port, s.tunnel_user
            ),
            offer=self._offers.match(vm.location, size, vm.priority == "Spot"),
        )

    def _describe(self, replica_id: str) -> ReplicaInfo | None:
        vm = self._get_vm(vm_name(replica_id))
        return self._info(vm) if self._owned(vm) else None

    def _list_owned(self) -> Sequence[ReplicaInfo]:
        self._advance()
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
        self._require_tunnels(self.settings.allowed_cidr)
        if not self.settings.ssh_public_key:
            raise PermanentError("azure: settings.ssh_public_key is required for Linux VMs")

        def no_capacity(offer: Offer, e: NoCapacity) -> str:
            log.info("azure: no capacity for %s in %s: %s", offer.instance_type, offer.region, e)
            self._delete_resources(name)  # the failed VM's leftovers
            return f"{offer.instance_type} in {offer.region} (spot={offer.spot}): {e}"

        return launch_first_with_capacity(
            self.name,
            self._offers.candidates(spec),
            self.settings.max_offer_attempts,
            lambda offer: self._launch(spec, name, offer),
            no_capacity,
        )

    def _launch(self, spec: ReplicaSpec, name: str, offer: Offer) -> ReplicaInfo:
        rg, s, loc = self.settings.resource_group, self.settings, offer.region
        # Deterministic per VM, like the AWS launch (a retried PUT sends the same custom data).
        plan = self._launch_plan(spec, f"azure:{s.subscription_id}:{rg}:{name}", s.ssh_port, s.tunnel_user)
        tags = plan.tags
        # Request bodies are ARM's REST JSON (what the service and the test endpoint see).
        nic = self._create_nic(name, loc, s.ssh_port, tags)
        custom_data = base64.b64encode(plan.startup_script.encode()).decode()
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
                    "diskSizeGB": plan.disk_gb,
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
        poller = self._run("create vm", lambda: self.compute.virtual_machines.begin_create_or_update(rg, name, vm_body))
        # The boot is observed, not awaited (backends/base.py): ARM's quick answers (no capacity,
        # a refused request) arrive within `create_wait`, so the next offer is still tried at once;
        # after that the VM's provisioning state, read by `describe`, carries the operation on
        # (Failed -> EXITED, and the next create clears it and launches again).
        self._run("create vm", lambda: _settle_within(poller, self.create_wait))
        log.info(
            "azure: %s VM %s (%s, %s) for replica %s",
            "created" if poller.done() else "creating",
            name,
            offer.instance_type,
            loc,
            spec.replica_id,
        )
        vm = self._get_vm(name)
        if vm is None:
            raise TemporaryError(f"azure: VM {name} not visible yet after create")
        return self._info(vm)

    # ---- delete --------------------------------------------------------------------------
    def _delete(self, replica_id: str) -> None:
        """Starts the VM's deletion and returns once it is under way (ARM takes minutes): the
        NIC, public IP and NSG follow on later `list_owned` calls, once the VM is gone."""
        name = vm_name(replica_id)
        if not self._delete_resources(name, wait=self.delete_wait):
            with self._teardown_lock:
                self._teardowns.add(name)

    def _advance(self) -> None:
        with self._teardown_lock:
            names = set(self._teardowns)
        if not names:
            return
        left = self._advance_teardowns(names)
        with self._teardown_lock:
            self._teardowns -= names - left

    def sweep_security_groups(self) -> list[str]:
        """Finish teardowns a crash (or another process) left: our NICs, public IPs and NSGs whose
        VM is gone. Says whose leftovers it deleted or started deleting (a deletion
        still running is moved on by the next sweep)."""
        leftovers = self._leftover_vm_names()
        self._advance_teardowns(leftovers)
        return [f"NIC, public IP and NSG of VM {name}" for name in sorted(leftovers)]

    def logs(self, replica_id: str, lines: int = 100) -> list[str]:
        return []  # boot diagnostics need a storage account; not collected


def _settle_within(poller: Any, seconds: float) -> None:
    """Wait up to `seconds` for a long-running operation; raise its error when it failed by then.
    A running one is left to ARM (nothing holds the poller: `describe` reads the resource)."""
    poller.wait(timeout=seconds)
    if poller.done():
        poller.result()
