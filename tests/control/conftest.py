"""Fixtures for the control API: a state dir with two services (one with an error), tokens, a test client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from litestar.testing import TestClient

from gateway.access.tokens import TokenScope, TokenStore, create_token
from reconciler.control.app import build_control_app
from reconciler.control.auth import ControlContext
from reconciler.control.plane import ControlPlane
from reconciler.state.records import (
    HistoryEntry,
    ReplicaPhase,
    ReplicaRecord,
    RouteInfo,
    ScalingRecord,
    ServiceRecord,
    ServiceStatus,
    StateDoc,
)
from tidegate.routes import ModelRoute

NOW = 1_800_000_000.0


def state_doc() -> StateDoc:
    web = ServiceRecord(
        name="web",
        spec_hash="a" * 16,
        revision="1" * 40,
        status=ServiceStatus.RUNNING,
        desired_count=2,
        backend="local",
        spec_summary={"commands": "python3 app.py 8000", "env": "GREETING"},
        route=RouteInfo(host="web.localhost", auth=False, model=ModelRoute(name="tiny", format="openai"), max_replicas=2),
        replicas=[
            ReplicaRecord(id=f"web-aaaaaaaa-{i}", service="web", spec_hash="a" * 16, ordinal=i, backend="local",
                          phase=ReplicaPhase.READY, address=f"http://127.0.0.1:900{i}", started_at=NOW - 600)
            for i in range(2)
        ],
        scaling=[ScalingRecord(at=NOW - 300, previous=1, count=2, reason="rps 3.0 over target 1")],
        history=[
            HistoryEntry(at=NOW - 900, event="created", detail=f"revision {'0' * 40}"),
            HistoryEntry(at=NOW - 700, event="replica ready", detail="web-0"),
            HistoryEntry(at=NOW - 650, event="deployed", detail=f"revision {'1' * 40}; env: (none) -> GREETING"),
            HistoryEntry(at=NOW - 600, event="replica ready", detail="web-aaaaaaaa-0"),
        ],
    )
    broken = ServiceRecord(
        name="broken",
        spec_hash="b" * 16,
        revision="1" * 40,
        status=ServiceStatus.KEPT,
        reason="broken.dstack.yml:4:1: replicas_typo: unknown field (did you mean 'replicas'?); left at revision 000",
        backend="local",
    )
    return StateDoc(lineage="l", serial=3, services={"web": web, "broken": broken})


@dataclass
class Api:
    client: TestClient  # type: ignore[type-arg]
    state: Path
    admin: str
    inference: str
    logs: dict[str, list[str]]

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin}"}


def write_state(state: Path, doc: StateDoc) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "state.json").write_text(doc.model_dump_json())


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    state = tmp_path / "state"
    write_state(state, state_doc())
    (state / "source.json").write_text(json.dumps({"source": "file:///repo@main", "revision": "1" * 40}))
    admin = create_token(state, "ops", scope=TokenScope.ADMIN)
    inference = create_token(state, "app")
    logs = {"web-aaaaaaaa-0": ["starting", "listening on 9000"]}

    def logs_of(backend: str, replica: str, lines: int) -> list[str]:
        return logs.get(replica, [])[-lines:]

    plane = ControlPlane(state, logs_of=logs_of, offers_for=lambda req: [], clock=lambda: NOW)
    app = build_control_app(ControlContext(plane=plane, tokens=TokenStore(state, recheck=0.0)))
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        yield Api(client, state, admin, inference, logs)
