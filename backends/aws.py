"""The AWS backend: one EC2 instance per replica, found again by its ownership tags.

Why this module exists: it maps the `Backend` protocol onto EC2 so that a crash anywhere is
recoverable. Before every launch it looks the replica up by its `tidegate:replica` tag and adopts
what it finds; the launch itself carries a `ClientToken` derived from the replica id, so a retried
call whose answer was lost (or not yet visible to describe, EC2 is eventually consistent) returns
the same instance. Capacity errors move to the next offer (bounded); throttling, 5xx and network
errors become `TemporaryError`; everything else is `PermanentError`. Only instances and security
groups carrying our owner tag are ever terminated or deleted. boto3 is imported lazily.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from backends.base import (
    GpuInfo,
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
from backends.settings import AwsSettings
from backends.startup import render_startup_script

log = logging.getLogger(__name__)

OWNER, REPLICA, SERVICE, SPEC, PORT = (
    "tidegate:owner",
    "tidegate:replica",
    "tidegate:service",
    "tidegate:spec",
    "tidegate:port",
)
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacity",
        "InsufficientReservedInstanceCapacity",
        "InstanceLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "Unsupported",
        "VcpuLimitExceeded",
    }
)
TEMPORARY_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
    }
)
STATUS = {
    "pending": ReplicaStatus.PROVISIONING,
    "running": ReplicaStatus.RUNNING,
    "stopping": ReplicaStatus.TERMINATING,
    "shutting-down": ReplicaStatus.TERMINATING,
    "stopped": ReplicaStatus.EXITED,
    "terminated": ReplicaStatus.GONE,
}


def client_token(replica_id: str, generation: int, offer: Offer) -> str:
    """Deterministic per (replica, generation, offer), <= 64 chars as EC2 requires."""
    key = f"{replica_id}|{generation}|{offer.region}|{offer.instance_type}|{offer.spot}"
    return f"{replica_id[:44]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def error_code(e: Exception) -> tuple[str, int]:
    response = getattr(e, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def classify(e: Exception, what: str) -> Exception:
    """A botocore exception as TemporaryError / PermanentError (capacity is handled by the caller)."""
    code, status = error_code(e)
    if not code:  # connection errors, timeouts, missing credentials
        return TemporaryError(f"{what}: {type(e).__name__}: {e}")
    if code in TEMPORARY_CODES or status >= 500 or code in CAPACITY_CODES:
        return TemporaryError(f"{what}: {code}: {e}")
    return PermanentError(f"{what}: {code}: {e}")


def replica_status(
    state: str, *, spot: bool, reason_code: str, reason: str
) -> tuple[ReplicaStatus, str | None]:
    """EC2 instance state -> replica status and message; a spot interruption is EXITED, not GONE."""
    status = STATUS.get(state, ReplicaStatus.PROVISIONING)
    if state in ("terminated", "shutting-down") and spot and reason_code.startswith("Server.Spot"):
        return ReplicaStatus.EXITED, f"spot instance interrupted: {reason or reason_code}"
    if status is ReplicaStatus.EXITED:
        return status, f"instance stopped: {reason}" if reason else "instance stopped"
    return status, reason or None


def _tags(raw: Sequence[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw or []}


def _per_region(value: str | dict[str, str] | None, region: str) -> str | None:
    return value.get(region) if isinstance(value, dict) else value


class AwsBackend:
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
    ) -> None:
        self.settings = settings
        self.owner = owner
        self._catalog = [o for o in catalog if o.backend == self.name]
        self._client_factory = client_factory or self._boto_client
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        self._clock = clock
        self._live: dict[str, tuple[float, list[Offer]]] = {}
        self._images: dict[str, tuple[str, str]] = {}

    # ---- clients -------------------------------------------------------------------------
    def _boto_client(self, region: str) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
        if self._session is None:  # one session per backend: each new session reloads the API models
            self._session = boto3.session.Session()
        return self._session.client(
            "ec2", region_name=region, endpoint_url=self.settings.endpoint_url, config=config
        )

    def _client(self, region: str) -> Any:
        if region not in self._clients:
            self._clients[region] = self._client_factory(region)
        return self._clients[region]

    def _call(self, region: str, what: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client(region), method)(**kwargs)
        except (ClientError, BotoCoreError) as e:
            raise classify(e, f"aws {region} {what}") from e

    # ---- offers --------------------------------------------------------------------------
    def offers(self, requirements: Requirements) -> Sequence[Offer]:
        if requirements.backends and self.name not in requirements.backends:
            return []
        regions = [r for r in self.settings.regions if not requirements.regions or r in requirements.regions]
        found: list[Offer] = []
        for region in regions:
            found.extend(self._region_offers(region))
        return select_offers(found, requirements)

    def _region_offers(self, region: str) -> list[Offer]:
        base = [o for o in self._catalog if o.region == region]
        if not self.settings.live_offers or not base:
            return base
        cached = self._live.get(region)
        now = self._clock()
        if cached and now - cached[0] < self.settings.offers_ttl:
            return cached[1]
        try:
            refined = self._refine(region, base)
        except Exception as e:  # unreachable API: the catalog alone answers
            log.info("aws %s: using catalog offers only (%s)", region, e)
            refined = base
        self._live[region] = (now, refined)
        return refined

    def _refine(self, region: str, base: list[Offer]) -> list[Offer]:
        types = sorted({o.instance_type for o in base})
        client = self._client(region)
        facts: dict[str, dict[str, Any]] = {}
        for page in client.get_paginator("describe_instance_types").paginate(
            Filters=[{"Name": "instance-type", "Values": types}]
        ):
            for it in page.get("InstanceTypes", []):
                facts[it["InstanceType"]] = it
        spot: dict[str, float] = {}
        try:  # the current price per AZ (StartTime=now); the cheapest AZ is the offer's price
            history = client.describe_spot_price_history(
                InstanceTypes=types,
                ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                StartTime=datetime.now(UTC),
                MaxResults=1000,
            )
            for item in history.get("SpotPriceHistory", []):
                price = float(item["SpotPrice"])
                spot[item["InstanceType"]] = min(price, spot.get(item["InstanceType"], price))
        except Exception as e:  # no permission for spot history: catalog spot prices stand
            log.info("aws %s: spot prices from the catalog (%s)", region, e)
        out = []
        for o in base:
            fact = facts.get(o.instance_type)
            if fact is None:
                continue  # not offered in this region
            gpus = fact.get("GpuInfo", {}).get("Gpus", [])
            gpu = o.gpu
            if gpus:
                g = gpus[0]
                gpu = GpuInfo(
                    name=g["Name"],
                    memory_gb=round(g["MemoryInfo"]["SizeInMiB"] / 1024, 1),
                    count=int(g["Count"]),
                    vendor=str(g.get("Manufacturer", "nvidia")).lower(),
                )
            price = spot.get(o.instance_type, o.price) if o.spot else o.price
            out.append(
                Offer(
                    backend=o.backend,
                    region=o.region,
                    instance_type=o.instance_type,
                    cpus=int(fact.get("VCpuInfo", {}).get("DefaultVCpus", o.cpus)),
                    memory_gb=round(
                        fact.get("MemoryInfo", {}).get("SizeInMiB", o.memory_gb * 1024) / 1024, 1
                    ),
                    gpu=gpu,
                    spot=o.spot,
                    price=price,
                    disk_gb=o.disk_gb,
                )
            )
        return out

    # ---- lookup --------------------------------------------------------------------------
    def _instances(self, region: str, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        out: list[dict[str, Any]] = []
        try:
            for page in self._client(region).get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    out.extend(reservation.get("Instances", []))
        except (ClientError, BotoCoreError) as e:
            raise classify(e, f"aws {region} describe_instances") from e
        return out

    def _owned_filter(self) -> list[dict[str, Any]]:
        return [{"Name": f"tag:{OWNER}", "Values": [self.owner]}]

    def _by_replica(self, replica_id: str) -> list[tuple[str, dict[str, Any]]]:
        filters = [*self._owned_filter(), {"Name": f"tag:{REPLICA}", "Values": [replica_id]}]
        return [(r, i) for r in self.settings.regions for i in self._instances(r, filters)]

    def _info(self, region: str, inst: dict[str, Any]) -> ReplicaInfo:
        tags = _tags(inst.get("Tags"))
        spot = inst.get("InstanceLifecycle") == "spot"
        reason = inst.get("StateReason", {})
        status, message = replica_status(
            inst.get("State", {}).get("Name", "pending"),
            spot=spot,
            reason_code=str(reason.get("Code", "")),
            reason=str(reason.get("Message") or inst.get("StateTransitionReason") or ""),
        )
        ip = inst.get("PrivateIpAddress") if self.settings.use_private_ip else None
        ip = ip or inst.get("PublicIpAddress") or inst.get("PrivateIpAddress")
        ip = self.settings.address_host or ip
        port = tags.get(PORT)
        address = f"http://{ip}:{port}" if ip and port and status is ReplicaStatus.RUNNING else None
        launch = inst.get("LaunchTime")
        offer = next(
            (
                o
                for o in self._catalog
                if o.region == region and o.instance_type == inst.get("InstanceType") and o.spot == spot
            ),
            None,
        )
        return ReplicaInfo(
            replica_id=tags.get(REPLICA, inst["InstanceId"]),
            backend=self.name,
            status=status,
            address=address,
            handle=inst["InstanceId"],
            service=tags.get(SERVICE),
            spec_hash=tags.get(SPEC),
            started_at=float(launch.timestamp())
            if launch is not None and hasattr(launch, "timestamp")
            else None,
            message=message,
            offer=offer,
            tags=tags,
        )

    def describe(self, replica_id: str) -> ReplicaInfo | None:
        found = self._by_replica(replica_id)
        live = [(r, i) for r, i in found if i["State"]["Name"] != "terminated"]
        if live:
            return self._info(*live[0])
        infos = [self._info(r, i) for r, i in found]
        exited = [i for i in infos if i.status is ReplicaStatus.EXITED]
        return exited[0] if exited else None

    def list_owned(self) -> Sequence[ReplicaInfo]:
        filters = [*self._owned_filter(), {"Name": "instance-state-name", "Values": LIVE_STATES}]
        return [self._info(r, i) for r in self.settings.regions for i in self._instances(r, filters)]

    # ---- create --------------------------------------------------------------------------
    def create(self, spec: ReplicaSpec) -> ReplicaInfo:
        found = self._by_replica(spec.replica_id)
        for region, inst in found:
            if inst["State"]["Name"] not in ("terminated", "shutting-down"):
                log.info("aws: adopting %s for replica %s", inst["InstanceId"], spec.replica_id)
                return self._info(region, inst)
        if not self.settings.allowed_cidr:
            raise PermanentError("aws: settings.allowed_cidr is not set (who may reach the service port)")
        generation = len(found)
        candidates: list[Offer] = []
        if spec.offer is not None and spec.offer.backend == self.name:
            candidates.append(spec.offer)
        for o in self.offers(spec.requirements):
            if o not in candidates:
                candidates.append(o)
        if not candidates:
            raise PermanentError("aws: no offer matches the requirements")
        reasons = []
        for offer in candidates[: self.settings.max_offer_attempts]:
            try:
                return self._launch(spec, offer, generation)
            except _NoCapacity as e:
                log.info("aws: %s", e)
                reasons.append(str(e))
        raise TemporaryError("aws: no capacity: " + "; ".join(reasons))

    def _launch(self, spec: ReplicaSpec, offer: Offer, generation: int) -> ReplicaInfo:
        from botocore.exceptions import BotoCoreError, ClientError

        region = offer.region
        image_id, root_device = self._image(region)
        subnet = _per_region(self.settings.subnet_id, region)
        group_id = self._security_group(region, spec, subnet)
        tags = {**owner_tags(self.owner, spec), PORT: str(spec.port)}
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        disk = int(max(spec.requirements.disk_gb.min or 100, 30))
        params: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": offer.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": client_token(spec.replica_id, generation, offer),
            "UserData": render_startup_script(spec),
            "SecurityGroupIds": [group_id],
            "BlockDeviceMappings": [
                {
                    "DeviceName": root_device,
                    "Ebs": {
                        "VolumeSize": disk,
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
                raise _NoCapacity(f"{offer.instance_type} in {region} (spot={offer.spot}): {code}") from e
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
        fixed = _per_region(self.settings.ami, region)
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
            fallback = _per_region(self.settings.ami_fallback, region)
            if not candidates and fallback:
                candidates = self._call(region, "describe_images", "describe_images", ImageIds=[fallback])[
                    "Images"
                ]
        if not candidates:
            raise PermanentError(f"aws {region}: no AMI (set 'ami' or 'ami_fallback' in the settings)")
        chosen = (candidates[0]["ImageId"], candidates[0].get("RootDeviceName") or "/dev/sda1")
        self._images[region] = chosen
        return chosen

    # ---- security groups -----------------------------------------------------------------
    def _vpc(self, region: str, subnet: str | None) -> str:
        vpc = _per_region(self.settings.vpc_id, region)
        if vpc:
            return vpc
        if subnet:
            return str(
                self._call(region, "describe_subnets", "describe_subnets", SubnetIds=[subnet])["Subnets"][0][
                    "VpcId"
                ]
            )
        vpcs = self._call(
            region, "describe_vpcs", "describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}]
        )["Vpcs"]
        if not vpcs:
            raise PermanentError(f"aws {region}: no default VPC; set vpc_id/subnet_id in the settings")
        return str(vpcs[0]["VpcId"])

    def _group_name(self, spec: ReplicaSpec) -> str:
        return f"tidegate-{self.owner[:16]}-{spec.service}-{spec.port}"[:255]

    def _security_group(self, region: str, spec: ReplicaSpec, subnet: str | None) -> str:
        from botocore.exceptions import ClientError

        vpc = self._vpc(region, subnet)
        name = self._group_name(spec)
        filters = [{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}]
        existing = self._call(region, "describe_security_groups", "describe_security_groups", Filters=filters)
        if existing["SecurityGroups"]:
            return str(existing["SecurityGroups"][0]["GroupId"])
        tags = [
            {"Key": OWNER, "Value": self.owner},
            {"Key": SERVICE, "Value": spec.service},
            {"Key": "Name", "Value": name},
        ]
        try:
            created = self._client(region).create_security_group(
                GroupName=name,
                Description=f"tidegate service {spec.service}: port {spec.port} from {self.settings.allowed_cidr}",
                VpcId=vpc,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
            )
        except ClientError as e:
            if error_code(e)[0] == "InvalidGroup.Duplicate":  # a concurrent create won
                again = self._call(
                    region, "describe_security_groups", "describe_security_groups", Filters=filters
                )
                return str(again["SecurityGroups"][0]["GroupId"])
            raise classify(e, f"aws {region} create_security_group") from e
        group_id = str(created["GroupId"])
        self._call(
            region,
            "authorize_security_group_ingress",
            "authorize_security_group_ingress",
            GroupId=group_id,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": spec.port,
                    "ToPort": spec.port,
                    "IpRanges": [{"CidrIp": self.settings.allowed_cidr, "Description": "tidegate gateway"}],
                }
            ],
        )
        return group_id

    def sweep_security_groups(self) -> list[str]:
        """Delete our tagged security groups that no live instance uses; returns their ids."""
        deleted = []
        for region in self.settings.regions:
            groups = self._call(
                region, "describe_security_groups", "describe_security_groups", Filters=self._owned_filter()
            )["SecurityGroups"]
            for group in groups:
                if self._delete_group_if_unused(region, str(group["GroupId"])):
                    deleted.append(str(group["GroupId"]))
        return deleted

    def _delete_group_if_unused(self, region: str, group_id: str) -> bool:
        from botocore.exceptions import ClientError

        users = self._instances(
            region,
            [
                {"Name": "instance.group-id", "Values": [group_id]},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ],
        )
        if users:
            return False
        try:
            self._client(region).delete_security_group(GroupId=group_id)
        except ClientError as e:
            code = error_code(e)[0]
            if code == "InvalidGroup.NotFound":
                return False
            if code == "DependencyViolation":  # an instance is still shutting down; gc retries
                return False
            raise classify(e, f"aws {region} delete_security_group") from e
        log.info("aws %s: deleted security group %s", region, group_id)
        return True

    # ---- delete / logs -------------------------------------------------------------------
    def delete(self, replica_id: str) -> None:
        from botocore.exceptions import ClientError

        for region, inst in self._by_replica(replica_id):
            if inst["State"]["Name"] == "terminated":
                continue
            if _tags(inst.get("Tags")).get(OWNER) != self.owner:
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


class _NoCapacity(Exception):
    """This offer has no capacity right now; the caller tries the next one."""
