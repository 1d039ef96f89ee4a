"""EC2 plumbing for the AWS backend: clients, error classification, instance states, live offers.

Why a module of its own: these are the parts of the AWS backend that speak EC2's vocabulary
(error codes, instance states, describe calls) rather than the `Backend` protocol. Throttling, 5xx
and network errors become `TemporaryError`, capacity codes let the caller move to the next offer,
everything else is `PermanentError`. boto3 is imported lazily.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from backends.base import GpuInfo, Offer, PermanentError, ReplicaStatus, TemporaryError
from backends.cloud.common import OWNER
from backends.settings import AwsSettings

log = logging.getLogger("backends.aws.backend")

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


def tags_of(raw: Sequence[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw or []}


def per_region(value: str | dict[str, str] | None, region: str) -> str | None:
    return value.get(region) if isinstance(value, dict) else value


def refine_offers(client: Any, region: str, base: list[Offer]) -> list[Offer]:
    """The catalog offers EC2 really has in `region`, with its CPU/memory/GPU facts and spot prices."""
    types = sorted({o.instance_type for o in base})
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
                memory_gb=round(fact.get("MemoryInfo", {}).get("SizeInMiB", o.memory_gb * 1024) / 1024, 1),
                gpu=gpu,
                spot=o.spot,
                price=price,
                disk_gb=o.disk_gb,
            )
        )
    return out


_loader_lock = threading.Lock()
_loader: Any = None


def _botocore_session() -> Any:
    """A new botocore session whose data loader (the parsed API models and endpoint rules, ~0.5 s
    of JSON per session) is shared by every session of this process: each backend, `tidegate
    offers`, and each test builds its own session, and the models never change while we run."""
    import botocore.loaders
    import botocore.session

    global _loader
    core = botocore.session.Session()
    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader(core.get_config_variable("data_path"))
        core.register_component("data_loader", _loader)
    return core


class Ec2Access:
    """EC2 clients per region (one boto3 session) and the describe calls every part needs."""

    def __init__(
        self, settings: AwsSettings, owner: str, client_factory: Callable[[str], Any] | None
    ) -> None:
        self.settings = settings
        self.owner = owner
        self._client_factory = client_factory or self._boto_client
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        # The reconciler's workers call in concurrently: a boto3 client is thread-safe, a
        # Session (and making clients from it) is not.
        self._clients_lock = threading.Lock()

    def _boto_client(self, region: str) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
        if self._session is None:  # one session per backend, its API models from the shared loader
            self._session = boto3.session.Session(botocore_session=_botocore_session())
        return self._session.client(
            "ec2", region_name=region, endpoint_url=self.settings.endpoint_url, config=config
        )

    def _client(self, region: str) -> Any:
        with self._clients_lock:
            if region not in self._clients:
                self._clients[region] = self._client_factory(region)
            return self._clients[region]

    def _call(self, region: str, what: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client(region), method)(**kwargs)
        except (ClientError, BotoCoreError) as e:
            raise classify(e, f"aws {region} {what}") from e

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
