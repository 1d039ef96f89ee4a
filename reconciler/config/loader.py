"""Load a tree of `.dstack.yml` files into the desired set of services, with every problem found.

Discovery (reconciler.config.discovery, one walk) finds `.dstack.yml` and `*.dstack.yml` (skipping `.git` and whatever
`.gitignore` / `.dstackignore` exclude, at any depth), reads `.dstack/profiles.yml`, reads (config/reading.py) and parses every
file (config/parse.py), names each service (`name:` or a DNS label derived from its path), and
refuses two services with one name. It never raises: an unreadable file, bad YAML or a bug in a
validator becomes a diagnostic, because a broken config must never stop the reconciler from
keeping the other services right.

A symbolic link that leads outside the tree (absolute, or `../..` past the root) is never
followed: a config file that is one is an error on that file (its service is not deployed, the
others are), any other such link a warning (replicas do not get it). Links inside the tree are
followed as usual.

Speed: parsing and validating a file is pure (its bytes, its path and the default profile in, a
`ParsedFile` out), so `PARSE_CACHE` keeps results keyed by exactly those (a content digest, not a
modification time): a pass over a tree where one file changed re-parses that file only, and a
service's spec hash (computed when first read) is computed once per content. The cache is
bounded (least recently used entries go first) and results are immutable, so sharing them
between passes is safe. A load from the source's index (a git revision) is kept too (`PARSE_CACHE.last_loads`): the next
revision, whose index differs from it only in the content of a few service files, is that load
with those files parsed (`_from_last_load`: one comparison of the two indexes, no scan), as long
as each is still a valid service under the same name and model name; anything else (a file
added, removed or broken, an ignore or profiles file changed) loads as usual.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from reconciler.config import ServiceConfig
from reconciler.config.canonical import canonical_json, model_json
from reconciler.config.diagnostics import Diagnostic, Severity
from reconciler.config.discovery import (
    IGNORE_FILES,
    TEXTS_KEPT,
    TreeIndex,
    discover,
    is_config_file,
    link_outside,
    outside_links,
    scan,
    scan_index,
)
from reconciler.config.models import MEMOS
from reconciler.config.parse import FileKind, ParsedFile
from reconciler.config.parse_cache import PARSE_CACHE, ParseCache
from reconciler.config.profiles import PROFILES_PATH, ProfilesResult, parse_profiles_text
from reconciler.config.reading import CANNOT_READ, MAX_FILE_BYTES, parse_bytes, read_bytes, read_text
from reconciler.config.yamldoc import Position

__all__ = [
    "MAX_FILE_BYTES",
    "PARSE_CACHE",
    "SHARED_FIELDS",
    "TEXTS_KEPT",
    "Diagnostic",
    "LoadResult",
    "LoadedService",
    "ParseCache",
    "Severity",
    "TreeIndex",
    "canonical_json",
    "derive_service_name",
    "discover",
    "is_config_file",
    "load_tree",
    "model_json",
    "outside_links",
    "spec_hash",
]

# fields whose values the value memo shares between configs: their JSON is kept by identity
SHARED_FIELDS = frozenset(MEMOS)


@dataclass(frozen=True)
class LoadedService:
    name: str
    path: str  # posix, relative to the root
    config: ServiceConfig  # the default profile merged in

    @cached_property
    def spec_hash(self) -> str:
        """sha256 hex of the effective config (`spec_hash`), computed on first use: a cold plan
        never reads it (the engine hashes what a replica runs itself), the previews compare it."""
        return spec_hash(self.config)


@dataclass(frozen=True)
class LoadResult:
    services: dict[str, LoadedService] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # service name -> path of a file with errors
    diagnostics: list[Diagnostic] = field(default_factory=list)  # errors and warnings, sorted
    skipped: list[Diagnostic] = field(default_factory=list)  # files of other types (INFO)

    @property
    def ok(self) -> bool:
        return not any(d.severity == Severity.ERROR for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == Severity.ERROR]


def derive_service_name(path: str) -> str:
    """A valid service name from a file path: `chat/.dstack.yml` -> `chat`,
    `models/Llama_2.dstack.yml` -> `models-llama-2`, `.dstack.yml` -> `service`."""
    parts = list(PurePosixPath(path.replace("\\", "/")).parts)
    filename = parts.pop() if parts else ""
    stem = filename[: -len(".dstack.yml")] if filename.endswith(".dstack.yml") else filename
    words = [p for p in (*parts, stem) if p not in ("", ".", "..")]
    name = re.sub(r"[^a-z0-9]+", "-", "-".join(words).lower()).strip("-")
    if not name:
        return "service"
    if not name[0].isalpha():
        name = f"s-{name}"
    name = name[:41].rstrip("-")
    return name if len(name) >= 2 else f"{name}-service"


def spec_hash(config: ServiceConfig) -> str:
    """sha256 over canonical JSON of everything that changes what runs. Literal env values are in
    (changing one must roll the replicas); bare keys count by name only, their values come later."""
    # added later: a file without them keeps its old hash (`canonical.model_json`: the bytes of
    # canonical_json(model_dump(mode="json")) with those keys popped when empty)
    dropped = tuple(added for added in ("probes", "rate_limits") if not getattr(config, added))
    return hashlib.sha256(model_json(config, exclude=dropped, shared=SHARED_FIELDS)).hexdigest()


def _loaded_service(item: ParsedFile, name: str) -> LoadedService:
    """The loaded service of a valid parsed file under `name` (one per entry: its spec hash,
    when read, is computed once per content)."""

    def make() -> LoadedService:
        assert item.config is not None
        config = item.config if item.config.name else item.config.model_copy(update={"name": name})
        return LoadedService(name, item.path, config)

    return PARSE_CACHE.derived(item, name, make)


_NO_TEXTS: Mapping[bytes, bytes] = {}


def _fingerprint(profile: Mapping[str, Any] | None) -> str:
    if profile is None:
        return ""
    return json.dumps(profile, sort_keys=True, default=repr)


def _parse_file(
    root: Path,
    rel: str,
    profile: Mapping[str, Any] | None,
    profile_key: str,
    blob: bytes | None = None,
    texts: Mapping[bytes, bytes] = _NO_TEXTS,
) -> ParsedFile:
    """One config file read and parsed (through PARSE_CACHE). `blob`: its content's id from the
    source's index (`TreeIndex`): the cache is asked by it, and the file is read only on a miss,
    and not even then when the index holds the blob's bytes (`texts`: TreeIndex.texts)."""
    if blob is not None and PARSE_CACHE.enabled:

        def read_and_parse() -> ParsedFile:
            data = texts.get(blob)
            if data is None:
                data = read_bytes(f"{root}/{rel}")  # an OSError is not cached
            return parse_bytes(data, rel, profile)

        try:
            return PARSE_CACHE.parsed((rel, b"blob:" + blob, profile_key), read_and_parse)
        except OSError:
            pass  # worded below, as for any file
    try:
        data = read_bytes(f"{root}/{rel}")
    except OSError as e:
        problem = Diagnostic(rel, 1, 1, "", f"{CANNOT_READ}: {e.strerror or e}")
        return ParsedFile(FileKind.INVALID, rel, None, None, [problem])
    digest = hashlib.blake2b(data, digest_size=20).digest()
    return PARSE_CACHE.parsed((rel, digest, profile_key), lambda: parse_bytes(data, rel, profile))


