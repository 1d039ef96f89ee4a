"""Nested config values validated once per distinct YAML value (config/value_memo.py): a file parses
to exactly what it parses to with the memos off, whatever was validated before it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.config.models import MEMOS
from reconciler.config.parse import ParsedFile, parse_service_text
from reconciler.config.value_memo import MAX_DEPTH, MAX_ENTRIES, ValidatedMemo, value_key

HEAD = "type: service\nname: web\ncommands: [serve]\nport: 8000\n"

# Values that differ only in type or in a float's sign: each parses on its own, never as another.
BLOCKS = [
    "resources:\n  cpu: 1\n",
    "resources:\n  cpu: 1.0\n",
    "resources:\n  cpu: true\n",
    "resources:\n  cpu: '1'\n",
    "resources:\n  memory: 0.0\n",
    "resources:\n  memory: -0.0\n",
    "resources:\n  memory: 0\n",
    "resources:\n  memory: 64MB..\n  disk: 1GB..\n",
    "resources:\n  disk: 1GB..\n  memory: 64MB..\n",
    "resources:\n  gpu: A100:2\n",
    "resources:\n  gpu: {name: [A100, H100], count: 2}\n",
    "resources:\n  gpu: {name: A100, count: 2}\n",
    "resources:\n  gpu: {name: Nope1}\n",  # a warning, every time
    "resources:\n  gpu: A100::2\n",  # an error, every time
    "resources:\n  cpu: 4..2\n",
    "resources:\n  memroy: 8GB\n",
    "resources: {}\n",
    "resources: null\n",
    "resources: [1]\n",
    "model: llama\n",
    "model: {name: llama, format: openai}\n",
    "model: {name: llama, format: openai, prefix: v1}\n",
    "model: {name: llama, format: tgi, chat_template: '{{ x }}'}\n",
    "model: {name: llama, format: tgi, chat_template: '{{ x'}\n",
    "model: {name: llama, format: openai, eos_token: x}\n",
    "replicas: 1..4\nscaling: {metric: rps, target: 10}\n",
    "replicas: 1..4\nscaling: {metric: rps, target: 10, window: 0}\n",
    "replicas: 1..4\nscaling: {metric: rps, target: 10, scale_up_delay: 1m}\n",
    "replicas: 1..4\nscaling: {metric: rps, target: 10.0, scale_up_delay: 60}\n",
]


@pytest.fixture
def memos_off() -> Iterator[None]:
    for memo in MEMOS.values():
        memo.enabled = False
        memo.clear()
    try:
        yield
    finally:
        for memo in MEMOS.values():
            memo.enabled = True
            memo.clear()


def seen(parsed: ParsedFile) -> tuple[Any, ...]:
    dumped = None if parsed.config is None else parsed.config.model_dump(mode="json")
    return parsed.kind, parsed.diagnostics, dumped, repr(dumped)  # repr: -0.0 is not 0.0


def parse_all() -> list[tuple[Any, ...]]:
    return [seen(parse_service_text(HEAD + block, "svc/.dstack.yml")) for block in BLOCKS]


def test_every_file_parses_as_with_the_memos_off(memos_off: None) -> None:
    expected = parse_all()
    for memo in MEMOS.values():
        memo.enabled = True
    assert parse_all() == expected  # first sight of each value
    assert parse_all() == expected  # every valid value now found in the memos
    assert parse_all()[::-1] == [seen(parse_service_text(HEAD + b, "svc/.dstack.yml")) for b in BLOCKS[::-1]]


def test_a_repeated_value_is_one_instance() -> None:
    first = parse_service_text(HEAD + BLOCKS[7], "a/.dstack.yml").config
    again = parse_service_text(HEAD.replace("web", "api") + BLOCKS[7], "b/.dstack.yml").config
    assert first is not None and again is not None and first.name != again.name
    assert again.resources is first.resources


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param(1, True, id="int-bool"),
        pytest.param(1, 1.0, id="int-float"),
        pytest.param(0.0, -0.0, id="float-sign"),
        pytest.param(1, "1", id="int-str"),
        pytest.param(None, "null", id="none-str"),
        pytest.param({"a": 1}, ["a", 1], id="mapping-list"),
        pytest.param({"a": 1, "b": 2}, {"b": 2, "a": 1}, id="mapping-order"),
        pytest.param(["mapping"], {}, id="list-tag"),
        pytest.param("mapping", {}, id="str-tag"),
        pytest.param({"a": [1]}, {"a": [True]}, id="nested"),
    ],
)
def test_keys_differ_for_different_values(one: object, other: object) -> None:
    assert value_key(one) != value_key(other)


def test_values_that_are_not_plain_data_are_validated_every_time() -> None:
    memo: ValidatedMemo[object] = ValidatedMemo()
    calls: list[object] = []

    def handler(value: object) -> object:
        calls.append(value)
        return object()

    deep: object = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    for value in ({1: "a"}, (1, 2), deep, {"a": {1, 2}}):
        memo.validated(value, handler)
        memo.validated(value, handler)
    assert len(calls) == 8
    assert memo.validated([[1]], handler) is memo.validated([[1]], handler) and len(calls) == 9


def test_an_invalid_value_is_not_kept_and_a_full_memo_starts_over() -> None:
    memo: ValidatedMemo[int] = ValidatedMemo()

    def refuse(value: object) -> int:
        raise ValueError(str(value))

    for _ in range(2):
        with pytest.raises(ValueError, match="bad"):
            memo.validated("bad", refuse)
    for n in range(MAX_ENTRIES + 1):
        assert memo.validated(n, lambda v: v) == n  # type: ignore[arg-type,return-value]
    assert memo.validated(MAX_ENTRIES, refuse) == MAX_ENTRIES
    with pytest.raises(ValueError):
        memo.validated(0, refuse)  # gone when the memo started over
