"""A preview's model `<model>@pr-<N>` reaches a strict upstream (one that refuses model names it
does not serve, as vLLM and TGI do) under its served name, and comes back under the public one:
through the openai SDK, plain and streaming, chat and completions."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from gateway.access.tokens import create_token
from tests.gateway.conftest import RunningGateway, snapshot_of, start_example, stop
from tests.gateway.conftest import Upstream as Proc
from tidegate.routes import ModelRoute, ServiceRoute, Upstream


@pytest.fixture(scope="module")
def strict_upstream() -> Iterator[Proc]:
    up = start_example("openai_server.py", "--port", "0", "--model", "org/tiny-chat", "--strict-model", "--token-delay", "0.01")
    yield up
    stop(up.proc)


@pytest.fixture
def sdk(make_gateway: Callable[..., RunningGateway], strict_upstream: Proc) -> openai.OpenAI:
    gw = make_gateway()
    ups = (Upstream(replica_id="r-0", url=strict_upstream.url),)
    gw.publish(snapshot_of(
        ServiceRoute(name="chat", host="chat.localhost", upstreams=ups, model=ModelRoute(name="org/tiny-chat")),
        ServiceRoute(name="chat-pr-7", host="chat-pr-7.localhost", upstreams=ups, preview_pr=7,
                     model=ModelRoute(name="org/tiny-chat@pr-7")),
    ))
    token = create_token(gw.settings.state_dir, "sdk")
    gw.gateway.tokens.refresh(force=True)
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=token, max_retries=0)


def test_upstream_refuses_the_preview_name(strict_upstream: Proc) -> None:
    """The premise: sent unchanged, the preview's name is refused."""
    r = httpx.post(f"{strict_upstream.url}/v1/chat/completions",
                   json={"model": "org/tiny-chat@pr-7", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and "does not exist" in r.json()["message"]


def test_preview_chat_plain(sdk: openai.OpenAI) -> None:
    out = sdk.chat.completions.create(model="org/tiny-chat@pr-7", messages=[{"role": "user", "content": "hello there"}])
    assert out.model == "org/tiny-chat@pr-7"
    assert out.choices[0].message.content == "echo: hello there"
    # The deployed model beside it is untouched.
    assert sdk.chat.completions.create(model="org/tiny-chat", messages=[{"role": "user", "content": "x"}]).model == "org/tiny-chat"


def test_preview_chat_streaming(sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(
        model="org/tiny-chat@pr-7", messages=[{"role": "user", "content": "one two three four five"}], stream=True
    ))
    assert len(chunks) > 5
    assert {c.model for c in chunks} == {"org/tiny-chat@pr-7"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three four five"


def test_preview_completions_both_ways(sdk: openai.OpenAI) -> None:
    plain = sdk.completions.create(model="org/tiny-chat@pr-7", prompt="abc", max_tokens=5)
    assert plain.model == "org/tiny-chat@pr-7"
    streamed = list(sdk.completions.create(model="org/tiny-chat@pr-7", prompt="abc", max_tokens=5, stream=True))
    assert streamed and {c.model for c in streamed} == {"org/tiny-chat@pr-7"}


def test_rename_finds_names_split_across_chunks() -> None:
    from gateway.api.model_names import ModelRename

    stream = b'data: {"id":"1","model":"a/b","x":1}\n\ndata: {"model": "a/b"}\n\ndata: {"model":"a/bc"}\n\ndata: [DONE]\n\n'
    want = stream.replace(b'"a/b"', b'"a/b@pr-3"')
    for size in (1, 3, 7, len(stream)):
        rename = ModelRename("a/b", "a/b@pr-3")
        out = b"".join(rename.feed(stream[i : i + size]) for i in range(0, len(stream), size)) + rename.flush()
        assert out == want, size
