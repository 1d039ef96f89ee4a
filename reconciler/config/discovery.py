"""Finding a tree's config files and the symbolic links in it that lead outside, in one walk.

Why a module of its own: the loader reads what this finds. Discovery walks the root for
`.dstack.yml` and `*.dstack.yml` (skipping `.git` and whatever `.gitignore` / `.dstackignore`
exclude, at any depth); every symbolic link leading outside the tree is reported (folders the
ignore files leave out included). `discover` and `outside_links` each walk the tree; the loader
asks `scan` for both from a single walk (a listing per folder, not two), which a test holds equal
to the pair.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from reconciler.config.diagnostics import Diagnostic, Severity
from reconciler.config.profiles import PROFILES_PATH

IGNORE_FILES = (".gitignore", ".dstackignore")
_SKIP_DIRS = {".git"}


def is_config_file(name: str) -> bool:
    return name == ".dstack.yml" or (name.endswith(".dstack.yml") and len(name) > len(".dstack.yml"))



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
    else:  # only the entries that are links (the directory entry says so: no stat per file)
        candidates = [Path(p) for p in _links_under(str(start))]
    for path in candidates:
        diagnostic = _link_diagnostic(root, path)
        if diagnostic is not None:
            found.append(diagnostic)
    return sorted(found, key=Diagnostic.sort_key)


def _link_diagnostic(root: Path, path: Path) -> Diagnostic | None:
    target = link_outside(root, path)
    if target is None:
        return None
    rel = path.relative_to(root).as_posix()
    if rel == PROFILES_PATH:
        return None  # reported by _load_profiles (an error that fails every service)
    if is_config_file(path.name):
        return Diagnostic(rel, 1, 1, "", f"symbolic link to {target} leads outside the repository: not read")
    return Diagnostic(
        rel, 1, 1, "", f"symbolic link to {target} leads outside the repository: replicas do not get it",
        Severity.WARNING,
    )


def _links_under(top: str) -> list[str]:
    """Paths of the symbolic links under `top`, walked as os.walk does (links to directories are
    not descended, `.git` directories skipped)."""
    found: list[str] = []
    pending = [top]
    while pending:
        here = pending.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue  # os.walk skips unreadable directories the same way
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir and entry.name in _SKIP_DIRS:
                continue
            if entry.is_symlink():
                found.append(entry.path)
            elif is_dir:
                pending.append(entry.path)
    return found


def discover(root: Path, subpath: str | None = None) -> list[str]:
    """Config files under root (or root/subpath, which may be a file), posix paths relative to root."""
    start = root / subpath if subpath else root
    if start.is_file():
        return [start.relative_to(root).as_posix()] if is_config_file(start.name) else []
    found: list[str] = []
    specs: dict[str, pathspec.GitIgnoreSpec] = {}  # directory (posix, relative to root) -> its ignore rules
    top = str(start)
    rel_top = start.relative_to(root).as_posix()
    rel_top = "" if rel_top == "." else rel_top
    for dirpath, dirnames, filenames in os.walk(top):
        # string arithmetic, not pathlib: this runs once per directory of the tree on every load
        rel_dir = _join(rel_top, dirpath[len(top) :].strip(os.sep).replace(os.sep, "/")).rstrip("/")
        if any(n in filenames for n in IGNORE_FILES):
            spec = _read_ignores(Path(dirpath))
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


def scan(root: Path, subpath: str | None) -> tuple[list[str], list[Diagnostic]]:
    """`discover(root, subpath)` and `outside_links(root, subpath)` from one walk of the tree
    (each walked it on its own: two directory listings per folder on every load). Folders the
    ignore files leave out are still walked for links, as `outside_links` does."""
    start = root / subpath if subpath else root
    if start.is_symlink() or not start.is_dir():
        return discover(root, subpath), outside_links(root, subpath)
    rel_top = start.relative_to(root).as_posix()
    found: list[str] = []
    links: list[str] = []
    specs: dict[str, pathspec.GitIgnoreSpec] = {}
    _scan_dir(str(start), "" if rel_top == "." else rel_top, True, specs, found, links)
    diagnostics: list[Diagnostic] = []
    for link in links:
        diagnostic = _link_diagnostic(root, Path(link))
        if diagnostic is not None:
            diagnostics.append(diagnostic)
    return found, sorted(diagnostics, key=Diagnostic.sort_key)


def _scan_dir(
    directory: str,
    rel_dir: str,
    visible: bool,
    specs: dict[str, pathspec.GitIgnoreSpec],
    found: list[str],
    links: list[str],
) -> None:
    """One folder for `_scan`, in `discover`'s order (its files by name, then its sub-folders by
    name, as `os.walk` top-down); `visible`: not left out by an ignore file (configs counted)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return  # os.walk and _links_under skip an unreadable folder the same way
    files: list[str] = []
    dirs: list[tuple[str, str]] = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir and entry.name in _SKIP_DIRS:
            continue
        if entry.is_symlink():
            links.append(entry.path)
            if is_dir:
                continue  # listed by os.walk among the folders, never entered
        if is_dir:
            dirs.append((entry.name, entry.path))
        else:
            files.append(entry.name)
    if visible and any(n in files for n in IGNORE_FILES):
        spec = _read_ignores(Path(directory))
        if spec is not None:
            specs[rel_dir] = spec
    if visible:
        for name in sorted(files):
            rel = _join(rel_dir, name)
            if is_config_file(name) and not _ignored(rel, specs):
                found.append(rel)
    for name, path in sorted(dirs):
        rel = _join(rel_dir, name)
        _scan_dir(path, rel, visible and not _ignored(rel + "/", specs), specs, found, links)


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


