"""libyaml's loader (the fast path of `load_document`) gives exactly what PyYAML's pure-Python
loader gives: the same data, the same node marks, the same syntax error and position. Checked on
every YAML file of the repository and on seeded random mutations of them."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.config.yamldoc import FAST_LOADER, YamlSyntaxError, load_document

ROOT = Path(__file__).resolve().parents[2]
PIECES = [":", " ", "\n", "-", "[", "]", "{", "}", "'", '"', "&a ", "*a", "#", "\t", "é", "?", "|", ">",
          "!!str ", "  ", ",", "😀", "\\", "%", "\ufeff", "\x85", "\u2028", "\r"]  # fmt: skip
EXTRA = [
    "name: héllo wörld\nport: 8000\nenv:\n  - A=ünï\n  - B: 2\n",
    "a: &x [1, {b: c}]\nb: *x\nc: |\n  ä\n  b\nd: >-\n  folded\n",
    "\ufeffa: 1\n",
    "a:\nb: [1é, 2, {c: }]\n",
]


def repository_yaml() -> list[str]:
    texts = list(EXTRA)
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if d not in {".venv", ".git", "node_modules", "state"})
        for name in sorted(filenames):
            if name.endswith((".yml", ".yaml")):
                try:
                    texts.append((Path(dirpath) / name).read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError):
                    continue
    return texts


def marks(node: yaml.Node | None) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        value = n.value if isinstance(n, yaml.ScalarNode) else None
        out.append((type(n).__name__, n.tag, n.start_mark.line, n.start_mark.column, value))
        if isinstance(n, yaml.MappingNode):
            stack.extend(x for pair in reversed(n.value) for x in reversed(pair))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(reversed(n.value))
    return out


def outcome(text: str, fast: bool) -> tuple[Any, ...]:
    try:
        doc = load_document(text, fast=fast)
    except YamlSyntaxError as e:
        return ("error", e.message, e.position)
    return ("ok", repr(doc.data), marks(doc.node))


@pytest.mark.skipif(FAST_LOADER is None, reason="PyYAML was built without libyaml")
def test_fast_loader_matches_the_pure_python_loader() -> None:
    texts = repository_yaml()
    assert len(texts) > 10
    rng = random.Random(14)
    cases = list(texts)
    for _ in range(4000):
        text = rng.choice(texts)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text) + 1)
            if rng.random() < 0.6:
                text = text[:at] + rng.choice(PIECES) + text[at:]
            else:
                text = text[:at] + text[at + rng.randint(1, 4) :]
        cases.append(text)
    mismatches = [t for t in cases if outcome(t, True) != outcome(t, False)]
    assert mismatches == [], f"{len(mismatches)} of {len(cases)} differ, first: {mismatches[0]!r}"
