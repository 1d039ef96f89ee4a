"""The code hash in the replica spec: which pushes roll a service's replicas and which do not.

Two checkouts of one repository (a base and a changed copy, at different revisions) go through
the real loader and `build_desired`; the table says whether `web`'s spec hash moves.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.config.loader import load_tree
from reconciler.engine.desired import DesiredSet, build_desired, env_values_hash, replica_spec_hash
from reconciler.engine.plan import Desired, Target, plan
from reconciler.render.plan_output import render_plan
from reconciler.source import code_files
from reconciler.state.records import ServiceRecord
from tests.reconciler.fakes import only_local_ships_workdir


def service(name: str, backend: str = "local", greeting: str = "hi") -> str:
    return textwrap.dedent(
        f"""\
        type: service
        name: {name}
        env:
          - GREETING={greeting}
        commands:
          - python3 app.py 8000
        port: 8000
        auth: false
        backends: [{backend}]
        resources:
          cpu: 1..
          memory: 64MB..
          disk: 1GB..
        """
    )


def make_repo(root: Path, backend: str = "local") -> None:
    files = {
        "web/.dstack.yml": service("web", backend),
        "other.dstack.yml": service("other"),
        "app.py": "print('v1')\n",
        "lib/util.py": "X = 1\n",
        "data/weights.bin": "0000",
        "notes.log": "old\n",
        ".dstackignore": "# not shipped\ndata/\n*.log\n",
        ".dstack/profiles.yml": "profiles:\n  - name: default\n    default: true\n",
        ".git/HEAD": "ref: refs/heads/main\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def desired(root: Path, revision: str) -> DesiredSet:
    ds = build_desired(
        load_tree(root), revision=revision, workdir=str(root), env={}, salt="s", backends=["local", "aws"],
        ships_workdir=only_local_ships_workdir,
    )
    assert "web" in ds.services, (ds.blocked, ds.diagnostics)
    return ds


def write(rel: str, text: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)

    return change


def chmod_x(rel: str) -> Callable[[Path], None]:
    return lambda root: os.chmod(root / rel, 0o755)


@pytest.mark.parametrize(
    ("backend", "change", "rolls"),
    [
        pytest.param(
            "local",
            write("other.dstack.yml", service("other", greeting="new")),
            False,
            id="another-service-config-no-roll",
        ),
        pytest.param("local", write("app.py", "print('v2')\n"), True, id="code-file-rolls"),
        pytest.param("local", write("lib/util.py", "X = 2\n"), True, id="nested-code-file-rolls"),
        pytest.param("local", write("lib/new.py", "Y = 1\n"), True, id="added-file-rolls"),
        pytest.param("local", chmod_x("app.py"), True, id="exec-bit-rolls"),
        pytest.param("local", write("data/weights.bin", "1111"), False, id="dstackignored-folder-no-roll"),
        pytest.param("local", write("notes.log", "new\n"), False, id="dstackignored-pattern-no-roll"),
        pytest.param("local", write(".git/HEAD", "ref: refs/heads/x\n"), False, id="git-folder-no-roll"),
        pytest.param(
            "local",
            write(".dstack/profiles.yml", "# a comment\nprofiles: []\n"),
            False,
            id="dstack-folder-no-roll",
        ),
        pytest.param("local", write("new.dstack.yml", service("third")), False, id="new-config-no-roll"),
        pytest.param(
            "local", write("web/.dstack.yml", service("web", greeting="x")), True, id="own-config-rolls"
        ),
        pytest.param("aws", write("app.py", "print('v2')\n"), False, id="cloud-backend-code-no-roll"),
        pytest.param(
            "local",
            write("web/.dstack.yml", service("web") + "retry: true\nmax_duration: off\n"),
            False,
            id="retry-true-and-max-duration-off-say-what-runs-anyway-no-roll",
        ),
        pytest.param(
            "aws",
            write("web/.dstack.yml", service("web", "aws", greeting="x")),
            True,
            id="cloud-backend-own-config-rolls",
        ),
    ],
)
def test_which_pushes_roll_web(
    tmp_path: Path, backend: str, change: Callable[[Path], None], rolls: bool
) -> None:
    base, head = tmp_path / "base", tmp_path / "head"
    base.mkdir()
    make_repo(base, backend)
    shutil.copytree(base, head)
    change(head)
    before, after = desired(base, "rev-base"), desired(head, "rev-head")
    assert (before.services["web"].spec_hash != after.services["web"].spec_hash) is rolls
    if backend == "local":
        assert before.services["web"].summary["files"] == code_files.code_hash(base)[:8]
    else:
        assert "files" not in before.services["web"].summary


def test_cloud_spec_hash_is_unchanged_by_the_code_hash(tmp_path: Path) -> None:
    """Deployed cloud replicas keep their ids across the upgrade that added the code hash."""
    make_repo(tmp_path, "aws")
    ls = load_tree(tmp_path).services["web"]

    ds = desired(tmp_path, "r")
    assert ds.services["web"].spec_hash == replica_spec_hash(
        ls, env_values_hash("s", {"GREETING": "hi"}), "aws"
    )


def test_code_hash_is_computed_once_per_build_and_only_for_local(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"s{i}.dstack.yml").write_text(service(f"s{i}"))
    (tmp_path / "cloud.dstack.yml").write_text(service("cloud", "aws"))
    calls: list[int] = []

    def counting() -> str:
        calls.append(1)
        return "f" * 64

    ds = build_desired(
        load_tree(tmp_path),
        revision="r",
        workdir=str(tmp_path),
        env={},
        salt="s",
        backends=["local", "aws"],
        ships_workdir=only_local_ships_workdir,
        code_hash=counting,
    )
    assert len(ds.services) == 21 and calls == [1]
    assert ds.services["s3"].summary["files"] == "ffffffff"
    only_cloud = tmp_path / "cloud-only"
    only_cloud.mkdir()
    (only_cloud / ".dstack.yml").write_text(service("cloud", "aws"))
    build_desired(
        load_tree(only_cloud),
        revision="r",
        workdir=str(only_cloud),
        env={},
        salt="s",
        backends=["local", "aws"],
        ships_workdir=only_local_ships_workdir,
        code_hash=counting,
    )
    assert calls == [1]


def test_code_hash_is_cached_per_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_repo(tmp_path)
    code_files.clear_cache()
    calls: list[Path] = []
    real = code_files.code_hash

    def counting(root: Path) -> str:
        calls.append(root)
        return real(root)

    monkeypatch.setattr(code_files, "code_hash", counting)
    first = desired(tmp_path, "rev-1")
    again = desired(tmp_path, "rev-1")
    assert len(calls) == 1 and first.services["web"].spec_hash == again.services["web"].spec_hash
    desired(tmp_path, "rev-2")
    assert len(calls) == 2
    code_files.clear_cache()


def test_plan_shows_the_files_change(tmp_path: Path) -> None:
    base, head = tmp_path / "base", tmp_path / "head"
    base.mkdir()
    make_repo(base)
    shutil.copytree(base, head)
    (head / "app.py").write_text("print('fixed')\n")
    old, new = desired(base, "b").services["web"], desired(head, "h").services["web"]
    actual = {"web": ServiceRecord(name="web", spec_hash=old.spec_hash, spec_summary=dict(old.summary))}
    p = plan(Desired({"web": Target("web", new.spec_hash, 1, summary=new.summary)}), actual, 0.0)
    assert [(c.field, c.old, c.new) for c in p.changes["web"]] == [
        ("files", old.summary["files"], new.summary["files"])
    ]

    class Result:
        plan = p
        desired = None
        revision = "h"
        diagnostics: tuple[str, ...] = ()
        notes: tuple[str, ...] = ()

    assert f"files: {old.summary['files']} -> {new.summary['files']}" in render_plan(Result())
