"""The routes snapshot: the one contract between the reconciler (writer) and the gateway (reader).

The reconciler publishes `routes.json` in the state directory atomically (temp file + fsync +
os.replace) after the state it derives from; the gateway loads it whole and swaps its table in one
assignment, so a request never sees half a table. Only ready replicas appear as upstreams; a
replica being drained is listed with `draining: true` so in-flight requests finish while no new
ones are sent to it.

Nothing secret is in here: no env values, no tokens.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backends.fsutil import write_atomic

ROUTES_FILE = "routes.json"
SCHEMA_VERSION = 1


class ModelFormat(StrEnum):
    OPENAI = "openai"
    TGI = "tgi"


class Upstream(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    replica_id: str
    # "http://host:port" or "unix:///abs/path.sock"
    url: str
    draining: bool = False


class ModelRoute(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    type: str = "chat"
    format: ModelFormat = ModelFormat.OPENAI
    prefix: str = "/v1"
    chat_template: str | None = None
    # A string, or the `{"content": ...}` mapping tokenizer_config.json uses (gateway.tgi takes both).
    eos_token: str | dict[str, Any] | None = None
    bos_token: str | dict[str, Any] | None = None


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


class RoutesSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION
    serial: int = 0
    revision: str | None = None
    domain: str = "localhost"
    services: dict[str, ServiceRoute] = Field(default_factory=dict)

    def by_host(self) -> dict[str, ServiceRoute]:
        return {s.host.lower(): s for s in self.services.values()}


class RoutesSchemaError(ValueError):
    """routes.json was written by a newer tidegate: neither read nor rewritten."""


def _refuse_newer(path: Path, data: Any) -> None:
    version = data.get("schema_version", SCHEMA_VERSION) if isinstance(data, dict) else None
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RoutesSchemaError(
            f"{path} has schema_version {version!r}; this tidegate reads up to {SCHEMA_VERSION} and will not rewrite it"
        )


def check_schema(path: Path) -> None:
    """Raise RoutesSchemaError when `path` carries a schema_version newer than ours. An unreadable
    file is not refused here: it is only ever the writer's own output, so it is replaced."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return
    _refuse_newer(path, data)


def write_snapshot(state_dir: Path, snapshot: RoutesSnapshot | bytes) -> None:
    """Atomically replace `routes.json` (temp file + fsync + replace + directory fsync)."""
    body = snapshot if isinstance(snapshot, bytes) else snapshot.model_dump_json(indent=2).encode()
    write_atomic(state_dir / ROUTES_FILE, body)


def read_snapshot(state_dir: Path) -> RoutesSnapshot:
    """The published snapshot, or an empty one when none was published yet. A newer schema is
    refused (RoutesSchemaError, a ValueError) so a reader keeps what it had."""
    path = state_dir / ROUTES_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return RoutesSnapshot()
    data = json.loads(raw)
    _refuse_newer(path, data)
    return RoutesSnapshot.model_validate(data)
