"""`ps`, `logs`, `stop`, `start` and `token` with `--server`: the CLI over the control API (in-process transport)."""

from __future__ import annotations

import argparse

import httpx
import pytest

from gateway import cli as gateway_cli
from reconciler.cli import commands
from tests.control.conftest import Api
from tidegate.control_client import ControlClient, ControlClientError, server_from


class InProcess(httpx.BaseTransport):
    """The test client's transport (Litestar's has no `close`, which httpx calls)."""

    def __init__(self, api: Api) -> None:
        self.inner = api.client._transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = self.inner.handle_request(request)
        return response


def _client(api: Api, token: str | None) -> ControlClient:
    return ControlClient("http://127.0.0.1:8080", token, transport=InProcess(api))


@pytest.fixture
def remote(api: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setattr(commands, "_remote", lambda args: _client(api, api.admin))
    monkeypatch.setattr(gateway_cli, "_remote", lambda args: _client(api, api.admin))
    return api


def test_server_from_flag_then_env() -> None:
    assert server_from("http://h:8080/", {}) == "http://h:8080"
    assert server_from(None, {"TIDEGATE_SERVER": "http://e:1"}) == "http://e:1"
    assert server_from(None, {}) is None


def test_ps_over_the_api(remote: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.cmd_ps(argparse.Namespace(json=False, server="x")) == 0
    out = capsys.readouterr().out
    assert "web" in out and "2/2" in out and "http://web.localhost:8080" in out
    assert "broken.dstack.yml:4:1" in out


def test_logs_stop_start_over_the_api(remote: Api, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(service="web", replica=None, lines=10, follow=False, server="x")
    assert commands.cmd_logs(args) == 0
    assert capsys.readouterr().out.splitlines() == ["starting", "listening on 9000"]
    assert commands.cmd_stop(argparse.Namespace(service="web", server="x")) == 0
    assert commands.cmd_start(argparse.Namespace(service="web", server="x")) == 0
    assert commands.cmd_stop(argparse.Namespace(service="nope", server="x")) == 1
    assert "404: unknown service 'nope'" in capsys.readouterr().err
    assert len(list((remote.state / "signals").glob("*.json"))) == 2


def test_token_commands_over_the_api(remote: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_cli.cmd_token_create(argparse.Namespace(name="ci", admin=True, server="x")) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("tg_")
    assert gateway_cli.cmd_token_list(argparse.Namespace(server="x")) == 0
    listing = capsys.readouterr().out
    assert "ci\t" in listing and "\tadmin\t" in listing and token not in listing
    assert gateway_cli.cmd_token_revoke(argparse.Namespace(name="ci", server="x")) == 0


def test_an_inference_token_is_refused_with_the_apis_message(api: Api) -> None:
    with _client(api, api.inference) as client, pytest.raises(ControlClientError, match=r"403: .*admin token"):
        client.call("GET", "/services")


def test_follow_reads_server_sent_events_until_the_end_event(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"event: line\r\ndata: one\r\n\r\nevent: line\r\ndata: two\r\n\r\nevent: end\r\ndata: replica gone\r\n\r\n"
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    client = ControlClient("http://remote:8080", "tg_x", transport=httpx.MockTransport(handler))
    assert list(client.stream_lines("/services/web/logs/stream", {"lines": 5})) == [
        ("line", "one"), ("line", "two"), ("end", "replica gone"),
    ]
    monkeypatch.setattr(commands, "_remote", lambda args: ControlClient("http://remote:8080", "tg_x", transport=httpx.MockTransport(handler)))
    args = argparse.Namespace(service="web", replica=1, lines=5, follow=True, server="x")
    assert commands.cmd_logs(args) == 1  # the stream ended because the replica went away
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["one", "two"] and "replica gone" in captured.err
    assert seen[-1].url.params["replica"] == "1" and seen[-1].headers["authorization"] == "Bearer tg_x"
