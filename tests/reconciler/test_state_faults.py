"""State faults, in-process: the backup, unreadable/newer/unwritable state, held passes, routes.

The same cases run against a real `tidegate up` in tests/e2e/test_state_faults.py; here the engine
runs on a recording fake backend so "nothing was created or deleted" is exact.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeBackend, FakeProber

from backends.base import BackendRegistry
from reconciler.cli.main import main
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state.errors import StateUnreadableError, StateUnwritableError
from reconciler.state.records import ServiceRecord
from reconciler.state.store import BACKUP_FILE, STATE_FILE, StateStore
from tidegate.fsio import describe_os_error
from tidegate.routes import ROUTES_FILE
from tidegate.routes_io import read_snapshot

WEB = """\
type: service
name: web
env:
  - GREETING={greeting}
commands:
  - python -m http.server 8000
port: 8000
"""


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.t = 1_000_000.0
        self.backend = FakeBackend()
        self.n = 0
        self.engine = self.open()

    def open(self) -> Engine:
        return Engine(
            self.state,
            BackendRegistry({"local": self.backend}),
            EngineSettings(drain_min=0, drain_grace=0),
            clock=lambda: self.t,
            stats=dict,
            prober=FakeProber(),
        )

    def commit(self, greeting: str) -> Snapshot:
        self.n += 1
        root = self.tmp / "repo" / f"rev{self.n}"
        root.mkdir(parents=True)
        (root / "web.dstack.yml").write_text(WEB.format(greeting=greeting))
        return Snapshot(revision=f"{self.n:040x}", root=root)

    def converge(self, snap: Snapshot, passes: int = 12) -> None:
        for _ in range(passes):
            report = self.engine.reconcile(snap)
            self.t += 1
            if report.plan.empty:
                return

    def actions(self) -> list[tuple[str, str]]:
        return [c for c in self.backend.calls if c[0] in ("create", "delete")]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.engine.close()


def test_every_save_keeps_the_previous_good_state_as_backup(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.acquire()
    doc = store.load()
    store.save(doc)
    assert not (tmp_path / BACKUP_FILE).exists()  # nothing to back up before the first save
    doc.services["web"] = ServiceRecord(name="web", spec_hash="x")
    store.save(doc)
    backup = store.read_backup()
    assert backup is not None and backup.serial == 1 and "web" not in backup.services
    assert json.loads((tmp_path / STATE_FILE).read_text())["serial"] == 2
    store.release()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        pytest.param(b'{"schema_version": 1, "serial": 3, "lin', "not valid JSON", id="truncated"),
        pytest.param(b"{not json", "not valid JSON", id="not-json"),
        pytest.param(b"", "the file is empty", id="empty"),
        pytest.param(b"[1, 2]", "expected a JSON object", id="not-an-object"),
        pytest.param(b'{"schema_version": 99, "serial": 1, "lineage": "x"}', "schema_version 99", id="newer-schema"),
    ],
)
def test_an_unreadable_state_names_the_file_the_cause_and_the_restore_command(
    tmp_path: Path, content: bytes, why: str
) -> None:
    store = StateStore(tmp_path)
    store.acquire()
    doc = store.load()
    store.save(doc)
    store.save(doc)
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(StateUnreadableError) as e:
        StateStore(tmp_path).load()
    message = str(e.value)
    assert str(tmp_path / STATE_FILE) in message and why in message
    assert f"tidegate state restore --state {tmp_path}" in message and "serial 1" in message
    # ... and the writer refuses to write over it: the bytes stay as they are.
    with pytest.raises(StateUnreadableError):
        store.save(doc)
    assert (tmp_path / STATE_FILE).read_bytes() == content
    store.release()


def test_without_a_backup_the_error_says_so(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(StateUnreadableError, match="no usable backup"):
        StateStore(tmp_path).load()


def test_a_failed_write_is_unwritable_and_leaves_the_doc_and_file_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    store.acquire()
    doc = store.load()
    store.save(doc)
    before = (tmp_path / STATE_FILE).read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StateUnwritableError, match=f"disk full at {tmp_path}"):
        store.check(doc)
    with pytest.raises(StateUnwritableError, match="disk full at"):
        store.save(doc)
    monkeypatch.undo()
    assert doc.serial == 1 and (tmp_path / STATE_FILE).read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / ".write-probe").exists()
    store.release()


def test_describe_os_error_says_disk_full() -> None:
    assert describe_os_error(OSError(errno.ENOSPC, "No space"), "/s/x") == "disk full at /s/x"
    assert describe_os_error(OSError(errno.EROFS, "ro"), "/s") == "read-only file system at /s"


def test_an_unreadable_state_holds_a_roll_logs_once_and_resumes_after_restore(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    v1 = world.commit("v1")
    world.converge(v1)
    old = world.backend.running("web")
    assert len(old) == 1 and read_snapshot(world.state).services["web"].upstreams
    routes_before = (world.state / ROUTES_FILE).read_bytes()
    calls = len(world.actions())
    (world.state / STATE_FILE).write_text("{not json")
    v2 = world.commit("v2")
    with caplog.at_level(logging.ERROR, logger="tidegate.engine"):
        for _ in range(5):
            report = world.engine.reconcile(v2)
            world.t += 1
            assert not report.outcomes and not report.wrote_state
            assert any(n.startswith("held: ") and "state restore" in n for n in report.notes)
    assert world.actions()[calls:] == [], "no create, no delete while the state cannot be saved"
    assert world.backend.running("web") == old
    assert (world.state / ROUTES_FILE).read_bytes() == routes_before  # the last routes stay
    held = [r for r in caplog.records if "taking no action" in r.getMessage()]
    assert len(held) == 1 and str(world.state / STATE_FILE) in held[0].getMessage()
    assert world.engine.state_fault is not None

    # `tidegate state restore --yes` while the engine runs: the next pass resumes and rolls.
    assert main(["state", "restore", "--state", str(world.state), "--yes"]) == 0
    assert (world.state / "state.json.broken").read_text() == "{not json"
    world.converge(v2)
    assert world.engine.state_fault is None
    assert world.backend.running("web") != old and len(world.backend.running("web")) == 1
    assert StateStore(world.state).load().serial == world.engine.doc.serial


def test_a_full_disk_holds_actions_and_the_state_resumes_when_space_returns(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.commit("v1")
    world.converge(v1)
    calls = len(world.actions())
    real_open = os.open

    def full_open(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        if str(path).endswith(".write-probe"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", full_open)
    report = world.engine.reconcile(world.commit("v2"))
    assert "held: disk full at" in " ".join(report.notes) and world.actions()[calls:] == []
    monkeypatch.undo()
    world.converge(world.commit("v3"))
    assert world.engine.state_fault is None and len(world.actions()) > calls


def test_routes_json_deleted_is_published_again_on_the_next_pass(world: World) -> None:
    v1 = world.commit("v1")
    world.converge(v1)
    routes = world.state / ROUTES_FILE
    expected = read_snapshot(world.state)
    routes.unlink()
    report = world.engine.reconcile(v1)
    assert report.wrote_routes and read_snapshot(world.state) == expected
    # Replaced by something else (an old copy, an editor): also put back.
    routes.write_text('{"schema_version": 1, "services": {}}')
    assert world.engine.reconcile(v1).wrote_routes and read_snapshot(world.state) == expected
    assert not world.engine.reconcile(v1).wrote_routes  # unchanged and intact: not rewritten


def test_routes_json_of_a_newer_schema_is_never_rewritten(world: World) -> None:
    v1 = world.commit("v1")
    world.converge(v1)
    newer = '{"schema_version": 99, "services": {}}'
    (world.state / ROUTES_FILE).write_text(newer)
    report = world.engine.reconcile(world.commit("v2"))
    assert "schema_version 99" in " ".join(report.notes) and report.outcomes == ()
    assert (world.state / ROUTES_FILE).read_text() == newer


def test_up_on_a_corrupt_state_refuses_to_start_naming_file_cause_and_command(world: World) -> None:
    world.converge(world.commit("v1"))
    world.converge(world.commit("v2"))
    world.engine.close()
    (world.state / STATE_FILE).write_text('{"schema_version": 1, "ser')
    with pytest.raises(StateUnreadableError) as e:
        world.open()
    assert str(world.state / STATE_FILE) in str(e.value) and "not valid JSON" in str(e.value)
    assert "tidegate state restore" in str(e.value)


def test_state_restore_asks_before_acting_and_shows_both_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    store.acquire()
    doc = store.load()
    doc.services["web"] = ServiceRecord(name="web", spec_hash="x")
    store.save(doc)
    store.save(doc)
    store.release()
    (tmp_path / STATE_FILE).write_text("{not json")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["state", "restore", "--state", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "add --yes" in out.err and (tmp_path / STATE_FILE).read_text() == "{not json"
    assert f"from {tmp_path / BACKUP_FILE}" in out.out and "serial 1" in out.out and "web" in out.out
    assert "cannot be read" in out.out
    assert main(["state", "restore", "--state", str(tmp_path), "--yes"]) == 0
    assert StateStore(tmp_path).load().serial == 1


def test_ps_on_a_missing_state_dir_says_so_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "typo"
    assert main(["ps", "--state", str(typo)]) == 1
    assert f"no state at {typo}" in capsys.readouterr().err
    assert not typo.exists()


def test_ps_shows_an_unreadable_state_and_the_backup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = StateStore(tmp_path)
    store.acquire()
    doc = store.load()
    doc.services["web"] = ServiceRecord(name="web", spec_hash="x")
    store.save(doc)
    store.save(doc)
    store.release()
    (tmp_path / STATE_FILE).write_text("{not json")
    assert main(["ps", "--json", "--state", str(tmp_path)]) == 1
    body = json.loads(capsys.readouterr().out)
    assert any("tidegate state restore" in p and STATE_FILE in p for p in body["problems"])
    assert [s["name"] for s in body["services"]] == ["web"]  # from the backup, and it says so
    assert any("showing the backup" in p for p in body["problems"])


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def test_read_only_commands_write_nothing_in_the_state_dir(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.git_repo import make_remote

    world.converge(world.commit("v1"))
    (world.state / "source.json").write_text('{"schema_version": 1, "source": "mine", "revision": "abc"}')
    world.engine.close()  # as a stopped `up`; with a running one see tests/e2e/test_state_faults.py
    (tmp_path / "other").mkdir()
    bare, _ = make_remote(tmp_path / "other", {"web.dstack.yml": WEB.format(greeting="other")})
    before = _tree(world.state)
    state = ["--state", str(world.state)]
    assert main(["plan", "--repo", f"file://{bare}", *state]) in (0, 2)
    assert main(["plan", "--repo", str(world.tmp / "repo" / "rev1"), "--watch", *state]) in (0, 2)
    assert main(["ps", *state]) == 0
    assert main(["validate", str(world.tmp / "repo" / "rev1")]) == 0
    assert main(["offers", "--gpu", "0"]) in (0, 1)
    capsys.readouterr()
    assert _tree(world.state) == before
    world.engine = world.open()


def test_plan_on_an_empty_state_dir_creates_no_installation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.git_repo import make_remote

    (tmp_path / "r").mkdir()
    bare, _ = make_remote(tmp_path / "r", {"web.dstack.yml": WEB.format(greeting="x")})
    state = tmp_path / "state"
    assert main(["plan", "--repo", f"file://{bare}", "--state", str(state)]) == 2
    assert "web" in capsys.readouterr().out
    assert not state.exists()


def test_the_loop_logs_a_repeated_pass_error_once_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    from reconciler.engine.loop import Loop

    errors = iter([ValueError("boom"), ValueError("boom"), ValueError("boom"), ValueError("other")])

    def failing() -> float | None:
        raise next(errors)

    loop = Loop(failing, interval=60)
    with caplog.at_level(logging.DEBUG, logger="tidegate.loop"):
        for _ in range(4):
            loop._job()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert [str(r.exc_info[1]) for r in tracebacks if r.exc_info] == ["boom", "other"]
    assert loop.passes == 4 and loop.last_error == "ValueError: other"


def test_apply_fails_and_says_why_when_the_state_cannot_be_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.git_repo import make_remote

    (tmp_path / "r").mkdir()
    bare, _ = make_remote(tmp_path / "r", {"web.dstack.yml": WEB.format(greeting="x")})
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_text("{not json")
    assert main(["apply", "--repo", f"file://{bare}", "--state", str(state), "--wait", "0"]) == 1
    err = capsys.readouterr().err
    assert str(state / STATE_FILE) in err and "not valid JSON" in err and "Traceback" not in err
    assert (state / STATE_FILE).read_text() == "{not json"


def test_apply_on_a_full_disk_creates_nothing_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.git_repo import make_remote

    (tmp_path / "r").mkdir()
    bare, _ = make_remote(tmp_path / "r", {"web.dstack.yml": WEB.format(greeting="x")})
    state = tmp_path / "state"
    real_open = os.open

    def full_open(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        if str(path).endswith(".write-probe"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", full_open)
    assert main(["apply", "--repo", f"file://{bare}", "--state", str(state), "--wait", "0"]) == 1
    assert f"error: disk full at {state}" in capsys.readouterr().err
    assert not (state / "replicas").exists() or not any(
        p for p in (state / "replicas").iterdir() if not p.name.startswith(".")
    )


def test_a_state_that_breaks_after_the_check_still_gets_routes_that_follow_what_runs(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.converge(world.commit("v1"))
    v2 = world.commit("v2")
    monkeypatch.setattr(world.engine.store, "check", lambda doc: None)  # the race: broken after it
    (world.state / STATE_FILE).write_text("{not json")
    for _ in range(6):  # the roll: start the new replica, probe it, retire the old one
        world.engine.reconcile(v2)
        world.t += 31
    running = world.backend.running("web")
    routed = [u.replica_id for u in read_snapshot(world.state).services["web"].upstreams if not u.draining]
    assert world.engine.state_fault is not None and routed and set(routed) <= set(running)


def test_a_journal_of_a_newer_schema_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    from reconciler.state.journal import JOURNAL_FILE, Journal

    line = '{"seq": 9, "kind": "mark", "schema_version": 99}\n'
    (tmp_path / JOURNAL_FILE).write_text(line)
    with pytest.raises(StateUnreadableError, match="schema_version 99"):
        Journal(tmp_path)
    assert (tmp_path / JOURNAL_FILE).read_text() == line


def test_a_broken_state_json_still_protects_the_running_revisions_from_the_prune(tmp_path: Path) -> None:
    from reconciler.source.checkout import deployed_revisions

    doc = {"services": {"web": {"revision": "abc"}}}
    (tmp_path / BACKUP_FILE).write_text(json.dumps(doc))
    (tmp_path / STATE_FILE).write_text("{not json")
    assert deployed_revisions(tmp_path) == {"abc"}
    (tmp_path / STATE_FILE).write_text(json.dumps({"services": {"web": {"revision": "def"}}}))
    assert deployed_revisions(tmp_path) == {"def"}


def test_ps_says_when_the_state_filesystem_is_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess

    mount = tmp_path / "state"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {e}")
    try:
        w = World(tmp_path)
        w.converge(w.commit("v1"))
        w.engine.close()  # a remount read-only waits for no file open for writing
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        assert main(["ps", "--json", "--state", str(mount)]) == 1
        body = json.loads(capsys.readouterr().out)
        assert f"read-only file system at {mount}" in body["problems"] and body["services"][0]["name"] == "web"
        assert main(["stop", "web", "--state", str(mount)]) == 1  # wants the lock: one line, no traceback
        err = capsys.readouterr().err
        assert err.startswith("error: read-only file system at") and "Traceback" not in err
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
