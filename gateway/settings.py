"""Gateway settings: one frozen value built at the entry point and passed down (never from env at import)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8080"
# Worker processes of a multi-worker gateway get their settings through this variable (uvicorn
# re-imports the app in each worker; the parent sets it just before starting them).
SETTINGS_ENV = "TIDEGATE_GATEWAY_SETTINGS"


def parse_listen(listen: str, flag: str = "--listen") -> tuple[str, int]:
    """`host:port`, `:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{flag} must look like 127.0.0.1:8080, got {listen!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


@dataclass(frozen=True)
class GatewaySettings:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    domain: str = "localhost"
    workers: int = 1
    max_body_bytes: int = 32 * 1024 * 1024
    connect_timeout: float = 10.0
    # From the request sent to the replica's response head: a non-streaming generation answers
    # only when it is done, so this must cover the longest one (0: no limit).
    first_byte_timeout: float = 900.0
    # Longest silence between two chunks of a response that has started (0: no limit).
    read_timeout: float = 300.0
    # Client side, per worker: connections beyond this are closed at once (0: from the open-file
    # limit, see server.py); a request's head must be complete this long after the connection
    # opened or the previous response ended (idle or slow clients hold a socket, nothing else);
    # its size is capped.
    max_connections: int = 0
    header_timeout: float = 15.0
    max_header_bytes: int = 64 * 1024
    keepalive_timeout: float = 30.0
    # On SIGTERM, requests in flight get this long to finish before they are cancelled.
    shutdown_grace: float = 3.0
    # TGI chat templates: rendered in worker processes, this long and this much output at most.
    template_timeout: float = 1.0
    template_max_bytes: int = 1024 * 1024
    template_workers: int = 2
    # A non-streaming TGI answer is read whole to translate it; never more than this.
    max_tgi_response_bytes: int = 16 * 1024 * 1024
    # `/metrics`: "auto" (open on a loopback listener, else a token is needed), "open", "token".
    metrics: str = "auto"
    # Scale to zero: how long and how many requests per service are held through a cold start.
    hold_timeout: float = 300.0
    hold_queue: int = 256
    # A replica that refused a connection gets no new requests for this long.
    cooldown: float = 5.0
    stats_interval: float = 1.0
    watch_routes: bool = True
    access_log: bool = True
    webhook_secret: str | None = field(default=None, repr=False)
    # Where chat templates of TGI models without `chat_template` are fetched from (the Hugging
    # Face Hub, or a mirror); None = huggingface_hub's default (HF_ENDPOINT or huggingface.co).
    hf_endpoint: str | None = None
    # Per API token rate limits (the settings file's `token_limits:`, checked by
    # gateway.ratelimit_settings): token name (or `*`) -> [{prefix, rps, burst}, ...].
    token_limits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Set by `serve` for several workers: the rate limit table file and its semaphore's name.
    ratelimit_table: str | None = None
    ratelimit_sem: str | None = None
    # HTTPS (gateway/tls): a second listener, certificates from files and/or ACME.
    https_listen: str | None = None  # "host:port"; None: plain HTTP only
    tls_cert: str | None = None
    tls_key: str | None = None
    acme_email: str | None = None  # set: certificates from ACME for every service host
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_ca_bundle: str | None = None  # a private CA's root for the ACME directory's own HTTPS
    acme_renew_fraction: float = 1 / 3  # renew when less than this part of the lifetime is left
    acme_retry: float = 300.0  # first backoff after a failed issuance (doubles, at most a day)

    @property
    def https_address(self) -> tuple[str, int] | None:
        return parse_listen(self.https_listen, "--https-listen") if self.https_listen else None

    @property
    def gateway_host(self) -> str:
        return f"gateway.{self.domain}".lower()

    def to_json(self) -> str:
        data: dict[str, Any] = dataclasses.asdict(self)
        data["state_dir"] = str(self.state_dir)
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str) -> GatewaySettings:
        data = json.loads(raw)
        data["state_dir"] = Path(data["state_dir"])
        return cls(**data)