def _load_profiles(root: Path) -> ProfilesResult:
    path = root / PROFILES_PATH
    target = link_outside(root, path)
    if target is not None:
        why = f"symbolic link to {target} leads outside the repository: not read"
        return ProfilesResult(None, None, [Diagnostic(PROFILES_PATH, 1, 1, "", why)])
    if not path.is_file():
        return ProfilesResult(None)
    text, problem = read_text(root, PROFILES_PATH)
    if text is None:
        return ProfilesResult(None, None, [problem] if problem else [])
    return parse_profiles_text(text, PROFILES_PATH)


def load_tree(root: Path, subpath: str | None = None, index: TreeIndex | None = None) -> LoadResult:
    """Every service under root (optionally only under root/subpath). Never raises. `index`: what
    the folder holds as its source knows it (discovery.TreeIndex): the folder is then not walked
    and a file whose content id was parsed before is not read."""
    try:
        return _load(Path(root), subpath, index)
    except Exception as e:  # the promise is "never raises"; a bug becomes a diagnostic
        where = subpath or "."
        return LoadResult(
            diagnostics=[Diagnostic(where, 1, 1, "", f"internal error: {type(e).__name__}: {e}")]
        )


def _load(root: Path, subpath: str | None, index: TreeIndex | None = None) -> LoadResult:
    diagnostics: list[Diagnostic] = []
    skipped: list[Diagnostic] = []
    if not (root / subpath if subpath else root).exists():
        return LoadResult(
            diagnostics=[Diagnostic(subpath or str(root), 1, 1, "", "no such file or directory")]
        )
    profiles = _load_profiles(root)
    diagnostics += profiles.diagnostics
    profile = profiles.default if profiles.ok else None
    profile_key = _fingerprint(profile)
    if index is not None and PARSE_CACHE.enabled and profiles.ok:
        known = _from_last_load(root, subpath, index, profile, profile_key)
        if known is not None:
            return known
    indexed = scan_index(root, index, subpath) if index is not None else None
    found, links = (indexed, []) if indexed is not None else scan(root, subpath)
    blobs = index.files if indexed is not None and index is not None else {}
    texts = index.texts if indexed is not None and index is not None else _NO_TEXTS
    linked_out = {d.path: d for d in links if d.severity == Severity.ERROR}
    diagnostics += [d for d in links if d.path not in linked_out]
    base = subpath if subpath and (root / subpath).is_dir() else None
    parsed: list[ParsedFile] = []
    PARSE_CACHE.fit(len(found))
    for rel in found:
        if rel in linked_out:
            parsed.append(ParsedFile(FileKind.INVALID, rel, None, None, [linked_out[rel]]))
            continue
        parsed.append(_parse_file(root, rel, profile, profile_key, blobs.get(rel), texts))
    by_name: dict[str, list[ParsedFile]] = {}
    for item in parsed:
        if item.kind == FileKind.SKIPPED:
            skipped += item.diagnostics
            continue
        diagnostics += item.diagnostics
        name = (
            (item.config.name if item.config else None)
            or item.name
            or derive_service_name(_relative(item.path, base))
        )
        by_name.setdefault(name, []).append(item)
    services: dict[str, LoadedService] = {}
    failed: dict[str, str] = {}
    profiles_ok = profiles.ok
    for name, items in by_name.items():
        if len(items) > 1:
            paths = [i.path for i in items]
            for item in items:
                others = ", ".join(p for p in paths if p != item.path)
                where = item.positions.get("name")
                line, column = (where.line, where.column) if where else (1, 1)
                diagnostics.append(
                    Diagnostic(
                        item.path, line, column, "name", f"service name {name!r} is also used by {others}"
                    )
                )
            failed[name] = items[0].path
            continue
        item = items[0]
        if item.config is None or not profiles_ok:
            failed[name] = item.path
            continue
        services[name] = _loaded_service(item, name)
    positions = {name: items[0].positions for name, items in by_name.items()}
    diagnostics += _refuse_shared_models(services, failed, positions)
    diagnostics.sort(key=Diagnostic.sort_key)
    skipped.sort(key=Diagnostic.sort_key)
    result = LoadResult(services, failed, diagnostics, skipped)
    if indexed is not None and index is not None and PARSE_CACHE.enabled and profiles.ok and not _unreadable(parsed):
        _keep_load(_LastLoad(subpath, profile_key, index, result, {p.path: p for p in parsed}))
    return result


