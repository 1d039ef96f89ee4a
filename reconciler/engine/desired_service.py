"""The desired state's values: a service as one revision's config asks for it (`DesiredService`),
where its files are (`At`), and the set of one revision (`DesiredSet`, `Specs`).

Why a module of its own: reconciler.engine.desired builds these; kept apart, the builder and
the values each stay a readable size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from backends.base import ReplicaSpec
from reconciler.config.diagnostics import Diagnostic
from reconciler.engine.autoscale import ScalingPolicy
from reconciler.engine.naming import replica_id
from reconciler.state.records import RouteInfo


@dataclass(frozen=True)
class At:
    """Where a service's files are: the revision and the folder holding the repository at it."""

    revision: str | None
    workdir: str | None


@dataclass(frozen=True)
class DesiredService:
    """What one service asks for. It carries no revision or folder of its own (`at` None): the
    set's (`DesiredSet.at`) are its, so a service whose file, env, backend and code did not change
    is the very same object at the next revision (see `build_desired`). `at` is set only on a
    service taken from another revision (a last good spec, a pull request's preview)."""

    name: str
    spec_hash: str
    config_path: str
    backend: str
    min_replicas: int
    max_replicas: int
    scaling: ScalingPolicy | None  # None: a fixed count of `min_replicas`
    template: ReplicaSpec  # replica_id/ordinal filled by `spec_for`
    route: RouteInfo
    env_names: tuple[str, ...] = ()
    summary: Mapping[str, str] = field(default_factory=dict)
    # No `backends:` in the file: every default backend may run it (dstack's rule; the cheapest
    # offer wins, chosen by engine.offers.with_offers) -> its spec hash on each. Empty: fixed.
    candidates: Mapping[str, str] = field(default_factory=dict)
    # Bare-KEY env names -> salted hash of the value this service's replicas receive.
    secrets: Mapping[str, str] = field(default_factory=dict)
    at: At | None = None  # None: the set's revision and folder

    def secret_values(self) -> dict[str, str]:
        """name -> value of the secrets its replicas receive (in memory only, for masking)."""
        return {k: self.template.env[k] for k in self.secrets if k in self.template.env}

    def files_at(self, default: At | None) -> At | None:
        """Its own revision and folder, else `default` (the set's it was planned from)."""
        return self.at if self.at is not None else default

    def spec_for(self, ordinal: int, at: At | None = None) -> ReplicaSpec:
        """The spec of replica `ordinal`; its workdir and revision are `files_at(at)`."""
        where = self.files_at(at)
        return replace(
            self.template,
            replica_id=replica_id(self.name, self.spec_hash, ordinal),
            ordinal=ordinal,
            workdir=where.workdir if where else None,
            revision=where.revision if where else None,
        )


class Specs(dict[str, DesiredService]):
    """name -> the spec a pass applies; `at`: the files of every one without its own."""

    def __init__(self, services: Mapping[str, DesiredService], at: At | None) -> None:
        super().__init__(services)
        self.at = at


@dataclass(frozen=True)
class DesiredSet:
    services: Mapping[str, DesiredService]
    blocked: Mapping[str, str] = field(default_factory=dict)  # name -> why it cannot be deployed
    failed: Mapping[str, str] = field(default_factory=dict)  # name -> path of the broken file
    diagnostics: tuple[str, ...] = ()
    revision: str | None = None
    # The same problems as values (file, line, column, field, message, severity) for `plan --json`.
    problems: tuple[Diagnostic, ...] = ()
    # name -> a problem that does not stop the service here (a secret a PR plan cannot see).
    warnings: Mapping[str, str] = field(default_factory=dict)
    at: At | None = None  # the revision and folder of every service whose own `at` is None

    def revision_of(self, d: DesiredService) -> str | None:
        """The revision `d` is deployed at: its own, else the set's."""
        where = d.files_at(self.at)
        return where.revision if where is not None else self.revision

    @property
    def empty(self) -> bool:
        """Nothing at all in the config (not even a broken file)."""
        return not self.services and not self.blocked and not self.failed
