"""The control API of `tidegate up --state etcd://…`, on the leader and on a standby.

A real `up` pair on one prefix: both answer GET /api/v1/services with an admin token (the leader
from its engine, the standby from the shared state on etcd); POST stop on the standby is forwarded
to the leader through etcd (202 naming the leader) and the leader stops the service; what needs the
leader's backends (replica logs) is a 503 in the API's error shape naming the leader; once the
leader resigns the standby leads and answers from its own engine.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import APP, Remote, kill_replicas, service_yaml, wait_for
from tests.etcd.gateways import Up, tidegate
from tests.support.etcd_cluster import EtcdCluster
from tests.support.git_repo import bare_remote
from tidegate.etcd import EtcdClient, EtcdLocation

pytestmark = pytest.mark.slow


def leader_pid(url: str) -> int | None:
    loc = EtcdLocation.parse(url)
    kv = EtcdClient(loc).get(loc.key("leader"))
    return int(kv.value.decode().rpartition(":")[2]) if kv else None


class Api:
    def __init__(self, up: Up, token: str) -> None:
        self.base = f"http://127.0.0.1:{up.port}/api/v1"
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, auth: bool = True) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers=self.headers if auth else {}, timeout=10.0)

    def post(self, path: str) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", headers=self.headers, timeout=10.0)

    def web(self) -> dict[str, Any] | None:
        r = self.get("/services")
        if r.status_code != 200:
            return None
        return next((s for s in r.json() if s["name"] == "web"), None)


@pytest.fixture
def pair(tmp_path: Path, etcd_cluster: EtcdCluster) -> Iterator[dict[str, Any]]:
    bare, work = bare_remote(tmp_path)
    (work / "app.py").write_text(APP)
    remote = Remote(bare, work)
    remote.push({"web.dstack.yml": service_yaml("web", greeting="v1")}, message="v1")
    url = etcd_cluster.url()
    made: dict[str, Any] = {"url": url, "ups": []}
    try:
        a = Up(url, remote.url, tmp_path / "machine-a", tmp_path / "up-a.log")
        made["ups"].append(a)
        wait_for(lambda: leader_pid(url) == a.proc.pid, 30, "the first up to lead")
        b = Up(url, remote.url, tmp_path / "machine-b", tmp_path / "up-b.log")
        made["ups"].append(b)
        wait_for(lambda: "standing by" in b.log.read_text(), 30, "the second up to stand by")
        yield made
    finally:
        for up in made["ups"]:
            up.stop()
        for folder in ("machine-a", "machine-b"):
            kill_replicas(tmp_path / folder)


def test_the_control_api_on_the_leader_and_the_standby(pair: dict[str, Any]) -> None:
    url = pair["url"]
    a, b = pair["ups"]
    created = tidegate("token", "create", "ops", "--admin", "--state", url)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1].split()[-1]
    leader_api, standby_api = Api(a, token), Api(b, token)

    # Reads: both answer, the standby from the shared state, and they agree.
    for api in (leader_api, standby_api):
        wait_for(lambda api=api: (api.web() or {}).get("ready") == 1, 120, f"web ready at {api.base}")
    keys = ("name", "revision", "ready", "desired", "status")
    assert {k: leader_api.web()[k] for k in keys} == {k: standby_api.web()[k] for k in keys}  # type: ignore[index]
    assert standby_api.get("/services", auth=False).status_code == 401
    assert standby_api.get("/overview").status_code == 200

    # What needs the leader's backends: a 503 in the error shape, naming the leader.
    leader_name = f"{socket.gethostname()}:{a.proc.pid}"
    logs = standby_api.get("/services/web/logs")
    assert logs.status_code == 503, logs.text
    assert logs.json()["error"]["code"] == "unavailable" and leader_name in logs.json()["error"]["message"]
    assert leader_api.get("/services/web/logs").status_code == 200
    missing = standby_api.post("/services/nope/stop")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    # stop on the standby: forwarded through etcd, applied by the leader, seen on both.
    stopped = standby_api.post("/services/web/stop")
    assert stopped.status_code == 202, stopped.text
    assert leader_name in stopped.json()["detail"]
    for api in (leader_api, standby_api):
        wait_for(lambda api=api: (api.web() or {}).get("desired") == 0, 60, f"web stopped as seen at {api.base}")
    assert "Traceback" not in b.log.read_text()

    # The leader resigns: the standby leads and answers from its own engine (start applied there).
    a.stop()
    wait_for(lambda: leader_pid(url) == b.proc.pid, 30, "the standby to lead")
    wait_for(lambda: "leading" in b.log.read_text(), 30, "the standby to say it leads")
    wait_for(lambda: standby_api.post("/services/web/start").status_code == 202, 30, "start accepted by b")
    wait_for(lambda: (standby_api.web() or {}).get("ready") == 1, 120, "web started again by the new leader")
    assert standby_api.get("/services/web/logs").status_code == 200
