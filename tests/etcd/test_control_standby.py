"""A standby's control API (reconciler.control.shared) over a real etcd, without processes: reads
from the shared state, actions forwarded to the leader as signals on etcd (503 with no leader),
backends' answers a 503 naming the leader, tokens written to etcd, etcd out of reach a 503."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from gateway.access.tokens import TokenScope, TokenStore, create_token
from reconciler.control.app import build_control_app
from reconciler.control.auth import ControlContext
from reconciler.control.shared import REFRESH_EVERY, SharedControlPlane
from reconciler.state.etcd_store import EtcdStore
from tests.control.conftest import state_doc
from tests.support.etcd_cluster import EtcdCluster, free_port
from tidegate.etcd import EtcdClient, EtcdLocation


class Standby:
    def __init__(self, url: str, local: Path) -> None:
        self.location = EtcdLocation.parse(url)
        self.client = EtcdClient(self.location)
        local.mkdir(parents=True, exist_ok=True)
        self.admin = create_token(local, "ops", scope=TokenScope.ADMIN)
        self.plane = SharedControlPlane(local, EtcdStore(self.client))
        app = build_control_app(ControlContext(plane=self.plane, tokens=TokenStore(local, recheck=0.0)))
        self.http = TestClient(app, base_url="http://127.0.0.1:8080")
        self.headers = {"Authorization": f"Bearer {self.admin}"}

    def put(self, name: str, body: bytes) -> None:
        self.client.put(self.location.key(name), body)


@pytest.fixture
def standby(etcd_cluster: EtcdCluster, tmp_path: Path) -> Iterator[Standby]:
    s = Standby(etcd_cluster.url(), tmp_path / "local")
    s.put("state.json", state_doc().model_dump_json().encode())
    with s.http:
        yield s
    s.plane.close()


def test_reads_come_from_the_shared_state_and_follow_it(standby: Standby) -> None:
    r = standby.http.get("/api/v1/services", headers=standby.headers)
    assert r.status_code == 200, r.text
    assert sorted(s["name"] for s in r.json()) == ["broken", "web"]
    page = standby.http.get("/ui/services/web", headers=standby.headers)
    assert page.status_code == 200 and "web-aaaaaaaa-0" in page.text  # the dashboard, from etcd too
    doc = state_doc()
    del doc.services["broken"]
    standby.put("state.json", doc.model_dump_json().encode())
    time.sleep(REFRESH_EVERY + 0.1)
    assert [s["name"] for s in standby.http.get("/api/v1/services", headers=standby.headers).json()] == ["web"]


def test_actions_are_forwarded_to_the_leader_or_refused_without_one(standby: Standby) -> None:
    refused = standby.http.post("/api/v1/services/web/stop", headers=standby.headers)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "unavailable"
    assert "no tidegate leads" in refused.json()["error"]["message"]
    assert standby.client.get_prefix(standby.location.key("signals/"))[0] == []

    standby.put("leader", b"machine-a:4242")
    forwarded = standby.http.post("/api/v1/services/web/stop", headers=standby.headers)
    assert forwarded.status_code == 202, forwarded.text
    assert "machine-a:4242" in forwarded.json()["detail"]
    signals, _ = standby.client.get_prefix(standby.location.key("signals/"))
    assert [(json.loads(kv.value)["kind"], json.loads(kv.value)["service"]) for kv in signals] == [("stop", "web")]
    assert standby.http.post("/api/v1/sync", headers=standby.headers).status_code == 202

    logs = standby.http.get("/api/v1/services/web/logs", headers=standby.headers)
    assert logs.status_code == 503 and "machine-a:4242" in logs.json()["error"]["message"]
    unknown = standby.http.post("/api/v1/services/nope/stop", headers=standby.headers)
    assert unknown.status_code == 404


def test_tokens_made_on_a_standby_are_written_to_etcd(standby: Standby) -> None:
    r = standby.http.post("/api/v1/tokens/", json={"name": "app"}, headers=standby.headers)
    assert r.status_code == 201, r.text
    kv = standby.client.get(standby.location.key("tokens.json"))
    assert kv is not None and b'"app"' in kv.value
    assert r.json()["token"].encode() not in kv.value  # etcd keeps its hash only
    again = standby.http.post("/api/v1/tokens/", json={"name": "app"}, headers=standby.headers)
    assert again.status_code == 409


def test_etcd_out_of_reach_is_a_503_in_the_error_shape(tmp_path: Path) -> None:
    s = Standby(f"etcd://127.0.0.1:{free_port()}/nobody", tmp_path / "local")
    with s.http:
        r = s.http.get("/api/v1/services", headers=s.headers)
    s.plane.close()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable" and "did not answer" in r.json()["error"]["message"]
