"""Errors a user can see: a broken config's diagnostics on its record (ps, ps --json) and in the
log once per revision; an empty commit's refusal as the reason; `stop` holds across commits until
`start`, and the routes say the service is stopped."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_engine import World, api

from reconciler.state.view import status_views
from tidegate.routes_io import read_snapshot


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.engine.close()


def test_a_broken_config_shows_its_errors_and_logs_them_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.converge(world.repo.commit({"api.dstack.yml": api()}))
    broken = world.repo.commit({"api.dstack.yml": api() + "replicaz: 2\n"})
    caplog.set_level(logging.WARNING, "tidegate.engine")
    for _ in range(3):
        world.engine.reconcile(broken)
        world.clock.t += 1
    (view,) = status_views(world.engine.doc)
    assert view.status == "kept" and "has errors" in view.reason
    (diag,) = view.diagnostics
    assert diag.startswith("api.dstack.yml:") and "unknown key 'replicaz'" in diag
    logged = [r.getMessage() for r in caplog.records if "config error" in r.getMessage()]
    assert len(logged) == 1 and "unknown key 'replicaz'" in logged[0]
    world.converge(world.repo.commit({"api.dstack.yml": api()}))
    assert status_views(world.engine.doc)[0].diagnostics == ()


def test_a_new_broken_service_gets_a_record_saying_why(world: World) -> None:
    world.engine.reconcile(world.repo.commit({"api.dstack.yml": api() + "port: [\n"}))
    (view,) = status_views(world.engine.doc)
    assert view.name == "api" and view.status == "blocked" and "not deployed" in view.reason
    assert view.diagnostics and "api.dstack.yml:" in view.diagnostics[0]


def test_an_empty_commit_refusal_is_the_reason(world: World) -> None:
    world.converge(world.repo.commit({"api.dstack.yml": api()}))
    world.engine.reconcile(world.repo.commit({"README.md": "nothing here\n"}))
    (view,) = status_views(world.engine.doc)
    assert "has no services; kept as it runs" in view.reason and "--allow-empty" in view.reason
    assert len(world.backend.running("api")) == 1


def test_stop_holds_across_commits_until_start(world: World) -> None:
    world.converge(world.repo.commit({"api.dstack.yml": api()}))
    world.engine.stop_service("api")
    world.converge(world.repo.commit({"api.dstack.yml": api(), "README.md": "docs\n"}), step=3)
    changed = world.repo.commit(
        {"api.dstack.yml": api().replace("http.server 8000", "http.server 8000 --bind 127.0.0.1")}
    )
    world.converge(changed, step=3)  # even its own config changing does not resume it
    assert world.backend.running("api") == [] and world.engine.status()[0].status == "stopped"
    assert read_snapshot(world.state).services["api"].stopped is True
    world.engine.start_service("api")
    world.converge(changed)
    assert len(world.backend.running("api")) == 1
    assert read_snapshot(world.state).services["api"].stopped is False


def test_a_pass_logs_one_line_per_event(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tidegate.engine")
    snap = world.repo.commit({"api.dstack.yml": api()})
    world.engine.reconcile(snap)
    world.clock.t += 1
    world.engine.reconcile(snap)
    events = [(getattr(r, "service", None), getattr(r, "event", None)) for r in caplog.records]
    assert ("api", "create_service") in events and ("api", "add_replica") in events
    assert ("api", "replica ready") in events
    lines = [r.getMessage() for r in caplog.records if getattr(r, "service", None) == "api"]
    assert any(line.startswith("api: add replica api-") and "(scale to 1)" in line for line in lines), lines
    world.engine.reconcile(snap)  # nothing happens: nothing is logged again
    assert len([r for r in caplog.records if getattr(r, "service", None) == "api"]) == len(lines)


def test_json_log_lines() -> None:
    import json

    from reconciler.cli.up_cmd import JsonLogFormatter

    record = logging.LogRecord("tidegate.engine", logging.INFO, __file__, 1, "%s: %s", ("api", "x"), None)
    record.service, record.event, record.detail = "api", "replica ready", "api-1 (GET / -> 200)"
    doc = json.loads(JsonLogFormatter().format(record))
    assert doc["message"] == "api: x" and doc["level"] == "info"
    assert (doc["service"], doc["event"], doc["detail"]) == ("api", "replica ready", "api-1 (GET / -> 200)")
