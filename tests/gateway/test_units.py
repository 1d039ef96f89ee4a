"""Pure pieces of the gateway: replica choice, tokens, template lookup, settings, the CLI."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from gateway.access.tokens import (
    AuthResult,
    TokenError,
    TokenStore,
    bearer,
    create_token,
    load_records,
    revoke_token,
)
from gateway.api import templates
from gateway.balancer import Balancer, choose
from gateway.cli import state_dir
from gateway.settings import GatewaySettings, parse_listen
from reconciler.cli.main import main
from tidegate.routes import ModelRoute, Upstream

A, B, C = (Upstream(replica_id=r, url=f"http://127.0.0.1:{p}") for r, p in (("a", 1), ("b", 2), ("c", 3)))
DRAINING = Upstream(replica_id="d", url="http://127.0.0.1:4", draining=True)


@pytest.mark.parametrize(
    ("upstreams", "in_flight", "cooled", "exclude", "start", "expected"),
    [
        pytest.param([A, B, C], {"a": 2, "b": 1, "c": 3}, {}, (), 0, "b", id="fewest-in-flight"),
        pytest.param([A, B, C], {}, {}, (), 1, "b", id="tie-rotates-from-start"),
        pytest.param([DRAINING, A], {"a": 9}, {}, (), 0, "a", id="draining-never-chosen"),
        pytest.param([A, B], {"b": 5}, {"a": 20.0}, (), 0, "b", id="cooled-skipped"),
        pytest.param([A, B], {}, {"a": 30.0, "b": 20.0}, (), 0, "b", id="all-cooling-soonest-back"),
        pytest.param([A, B], {}, {"a": 5.0}, (), 0, "a", id="cool-down-over"),
        pytest.param([A, B], {}, {}, ("a", "b"), 0, None, id="all-excluded"),
        pytest.param([DRAINING], {}, {}, (), 0, None, id="only-draining"),
        pytest.param([], {}, {}, (), 0, None, id="none"),
    ],
)
def test_choose(
    upstreams: list[Upstream], in_flight: dict[str, int], cooled: dict[str, float], exclude: tuple[str, ...], start: int, expected: str | None
) -> None:
    got = choose(upstreams, in_flight, cooled, 10.0, exclude, start)
    assert (got.replica_id if got else None) == expected


def test_balancer_counters_never_go_negative() -> None:
    b = Balancer(cooldown=5)
    b.acquire(A)
    b.acquire(A)
    b.release(A)
    b.release(A)
    b.release(A)
    assert b.in_flight == {}
    b.cool(A, 100.0)
    b.forget({"b"})
    assert b.cooled_until == {}


def test_token_lifecycle(tmp_path: Path) -> None:
    token = create_token(tmp_path, "ci", now=1.0)
    raw = (tmp_path / "tokens.json").read_text()
    assert token not in raw
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    [record] = load_records(tmp_path)
    assert record.name == "ci" and token.startswith(record.prefix) and record.created_at == 1.0
    store = TokenStore(tmp_path, recheck=0)
    assert store.check(f"Bearer {token}".encode(), 0) is AuthResult.OK
    assert store.check(b"Bearer tg_nope", 0) is AuthResult.INVALID
    assert store.check(None, 0) is AuthResult.MISSING
    with pytest.raises(TokenError, match="exists"):
        create_token(tmp_path, "ci")
    revoke_token(tmp_path, "ci")
    assert store.check(f"Bearer {token}".encode(), 1) is AuthResult.INVALID
    with pytest.raises(TokenError, match="no token"):
        revoke_token(tmp_path, "ci")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(b"Bearer abc", "abc", id="bearer"),
        pytest.param(b"bearer  abc ", "abc", id="case-and-spaces"),
        pytest.param(b"Basic abc", None, id="basic"),
        pytest.param(b"Bearer ", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_bearer(header: bytes | None, expected: str | None) -> None:
    assert bearer(header) == expected


@pytest.mark.parametrize(
    ("config", "template", "eos"),
    [
        pytest.param({"chat_template": "T", "eos_token": "</s>"}, "T", "</s>", id="string"),
        pytest.param({"chat_template": [{"name": "tool_use", "template": "X"}, {"name": "default", "template": "D"}], "eos_token": {"content": "<e>"}}, "D", {"content": "<e>"}, id="named-list"),
    ],
)
def test_template_from_tokenizer_config(config: dict[str, Any], template: str, eos: Any) -> None:
    found = templates.from_tokenizer_config(config, ModelRoute(name="m", format="tgi"))
    assert (found.template, found.eos_token) == (template, eos)


class FakeHub:
    """A local stand-in for the Hugging Face Hub's file endpoint (`/<repo>/resolve/<rev>/<file>`),
    answering HEAD and GET the way huggingface_hub expects (ETag and X-Repo-Commit headers)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from threading import Thread

        hub = self
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, with_body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                body = files.get(self.path.split("?")[0])
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{abs(hash(body))}"')
                self.send_header("X-Repo-Commit", "0" * 40)
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self._answer(False)

            def do_GET(self) -> None:
                self._answer(True)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_template_fetched_from_the_model_repository_and_cached(tmp_path: Path) -> None:
    """No chat_template in the config: the model repo's tokenizer_config.json is fetched with
    huggingface_hub (here from a local stand-in for the Hub) and cached for the gateway's life."""
    config = {"chat_template": "{{ bos_token }}{{ messages[0]['content'] }}", "bos_token": "<s>", "eos_token": "</s>"}
    hub = FakeHub({"/org/model/resolve/main/tokenizer_config.json": json.dumps(config).encode()})
    try:
        resolver = templates.TemplateResolver(endpoint=hub.url, cache_dir=tmp_path / "hf")
        found = asyncio.run(resolver.resolve(ModelRoute(name="org/model", format="tgi")))
        assert (found.template, found.bos_token, found.eos_token) == (config["chat_template"], "<s>", "</s>")
        seen = len(hub.requests)
        assert asyncio.run(resolver.resolve(ModelRoute(name="org/model", format="tgi"))) == found
        assert len(hub.requests) == seen  # cached: the Hub is asked once
    finally:
        hub.close()


