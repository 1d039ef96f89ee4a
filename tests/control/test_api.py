"""The control API through Litestar's test client: shapes, scopes, errors, actions, OpenAPI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from backends.base import GpuInfo, Offer, Requirements
from gateway.access.tokens import load_records
from reconciler.control.auth import CSRF_HEADER
from reconciler.state.records import SnapshotRef
from tests.control.conftest import Api, state_doc, write_state


def test_services_list_what_ps_shows(api: Api) -> None:
    r = api.client.get("/api/v1/services", headers=api.h())
    assert r.status_code == 200
    rows = {s["name"]: s for s in r.json()}
    assert rows["web"]["status"] == "running" and rows["web"]["ready"] == 2 and rows["web"]["desired"] == 2
    assert rows["web"]["url"] == "http://web.localhost:8080" and rows["web"]["model"] == "tiny"
    assert rows["web"]["backends"] == ["local"]
    # A validation error is shown with file, line and message, as `ps` shows it.
    assert rows["broken"]["status"] == "kept"
    assert rows["broken"]["reason"].startswith("broken.dstack.yml:4:1: replicas_typo")


def test_one_service_has_replicas_decisions_deploys_and_diff(api: Api) -> None:
    d = api.client.get("/api/v1/services/web", headers=api.h()).json()
    assert [r["id"] for r in d["replicas"]] == ["web-aaaaaaaa-0", "web-aaaaaaaa-1"]
    assert d["replicas"][0]["age_seconds"] == 600 and d["replicas"][0]["backend"] == "local"
    assert d["scaling"] == [{"at": d["scaling"][0]["at"], "previous": 1, "count": 2, "reason": "rps 3.0 over target 1"}]
    assert [x["revision"] for x in d["deploys"]] == ["1" * 40, "0" * 40]
    assert d["deploys"][0]["outcome"] == "running" and d["deploys"][1]["outcome"] == "rolled out"
    assert d["plan_diff"] == ["~ env: (none) -> GREETING"]


def test_unknown_service_is_a_404_in_the_error_shape(api: Api) -> None:
    r = api.client.get("/api/v1/services/nope", headers=api.h())
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found" and "web" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/api/v1/services", id="list"),
        pytest.param("GET", "/api/v1/overview", id="overview"),
        pytest.param("GET", "/api/v1/tokens", id="tokens"),
        pytest.param("POST", "/api/v1/sync", id="sync"),
        pytest.param("POST", "/api/v1/services/web/stop", id="stop"),
    ],
)
def test_scopes(api: Api, method: str, path: str) -> None:
    assert api.client.request(method, path).status_code == 401
    assert api.client.request(method, path, headers=api.h("tg_not-a-token")).status_code == 401
    refused = api.client.request(method, path, headers=api.h(api.inference))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert api.client.request(method, path, headers=api.h()).status_code in (200, 202)


def test_open_reads_only_for_loopback_reads(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.client.app.state.control.open_reads = True
    # The test client's address is "testclient": not loopback, so still refused.
    assert api.client.get("/api/v1/services").status_code == 401
    monkeypatch.setattr("reconciler.control.auth.is_loopback", lambda connection: True)
    assert api.client.get("/api/v1/services").status_code == 200
    assert api.client.post("/api/v1/sync").status_code == 401  # actions always need an admin token
    assert api.client.get("/api/v1/services", headers=api.h(api.inference)).status_code == 403
    api.client.app.state.control.open_reads = False
    assert api.client.get("/api/v1/services").status_code == 401


def test_stop_start_and_sync_drop_signals(api: Api) -> None:
    assert api.client.post("/api/v1/services/web/stop", headers=api.h()).status_code == 202
    assert api.client.post("/api/v1/services/web/start", headers=api.h()).status_code == 202
    assert api.client.post("/api/v1/services/nope/stop", headers=api.h()).status_code == 404
    assert api.client.post("/api/v1/sync", headers=api.h()).json()["action"] == "sync"
    kinds = [json.loads(p.read_text()) for p in sorted((api.state / "signals").glob("*.json"))]
    assert [(k["kind"], k.get("service")) for k in kinds] == [("stop", "web"), ("start", "web"), ("wake", None)]


def test_tokens_create_list_revoke(api: Api) -> None:
    created = api.client.post("/api/v1/tokens", json={"name": "ci", "admin": True}, headers=api.h())
    assert created.status_code == 201 and created.json()["scope"] == "admin"
    token = created.json()["token"]
    assert api.client.get("/api/v1/tokens", headers=api.h(token)).status_code == 200
    names = [t["name"] for t in api.client.get("/api/v1/tokens", headers=api.h()).json()]
    assert names == ["ops", "app", "ci"]
    assert api.client.post("/api/v1/tokens", json={"name": "ci"}, headers=api.h()).status_code == 409
    assert api.client.delete("/api/v1/tokens/ci", headers=api.h()).status_code == 204
    assert api.client.get("/api/v1/tokens", headers=api.h(token)).status_code == 401
    assert api.client.delete("/api/v1/tokens/ci", headers=api.h()).status_code == 404
    assert token not in (api.state / "tokens.json").read_text()


def test_tokens_without_scope_load_as_inference(api: Api) -> None:
    path = api.state / "tokens.json"
    data = json.loads(path.read_text())
    for t in data["tokens"]:
        del t["scope"]
    path.write_text(json.dumps(data))
    assert {str(r.scope) for r in load_records(api.state)} == {"inference"}
    assert api.client.get("/api/v1/services", headers=api.h()).status_code == 403  # no admin left


def test_logs_tail_and_errors(api: Api) -> None:
    r = api.client.get("/api/v1/services/web/logs", params={"lines": 1}, headers=api.h())
    assert r.json() == {"service": "web", "replica": "web-aaaaaaaa-0", "lines": ["listening on 9000"]}
    assert api.client.get("/api/v1/services/web/logs", params={"replica": "7"}, headers=api.h()).status_code == 404
    bad = api.client.get("/api/v1/services/web/logs", params={"lines": 0}, headers=api.h())
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


def test_cookie_actions_need_the_csrf_header(api: Api) -> None:
    api.client.cookies.set("tidegate_session", api.admin)
    assert api.client.get("/api/v1/services").status_code == 200
    refused = api.client.post("/api/v1/sync")
    assert refused.status_code == 403 and CSRF_HEADER in refused.json()["error"]["message"]
    assert api.client.post("/api/v1/sync", headers={CSRF_HEADER: "1"}).status_code == 202


def test_openapi_document_validates(api: Api) -> None:
    doc = api.client.get("/api/schema/openapi.json").json()
    validate(doc)
    paths = set(doc["paths"])
    assert {"/api/v1/services", "/api/v1/services/{name}", "/api/v1/tokens", "/api/v1/sync"} <= paths
    assert not any(p.startswith("/ui") for p in paths)
    page = api.client.get("/api/schema/swagger")
    assert page.status_code == 200
    # The docs page loads nothing from outside: every asset it names is served by us.
    assert "http://" not in page.text and "https://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        assert f"/api/docs-assets/{asset}" in page.text
        assert api.client.get(f"/api/docs-assets/{asset}").status_code == 200


def test_samples_feed_the_service_series(api: Api) -> None:
    plane = api.client.app.state.control.plane
    clock = [1000.0]
    plane.clock = lambda: clock[0]
    plane.sample()
    clock[0] += 1.0
    plane.sample()  # within the minimum gap: not kept
    clock[0] += 5.0
    plane.sample()
    series = api.client.get("/api/v1/services/web", headers=api.h()).json()["series"]
    assert [(p["at"], p["ready"]) for p in series] == [(1000.0, 2), (1006.0, 2)]


def test_overview_reports_config_problems_with_file_and_line(api: Api, tmp_path: Path) -> None:
    tree = tmp_path / "checkout"
    tree.mkdir()
    (tree / "ok.dstack.yml").write_text("type: service\nname: ok\ncommands: [x]\nport: 8000\n")
    (tree / "bad.dstack.yml").write_text("type: service\nname: bad\ncommands: [x]\nport: 8000\nreplicas_typo: 3\n")
    doc = state_doc()
    doc.last_snapshot = SnapshotRef(revision="2" * 40, root=str(tree))
    write_state(api.state, doc)
    problems = api.client.get("/api/v1/overview", headers=api.h()).json()["validation"]
    assert [(p["path"], p["line"], p["severity"]) for p in problems] == [("bad.dstack.yml", 5, "error")]
    assert "replicas_typo" in problems[0]["message"] or "replicas_typo" in problems[0]["field"]
    page = api.client.get("/ui/", headers=api.h()).text
    assert "bad.dstack.yml:5:1" in page


def test_offers_pass_the_requirements_and_validate_the_gpu(api: Api) -> None:
    seen: list[Requirements] = []

    def finder(req: Requirements) -> list[Offer]:
        seen.append(req)
        gpu = GpuInfo(name="A100", memory_gb=80, count=1)
        return [Offer("aws", "us-east-1", f"p4d.{i}", 8, 64, gpu, True, 1.5 + i) for i in range(3)]

    api.client.app.state.control.plane.offers_for = finder
    r = api.client.get("/api/v1/offers", params={"gpu": "A100:80GB", "spot_policy": "spot", "limit": 2}, headers=api.h())
    assert r.status_code == 200, r.text
    assert [o["instance_type"] for o in r.json()] == ["p4d.0", "p4d.1"] and r.json()[0]["gpu"] == "A100:80GB:1"
    assert seen[0].spot_policy == "spot" and seen[0].gpu is not None
    assert api.client.get("/api/v1/offers", params={"gpu": "80GB..10GB"}, headers=api.h()).status_code == 400
    assert api.client.get("/api/v1/offers", params={"spot_policy": "cheap"}, headers=api.h()).status_code == 400


def test_previews_with_pr_links_and_rejections(api: Api) -> None:
    folder = api.state / "previews"
    folder.mkdir()
    (folder / "decision.json").write_text(json.dumps({
        "schema_version": 1, "at": 1.0,
        "previews": [{"name": "web-pr-7", "pr": 7, "head_sha": "abc", "service": "web", "expires_at": 9e9, "model": None, "withheld_env": ["KEY"]}],
        "rejected": [
            {"pr": 8, "reason": "fork", "detail": "secrets withheld", "service": "web"},
            {"pr": 9, "reason": "invalid", "detail": "<script>alert(1)</script>", "service": None},
        ],
    }))
    api.client.app.state.control.plane.pr_url_base = "https://github.com/o/r/pull/"
    p = api.client.get("/api/v1/previews", headers=api.h()).json()
    assert p["previews"][0]["pr_url"] == "https://github.com/o/r/pull/7"
    assert p["previews"][0]["url"] == "http://web-pr-7.localhost:8080" and "KEY" in p["previews"][0]["note"]
    assert p["rejected"][0] == {"pr": 8, "reason": "fork", "service": "web", "detail": "secrets withheld"}
    page = api.client.get("/ui/", headers=api.h()).text
    assert 'href="https://github.com/o/r/pull/7"' in page and "fork: web: secrets withheld" in page
    # A PR author's text is escaped (templates autoescape).
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


def test_openapi_documents_the_error_shape(api: Api) -> None:
    doc = api.client.get("/api/schema/openapi.json").json()
    get_service = doc["paths"]["/api/v1/services/{name}"]["get"]
    assert {"401", "403", "404"} <= set(get_service["responses"])
    assert "ErrorOut" in json.dumps(get_service["responses"]["404"])
