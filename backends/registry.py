"""The backend registry: builds the configured cloud backends from settings.

Why a module of its own: the cloud backends import their settings models from backends.settings;
building them there made settings and each backend import one another. Here the arrow goes one
way: registry -> settings, registry -> aws/azure. Cloud SDKs are still imported only when a backend
of that kind is configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backends.base import Backend
from backends.settings import AwsSettings, CloudSettings


def build_backends(
    settings: CloudSettings,
    owner: str,
    state_dir: str | Path,
    *,
    azure_credential: Any = None,
) -> list[Backend]:
    """One backend per configured cloud; SDKs are imported here, not at module import.

    `state_dir` is unused: cloud backends keep no local state (the local backend is built by the
    runtime with its own work dir)."""
    from backends.cloud.catalog import load_catalog, resolve_catalog_path

    catalog = load_catalog(resolve_catalog_path(settings.catalog))
    out: list[Backend] = []
    for entry in settings.backends:
        if isinstance(entry, AwsSettings):
            from backends.aws.backend import AwsBackend

            out.append(AwsBackend(entry, owner, catalog=catalog))
        else:
            from backends.azure.backend import AzureBackend

            out.append(AzureBackend(entry, owner, catalog=catalog, credential=azure_credential))
    return out
