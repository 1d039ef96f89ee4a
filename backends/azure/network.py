"""Networking for the Azure backend: the subnet, and per VM its NSG, public IP and NIC.

Why a module of its own: every VM gets its own network resources, named after the VM
(`<vm>-nsg`, `<vm>-ip`, `<vm>-nic`) and tagged with our owner id, so a retried create converges on
the same ones and cleanup deletes only what is ours, in dependency order (VM, NIC, IP, NSG).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from backends.azure.arm import ArmAccess, log
from backends.cloud.common import OWNER


class AzureNetwork(ArmAccess):
    """A VM's network resources: created before it, found for its address, deleted after it."""

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

    def _create_nic(self, name: str, loc: str, ssh_port: int, tags: dict[str, str]) -> Any:
        """The VM's NSG (SSH from `allowed_cidr`, every other inbound packet denied — Azure's
        default rules would let the whole virtual network, other replicas included, reach every
        port), static public IP and NIC."""
        rg, s = self.settings.resource_group, self.settings
        net = self.network
        subnet_id = self._subnet_id(loc)
        # Request bodies are ARM's REST JSON (what the service and the test endpoint see).
        nsg_body: dict[str, Any] = {
            "location": loc,
            "tags": tags,
            "properties": {
                "securityRules": [
                    {
                        "name": "tidegate-ssh-tunnel",
                        "properties": {
                            "protocol": "Tcp",
                            "sourceAddressPrefix": s.allowed_cidr,
                            "sourcePortRange": "*",
                            "destinationAddressPrefix": "*",
                            "destinationPortRange": str(ssh_port),
                            "access": "Allow",
                            "direction": "Inbound",
                            "priority": 100,
                        },
                    },
                    {
                        "name": "tidegate-deny-other-inbound",
                        "properties": {
                            "protocol": "*",
                            "sourceAddressPrefix": "*",
                            "sourcePortRange": "*",
                            "destinationAddressPrefix": "*",
                            "destinationPortRange": "*",
                            "access": "Deny",
                            "direction": "Inbound",
                            "priority": 4096,
                        },
                    },
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
        return nic

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

    def _teardown_steps(self, name: str) -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
        """(kind, get, begin_delete) in dependency order: VM, NIC, public IP, NSG."""
        rg = self.settings.resource_group
        net = self.network
        return [
            (
                "vm",
                lambda: self.compute.virtual_machines.get(rg, name),
                lambda: self.compute.virtual_machines.begin_delete(rg, name),
            ),
            (
                "nic",
                lambda: net.network_interfaces.get(rg, f"{name}-nic"),
                lambda: net.network_interfaces.begin_delete(rg, f"{name}-nic"),
            ),
            (
                "public ip",
                lambda: net.public_ip_addresses.get(rg, f"{name}-ip"),
                lambda: net.public_ip_addresses.begin_delete(rg, f"{name}-ip"),
            ),
            (
                "nsg",
                lambda: net.network_security_groups.get(rg, f"{name}-nsg"),
                lambda: net.network_security_groups.begin_delete(rg, f"{name}-nsg"),
            ),
        ]

    def _delete_resources(self, name: str, wait: float | None = None) -> bool:
        """Delete a VM's resources that are ours, in dependency order. `wait=None` waits for each
        deletion (a failed create clears its attempt before the next). With a number, each step
        waits at most that long and a step still running ends the call: the rest is left for
        `_advance_teardowns` (every `list_owned`) or, after a crash, the sweep. True when all gone."""
        for kind, get, begin_delete in self._teardown_steps(name):
            resource = self._run(f"get {kind} {name}", get, missing_ok=True)
            if resource is None or not self._owned(resource):
                continue  # gone already, or not ours: never touched
            deleting = str(getattr(resource, "provisioning_state", "") or "") == "Deleting"
            if deleting and wait is not None:
                return False  # under way (an earlier call started it)
            poller = self._run(f"delete {kind} {name}", begin_delete, missing_ok=True)
            if poller is None:
                continue
            if wait is None:
                self._run(f"delete {kind} {name}", poller.result, missing_ok=True)
            else:
                self._run(f"delete {kind} {name}", partial(poller.wait, timeout=wait))
                if not poller.done():
                    log.info("azure: deleting %s of %s (under way; the rest follows once it is gone)", kind, name)
                    return False
                self._run(f"delete {kind} {name}", poller.result, missing_ok=True)
            log.info("azure: deleted %s of %s", kind, name)
        return True

    def _advance_teardowns(self, names: set[str]) -> set[str]:
        """One step further for each VM whose teardown is under way; the names still unfinished.
        A failure is logged and retried on the next call (never raised into a read)."""
        left = set()
        for name in sorted(names):
            try:
                done = self._delete_resources(name, wait=0.0)
            except Exception as e:  # a read must not fail for a teardown; retried next time
                log.warning("azure: teardown of %s: %s (retried)", name, e)
                done = False
            if not done:
                left.add(name)
        return left

    def _leftover_vm_names(self) -> set[str]:
        """VM names of our NICs, public IPs and NSGs whose VM no longer exists (a teardown a crash
        interrupted): the sweep finishes them."""
        rg, net = self.settings.resource_group, self.network
        vms = {str(vm.name) for vm in self._run("list vms", lambda: list(self.compute.virtual_machines.list(rg)))}
        names: set[str] = set()
        listings = (
            ("list nics", lambda: list(net.network_interfaces.list(rg)), "-nic"),
            ("list public ips", lambda: list(net.public_ip_addresses.list(rg)), "-ip"),
            ("list nsgs", lambda: list(net.network_security_groups.list(rg)), "-nsg"),
        )
        for what, listing, suffix in listings:
            for resource in self._run(what, listing):
                rname = str(resource.name)
                if self._owned(resource) and rname.endswith(suffix):
                    vm = rname[: -len(suffix)]
                    if vm not in vms:
                        names.add(vm)
        return names