@dataclass(frozen=True)
class _LastLoad:
    """A load from an index, kept so the next revision's load looks at its changed files only."""

    subpath: str | None
    profile_key: str
    index: TreeIndex
    result: LoadResult
    parsed: dict[str, ParsedFile]  # path -> its parsed file (every config file found)


_LAST_LOADS_KEPT = 4


def _unreadable(parsed: list[ParsedFile]) -> bool:
    """A file could not be read (not cached: it may be readable next time), so the load is not kept."""
    return any(d.message.startswith(CANNOT_READ) for p in parsed for d in p.diagnostics)


def _keep_load(last: _LastLoad) -> None:
    kept = PARSE_CACHE.last_loads
    kept.insert(0, last)
    del kept[_LAST_LOADS_KEPT:]


def _from_last_load(
    root: Path, subpath: str | None, index: TreeIndex, profile: Mapping[str, Any] | None, profile_key: str
) -> LoadResult | None:
    """The load of `index` made from a kept load whose index differs only in the content of a few
    config files, each still a valid service under the same name and model name as before and
    not in conflict with another (then nothing else in the result can change: the files found,
    the names, the duplicates and shared models are as they were). None: load as usual."""
    kept: list[_LastLoad] = list(PARSE_CACHE.last_loads)
    for last in kept:
        if last.subpath != subpath or last.profile_key != profile_key:
            continue
        if last.index is index:
            return last.result
        if len(last.index.files) != len(index.files):
            continue
        changed = {path for path, _ in last.index.files.items() ^ index.files.items()}
        if len(changed) > 128 or any(p not in index.files for p in changed):
            continue  # many files changed, or one added or removed: the files found may differ
        if any(p.rpartition("/")[2] in IGNORE_FILES or p == PROFILES_PATH for p in changed):
            continue
        changed = {p for p in changed if p in last.parsed}  # the content of no other file counts
        services = dict(last.result.services)
        parsed = dict(last.parsed)
        problems: list[Diagnostic] = []
        by_path = {ls.path: name for name, ls in services.items()} if changed else {}
        base = subpath if subpath and (root / subpath).is_dir() else None
        for path in sorted(changed):
            before = last.parsed[path]
            name = by_path.get(path)
            if name is None or before.config is None:
                break  # a failed or skipped file before: its problems may change others
            item = _parse_file(root, path, profile, profile_key, index.files[path], index.texts)
            new_name = item.config and (item.config.name or item.name or derive_service_name(_relative(path, base)))
            if item.kind == FileKind.SKIPPED or item.config is None or new_name != name:
                break
            old_model = services[name].config.model
            new_model = item.config.model
            if (old_model.name if old_model else None) != (new_model.name if new_model else None):
                break
            parsed[path] = item
            services[name] = _loaded_service(item, name)
            problems += item.diagnostics
        else:
            others = [d for d in last.result.diagnostics if d.path not in changed]
            diagnostics = sorted(others + problems, key=Diagnostic.sort_key)
            result = LoadResult(services, dict(last.result.failed), diagnostics, list(last.result.skipped))
            _keep_load(_LastLoad(subpath, profile_key, index, result, parsed))
            return result
    return None


def _refuse_shared_models(
    services: dict[str, LoadedService], failed: dict[str, str], positions: dict[str, Mapping[str, Position]]
) -> list[Diagnostic]:
    """Two services mapping one OpenAI model name: the gateway could route only one of them, so
    both are errors (each left as it runs) rather than one silently winning."""
    by_model: dict[str, list[str]] = {}
    for name, service in services.items():
        if service.config.model is not None:
            by_model.setdefault(service.config.model.name, []).append(name)
    out: list[Diagnostic] = []
    for model, names in by_model.items():
        if len(names) < 2:
            continue
        paths = {name: services[name].path for name in names}
        for name in names:
            failed[name] = services.pop(name).path
            others = ", ".join(f"{o} ({paths[o]})" for o in names if o != name)
            where = positions.get(name, {}).get("model.name")
            line, column = (where.line, where.column) if where else (1, 1)
            message = f"model name {model!r} is also mapped by {others}"
            out.append(Diagnostic(paths[name], line, column, "model.name", message))
    return out


def _relative(path: str, base: str | None) -> str:
    if base and path.startswith(base.rstrip("/") + "/"):
        return path[len(base.rstrip("/")) + 1 :]
    return path
