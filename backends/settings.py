"""The backends settings file: which clouds tidegate may use and how, built once at the entry point.

Why this module exists: cloud options (regions, network, ingress CIDR, images, test endpoints) live
outside the config repository, in one YAML file given with `--settings FILE`; any scalar can be
overridden from the environment as `TIDEGATE_<BACKEND>_<FIELD>` (for example
`TIDEGATE_AWS_ENDPOINT_URL`, `TIDEGATE_AZURE_LOCATIONS=eastus,westus3`). Credentials are never part
of it: boto3's default chain and azure-identity's `DefaultAzureCredential` find them, and nothing
here writes them anywhere.

Importing this module imports no cloud SDK and no backend: backends.registry builds them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class SettingsError(Exception):
    """The settings file is unreadable or invalid (message names the file and field)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AwsSettings(_Model):
    type: Literal["aws"] = "aws"
    regions: list[str] = Field(default_factory=lambda: ["us-east-1"])
    # A string applies to every region; a mapping gives one per region. None: the default VPC.
    vpc_id: str | dict[str, str] | None = None
    subnet_id: str | dict[str, str] | None = None
    # Who may reach the instances' SSH port: the gateway's egress address. Required to provision.
    # The service port itself is never opened; the gateway tunnels through SSH.
    allowed_cidr: str | None = None
    ssh_port: int = Field(default=22, gt=0, lt=65536)  # where the instance's sshd listens
    tunnel_user: str = "tidegate-tunnel"  # the forward-only account the tunnel logs in as
    # A fixed AMI (string, or per-region mapping); otherwise the newest image matching the name
    # filter, otherwise `ami_fallback`.
    ami: str | dict[str, str] | None = None
    ami_name_filter: str = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)*"
    ami_owners: list[str] = Field(default_factory=lambda: ["amazon"])
    ami_fallback: str | dict[str, str] | None = None
    key_name: str | None = None
    endpoint_url: str | None = None  # moto / LocalStack in tests
    pricing_endpoint_url: str | None = None  # the Price List API (`offers --refresh`); tests only
    use_private_ip: bool = False
    # Replace the instance's IP in replica addresses (emulators whose IPs are not routable; tests).
    address_host: str | None = None
    volume_type: str = "gp3"
    live_offers: bool = True  # refine catalog offers with describe_instance_types / spot history
    offers_ttl: float = 300.0
    max_offer_attempts: int = Field(default=3, ge=1)


class AzureImage(_Model):
    publisher: str = "microsoft-dsvm"
    offer: str = "ubuntu-hpc"
    sku: str = "2204"
    version: str = "latest"


class AzureSettings(_Model):
    type: Literal["azure"] = "azure"
    subscription_id: str
    resource_group: str
    locations: list[str] = Field(default_factory=lambda: ["eastus"])
    vnet_name: str = "tidegate-vnet"
    subnet_name: str = "default"
    vnet_cidr: str = "10.77.0.0/16"
    subnet_cidr: str = "10.77.0.0/24"
    allowed_cidr: str | None = None  # who may reach SSH (the gateway's egress address); as for aws
    ssh_port: int = Field(default=22, gt=0, lt=65536)
    tunnel_user: str = "tidegate-tunnel"
    image: AzureImage = AzureImage()
    admin_username: str = "tidegate"
    ssh_public_key: str | None = None
    base_url: str | None = None  # the local ARM endpoint in tests
    retail_prices_url: str | None = None  # the Retail Prices API (`offers --refresh`); tests only
    address_host: str | None = None  # replace the VM's IP in replica addresses (emulators; tests)
    polling_interval: float = Field(default=15.0, ge=0)  # LRO poll wait when ARM gives no Retry-After
    sdk_retries: int = Field(default=3, ge=0)  # azure-core's own retries of 429/5xx before we see them
    use_private_ip: bool = False
    live_offers: bool = True  # refine catalog offers with resource SKUs
    offers_ttl: float = 300.0
    max_offer_attempts: int = Field(default=3, ge=1)


BackendSettings = Annotated[AwsSettings | AzureSettings, Field(discriminator="type")]


class CloudSettings(_Model):
    backends: list[BackendSettings] = Field(default_factory=list)
    catalog: str | None = None  # a catalog CSV; default: refreshed cache, else the shipped one

    def get(self, kind: str) -> AwsSettings | AzureSettings | None:
        return next((b for b in self.backends if b.type == kind), None)


def _normalise(raw: Any) -> Any:
    """Accept `backends:` as a list of {type: …} or as a mapping {aws: {…}, azure: {…}}."""
    if isinstance(raw, dict) and isinstance(raw.get("backends"), dict):
        items = []
        for kind, body in raw["backends"].items():
            entry = dict(body or {})
            entry.setdefault("type", kind)
            items.append(entry)
        raw = {**raw, "backends": items}
    return raw


_LIST_FIELDS = {"regions", "locations", "ami_owners"}


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    backends = [dict(b) for b in raw.get("backends", []) if isinstance(b, dict)]
    for entry in backends:
        prefix = f"TIDEGATE_{str(entry.get('type', '')).upper()}_"
        for key, value in environ.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :].lower()
            entry[name] = (
                [v.strip() for v in value.split(",") if v.strip()] if name in _LIST_FIELDS else value
            )
    out = {**raw, "backends": backends}
    if environ.get("TIDEGATE_CATALOG"):
        out["catalog"] = environ["TIDEGATE_CATALOG"]
    return out


def parse_settings(
    raw: Any, environ: Mapping[str, str] | None = None, source: str = "<settings>"
) -> CloudSettings:
    raw = _normalise(raw if raw is not None else {})
    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: expected a mapping at the top level")
    raw = _apply_env(raw, environ if environ is not None else {})
    try:
        return CloudSettings.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors(include_url=False)
        )
        raise SettingsError(f"{source}: {problems}") from e


def load_settings(path: str | Path | None, environ: Mapping[str, str] | None = None) -> CloudSettings:
    """Read the settings file (None: no file, environment only) and apply environment overrides."""
    env = os.environ if environ is None else environ
    if path is None:
        return parse_settings({}, env)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SettingsError(f"cannot read settings {path}: {e}") from e
    return parse_settings(raw, env, source=str(path))
