"""The routes snapshot (pure values; reading and writing it is tidegate.routes_io): the one contract between the reconciler (writer) and the gateway (reader).

The reconciler publishes `routes.json` in the state directory atomically (temp file + fsync +
os.replace) after the state it derives from; the gateway loads it whole and swaps its table in one
assignment, so a request never sees half a table. Only ready replicas appear as upstreams; a
replica being drained is listed with `draining: true` so in-flight requests finish while no new
ones are sent to it.

Nothing secret is in here: no env values, no tokens.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ROUTES_FILE = "routes.json"
_PREVIEW_SUFFIX = re.compile(r"@pr-[0-9]+$")
SCHEMA_VERSION = 1


class ModelFormat(StrEnum):
    OPENAI = "openai"
    TGI = "tgi"


class TunnelRoute(BaseModel):
    """How to reach a cloud replica over SSH: public facts only (the instance's address, its sshd
    port, the forward-only user, the pinned public host key, the service port behind it). A gateway
    on another machine than the leader opens its own tunnel with these and the installation's
    client key (distributed out of band, never in here)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    backend: str
    host: str
    port: int
    user: str
    host_key: str  # "ssh-ed25519 AAAA…"
    service_port: int


class Upstream(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    replica_id: str
    # "http://host:port" or "unix:///abs/path.sock"
    url: str
    draining: bool = False
    # A cloud replica: `url` is the leader's tunnel socket; elsewhere this says where to tunnel.
    tunnel: TunnelRoute | None = None


class ModelRoute(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    type: str = "chat"
    format: ModelFormat = ModelFormat.OPENAI
    prefix: str = "/v1"
    chat_template: str | None = None
    # A string, or the `{"content": ...}` mapping tokenizer_config.json uses (gateway.api.tgi takes both).
    eos_token: str | dict[str, Any] | None = None
    bos_token: str | dict[str, Any] | None = None

    @property
    def served_name(self) -> str:
        """The name the replica serves: a preview publishes `<model>@pr-<N>`, its replica (the same
        server, same `--served-model-name`) knows only `<model>`."""
        return _PREVIEW_SUFFIX.sub("", self.name) or self.name


class RateLimitKey(StrEnum):
    IP_ADDRESS = "ip_address"
    HEADER = "header"


class RateLimit(BaseModel):
    """dstack's `rate_limits` item: requests under `prefix` per client key, a token bucket of
    `rps` refill and `burst` extra requests, enforced by the gateway (gateway.ratelimit)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    prefix: str = "/"
    rps: float
    burst: int = 0
    key: RateLimitKey = RateLimitKey.IP_ADDRESS
    header: str | None = None  # the header whose value is the key when `key` is `header`


class ServiceRoute(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    host: str  # fully qualified, e.g. "mistral.localhost"
    auth: bool = True
    forward_auth: bool = False  # pass the client's Authorization header to the replica
    upstreams: tuple[Upstream, ...] = ()
    model: ModelRoute | None = None
    # Scale-to-zero support: when the service may have zero replicas, the gateway holds requests
    # and asks the reconciler for a replica instead of answering 503 straight away.
    min_replicas: int = 1
    max_replicas: int = 1
    preview_pr: int | None = None
    # Per path prefix, longest prefix first; empty: no limit.
    rate_limits: tuple[RateLimit, ...] = ()
    # `tidegate stop`: no upstreams until `tidegate start`; the gateway may answer 503 saying so.
    stopped: bool = False
    # Its config was removed: the gateway answers 404 as if it were gone, but its replicas are
    # still listed (draining) so requests in flight finish and their counts reach the reconciler.
    withdrawn: bool = False


class RoutesSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION
    serial: int = 0
    revision: str | None = None
    domain: str = "localhost"
    services: dict[str, ServiceRoute] = Field(default_factory=dict)

    def by_host(self) -> dict[str, ServiceRoute]:
        return {s.host.lower(): s for s in self.services.values() if not s.withdrawn}
