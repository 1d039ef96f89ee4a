"""Symbolic links leading outside the config repository: a positioned diagnostic on that file,
never followed (nothing of the target is read or shown), the other services still load."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from backends.workdir import copy_workdir
from reconciler.cli.validate_cmd import OutputFormat, validate_paths
from reconciler.config.loader import Severity, load_tree
from reconciler.source.trees import copy_tree as _copy_tree
from reconciler.source.trees import extract_tar as _extract_tar
from reconciler.source.trees import tree_hash

GOOD = "type: service\nname: good\ncommands: [python3 -m http.server 8000]\nport: 8000\n"
SECRET_LINE = "secret-line-outside-the-repo"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside.dstack.yml"
    target.write_text(f"type: service\nname: leaked\n# {SECRET_LINE}\ncommands: [x]\nport: 1\n")
    return target


@pytest.mark.parametrize(
    ("link", "target_of", "severity", "fails"),
    [
        pytest.param("evil.dstack.yml", "absolute", Severity.ERROR, "evil", id="absolute-config-file"),
        pytest.param("sub/evil.dstack.yml", "dotdot", Severity.ERROR, "sub-evil", id="dotdot-config-file"),
        pytest.param("data", "updir", Severity.WARNING, None, id="dotdot-directory"),
        pytest.param("notes.txt", "absolute", Severity.WARNING, None, id="absolute-other-file"),
        pytest.param(".dstack/profiles.yml", "absolute", Severity.ERROR, "good", id="profiles-file"),
    ],
)
def test_links_outside_are_diagnosed_on_their_file(
    tmp_path: Path, outside: Path, link: str, target_of: str, severity: Severity, fails: str | None
) -> None:
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "good.dstack.yml").write_text(GOOD)
    path = repo / link
    path.parent.mkdir(parents=True, exist_ok=True)
    target = {"absolute": str(outside), "dotdot": "../../outside.dstack.yml", "updir": "../.."}[target_of]
    os.symlink(target, path)
    result = load_tree(repo)
    found = [d for d in result.diagnostics if d.path == link]
    assert len(found) == 1 and found[0].severity == severity and (found[0].line, found[0].column) == (1, 1)
    assert "leads outside the repository" in found[0].message
    assert "leaked" not in result.services and SECRET_LINE not in repr(result)
    if fails == "good":  # a profiles file linked out fails every service, like a broken one
        assert "good" in result.failed
    else:
        assert "good" in result.services
        if fails:
            assert fails in result.failed


def test_a_link_inside_the_repo_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.yml").write_text(GOOD)
    os.symlink("real.yml", tmp_path / "alias.dstack.yml")
    result = load_tree(tmp_path)
    assert "good" in result.services and result.diagnostics == []


def test_validate_fails_on_it_and_never_prints_the_target(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "good.dstack.yml").write_text(GOOD)
    os.symlink(outside, tmp_path / "repo" / "evil.dstack.yml")
    out, err = io.StringIO(), io.StringIO()
    assert validate_paths([str(tmp_path / "repo")], OutputFormat.TEXT, out, err) == 1
    text = out.getvalue()
    assert "evil.dstack.yml:1:1: error: symbolic link to" in text and SECRET_LINE not in text
    assert "1 valid service, 1 error(s)" in text


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in entries:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    buf.seek(0)
    return buf


def test_git_extraction_keeps_outside_links_as_links_and_replicas_never_get_them(tmp_path: Path) -> None:
    def link(name: str, target: str) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        return info

    buf = _tar(
        [tarfile.TarInfo("good.dstack.yml"), link("evil.dstack.yml", "/etc/passwd"), link("up", "../.."),
         link("inside", "good.dstack.yml")],
        {"good.dstack.yml": GOOD.encode()},
    )
    dst = tmp_path / "rev"
    dst.mkdir()
    _extract_tar(buf, dst)  # before: tarfile.FilterError on every pass
    assert os.readlink(dst / "evil.dstack.yml") == "/etc/passwd" and os.readlink(dst / "up") == "../.."
    result = load_tree(dst)
    assert "good" in result.services and {d.path for d in result.diagnostics} == {"evil.dstack.yml", "up"}
    work = tmp_path / "work"
    copy_workdir(str(dst), work)
    assert sorted(p.name for p in work.iterdir()) == ["good.dstack.yml", "inside"]


def test_a_watched_tree_copies_links_as_links_and_hashes_their_targets(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.dstack.yml").write_text(GOOD)
    os.symlink("/etc/hostname", src / "evil.dstack.yml")
    before = tree_hash(src)
    dst = tmp_path / "dst"
    _copy_tree(src, dst)
    assert os.readlink(dst / "evil.dstack.yml") == "/etc/hostname"
    (src / "evil.dstack.yml").unlink()
    os.symlink("/etc/passwd", src / "evil.dstack.yml")
    assert tree_hash(src) != before
