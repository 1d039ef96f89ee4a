"""Desired state: what the config at one revision asks for, resolved against the reconciler's env.

Why: the loader says what the files contain; the engine needs, per service, a spec hash that
changes exactly when a replica must be replaced, a replica template, the backend to use and the
route. Pure but for one cached read: values in, values out (env values come in as a mapping;
nothing reads os.environ); the code hash below is read from the checkout once per revision
(reconciler.source.code_files) unless the caller passes `code_hash`.

- A bare `KEY` takes its value from `env` (process env + --env-file, built by the caller). A missing
  value blocks that one service with a message naming the variable; others go on.
- The spec hash covers the config minus routing-only fields (replicas, scaling, auth, model: those
  change the count or the gateway, not what runs), the backend and a *salted* hash of the resolved
  env values, so changing a secret rolls the replicas while the value itself is never stored.
- Secrets (bare `KEY` values) are hashed here, where they enter: `DesiredService.secrets` maps each
  bare name to `redact.secret_hash(salt, name, value)`. Records, plans and outputs carry that map;
  the value itself lives only in `template.env` (what the backend hands the replica) and in memory.
- Code: when the chosen backend ships the checkout to the replica (`Backend.ships_workdir`, asked
  through the registry's `ships_workdir(name)`: the local backend, which runs each replica in a
  copy of the repository), the spec hash also covers a content hash of
  the repository files at that revision, minus every `.dstack.yml`/`*.dstack.yml`, the `.dstack/`
  folder and what `.dstackignore` excludes: pushing a fix to `app.py` rolls the replicas, editing
  another service's config does not. Cloud backends run the image and commands only and never get
  the workdir, so for them the code hash is left out (a code push must not replace a GPU instance
  for nothing). The summary shows it as `files: <hash8>`, so `tidegate plan` says why replicas roll.
- A file that failed validation keeps its service as it is (`failed`), reported, never deleted;
  the engine still heals it at its last applied spec (reconciler.engine.targets).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from backends.base import ReplicaSpec
from reconciler.config.loader import LoadedService, LoadResult
from reconciler.engine import memo
from reconciler.engine.desired_memo import FILES, File, Outcome, keep, key_id
from reconciler.engine.desired_parts import (
    NO_EFFECT_FIELDS,
    ROUTING_ONLY_FIELDS,
    FileParts,
    file_parts,
    replica_hash_of,
    replica_spec_hash,
    replica_spec_hash_plain,
)
from reconciler.engine.desired_service import At, DesiredService, DesiredSet, Specs
from reconciler.engine.desired_summary import Summary
from reconciler.source.code_files import code_hash_at
from reconciler.state.redact import secret_hash

__all__ = [
    "NO_EFFECT_FIELDS",
    "ROUTING_ONLY_FIELDS",
    "At",
    "DesiredService",
    "DesiredSet",
    "Specs",
    "build_desired",
    "choose_backend",
    "env_values_hash",
    "replica_spec_hash",
    "replica_spec_hash_plain",
    "resolve_env",
]


def env_values_hash(salt: str, env: Mapping[str, str]) -> str:
    """A salted digest of the resolved env, so a changed secret changes the spec hash."""
    h = hashlib.sha256(salt.encode())
    for k in sorted(env):
        h.update(b"\0" + k.encode() + b"=" + env[k].encode())
    return h.hexdigest()


def resolve_env(
    declared: Mapping[str, str | None], available: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Values for every declared name; bare names come from `available`. Returns (env, missing)."""
    out: dict[str, str] = {}
    missing: list[str] = []
    for k, v in declared.items():
        if v is not None:
            out[k] = v
        elif k in available:
            out[k] = available[k]
        else:
            missing.append(k)
    return out, missing


def choose_backend(
    requested: Sequence[str], configured: Sequence[str], default: str
) -> tuple[str | None, str]:
    """The backend for a service: the first requested one that is configured, else the default."""
    if requested:
        for name in requested:
            if name in configured:
                return name, ""
        return (
            None,
            f"none of the requested backends ({', '.join(requested)}) is configured (have: {', '.join(configured) or 'none'})",
        )
    if default in configured:
        return default, ""
    if configured:
        return configured[0], ""
    return None, "no backend is configured"


