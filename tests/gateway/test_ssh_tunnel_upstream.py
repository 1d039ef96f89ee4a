"""The real gateway serving a cloud replica through its SSH tunnel: routes.json names the tunnel's
unix socket (as the cloud backends report it), the gateway proxies an OpenAI chat completion —
streamed too — into it, and the bytes cross a real sshd configured from the replica's user data to
the example OpenAI server standing in for the service on the "instance"."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backends.cloud.tunnels import Backoff, CloudTunnels
from tests.gateway.conftest import RunningGateway, snapshot_of, start_example, stop
from tests.gateway.conftest import Upstream as Proc
from tests.support.sshd import FakeInstance, require_sshd
from tidegate.routes import ModelFormat, ModelRoute, ServiceRoute, Upstream

MakeGateway = Callable[..., RunningGateway]


@pytest.fixture
def service() -> Iterator[Proc]:
    up = start_example("openai_server.py", "--port", "0")
    yield up
    stop(up.proc)


@pytest.fixture
def tunnels(tmp_path: Path) -> Iterator[CloudTunnels]:
    require_sshd()
    t = CloudTunnels(tmp_path / "state", "aws", active=True, backoff=Backoff(0.05, 0.5), connect_timeout=3.0)
    yield t
    t.shutdown()


def test_gateway_proxies_chat_completions_through_the_tunnel(
    make_gateway: MakeGateway,
    token_for: Callable[[RunningGateway], str],
    service: Proc,
    tunnels: CloudTunnels,
    tmp_path: Path,
) -> None:
    port = int(service.url.rsplit(":", 1)[1])
    instance = FakeInstance(tunnels, port, tmp_path / "instance")
    try:
        target = instance.target()
        tunnels.open(target)
        gw = make_gateway()
        model = ModelRoute(name="tiny", format=ModelFormat.OPENAI)
        route = ServiceRoute(
            name="llm",
            host="llm.localhost",
            auth=False,
            upstreams=(Upstream(replica_id=target.replica_id, url=tunnels.address(target.replica_id)),),
            model=model,
        )
        gw.publish(snapshot_of(route))
        body = {"model": "tiny", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 2}
        with gw.client(token=token_for(gw)) as c:
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"]
            with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
                assert s.status_code == 200
                lines = [line for line in s.iter_lines() if line.startswith("data:")]
            assert lines[-1] == "data: [DONE]" and len(lines) >= 2
        assert "Accepted publickey for nobody" in instance.sshd.log_text()
    finally:
        instance.sshd.close()
