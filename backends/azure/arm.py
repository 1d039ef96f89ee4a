"""Azure Resource Manager plumbing for the Azure backend: clients, error mapping, VM lookup.

Why a module of its own: these are the parts that speak ARM's vocabulary (SDK clients with
retries and polling, error codes, 404s) rather than the `Backend` protocol. 429, 5xx and transport
errors become `TemporaryError`; capacity or quota codes raise `NoCapacity` so the caller moves to
the next offer; everything else is `PermanentError`. The SDKs are imported lazily; a test passes its
own credential and a `base_url` (plain http is allowed only for such an explicit endpoint).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from backends.base import PermanentError, TemporaryError
from backends.cloud.common import OWNER, NoCapacity
from backends.settings import AzureSettings

log = logging.getLogger("backends.azure.backend")

CAPACITY_CODES = frozenset(
    {
        "SkuNotAvailable",
        "AllocationFailed",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "OverconstrainedZonalAllocationRequest",
        "QuotaExceeded",
        "OperationNotAllowed",
    }
)
ARM_SCOPE = "https://management.azure.com/.default"
_NAME = re.compile(r"[^A-Za-z0-9-]")


def vm_name(replica_id: str) -> str:
    return _NAME.sub("-", replica_id)[:64].strip("-")


def error_code(e: Exception) -> tuple[str, int]:
    error = getattr(e, "error", None)
    code = str(getattr(error, "code", "") or "")
    status = int(getattr(e, "status_code", 0) or 0)
    if not code:
        match = re.search(r"\(([A-Za-z]+)\)", str(getattr(e, "message", "") or e))
        code = match.group(1) if match else ""
    return code, status


def classify(e: Exception, what: str) -> Exception:
    code, status = error_code(e)
    if status == 429 or status >= 500 or not status:
        return TemporaryError(f"{what}: {code or type(e).__name__}: {e}")
    return PermanentError(f"{what}: {code or status}: {e}")


class ArmAccess:
    """The compute and network clients of one subscription, and calls through them."""

    def __init__(self, settings: AzureSettings, owner: str, credential: Any) -> None:
        self.settings = settings
        self.owner = owner
        self._credential = credential
        self._compute_client: Any = None
        self._network_client: Any = None

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "retry_total": self.settings.sdk_retries,
            "polling_interval": self.settings.polling_interval,
        }
        if self.settings.base_url:
            kwargs["base_url"] = self.settings.base_url
            kwargs["credential_scopes"] = [ARM_SCOPE]
            if self.settings.base_url.startswith("http://"):
                kwargs["per_call_policies"] = [_allow_http_policy()]
        return kwargs

    def _cred(self) -> Any:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    @property
    def compute(self) -> Any:
        if self._compute_client is None:
            from azure.mgmt.compute import ComputeManagementClient

            self._compute_client = ComputeManagementClient(
                self._cred(), self.settings.subscription_id, **self._client_kwargs()
            )
        return self._compute_client

    @property
    def network(self) -> Any:
        if self._network_client is None:
            from azure.mgmt.network import NetworkManagementClient

            self._network_client = NetworkManagementClient(
                self._cred(), self.settings.subscription_id, **self._client_kwargs()
            )
        return self._network_client

    def _run(self, what: str, fn: Callable[[], Any], *, missing_ok: bool = False) -> Any:
        """Call the SDK, mapping its errors: 404 -> None when `missing_ok`, else Temporary/Permanent."""
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        try:
            return fn()
        except ResourceNotFoundError:
            if missing_ok:
                return None
            raise PermanentError(f"azure {what}: not found") from None
        except HttpResponseError as e:
            if missing_ok and getattr(e, "status_code", None) == 404:
                return None
            if error_code(e)[0] in CAPACITY_CODES:
                raise NoCapacity(f"{what}: {error_code(e)[0]}") from e
            raise classify(e, f"azure {what}") from e
        except AzureError as e:  # transport errors, timeouts
            raise TemporaryError(f"azure {what}: {type(e).__name__}: {e}") from e

    def _get_vm(self, name: str) -> Any:
        rg = self.settings.resource_group
        return self._run(
            f"get vm {name}",
            lambda: self.compute.virtual_machines.get(rg, name, expand="instanceView"),
            missing_ok=True,
        )

    def _owned(self, resource: Any) -> bool:
        return resource is not None and (resource.tags or {}).get(OWNER) == self.owner


def _allow_http_policy() -> Any:
    """A per-call policy that lets the bearer policy send its token to an explicit http:// endpoint."""
    from azure.core.pipeline import PipelineRequest
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class AllowHttp(SansIOHTTPPolicy):  # type: ignore[type-arg]
        def on_request(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
            request.context["enforce_https"] = False

    return AllowHttp()