def build_desired(
    load: LoadResult,
    *,
    revision: str | None,
    workdir: str | None,
    env: Mapping[str, str],
    salt: str,
    backends: Sequence[str],
    ships_workdir: Callable[[str], bool],
    domain: str = "localhost",
    default_backend: str = "local",
    code_hash: Callable[[], str] | None = None,
    default_backends: Sequence[str] = (),
    missing_env_ok: bool = False,
    trusted: bool = True,
) -> DesiredSet:
    """The desired set of one load. `code_hash` gives the content hash of the files replicas get
    (default: `code_files.code_hash_at(workdir, revision)`); it is asked at most once, and only
    when some service runs on a backend that ships the checkout (`ships_workdir(name)`, the
    registry's `BackendRegistry.ships_workdir`). A service without `backends:` may
    run on any of `default_backends` (empty: every configured backend) that is configured.
    `missing_env_ok` (a plan for a pull request, which never sees production's secrets): a bare
    `KEY` without a value is a warning instead of blocking the service. `trusted`: the load is the
    deployed branch (True) or a PR's head (False: its replicas are sandboxed without exception and
    get no operator egress rules; SECURITY.md).

    Each service's outcome is kept with its loaded file (`FILES`: by the parse cache's object,
    by identity; with the parts its file alone decides) per every other input of this call
    (`_Inputs`; the env as a salted digest), with the code hash it used checked on every hit: an
    unchanged service is the very same `DesiredService` object at every revision, and the
    services carry no revision or folder (the set's `at` is theirs). A new revision costs a dict
    look-up per unchanged service."""
    files_memo: list[str | None] = []

    def files_for(backend: str) -> str | None:
        if not ships_workdir(backend):
            return None
        if not files_memo:
            if code_hash is not None:
                files_memo.append(code_hash())
            elif workdir is not None:
                files_memo.append(code_hash_at(Path(workdir), revision))
            else:
                files_memo.append(None)  # an empty workdir: nothing to hash
        return files_memo[0]

    names = tuple(backends)
    inputs = _Inputs(
        env, salt, names, tuple(default_backends), default_backend, domain, missing_env_ok, trusted,
    )  # fmt: skip
    key = (
        env_values_hash(salt, env),
        names,
        tuple(ships_workdir(b) for b in names),
        inputs.default_backends,
        default_backend,
        domain,
        missing_env_ok,
        trusted,
    )
    services: dict[str, DesiredService] = {}
    blocked: dict[str, str] = {}
    warnings: dict[str, str] = {}
    current: dict[str, str | None] = {}  # backend -> its code hash in this call

    def files_valid(o: Outcome) -> bool:
        for b, f in o.files:
            if b not in current:
                current[b] = files_for(b)
            if current[b] != f:
                return False
        return True

    kept = memo.enabled
    kid = key_id(key) if kept else 0
    table = FILES
    new: dict[int, File] = {}  # files first seen here
    more: list[tuple[File, Outcome]] = []  # outcomes of kept files under these inputs
    for name in sorted(load.services):
        ls = load.services[name]
        entry = table.get(id(ls)) if kept else None
        out = None
        if entry is not None:
            if entry.ls is not ls or entry.name != name or entry.domain != domain:
                entry = None
            else:
                out = entry.outcomes.get(kid)
                if out is not None and out.files and not files_valid(out):
                    out = None
        if out is None:
            if entry is not None:
                out = _outcome(ls, name, entry.parts, inputs, files_for)
                more.append((entry, out))
            else:
                parts = file_parts(ls, name, domain)
                out = _outcome(ls, name, parts, inputs, files_for)
                if kept:
                    new[id(ls)] = File(ls, name, domain, parts, kid, out)
        if out.warning:
            warnings[name] = out.warning
        if out.service is not None:
            services[name] = out.service
        else:
            blocked[name] = out.blocked
    if new or more:
        keep(new, more, kid, len(load.services))
    failed = {name: str(path) for name, path in load.failed.items() if name not in services}
    return DesiredSet(
        services=services,
        blocked=blocked,
        failed=failed,
        diagnostics=tuple(d.format() for d in load.diagnostics),
        problems=tuple(load.diagnostics),
        warnings=warnings,
        revision=revision,
        at=At(revision, workdir),
    )