def _ignored(rel: str, specs: dict[str, pathspec.GitIgnoreSpec], below: str | None = None) -> bool:
    """Whether the ignore rules of a folder above `rel` leave it out (`below`: not those of that
    folder itself or of folders inside it)."""
    for base, spec in specs.items():
        if base and not rel.startswith(base + "/"):
            continue
        if below is not None and (base == below or base.startswith(below + "/") if below else True):
            continue
        if spec.match_file(rel[len(base) + 1 :] if base else rel):
            return True
    return False


@dataclass(frozen=True)
class TreeIndex:
    """What a checkout folder holds, as its source knows it without reading the folder: every
    file's posix path relative to the root -> an id of its content (a git blob id), and which
    files are executable. The source makes one only for a folder it extracted from exactly these
    objects and only when the folder is plain (no symbolic link, no submodule, no `.gitattributes`
    that could make the extraction leave a file out or rewrite it), so `scan_index` (and the code
    hash, reconciler.source.code_files) can stand for the walk. `files` is kept in `walk_order`.

    `texts`: blob id -> the bytes of config files the source wrote into the folder from this
    index (at most TEXTS_KEPT bytes in all), so a cold load need not read them back from the
    folder: a blob id names exactly one content, the one the folder's file holds."""

    files: Mapping[str, bytes]
    executable: frozenset[str] = frozenset()
    texts: dict[bytes, bytes] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", {p: self.files[p] for p in sorted(self.files, key=walk_order)})


TEXTS_KEPT = 32 << 20  # bytes of config files a TreeIndex keeps (`texts`)


def scan_index(root: Path, index: TreeIndex, subpath: str | None) -> list[str] | None:
    """`scan(root, subpath)`'s config files from the index instead of a walk, in the same order
    (no links to report: an indexed tree has none); None when the index cannot say (a subpath
    that is a file or is missing: the walk handles those). Ignore files are read from the folder."""
    rel_top = (subpath or "").strip("/")
    rel_top = "" if rel_top in ("", ".") else rel_top
    if rel_top and rel_top in index.files:
        return None
    prefix = rel_top + "/" if rel_top else ""
    paths = [p for p in index.files if p.startswith(prefix)] if prefix else list(index.files)
    if rel_top and not paths:
        return None
    ignore_dirs = {p.rpartition("/")[0] for p in paths if p.rpartition("/")[2] in IGNORE_FILES}
    specs: dict[str, pathspec.GitIgnoreSpec] = {}
    for d in sorted(ignore_dirs, key=lambda d: d.count("/") if d else -1):
        spec = _read_ignores(root / d if d else root)
        if spec is not None:
            specs[d] = spec
    hidden: dict[str, bool] = {rel_top: False}  # folder -> left out (itself or a folder above it)
    found: list[str] = []
    for rel in paths:
        folder, _, name = rel.rpartition("/")
        if is_config_file(name) and not _is_hidden(folder, hidden, specs) and not _ignored(rel, specs):
            found.append(rel)
    return found  # in walk order, as the index is


def _is_hidden(folder: str, hidden: dict[str, bool], specs: dict[str, pathspec.GitIgnoreSpec]) -> bool:
    """Whether `folder` or one above it is left out (`hidden`: what is known so far, filled in).
    A module function, not a closure: a recursive closure is a reference cycle per load."""
    found = hidden.get(folder)
    if found is None:
        parent = folder.rpartition("/")[0]
        # the folders above it only: its own ignore files are read once it is entered
        found = _is_hidden(parent, hidden, specs) or _ignored(folder + "/", specs, below=folder)
        hidden[folder] = found
    return found


def walk_order(rel: str) -> tuple[tuple[int, str], ...]:
    """The position of a file in a top-down walk that lists a folder's files (by name) before
    its sub-folders (by name), as `os.walk` and `scan` do."""
    *folders, name = rel.split("/")
    return (*((1, f) for f in folders), (0, name))
