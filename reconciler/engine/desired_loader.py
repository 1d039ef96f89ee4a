"""Loading desired sets for the engine, cached per revision, and remembering each service's last
good spec.

Why a module of its own: loading is the one part of a pass that reads a checkout and asks the
backends for offers, and it carries memory across passes (the cached set of the current revision;
per service the spec it last ran, so a service whose file broke is still healed at that spec).
Kept apart, the engine's pass reads as the sequence it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from backends.base import BackendRegistry, Offer, Requirements
from reconciler.config.loader import TreeIndex, load_tree
from reconciler.engine import memo
from reconciler.engine.desired import At, DesiredService, DesiredSet, build_desired
from reconciler.engine.offers import with_offers
from reconciler.engine.targets import config_broken
from reconciler.engine.values import DesiredExtension, EngineSettings, Snapshot, SnapshotLike
from reconciler.source.code_files import code_hash_at
from reconciler.state.records import SnapshotRef, StateDoc
from reconciler.state.redact import SecretBook

log = logging.getLogger("tidegate.engine")


class DesiredLoader:
    def __init__(self, settings: EngineSettings, salt: str, backends: BackendRegistry, secrets: SecretBook) -> None:
        self.settings = settings
        self.salt = salt
        self.backends = backends
        self.secrets = secrets  # learns every secret value a set resolves (for masking, in memory)
        self._desired_cache: tuple[tuple[str, str, str | None, Any], DesiredSet] | None = None
        # service -> the spec it last ran and where its files were (in memory; after a restart
        # rebuilt once from its revision's folder, see last_good). Set by `remember` after each
        # applied pass.
        self.applied: dict[str, tuple[DesiredService, At | None]] = {}
        self._rebuilt: set[tuple[str, str]] = set()  # (service, revision) rebuilds already tried
        # last good services bound to their files: (id, files) -> (the service, it bound)
        self._bound: dict[tuple[int, At], tuple[DesiredService, DesiredService]] = {}
        self._learned: dict[int, DesiredService] = {}  # services whose secrets the book knows

    def remember(self, specs: Mapping[str, DesiredService], deployed: Mapping[str, object], ds: DesiredSet | None) -> None:
        """After an applied pass: each deployed service's spec (`specs`, planned from `ds`) is the
        one it last ran, at its own files or else `ds`'s."""
        at = ds.at if ds is not None else None
        self.applied = {n: (d, d.files_at(at)) for n, d in specs.items() if n in deployed}

    def desired(
        self,
        last: SnapshotRef | None,
        snapshot: SnapshotLike | None,
        ext: DesiredExtension | None,
        running: Mapping[str, str] | None = None,
    ) -> DesiredSet | None:
        """The desired set of `snapshot`, else of the last applied snapshot while its folder exists.
        `running`: service -> the backend its replicas are on (kept when it can still run it)."""
        if snapshot is None and last is not None and Path(last.root).is_dir():
            snapshot = Snapshot(last.revision, Path(last.root), last.config_path)
        if snapshot is None:
            return None
        return self._load(snapshot, ext, running or {})

    def _load(
        self, snapshot: SnapshotLike, ext: DesiredExtension | None, running: Mapping[str, str]
    ) -> DesiredSet:
        key = (
            snapshot.revision,
            str(snapshot.root),
            snapshot.config_path,
            ext.fingerprint() if ext else None,
        )
        if self._desired_cache is not None and self._desired_cache[0] == key:
            return self._desired_cache[1]
        with memo.gc_paused() if memo.enabled else nullcontext():  # a big load's objects: reconciler.engine.memo
            index: TreeIndex | None = getattr(snapshot, "index", None)  # a Snapshot from a git source
            root = Path(snapshot.root)
            load = load_tree(root, snapshot.config_path, index)
            memo.fit_all(len(load.services))
            ds = build_desired(
                load,
                revision=snapshot.revision,
                workdir=str(root.absolute()),
                code_hash=partial(code_hash_at, root, snapshot.revision, index),
                env=self.settings.env,
                salt=self.salt,
                backends=self.backends.names(),
                ships_workdir=self.backends.ships_workdir,
                domain=self.settings.domain,
                default_backend=self.settings.default_backend,
                default_backends=self.settings.default_backends,
                missing_env_ok=self.settings.missing_env_ok,
            )
        # An empty production config keeps everything (unless --allow-empty); previews must not
        # make it look non-empty, which would let the prune take production down.
        if ext is not None and (self.settings.allow_empty or not ds.empty):
            ds = ext.extend(ds)
        learned = self._learned
        self._learned = {}
        for d in ds.services.values():  # an unchanged service (the same object) is known already
            self._learned[id(d)] = d
            if learned.get(id(d)) is d:
                continue
            for name, value in d.secret_values().items():
                self.secrets.learn(name, value)
            self.secrets.learn_spec(d.spec_hash, d.secrets)
        ds, complete = with_offers(
            ds, self.backends, _catalog_offers if self.settings.missing_env_ok else None
        )
        if complete:
            self._desired_cache = (key, ds)
        return ds

    def last_good(self, doc: StateDoc, ds: DesiredSet | None) -> dict[str, DesiredService]:
        """For every deployed service whose file broke at `ds`: the spec it last ran (same spec hash
        as its record), so it keeps being healed at that spec. Remembered from earlier passes; after
        a restart rebuilt once from its revision's folder (the source keeps folders of deployed
        revisions). When that folder is gone or gives another spec hash, the service is left
        exactly as it is until its file is fixed."""
        out: dict[str, DesiredService] = {}
        if ds is None:
            return out
        for name, rec in doc.services.items():
            if not config_broken(name, rec, ds):
                continue
            d = self._bind(self.applied.get(name))
            if d is None and rec.revision and (name, rec.revision) not in self._rebuilt:
                self._rebuilt.add((name, rec.revision))
                d = self._rebuild(doc.last_snapshot, name, rec.revision, rec.backend)
                if d is not None and d.spec_hash == rec.spec_hash:
                    self.applied[name] = (d, d.at)
                else:
                    log.warning(
                        "%s: its file has errors and its last good revision %s cannot be rebuilt "
                        "with the same spec; left as it is (failed replicas are not restarted) "
                        "until the file is fixed",
                        name,
                        rec.revision,
                    )
            if d is not None and d.spec_hash == rec.spec_hash:
                out[name] = d
        return out

    def _bind(self, applied: tuple[DesiredService, At | None] | None) -> DesiredService | None:
        """A last good service bound to the files it ran from (one object per service and files)."""
        if applied is None:
            return None
        d, at = applied
        if d.at is not None or at is None:
            return d
        key = (id(d), at)
        found = self._bound.get(key)
        if found is None or found[0] is not d:  # the entry holds `d`: its id is not reused meanwhile
            if len(self._bound) > 4 * max(len(self.applied), 64):
                self._bound.clear()
            found = self._bound[key] = (d, replace(d, at=at))
        return found[1]

    def _rebuild(
        self, last: SnapshotRef | None, name: str, revision: str, backend: str | None = None
    ) -> DesiredService | None:
        if last is None:
            return None
        root = Path(last.root) if last.revision == revision else Path(last.root).parent / revision
        if not root.is_dir():
            return None
        cache = self._desired_cache  # keep the current revision's cached set
        try:
            running = {name: backend} if backend else {}
            ds = self._load(Snapshot(revision, root, last.config_path), None, running)
            d = ds.services.get(name)
            return replace(d, at=d.files_at(ds.at)) if d is not None else None
        except Exception as e:  # a best-effort fallback: never fail the pass over it
            log.warning("%s: rebuilding revision %s failed: %s: %s", name, revision, type(e).__name__, e)
            return None
        finally:
            self._desired_cache = cache


def _catalog_offers(requirements: Requirements) -> list[Offer]:
    """Offers of the shipped (or refreshed) catalog, offline: a pull request's plan prices a cloud
    service even where no cloud is configured."""
    from backends.cloud.catalog import load_catalog, resolve_catalog_path, select_offers

    return select_offers(load_catalog(resolve_catalog_path(None)), requirements)
