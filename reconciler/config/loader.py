"""Load a tree of `.dstack.yml` files into the desired set of services, with every problem found.

Discovery walks the root for `.dstack.yml` and `*.dstack.yml` (skipping `.git` and whatever
`.gitignore` / `.dstackignore` exclude, at any depth), reads `.dstack/profiles.yml`, parses every
file (config/parse.py), names each service (`name:` or a DNS label derived from its path), and
refuses two services with one name. It never raises: an unreadable file, bad YAML or a bug in a
validator becomes a diagnostic, because a broken config must never stop the reconciler from
keeping the other services right.

A symbolic link that leads outside the tree (absolute, or `../..` past the root) is never
followed: a config file that is one is an error on that file (its service is not deployed, the
others are), any other such link a warning (replicas do not get it). Links inside the tree are
followed as usual.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pathspec

from reconciler.config import ServiceConfig
from reconciler.config.diagnostics import Diagnostic, Severity
from reconciler.config.parse import FileKind, ParsedFile, parse_service_text
from reconciler.config.profiles import PROFILES_PATH, ProfilesResult, parse_profiles_text

__all__ = [
    "Diagnostic",
    "LoadResult",
    "LoadedService",
    "Severity",
    "derive_service_name",
    "discover",
    "load_tree",
    "spec_hash",
]

IGNORE_FILES = (".gitignore", ".dstackignore")
MAX_FILE_BYTES = 1_000_000
_SKIP_DIRS = {".git"}


@dataclass(frozen=True)
class LoadedService:
    name: str
    path: str  # posix, relative to the root
    config: ServiceConfig  # the default profile merged in
    spec_hash: str  # sha256 hex of the effective config (see spec_hash)


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


def is_config_file(name: str) -> bool:
    return name == ".dstack.yml" or (name.endswith(".dstack.yml") and len(name) > len(".dstack.yml"))


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
    payload = config.model_dump(mode="json")
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def link_outside(root: Path, path: Path) -> str | None:
    """The target of `path` when it is a symbolic link leading outside `root` (or a loop), else None."""
    if not path.is_symlink():
        return None
    try:
        target = os.readlink(path)
        resolved = (path.parent / target).resolve(strict=False)
        inside = resolved.is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):
        return "?"
    return None if inside else target


def outside_links(root: Path, subpath: str | None = None) -> list[Diagnostic]:
    """A diagnostic for every symbolic link under root (or root/subpath) that leads outside root:
    an error for a config file, a warning for anything else (the profiles file: _load_profiles)."""
    start = root / subpath if subpath else root
    found: list[Diagnostic] = []
    if start.is_symlink() or not start.is_dir():
        candidates = [start]
    else:
        candidates = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            here = Path(dirpath)
            candidates += [here / n for n in (*dirnames, *filenames)]
    for path in candidates:
        target = link_outside(root, path)
        if target is None:
            continue
        rel = path.relative_to(root).as_posix()
        if rel == PROFILES_PATH:
            continue  # reported by _load_profiles (an error that fails every service)
        if is_config_file(path.name):
            found.append(Diagnostic(rel, 1, 1, "", f"symbolic link to {target} leads outside the repository: not read"))
        else:
            found.append(
                Diagnostic(
                    rel, 1, 1, "", f"symbolic link to {target} leads outside the repository: replicas do not get it",
                    Severity.WARNING,
                )
            )
    return sorted(found, key=Diagnostic.sort_key)


def discover(root: Path, subpath: str | None = None) -> list[str]:
    """Config files under root (or root/subpath, which may be a file), posix paths relative to root."""
    start = root / subpath if subpath else root
    if start.is_file():
        return [start.relative_to(root).as_posix()] if is_config_file(start.name) else []
    found: list[str] = []
    specs: dict[str, pathspec.GitIgnoreSpec] = {}  # directory (posix, relative to root) -> its ignore rules
    for dirpath, dirnames, filenames in os.walk(start):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        spec = _read_ignores(here)
        if spec is not None:
            specs[rel_dir] = spec
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not _ignored(_join(rel_dir, d) + "/", specs)
        )
        for name in sorted(filenames):
            rel = _join(rel_dir, name)
            if is_config_file(name) and not _ignored(rel, specs):
                found.append(rel)
    return found


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _read_ignores(directory: Path) -> pathspec.GitIgnoreSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        try:
            lines += (directory / name).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def _ignored(rel: str, specs: dict[str, pathspec.GitIgnoreSpec]) -> bool:
    for base, spec in specs.items():
        if base and not rel.startswith(base + "/"):
            continue
        if spec.match_file(rel[len(base) + 1 :] if base else rel):
            return True
    return False


def _read(root: Path, rel: str) -> tuple[str | None, Diagnostic | None]:
    try:
        data = (root / rel).read_bytes()
    except OSError as e:
        return None, Diagnostic(rel, 1, 1, "", f"cannot read the file: {e.strerror or e}")
    if len(data) > MAX_FILE_BYTES:
        return None, Diagnostic(rel, 1, 1, "", f"the file is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, Diagnostic(rel, line, 1, "", "the file is not valid UTF-8")


def _load_profiles(root: Path) -> ProfilesResult:
    path = root / PROFILES_PATH
    target = link_outside(root, path)
    if target is not None:
        why = f"symbolic link to {target} leads outside the repository: not read"
        return ProfilesResult(None, None, [Diagnostic(PROFILES_PATH, 1, 1, "", why)])
    if not path.is_file():
        return ProfilesResult(None)
    text, problem = _read(root, PROFILES_PATH)
    if text is None:
        return ProfilesResult(None, None, [problem] if problem else [])
    return parse_profiles_text(text, PROFILES_PATH)


def load_tree(root: Path, subpath: str | None = None) -> LoadResult:
    """Every service under root (optionally only under root/subpath). Never raises."""
    try:
        return _load(Path(root), subpath)
    except Exception as e:  # the promise is "never raises"; a bug becomes a diagnostic
        where = subpath or "."
        return LoadResult(
            diagnostics=[Diagnostic(where, 1, 1, "", f"internal error: {type(e).__name__}: {e}")]
        )


def _load(root: Path, subpath: str | None) -> LoadResult:
    diagnostics: list[Diagnostic] = []
    skipped: list[Diagnostic] = []
    if not (root / subpath if subpath else root).exists():
        return LoadResult(
            diagnostics=[Diagnostic(subpath or str(root), 1, 1, "", "no such file or directory")]
        )
    profiles = _load_profiles(root)
    diagnostics += profiles.diagnostics
    links = outside_links(root, subpath)
    linked_out = {d.path: d for d in links if d.severity == Severity.ERROR}
    diagnostics += [d for d in links if d.path not in linked_out]
    base = subpath if subpath and (root / subpath).is_dir() else None
    parsed: list[ParsedFile] = []
    for rel in discover(root, subpath):
        if rel in linked_out:
            parsed.append(ParsedFile(FileKind.INVALID, rel, None, None, [linked_out[rel]]))
            continue
        text, problem = _read(root, rel)
        if text is None:
            parsed.append(ParsedFile(FileKind.INVALID, rel, None, None, [problem] if problem else []))
            continue
        # a broken profiles file fails every service (below); do not blame the service files for it
        parsed.append(parse_service_text(text, rel, profiles.default if profiles.ok else None))
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
    for name, items in by_name.items():
        if len(items) > 1:
            paths = [i.path for i in items]
            for item in items:
                others = ", ".join(p for p in paths if p != item.path)
                diagnostics.append(
                    Diagnostic(item.path, 1, 1, "name", f"service name {name!r} is also used by {others}")
                )
            failed[name] = items[0].path
            continue
        item = items[0]
        if item.config is None or not profiles.ok:
            failed[name] = item.path
            continue
        config = item.config if item.config.name else item.config.model_copy(update={"name": name})
        services[name] = LoadedService(name, item.path, config, spec_hash(config))
    diagnostics.sort(key=Diagnostic.sort_key)
    skipped.sort(key=Diagnostic.sort_key)
    return LoadResult(services, failed, diagnostics, skipped)


def _relative(path: str, base: str | None) -> str:
    if base and path.startswith(base.rstrip("/") + "/"):
        return path[len(base.rstrip("/")) + 1 :]
    return path

