"""The OpenAI-compatible API through the official `openai` SDK, for both model formats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import openai
import pytest

from tests.gateway.conftest import RunningGateway, snapshot_of
from tests.gateway.conftest import Upstream as Proc
from tidegate.routes import ModelRoute, ServiceRoute, Upstream

ZEPHYR = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)
# A template that keeps the eos token out of the prompt so the echo server reaches its own eos.
PLAIN = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}"
STRICT = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok"


@pytest.fixture
def api(make_gateway: Callable[..., RunningGateway], openai_upstream: Proc, tgi_unix_upstream: Proc) -> tuple[RunningGateway, str]:
    from gateway.access.tokens import create_token

    gw = make_gateway()

    def route(name: str, url: str, model: ModelRoute) -> ServiceRoute:
        return ServiceRoute(name=name, host=f"{name}.localhost", upstreams=(Upstream(replica_id=f"{name}-0", url=url),), model=model)

    gw.publish(
        snapshot_of(
            route("oa", openai_upstream.url, ModelRoute(name="oa-model")),
            route("zephyr", tgi_unix_upstream.url, ModelRoute(name="zephyr", format="tgi", chat_template=ZEPHYR, eos_token="</s>")),
            route("plain", tgi_unix_upstream.url, ModelRoute(name="plain", format="tgi", chat_template=PLAIN, bos_token="<s>", eos_token={"content": "</s>"})),
            route("strict", tgi_unix_upstream.url, ModelRoute(name="strict", format="tgi", chat_template=STRICT)),
            route("hub", tgi_unix_upstream.url, ModelRoute(name="org/no-template", format="tgi")),
        )
    )
    token = create_token(gw.settings.state_dir, "sdk")
    gw.gateway.tokens.refresh(force=True)
    return gw, token


def client(api: tuple[RunningGateway, str]) -> openai.OpenAI:
    gw, token = api
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=token, max_retries=0)


def test_models_list(api: tuple[RunningGateway, str]) -> None:
    ids = {m.id: m.owned_by for m in client(api).models.list()}
    assert ids == {"oa-model": "oa", "zephyr": "zephyr", "plain": "plain", "strict": "strict", "org/no-template": "hub"}


def test_openai_format_sync(api: tuple[RunningGateway, str]) -> None:
    r = client(api).chat.completions.create(model="oa-model", messages=[{"role": "user", "content": "hello big world"}], max_tokens=3)
    assert r.choices[0].message.content == "echo: hello big "
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_openai_format_stream(api: tuple[RunningGateway, str]) -> None:
    stream = client(api).chat.completions.create(model="oa-model", messages=[{"role": "user", "content": "a b"}], stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: a b"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_format_completions_and_embeddings(api: tuple[RunningGateway, str]) -> None:
    c = client(api)
    assert c.completions.create(model="oa-model", prompt="x y", max_tokens=5).choices[0].text == "echo: x y"
    emb = c.embeddings.create(model="oa-model", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8


def test_tgi_format_sync_trims_eos_stop(api: tuple[RunningGateway, str]) -> None:
    r = client(api).chat.completions.create(model="zephyr", messages=[{"role": "user", "content": "hi there"}])
    # The echo server repeats the prompt; the eos token after the user turn is a stop sequence.
    assert r.choices[0].message.content == "<|user|>\nhi there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens > 0 and r.usage.completion_tokens == 3


def test_tgi_format_mapping_object_eos_bos_and_user_stop(api: tuple[RunningGateway, str]) -> None:
    c = client(api)
    r = c.chat.completions.create(
        model="plain",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "one two three"}]}],
    )
    assert r.choices[0].message.content == "<s>[system] be brief [user] one two three"
    assert r.choices[0].finish_reason == "stop"
    r = c.chat.completions.create(model="plain", messages=[{"role": "user", "content": "one two three"}], stop=["two"])
    assert r.choices[0].message.content == "<s>[user] one "
    r = c.chat.completions.create(model="plain", messages=[{"role": "user", "content": "one two three"}], max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    r = c.chat.completions.create(model="plain", messages=[{"role": "user", "content": "x"}], n=2, seed=7, temperature=0.5)
    assert [ch.index for ch in r.choices] == [0, 1]


def test_tgi_format_stream(api: tuple[RunningGateway, str]) -> None:
    stream = client(api).chat.completions.create(
        model="plain", messages=[{"role": "user", "content": "alpha beta gamma"}], stream=True, stop=["gamma"],
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "<s>[user] alpha beta "
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_async_client_both_formats(api: tuple[RunningGateway, str]) -> None:
    gw, token = api

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=token, max_retries=0) as c:
            results = await asyncio.gather(
                c.chat.completions.create(model="oa-model", messages=[{"role": "user", "content": "async"}]),
                c.chat.completions.create(model="zephyr", messages=[{"role": "user", "content": "async"}]),
            )
            streamed = ""
            async for chunk in await c.chat.completions.create(model="zephyr", messages=[{"role": "user", "content": "s"}], stream=True):
                if chunk.choices:
                    streamed += chunk.choices[0].delta.content or ""
            return [r.choices[0].message.content or "" for r in results] + [streamed]

    assert asyncio.run(run()) == ["echo: async", "<|user|>\nasync", "<|user|>\ns"]


@pytest.mark.parametrize(
    ("model", "messages", "error", "status", "needle"),
    [
        pytest.param("nope", [{"role": "user", "content": "x"}], openai.NotFoundError, 404, "nope", id="unknown-model"),
        pytest.param("strict", [{"role": "system", "content": "x"}], openai.BadRequestError, 400, "first message must be from the user", id="template-raises"),
        pytest.param("plain", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], openai.BadRequestError, 400, "text", id="image-part"),
        pytest.param("org/no-template", [{"role": "user", "content": "x"}], openai.InternalServerError, 503, "chat_template", id="no-template-no-hub", marks=pytest.mark.slow),  # waits out the 5 s hub fetch
    ],
)
def test_errors_in_openai_shape(
    api: tuple[RunningGateway, str], model: str, messages: list[dict[str, object]], error: type[openai.APIStatusError], status: int, needle: str
) -> None:
    with pytest.raises(error) as info:
        client(api).chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    assert info.value.status_code == status
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "code"}
    assert needle in body["error"]["message"]


@pytest.mark.parametrize(
    ("key", "error"),
    [pytest.param("", openai.AuthenticationError, id="missing"), pytest.param("tg_wrong", openai.PermissionDeniedError, id="wrong")],
)
def test_api_requires_token(api: tuple[RunningGateway, str], key: str, error: type[Exception]) -> None:
    gw, _ = api
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or "x", max_retries=0, default_headers={"Authorization": ""} if not key else None)
    with pytest.raises(error):
        c.models.list()


def test_gateway_host_serves_the_api(api: tuple[RunningGateway, str]) -> None:
    gw, token = api
    with gw.client("gateway.localhost", token) as c:
        assert c.get("/v1/models").json()["object"] == "list"


def test_tgi_validation_error_becomes_400(api: tuple[RunningGateway, str]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        # The example TGI server, like TGI, accepts at most 4 stop sequences (eos makes 5).
        client(api).chat.completions.create(model="zephyr", messages=[{"role": "user", "content": "x"}], stop=["a", "b", "c", "d"])
    assert "stop" in info.value.response.json()["error"]["message"]
