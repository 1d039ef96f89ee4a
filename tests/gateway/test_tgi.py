"""Table-driven tests of the pure OpenAI <-> TGI translation."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.api import tgi

TEMPLATE = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


@pytest.mark.parametrize(
    ("messages", "bos", "eos", "expected"),
    [
        pytest.param([{"role": "user", "content": "hi"}], None, None, "<user>hi<assistant>", id="no-special-tokens"),
        pytest.param([{"role": "user", "content": "hi"}], "<s>", "</s>", "<s><user>hi</s><assistant>", id="string-tokens"),
        pytest.param([{"role": "user", "content": "hi"}], {"content": "<s>"}, {"content": "</s>", "lstrip": False}, "<s><user>hi</s><assistant>", id="mapping-tokens"),
        pytest.param([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], None, None, "<user>ab<assistant>", id="text-parts"),
        pytest.param([{"role": "assistant", "content": None}], None, None, "<assistant><assistant>", id="null-content"),
    ],
)
def test_render_prompt(messages: Any, bos: Any, eos: Any, expected: str) -> None:
    assert tgi.render_prompt(TEMPLATE, messages, bos, eos) == expected


def test_trim_and_lstrip_blocks() -> None:
    template = "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}"
    assert tgi.render_prompt(template, [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]) == "    x\n    y\n"


@pytest.mark.parametrize(
    ("template", "messages", "needle"),
    [
        pytest.param("{{ raise_exception('nope') }}", [{"role": "user", "content": "x"}], "nope", id="raise-exception"),
        pytest.param("{% for %}", [{"role": "user", "content": "x"}], "does not compile", id="syntax"),
        pytest.param("{{ messages.append(1) }}", [{"role": "user", "content": "x"}], "chat template failed", id="sandbox-immutable"),
        pytest.param(TEMPLATE, [], "non-empty", id="no-messages"),
        pytest.param(TEMPLATE, [{"role": "user", "content": [{"type": "image_url"}]}], "text content", id="image-part"),
        pytest.param(TEMPLATE, [{"content": "x"}], "role", id="no-role"),
    ],
)
def test_render_errors(template: str, messages: Any, needle: str) -> None:
    with pytest.raises(tgi.TranslationError, match=needle):
        tgi.render_prompt(template, messages)


@pytest.mark.parametrize(
    ("request_", "eos", "expected"),
    [
        pytest.param({}, None, {"details": True, "stop": []}, id="defaults"),
        pytest.param({"max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "seed": 3}, "</s>",
                     {"details": True, "stop": ["</s>"], "max_new_tokens": 5, "temperature": 0.7, "do_sample": True, "top_p": 0.9, "seed": 3}, id="sampling"),
        pytest.param({"temperature": 0, "top_p": 1.0}, None, {"details": True, "stop": [], "do_sample": False}, id="greedy-and-full-top-p"),
        pytest.param({"stop": "END"}, {"content": "</s>"}, {"details": True, "stop": ["END", "</s>"]}, id="stop-string-plus-eos"),
        pytest.param({"stop": ["</s>"]}, "</s>", {"details": True, "stop": ["</s>"]}, id="eos-not-duplicated"),
        pytest.param({"max_completion_tokens": 9}, None, {"details": True, "stop": [], "max_new_tokens": 9}, id="max-completion-tokens"),
    ],
)
def test_parameters(request_: dict[str, Any], eos: Any, expected: dict[str, Any]) -> None:
    assert tgi.tgi_parameters(request_, eos) == expected


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param({"max_tokens": 0}, id="max-tokens-zero"),
        pytest.param({"temperature": -1}, id="negative-temperature"),
        pytest.param({"top_p": 0}, id="top-p-zero"),
        pytest.param({"seed": "x"}, id="seed-string"),
        pytest.param({"stop": [1]}, id="stop-not-strings"),
    ],
)
def test_parameter_errors(request_: dict[str, Any]) -> None:
    with pytest.raises(tgi.TranslationError):
        tgi.tgi_parameters(request_, None)


@pytest.mark.parametrize(
    ("request_", "n"),
    [pytest.param({}, 1, id="default"), pytest.param({"n": 3}, 3, id="three")],
)
def test_choice_count(request_: dict[str, Any], n: int) -> None:
    assert tgi.choice_count(request_) == n
    assert [tgi.tgi_parameters({**request_, "seed": 10}, None, i)["seed"] for i in range(n)] == list(range(10, 10 + n))


def test_stream_with_n_refused() -> None:
    with pytest.raises(tgi.TranslationError, match="stream"):
        tgi.choice_count({"n": 2, "stream": True})


@pytest.mark.parametrize(
    ("response", "stops", "expected"),
    [
        pytest.param({"generated_text": "hi</s>", "details": {"finish_reason": "stop_sequence", "generated_tokens": 2, "prefill": [{}, {}, {}]}},
                     ["</s>"], tgi.Generation("hi", "stop", 3, 2), id="stop-sequence-trimmed"),
        pytest.param({"generated_text": "hi", "details": {"finish_reason": "eos_token", "generated_tokens": 2}},
                     ["</s>"], tgi.Generation("hi", "stop", 0, 2), id="eos"),
        pytest.param({"generated_text": "long END", "details": {"finish_reason": "length", "generated_tokens": 4, "input_length": 7}},
                     ["END"], tgi.Generation("long END", "length", 7, 4), id="length-keeps-text"),
        pytest.param([{"generated_text": "x", "details": {"finish_reason": "length", "generated_tokens": 1}}],
                     [], tgi.Generation("x", "length", 0, 1), id="list-form"),
    ],
)
def test_parse_generation(response: Any, stops: list[str], expected: tgi.Generation) -> None:
    assert tgi.parse_generation(response, stops) == expected


def test_chat_completion_usage() -> None:
    out = tgi.chat_completion("id", 1, "m", [tgi.Generation("a", "stop", 5, 2), tgi.Generation("b", "length", 5, 3)])
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    assert [c["finish_reason"] for c in out["choices"]] == ["stop", "length"]


def token(text: str, special: bool = False) -> dict[str, Any]:
    return {"token": {"id": 1, "text": text, "special": special}, "generated_text": None, "details": None}


def final(text: str, reason: str, generated_text: str, special: bool = False) -> dict[str, Any]:
    return {**token(text, special), "generated_text": generated_text, "details": {"finish_reason": reason, "generated_tokens": 3, "input_length": 4}}


def run_stream(stops: list[str], events: list[dict[str, Any]]) -> tuple[list[str], str | None]:
    tr = tgi.StreamTranslator("id", 0, "m", stops)
    chunks = [c for e in events for c in tr.feed(e)]
    texts = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"][0]["delta"].get("content")]
    return texts, chunks[-1]["choices"][0]["finish_reason"]


@pytest.mark.parametrize(
    ("stops", "events", "texts", "reason"),
    [
        pytest.param([], [token("a"), token(" b"), final("</s>", "eos_token", "a b", special=True)], ["a", " b"], "stop", id="eos-special-skipped"),
        pytest.param(["</s>"], [token("a"), token("</"), final("s>", "stop_sequence", "a</s>")], ["a"], "stop", id="split-stop-held-back-and-trimmed"),
        pytest.param(["END"], [token("E"), token("x"), final(" y", "length", "Ex y")], ["Ex", " y"], "length", id="false-alarm-released"),
        pytest.param([], [token("a"), final(" b", "length", "a b")], ["a", " b"], "length", id="length"),
    ],
)
def test_stream_translation(stops: list[str], events: list[dict[str, Any]], texts: list[str], reason: str) -> None:
    assert run_stream(stops, events) == (texts, reason)


def test_stream_first_chunk_has_role_and_usage_at_end() -> None:
    tr = tgi.StreamTranslator("id", 0, "m", [], include_usage=True)
    chunks = tr.feed(final("x", "length", "x"))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert tr.finished


@pytest.mark.parametrize(
    ("feeds", "payloads"),
    [
        pytest.param([b"data:{\"a\":1}\n\n"], ['{"a":1}'], id="one"),
        pytest.param([b"data: x\r\n\r\ndata: y\n", b"\n"], ["x", "y"], id="crlf-and-split"),
        pytest.param([b": comment\n\nevent: e\ndata: z\n\n"], ["z"], id="comments-and-fields"),
    ],
)
def test_sse_parser(feeds: list[bytes], payloads: list[str]) -> None:
    parser = tgi.SSEParser()
    assert [p for f in feeds for p in parser.feed(f)] == payloads


def test_token_text_rejects_other_shapes() -> None:
    with pytest.raises(tgi.TranslationError):
        tgi.token_text(5)