def test_template_missing_everywhere_is_a_clear_error(tmp_path: Path) -> None:
    hub = FakeHub({})  # the repo has no tokenizer_config.json (never the real Hub from a test)
    resolver = templates.TemplateResolver(endpoint=hub.url, cache_dir=tmp_path / "hf")
    with pytest.raises(templates.TemplateUnavailable, match=r"model.chat_template"):
        asyncio.run(resolver.resolve(ModelRoute(name="org/missing", format="tgi")))
    with pytest.raises(templates.TemplateUnavailable, match="no chat_template"):
        templates.from_tokenizer_config({}, ModelRoute(name="m", format="tgi"))
    hub.close()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        pytest.param("127.0.0.1:8080", ("127.0.0.1", 8080), id="v4"),
        pytest.param(":9000", ("127.0.0.1", 9000), id="port-only"),
        pytest.param("[::1]:81", ("::1", 81), id="v6"),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


def test_settings_round_trip_through_worker_env(tmp_path: Path) -> None:
    s = GatewaySettings(state_dir=tmp_path, workers=2, webhook_secret="hook-s3cret")
    assert GatewaySettings.from_json(s.to_json()) == s
    assert "hook-s3cret" not in repr(s)


def test_state_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.setenv("TIDEGATE_STATE", str(tmp_path / "env"))
    assert state_dir(argparse.Namespace(state=str(tmp_path / "flag"))) == tmp_path / "flag"
    assert state_dir(argparse.Namespace(state=None)) == tmp_path / "env"
    monkeypatch.delenv("TIDEGATE_STATE")
    monkeypatch.chdir(tmp_path)
    assert state_dir(argparse.Namespace(state=None)) == tmp_path / "state"


def test_token_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "alice", "--state", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("tg_")
    assert main(["token", "list", "--state", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "alice" in listed and token not in listed
    assert main(["token", "create", "alice", "--state", str(tmp_path)]) == 1
    assert main(["token", "revoke", "alice", "--state", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "tokens.json").read_text())["tokens"] == []
