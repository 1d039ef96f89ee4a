"""The shape AWS and Azure share as backends: tunnels around describe/list/delete, a launch's
tags and user data, and how a resource's tags and state become a `ReplicaInfo`.

Why: the two cloud backends differ in their API calls (EC2 `run_instances` vs an ARM PUT, an
instance's state names vs a VM's provisioning and power states) and in nothing else. What a
replica is to the reconciler (its tags, the pinned host key that makes it reachable, the tunnel
kept open while it runs and closed when it is gone) is decided here once, so a fix to that shape
reaches both clouds. Each backend keeps its own `_describe`, `_list_owned`, `_delete`, `create`
and `logs`, which make the API calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.base import (
    Offer,
    PermanentError,
    ReplicaInfo,
    ReplicaSpec,
    ReplicaStatus,
    Requirements,
    owner_tags,
)
from backends.cloud.common import PORT, REPLICA, SERVICE, SPEC, CloudOffers
from backends.cloud.startup import render_startup_script
from backends.cloud.tunnel_userdata import TunnelEndpoint
from backends.cloud.tunnels import HOST_KEY_TAG, NO_HOST_KEY, CloudTunnels, TunnelTarget


@dataclass(frozen=True)
class Launch:
    """What both clouds compute before their launch call: the replica's tags (ownership, its
    port, the public half of its pinned host key), the boot script and the root disk size."""

    endpoint: TunnelEndpoint
    tags: dict[str, str]
    startup_script: str
    disk_gb: int


class CloudBackend(ABC):
    """The `Backend` members the clouds answer alike; subclasses make the API calls.

    A cloud VM runs the image and commands only (`ships_workdir` False), screens nothing beyond
    its offers, keeps no log file here and leaves no files behind; `close()` closes this
    process's tunnels. `sweep_security_groups()` is the orphan sweeper's (backends.cloud.orphans):
    a cloud whose network resources die with the VM has none to sweep."""

    name: str
    owner: str
    ships_workdir = False
    tunnels: CloudTunnels | None
    _offers: CloudOffers

    # ---- what only the API calls know -----------------------------------------------------
    @abstractmethod
    def _describe(self, replica_id: str) -> ReplicaInfo | None: ...

    @abstractmethod
    def _list_owned(self) -> Sequence[ReplicaInfo]: ...

    @abstractmethod
    def _delete(self, replica_id: str) -> None: ...

    @abstractmethod
    def create(self, spec: ReplicaSpec) -> ReplicaInfo: ...

    @abstractmethod
    def logs(self, replica_id: str, lines: int = 100) -> list[str]: ...

    # ---- Backend members ------------------------------------------------------------------
    def offers(self, requirements: Requirements) -> Sequence[Offer]:
        return self._offers.offers(requirements)

    def can_run(self, spec: ReplicaSpec) -> str | None:
        return None  # the offers already said whether the resources fit

    def describe(self, replica_id: str) -> ReplicaInfo | None:
        info = self._describe(replica_id)
        if self.tunnels is not None and (info is None or info.address is None):
            self.tunnels.close(replica_id)
        return info

    def list_owned(self) -> Sequence[ReplicaInfo]:
        infos = self._list_owned()
        if self.tunnels is not None:
            self.tunnels.retain(i.replica_id for i in infos if i.address)
        return infos

    def delete(self, replica_id: str) -> None:
        if self.tunnels is not None:
            self.tunnels.close(replica_id)
        self._delete(replica_id)

    def log_path(self, replica_id: str) -> Path | None:
        return None  # the console output comes from the cloud's API (`logs`)

    def collect_garbage(self) -> list[Path]:
        return []

    def close(self) -> None:
        """Close this process's tunnels (the replicas keep running; the next owner reopens them)."""
        if self.tunnels is not None:
            self.tunnels.shutdown()

    def sweep_security_groups(self) -> list[str]:
        """Delete our network resources no live replica uses; their ids (none by default)."""
        return []

    # ---- shared by the subclasses ---------------------------------------------------------
    def _require_tunnels(self, allowed_cidr: str | None) -> CloudTunnels:
        """A launch needs both: who may reach SSH, and the keys its tunnel is pinned with."""
        if not allowed_cidr:
            raise PermanentError(
                f"{self.name}: settings.allowed_cidr is not set (who may reach SSH: the gateway's address)"
            )
        if self.tunnels is None:
            raise PermanentError(f"{self.name}: no tunnel keys configured (backends are built with the state dir)")
        return self.tunnels

    def _launch_plan(self, spec: ReplicaSpec, label: str, ssh_port: int, user: str) -> Launch:
        """Tags, boot script and disk of one launch. `label` derives the pinned host key: the same
        for a retried launch of the same resource, so a retry sends byte-identical user data."""
        assert self.tunnels is not None  # checked by create() (`_require_tunnels`)
        endpoint = self.tunnels.endpoint(label, spec.port, ssh_port, user)
        tags = {**owner_tags(self.owner, spec), PORT: str(spec.port), HOST_KEY_TAG: endpoint.host_key.public}
        return Launch(
            endpoint=endpoint,
            tags=tags,
            startup_script=render_startup_script(spec, endpoint),
            disk_gb=int(max(spec.requirements.disk_gb.min or 100, 30)),
        )

    def _tunnel_address(
        self, replica_id: str, status: ReplicaStatus, tags: Mapping[str, str], ip: Callable[[], str | None],
        ssh_port: int, user: str,
    ) -> str | None:
        """The replica's address: its tunnel socket, kept open while it runs. None for a resource
        without a pinned host key (launched before tunnels): it is never reached in clear text.
        `ip` is asked only when a tunnel is due (on Azure it is an API call). Closing is left to
        describe/list_owned/delete, which see the whole replica."""
        port, host_key = tags.get(PORT), tags.get(HOST_KEY_TAG)
        if self.tunnels is None or status is not ReplicaStatus.RUNNING or not (port and host_key):
            return None
        host = ip()
        if not host:
            return None
        self.tunnels.open(TunnelTarget(replica_id, host, ssh_port, user, host_key, int(port)))
        return self.tunnels.address(replica_id)

    def _replica_info(
        self,
        tags: Mapping[str, str],
        *,
        handle: str,
        status: ReplicaStatus,
        message: str | None,
        address: Callable[[str, ReplicaStatus], str | None],
        offer: Offer | None,
        started_at: float | None = None,
    ) -> ReplicaInfo:
        """A resource's tags and state as a ReplicaInfo. A running resource without a pinned host
        key counts as exited (the reconciler replaces it); `address(replica_id, status)` is asked
        with the status that stands."""
        if status is ReplicaStatus.RUNNING and HOST_KEY_TAG not in tags:
            status, message = ReplicaStatus.EXITED, NO_HOST_KEY
        replica_id = tags.get(REPLICA, handle)
        where = address(replica_id, status)
        return ReplicaInfo(
            replica_id=replica_id,
            backend=self.name,
            status=status,
            address=where,
            tunnel=self.tunnels.route(replica_id) if where and self.tunnels is not None else None,
            handle=handle,
            service=tags.get(SERVICE),
            spec_hash=tags.get(SPEC),
            started_at=started_at,
            message=message,
            offer=offer,
            tags=dict(tags),
        )