@dataclass(frozen=True)
class _Inputs:
    """What `build_desired` was given besides the load (the memo's key holds these, the env as a
    salted digest)."""

    env: Mapping[str, str]
    salt: str
    backends: tuple[str, ...]
    default_backends: tuple[str, ...]
    default_backend: str
    domain: str
    missing_env_ok: bool
    trusted: bool
    # this call's env digests by the resolved env's items (`env_hash`): services that resolve
    # to the same values (none, a shared token, ...) share one digest
    env_hashes: dict[tuple[tuple[str, str], ...], str] = field(default_factory=dict, compare=False, repr=False)

    def env_hash(self, resolved: dict[str, str]) -> str:
        """`env_values_hash(self.salt, resolved)`."""
        key = tuple(resolved.items())
        found = self.env_hashes.get(key)
        if found is None:
            found = self.env_hashes[key] = env_values_hash(self.salt, resolved)
        return found


def _outcome(
    ls: LoadedService, name: str, parts: FileParts, inp: _Inputs, files_for: Callable[[str], str | None]
) -> Outcome:
    """One service's desired state, or why it is blocked (pure but for `files_for`, recorded)."""
    c = ls.config
    backends = inp.backends
    resolved, missing = resolve_env(c.env, inp.env)
    warning = ""
    if missing:
        why = (
            f"env variable{'s' if len(missing) > 1 else ''} {', '.join(sorted(missing))} "
            f"ha{'ve' if len(missing) > 1 else 's'} no value: set {'them' if len(missing) > 1 else 'it'} "
            "in the reconciler's environment or the --env-file"
        )
        if not inp.missing_env_ok:
            return Outcome(None, why)
        warning = why + " (not visible to this plan; needed where the reconciler runs)"
    secrets = {k: secret_hash(inp.salt, k, resolved[k]) for k, v in c.env.items() if v is None and k in resolved}
    backend, why = choose_backend(c.backends or (), backends, inp.default_backend)
    if backend is None:
        return Outcome(None, why, warning)
    env_hash = inp.env_hash(resolved)
    config = parts.config_json
    used = {backend: files_for(backend)}  # backend -> the code hash it used
    spec_hash = replica_hash_of(config, env_hash, backend, used[backend])
    candidates: dict[str, str] = {}
    if not c.backends:
        pool = [b for b in (inp.default_backends or backends) if b in backends]
        if not pool:
            why = (
                f"none of the settings' default_backends ({', '.join(inp.default_backends)}) is configured"
                f" (have: {', '.join(backends) or 'none'}); add `backends:` to the service or configure one"
            )
            return Outcome(None, why, warning, tuple(used.items()))
        if backend in pool:  # the default backend first: it wins ties
            pool.remove(backend)
            pool.insert(0, backend)
        for b in pool:
            if b not in used:
                used[b] = files_for(b)
        if len(pool) > 1:
            candidates = {b: replica_hash_of(config, env_hash, b, used[b]) for b in pool}
        elif pool and pool[0] != backend:
            backend = pool[0]
            spec_hash = replica_hash_of(config, env_hash, backend, used[backend])
    # made as `__init__` would (every field given), without its `object.__setattr__` per field
    template = _made(
        ReplicaSpec,
        replica_id="",
        service=name,
        spec_hash=spec_hash,
        ordinal=-1,
        port=c.port.container_port,
        commands=tuple(c.commands),
        image=c.image,
        python=c.python,
        env=resolved,
        requirements=parts.requirements,
        offer=None,
        workdir=None,
        revision=None,
        trusted=inp.trusted,
    )
    service = _made(
        DesiredService,
        name=name,
        spec_hash=spec_hash,
        config_path=str(ls.path),
        backend=backend,
        min_replicas=c.replicas.min,
        max_replicas=c.replicas.max,
        scaling=parts.scaling,
        template=template,
        route=parts.route,
        env_names=parts.env_names,
        summary=Summary(parts, backend, resolved, env_hash, used[backend]),
        candidates=candidates,
        secrets=dict(sorted(secrets.items())) if secrets else {},
        at=None,
    )
    return Outcome(service, "", warning, tuple(used.items()))


_T = TypeVar("_T")


def _made(cls: type[_T], **fields: object) -> _T:
    """A frozen dataclass without `__post_init__` made from every one of its fields (tests hold
    it equal to the constructor's)."""
    new = object.__new__(cls)
    new.__dict__.update(fields)
    return new
