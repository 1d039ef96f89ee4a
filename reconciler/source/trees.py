"""Trees of files as the source handles them: walking, content hashes, copies, safe tar extraction.

Why a module of its own: both kinds of source (a git revision extracted from `git archive`, a
watched working tree copied as it is) and the code hash (code_files) work on plain folders the
same way: the same folders skipped, links kept as links and never followed, nothing written
outside the destination. checkout.py keeps what is particular to each source.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from reconciler.config.loader import MAX_FILE_BYTES, TEXTS_KEPT, TreeIndex, is_config_file
from tidegate.fsio import build_dir_atomic

# A `shutil.copytree`-style ignore callable: (directory, names in it) -> names to leave out.
IgnoreFn = Callable[[str, list[str]], set[str]]
# VCS and cache folders: never part of a revision, a hash or a copy.
SKIP_DIRS = frozenset({".git", "__pycache__", ".venv", "node_modules", ".mypy_cache", ".pytest_cache"})
# False: a revision is always extracted through `git archive` (the benchmark's "before").
FROM_INDEX = True


def walk(path: Path, ignore: IgnoreFn | None = None) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(path):
        skip = ignore(dirpath, [*dirnames, *filenames]) if ignore is not None else set()
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and d not in skip)
        for name in sorted(filenames):
            if name not in skip:
                yield Path(dirpath) / name


def tree_hash(path: Path, ignore: IgnoreFn | None = None) -> str:
    """Content hash of a folder: relative paths, modes and bytes (VCS/cache folders skipped, and
    whatever `ignore` leaves out). A file that cannot be read counts by its name and the error,
    so a file vanishing mid-walk does not abort the hash."""
    h = hashlib.sha256()
    for file in walk(path, ignore):
        rel = file.relative_to(path).as_posix()
        if file.is_symlink():
            h.update(f"{rel}\0link:{os.readlink(file)}\0".encode())
            continue
        if not file.is_file():
            continue
        h.update(rel.encode() + b"\0")
        h.update(b"x" if os.access(file, os.X_OK) else b"-")
        try:
            with file.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        except OSError as e:
            h.update(f"unreadable:{e.errno}".encode())
    return h.hexdigest()


def copy_tree(src: Path, dst: Path, ignore: IgnoreFn | None = None) -> None:
    """Files as they are; symbolic links as links (never followed), so the loader sees the tree
    the user has, links leading outside it included (it reports those)."""
    for file in walk(src, ignore):
        if not file.is_symlink() and not file.is_file():
            continue
        target = dst / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if file.is_symlink():
            os.symlink(os.readlink(file), target)
        else:
            shutil.copy2(file, target)


def extract_tar(buf: io.BytesIO, dst: Path) -> None:
    """Extract a `git archive` tar safely: nothing is ever written outside `dst` or through a
    link. A symbolic link leading outside the tree is not extracted by the filter but recreated
    as the same link afterwards (never followed), so the loader reports it on its file exactly as
    it does for a working tree, and the replicas' copy leaves it out."""
    outside: list[tuple[str, str]] = []
    with tarfile.open(fileobj=buf, mode="r:") as tar:
        if hasattr(tarfile, "data_filter"):

            def keep(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
                try:
                    return tarfile.data_filter(member, path)
                except tarfile.FilterError:
                    if member.issym():
                        outside.append((member.name, member.linkname))
                    return None  # anything else that would escape is left out

            tar.extractall(dst, filter=keep)
        else:  # Python < 3.11.4: reject escaping members ourselves
            for member in tar.getmembers():
                target = (dst / member.name).resolve()
                if not target.is_relative_to(dst.resolve()) or member.issym() or member.islnk():
                    continue
                tar.extract(member, dst)
    for name, linkname in outside:
        link = dst / name
        if link.parent.is_dir() and not link.is_symlink() and not link.exists() and link.parent.resolve().is_relative_to(dst.resolve()):
            os.symlink(linkname, link)


def write_blobs(git_dir: Path, index: TreeIndex, dst: Path, previous: tuple[Path, TreeIndex] | None = None) -> None:
    """Every file of `index` into `dst` (mode 0644, or 0755 for an executable), its bytes streamed
    from the repository's objects by one `git cat-file --batch`: what `git archive` + `extract_tar`
    write for a plain tree (the only kind with an index), without a tar file in between (Python's
    tarfile costs most of a checkout's time on a repo of many small files). `previous`: an earlier
    revision's folder and index; a file with the same blob id and mode there is hard-linked
    instead of written (revision folders are never written once built; a replica gets a copy).
    The config files' bytes are kept in `index.texts` (the loader's cold load then reads none).
    Raises OSError when git answers anything but the blobs asked for, or a link fails."""
    old: dict[tuple[bytes, bool], str] = {}
    if previous is not None:
        for rel, blob in previous[1].files.items():
            old.setdefault((blob, rel in previous[1].executable), rel)
    made: set[str] = set()
    paths: list[str] = []
    kept = sum(map(len, index.texts.values()))
    for rel, blob in index.files.items():
        same = old.get((blob, rel in index.executable))
        if same is None or previous is None:
            paths.append(rel)
            continue
        _folder_for(dst, rel, made)
        os.link(os.path.join(previous[0], same), os.path.join(dst, rel))
        text = previous[1].texts.get(blob)
        if text is not None and blob not in index.texts and kept + len(text) <= TEXTS_KEPT:
            index.texts[blob] = text
            kept += len(text)
    if not paths:
        return
    proc = subprocess.Popen(
        ["git", "--git-dir", str(git_dir), "cat-file", "--batch"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    stdin, out = proc.stdin, proc.stdout

    def feed() -> None:  # a thread: git answers while it is asked (no pipe deadlock)
        try:
            for rel in paths:
                stdin.write(index.files[rel].hex().encode() + b"\n")
            stdin.close()
        except OSError:
            pass  # git stopped: the reader reports it

    feeder = threading.Thread(target=feed, name="tidegate-cat-file", daemon=True)
    feeder.start()
    try:
        for rel in paths:
            header = out.readline().split()
            if len(header) != 3 or header[1] != b"blob" or header[0] != index.files[rel].hex().encode():
                raise OSError(f"git cat-file did not give the blob of {rel}: {b' '.join(header)!r}")
            _folder_for(dst, rel, made)
            target = os.path.join(dst, rel)
            size = int(header[2])
            if size <= MAX_FILE_BYTES and kept + size <= TEXTS_KEPT and is_config_file(rel.rpartition("/")[2]):
                _write_kept(out, target, rel, size, index.texts, index.files[rel])
                kept += size
                os.chmod(target, 0o755 if rel in index.executable else 0o644)
                continue
            with open(target, "wb") as f:
                left = size
                while left:
                    chunk = out.read(min(left, 1 << 20))
                    if not chunk:
                        raise OSError(f"git cat-file ended inside {rel}")
                    f.write(chunk)
                    left -= len(chunk)
            out.read(1)  # the newline after each object
            os.chmod(target, 0o755 if rel in index.executable else 0o644)
    except BaseException:
        proc.kill()
        raise
    finally:
        out.close()
        feeder.join()
        proc.wait()


def _write_kept(out: IO[bytes], target: str, rel: str, size: int, texts: dict[bytes, bytes], blob: bytes) -> None:
    """One blob of `size` bytes from `git cat-file --batch` into `target`, its bytes kept in `texts`."""
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = out.read(left)
        if not chunk:
            raise OSError(f"git cat-file ended inside {rel}")
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks) if len(chunks) != 1 else chunks[0]
    with open(target, "wb") as f:
        f.write(data)
    out.read(1)  # the newline after each object
    texts[blob] = data


def _folder_for(dst: Path, rel: str, made: set[str]) -> None:
    folder = rel.rpartition("/")[0]
    if folder and folder not in made:
        os.makedirs(os.path.join(dst, folder), exist_ok=True)
        made.add(folder)


def extract_revision(
    repo: Any, sha: str, root: Path, index: TreeIndex | None = None, previous: tuple[Path, TreeIndex] | None = None
) -> None:
    """The files of `sha` into `root`, atomically. Raises git.GitCommandError for the caller to word.
    With `sha`'s index (`tree_index`): written straight from the objects (`trees.write_blobs`,
    linking what `previous` holds already), else, or when that fails, through `git archive`."""
    if index is not None and index.files and FROM_INDEX:
        try:
            build_dir_atomic(root, lambda tmp: write_blobs(Path(repo.git_dir), index, tmp, previous))
            return
        except OSError:
            pass  # the archive below, which words its own errors
    if not repo.git.ls_tree(sha):
        # An empty tree (every file deleted): git archive writes only a pax header, which
        # tarfile refuses; the checkout is simply an empty folder.
        build_dir_atomic(root, lambda tmp: None)
        return
    buf = io.BytesIO()
    repo.archive(buf, sha, format="tar")
    buf.seek(0)
    build_dir_atomic(root, lambda tmp: extract_tar(buf, tmp))


def tree_index(repo: Any, sha: str) -> TreeIndex | None:
    """The index of `sha`'s files (`git ls-tree -r`: path -> blob id, executables), which is what
    `extract_revision` writes; None when the folder may differ from it or hold what an index does
    not describe: a symbolic link (the extraction may leave one out), a submodule (an empty
    folder), a `.gitattributes` (export-ignore / export-subst change what `git archive` writes)."""
    out = repo.git.ls_tree("-r", "-z", "--full-tree", sha, stdout_as_string=False)
    files: dict[str, bytes] = {}
    executable: set[str] = set()
    for line in out.split(b"\0"):
        if not line:
            continue
        meta, _, raw = line.partition(b"\t")
        mode, kind, blob = meta.split(b" ")
        path = raw.decode("utf-8", "surrogateescape")
        if kind != b"blob" or mode not in (b"100644", b"100755") or path.rpartition("/")[2] == ".gitattributes":
            return None
        if path.startswith("/") or {"", ".", "..", ".git"} & set(path.split("/")):
            return None  # git refuses such a tree; the archive path's filter handles it
        files[path] = bytes.fromhex(blob.decode())
        if mode == b"100755":
            executable.add(path)
    return TreeIndex(files, frozenset(executable))
