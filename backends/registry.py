"""The backend registry: builds the configured cloud backends from settings.

Why a module of its own: the cloud backends import their settings models from backends.settings;
building them there made settings and each backend import one another. Here the arrow goes one
way: registry -> settings, registry -> aws/azure. Cloud SDKs are still imported only when a backend
of that kind is configured.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from backends.cloud.backend import CloudBackend
from backends.settings import AwsSettings, CloudSettings

log = logging.getLogger("backends.registry")


def build_backends(
    settings: CloudSettings,
    owner: str,
    state_dir: str | Path,
    *,
    azure_credential: Any = None,
    tunnels: bool = False,
    keys_dir: Path | None = None,
) -> list[CloudBackend]:
    """One backend per configured cloud; SDKs are imported here, not at module import.

    `state_dir` holds the tunnels' keys (`ssh/`) and sockets (`run/tunnels/`). `tunnels=True` only in
    the process that owns the state dir (`up`, `apply`): it opens the SSH tunnels to running
    replicas. Otherwise the backends report the same addresses and open none. `keys_dir`: the
    installation's tunnel keys somewhere else than `<state_dir>/ssh` (`--tunnel-keys`, with etcd)."""
    from backends.cloud.catalog import describe_catalog, load_catalog, resolve_catalog_path
    from backends.cloud.tunnels import CloudTunnels

    catalog_path = resolve_catalog_path(settings.catalog)
    catalog = load_catalog(catalog_path)
    if settings.backends:
        log.info("offers %s", describe_catalog(catalog_path))
    out: list[CloudBackend] = []
    for entry in settings.backends:
        if isinstance(entry, AwsSettings):
            from backends.aws.backend import AwsBackend

            aws_tunnels = CloudTunnels(Path(state_dir), "aws", active=tunnels, keys_dir=keys_dir)
            out.append(AwsBackend(entry, owner, catalog=catalog, tunnels=aws_tunnels))
        else:
            from backends.azure.backend import AzureBackend

            az_tunnels = CloudTunnels(Path(state_dir), "azure", active=tunnels, keys_dir=keys_dir)
            out.append(
                AzureBackend(entry, owner, catalog=catalog, credential=azure_credential, tunnels=az_tunnels)
            )
    return out
