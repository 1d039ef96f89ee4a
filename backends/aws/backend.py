"""The AWS backend: one EC2 instance per replica, found again by its ownership tags.

Why this module exists: it maps the `Backend` protocol onto EC2 so that a crash anywhere is
recoverable. Before every launch it looks the replica up by its `tidegate:replica` tag and adopts
what it finds; the launch itself carries a `ClientToken` derived from the replica id, so a retried
call whose answer was lost (or not yet visible to describe, EC2 is eventually consistent) returns
the same instance. Capacity errors move to the next offer (bounded); throttling, 5xx and network
errors become `TemporaryError`; everything else is `PermanentError`. Only instances and security
groups carrying our owner tag are ever terminated or deleted. boto3 is imported lazily.

The gateway reaches an instance only through SSH (backends/cloud/tunnels.py): its security group
opens the SSH port to `allowed_cidr` and nothing else, its user data carries the pinned host key
generated for this launch, and its `tidegate:hostkey` tag is the public half the tunnel trusts. A
replica's address is the tunnel's unix socket.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from typing import Any

from backends.aws.ec2 import (
    CAPACITY_CODES,
    LIVE_STATES,
    classify,
    client_token,
    error_code,
    log,
    per_region,
    refine_offers,
    replica_status,
    tags_of,
)
from backends.aws.network import AwsNetwork
from backends.base import Offer, PermanentError, ReplicaInfo, ReplicaSpec, ReplicaStatus
from backends.cloud.backend import CloudBackend
from backends.cloud.common import OWNER, REPLICA, CloudOffers, NoCapacity, launch_first_with_capacity
from backends.cloud.tunnels import CloudTunnels
from backends.settings import AwsSettings

__all__ = ["AwsBackend", "classify", "client_token", "error_code", "replica_status"]


class AwsBackend(AwsNetwork, CloudBackend):
    """EC2 instances tagged with this installation's owner id."""

    name = "aws"

    def __init__(
        self,
        settings: AwsSettings,
        owner: str,
        *,
        catalog: Sequence[Offer] = (),
        client_factory: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.time,
        tunnels: CloudTunnels | None = None,
    ) -> None:
        super().__init__(settings, owner, client_factory)
        self.tunnels = tunnels
        self._offers = CloudOffers(
            self.name,
            catalog,
            settings.regions,
            live=settings.live_offers,
            ttl=settings.offers_ttl,
            clock=clock,
            refine=lambda region, base: refine_offers(self._client(region), region, base),
        )
        self._images: dict[str, tuple[str, str]] = {}

    # ---- lookup --------------------------------------------------------------------------
    def _by_replica(self, replica_id: str) -> list[tuple[str, dict[str, Any]]]:
        filters = [*self._owned_filter(), {"Name": f"tag:{REPLICA}", "Values": [replica_id]}]
        return [(r, i) for r in self.settings.regions for i in self._instances(r, filters)]

    def _info(self, region: str, inst: dict[str, Any]) -> ReplicaInfo:
        tags = tags_of(inst.get("Tags"))
        spot = inst.get("InstanceLifecycle") == "spot"
        reason = inst.get("StateReason", {})
        status, message = replica_status(
            inst.get("State", {}).get("Name", "pending"),
            spot=spot,
            reason_code=str(reason.get("Code", "")),
            reason=str(reason.get("Message") or inst.get("StateTransitionReason") or ""),
        )
        ip = inst.get("PrivateIpAddress") if self.settings.use_private_ip else None
        ip = self.settings.address_host or ip or inst.get("PublicIpAddress") or inst.get("PrivateIpAddress")
        launch = inst.get("LaunchTime")
        s = self.settings
        return self._replica_info(
            tags,
            handle=inst["InstanceId"],
            status=status,
            message=message,
            address=lambda rid, st: self._tunnel_address(rid, st, tags, lambda: ip, s.ssh_port, s.tunnel_user),
            offer=self._offers.match(region, inst.get("InstanceType"), spot),
            started_at=float(launch.timestamp()) if launch is not None and hasattr(launch, "timestamp") else None,
        )

    def _describe(self, replica_id: str) -> ReplicaInfo | None:
        found = self._by_replica(replica_id)
        live = [(r, i) for r, i in found if i["State"]["Name"] != "terminated"]
        if live:
            return self._info(*live[0])
        infos = [self._info(r, i) for r, i in found]
        exited = [i for i in infos if i.status is ReplicaStatus.EXITED]
        return exited[0] if exited else None

    def _list_owned(self) -> Sequence[ReplicaInfo]:
        filters = [*self._owned_filter(), {"Name": "instance-state-name", "Values": LIVE_STATES}]
        return [self._info(r, i) for r in self.settings.regions for i in self._instances(r, filters)]

    # ---- create --------------------------------------------------------------------------
    def create(self, spec: ReplicaSpec) -> ReplicaInfo:
        found = self._by_replica(spec.replica_id)
        for region, inst in found:
            if inst["State"]["Name"] not in ("terminated", "shutting-down"):
                log.info("aws: adopting %s for replica %s", inst["InstanceId"], spec.replica_id)
                return self._info(region, inst)
        self._require_tunnels(self.settings.allowed_cidr)
        generation = len(found)

        def no_capacity(offer: Offer, e: NoCapacity) -> str:
            log.info("aws: %s", e)
            return str(e)

        return launch_first_with_capacity(
            self.name,
            self._offers.candidates(spec),
            self.settings.max_offer_attempts,
            lambda offer: self._launch(spec, offer, generation),
            no_capacity,
        )

    def _launch(self, spec: ReplicaSpec, offer: Offer, generation: int) -> ReplicaInfo:
        from botocore.exceptions import BotoCoreError, ClientError

        region = offer.region
        image_id, root_device = self._image(region)
        subnet = per_region(self.settings.subnet_id, region)
        group_id = self._security_group(region, spec, subnet)
        token = client_token(spec.replica_id, generation, offer)
        # Derived from the ClientToken: a retried launch sends byte-identical user data.
        plan = self._launch_plan(spec, f"aws:{token}", self.settings.ssh_port, self.settings.tunnel_user)
        tag_list = [{"Key": k, "Value": v} for k, v in plan.tags.items()]
        params: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": offer.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": token,
            "UserData": plan.startup_script,
            "SecurityGroupIds": [group_id],
            "BlockDeviceMappings": [
                {
                    "DeviceName": root_device,
                    "Ebs": {
                        "VolumeSize": plan.disk_gb,
                        "VolumeType": self.settings.volume_type,
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
            "MetadataOptions": {"HttpTokens": "required"},
        }
        if subnet:
            params["SubnetId"] = subnet
        if self.settings.key_name:
            params["KeyName"] = self.settings.key_name
        if offer.spot:
            options: dict[str, Any] = {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            }
            if spec.requirements.max_price is not None:
                options["MaxPrice"] = f"{spec.requirements.max_price:.4f}"
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        try:
            response = self._client(region).run_instances(**params)
        except (ClientError, BotoCoreError) as e:
            code, _ = error_code(e)
            if code in CAPACITY_CODES:
                raise NoCapacity(f"{offer.instance_type} in {region} (spot={offer.spot}): {code}") from e
            raise classify(e, f"aws {region} run_instances") from e
        inst = response["Instances"][0]
        inst.setdefault("Tags", tag_list)
        log.info(
            "aws: launched %s (%s, %s) for replica %s",
            inst["InstanceId"],
            offer.instance_type,
            region,
            spec.replica_id,
        )
        return self._info(region, inst)

    def _image(self, region: str) -> tuple[str, str]:
        if region in self._images:
            return self._images[region]
        fixed = per_region(self.settings.ami, region)
        candidates: list[dict[str, Any]] = []
        if fixed:
            candidates = self._call(region, "describe_images", "describe_images", ImageIds=[fixed])["Images"]
        else:
            response = self._call(
                region,
                "describe_images",
                "describe_images",
                Owners=self.settings.ami_owners,
                Filters=[
                    {"Name": "name", "Values": [self.settings.ami_name_filter]},
                    {"Name": "state", "Values": ["available"]},
                ],
            )
            candidates = sorted(
                response["Images"], key=lambda i: str(i.get("CreationDate", "")), reverse=True
            )
            fallback = per_region(self.settings.ami_fallback, region)
            if not candidates and fallback:
                candidates = self._call(region, "describe_images", "describe_images", ImageIds=[fallback])[
                    "Images"
                ]
        if not candidates:
            raise PermanentError(f"aws {region}: no AMI (set 'ami' or 'ami_fallback' in the settings)")
        chosen = (candidates[0]["ImageId"], candidates[0].get("RootDeviceName") or "/dev/sda1")
        self._images[region] = chosen
        return chosen

    # ---- delete / logs -------------------------------------------------------------------
    def _delete(self, replica_id: str) -> None:
        from botocore.exceptions import ClientError

        for region, inst in self._by_replica(replica_id):
            if inst["State"]["Name"] == "terminated":
                continue
            if tags_of(inst.get("Tags")).get(OWNER) != self.owner:
                continue  # never touch what we do not own
            try:
                self._client(region).terminate_instances(InstanceIds=[inst["InstanceId"]])
            except ClientError as e:
                if error_code(e)[0] != "InvalidInstanceID.NotFound":
                    raise classify(e, f"aws {region} terminate_instances") from e
            log.info("aws %s: terminated %s (replica %s)", region, inst["InstanceId"], replica_id)
            for group in inst.get("SecurityGroups", []):
                self._delete_group_if_unused(region, str(group["GroupId"]))

    def logs(self, replica_id: str, lines: int = 100) -> list[str]:
        info = self.describe(replica_id)
        if info is None or info.handle is None:
            return []
        region = next((r for r, i in self._by_replica(replica_id) if i["InstanceId"] == info.handle), None)
        if region is None:
            return []
        output = self._call(region, "get_console_output", "get_console_output", InstanceId=info.handle).get(
            "Output"
        )
        if not output:
            return []
        try:
            text = base64.b64decode(output).decode(errors="replace")
        except ValueError:
            text = str(output)
        return text.splitlines()[-lines:]
