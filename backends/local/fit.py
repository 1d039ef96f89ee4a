"""What this machine can run: its host facts (probed once per backend) and the local backend's
`offers` and `can_run` answers.

Why a module of its own: deciding whether a spec fits here (its GPUs, a Python version, an image
engine, network namespaces, the sandbox) is a question about the host, asked every pass while
building the plan; running replicas (backend.py) is about processes and files. Probing is slow
(a subprocess per tool), so each fact is asked once per `LocalBackend` and kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from backends.base import Offer, PermanentError, ReplicaSpec, Requirements
from backends.local import host as local_host
from backends.local import sandbox as local_sandbox
from backends.local import spawn as local_spawn
from backends.local.sandbox import SandboxMode


class NetworkMode(StrEnum):
    AUTO = "auto"  # namespaces when available, else the shared host network
    NAMESPACE = "namespace"  # namespaces or a PermanentError
    SHARED = "shared"  # host network; a busy port is a TemporaryError


class HostFit:
    """The host facts of one local backend and what they allow; `LocalBackend` builds on it."""

    def __init__(self, network: NetworkMode, sandbox: SandboxMode) -> None:
        self.network = network
        self.sandbox = sandbox
        self._namespace_problem: str | bool | None = False  # False = not probed yet
        self._engine: str | bool | None = False
        self._machine: local_host.Machine | None = None
        self._interpreters: dict[str, str | None] = {}
        self._sandbox_problem: str | bool | None = False

    # ---- host facts (probed once per instance) ----------------------------------------------------
    def machine(self) -> local_host.Machine:
        if self._machine is None:
            self._machine = local_host.probe_machine()
        return self._machine

    def _namespaces_unavailable(self) -> str | None:
        if self._namespace_problem is False:
            self._namespace_problem = local_host.probe_namespaces(local_spawn.RELAY)
        assert not isinstance(self._namespace_problem, bool)
        return self._namespace_problem

    def sandbox_unavailable(self) -> str | None:
        """None when replicas can be sandboxed here, else why not (probed once)."""
        if self.sandbox == SandboxMode.OFF:
            return "the replica sandbox is turned off (sandbox: off)"
        if self._sandbox_problem is False:
            self._sandbox_problem = local_sandbox.probe(local_sandbox.find_tools())
        assert not isinstance(self._sandbox_problem, bool)
        return self._sandbox_problem

    def _engine_exe(self) -> str | None:
        if self._engine is False:
            self._engine = local_host.probe_engine()
        assert not isinstance(self._engine, bool)
        return self._engine

    def _interpreter(self, version: str) -> str | None:
        minor = local_host.python_minor(version)
        if minor not in self._interpreters:
            self._interpreters[minor] = local_host.find_interpreter(minor)
        return self._interpreters[minor]

    # ---- Backend protocol -----------------------------------------------------------------------
    def offers(self, requirements: Requirements) -> Sequence[Offer]:
        offer = local_host.match_offer(requirements, self.machine())
        return [] if offer is None else [offer]

    def can_run(self, spec: ReplicaSpec) -> str | None:
        """None when this backend can run `spec`, else a reason to show in the plan.

        `offers()` sees only Requirements; this also checks what the spec itself needs: an image
        engine, the Python version, the GPUs, and (in NAMESPACE mode) network namespaces.
        """
        if spec.image is not None:
            if spec.python is not None:
                return "`image` and `python` are mutually exclusive"
            if self._engine_exe() is None:
                return "local backend cannot run images: no Docker/Podman engine"
        elif not spec.commands:
            return "nothing to run: the service has neither `commands` nor `image`"
        if spec.python is not None:
            try:
                found = self._interpreter(spec.python)
            except PermanentError as e:
                return str(e)
            if found is None:
                minor = local_host.python_minor(spec.python)
                return f"python {spec.python} is not installed on this machine (no working python{minor})"
        if (
            spec.requirements.gpu is not None
            and local_host.match_offer(spec.requirements, self.machine()) is None
        ):
            gpus = ", ".join(f"{g.name} ({g.memory_gb:g}GB)" for g in self.machine().gpus) or "none"
            return f"this machine's GPUs do not fit the requirements (found: {gpus})"
        if (
            self.network == NetworkMode.NAMESPACE
            and spec.image is None
            and (problem := self._namespaces_unavailable())
        ):
            return problem
        if spec.image is None and (problem := self.sandbox_unavailable()) is not None:
            if not spec.trusted:
                return f"refusing to run untrusted code (a PR preview) outside the sandbox: {problem}"
            if self.sandbox == SandboxMode.REQUIRED:
                return problem
        if spec.image is None and not spec.trusted:
            if self.network == NetworkMode.SHARED:
                return "refusing to run untrusted code (a PR preview) on the host network (network: shared)"
            if problem := self._namespaces_unavailable():
                return f"refusing to run untrusted code (a PR preview) without its own network namespace: {problem}"
        return None
