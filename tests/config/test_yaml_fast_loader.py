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
    "base: &b {cpu: 2, memory: 8GB}\nx:\n  <<: *b\n  cpu: 4\ny: {<<: [*b], gpu: 1}\n",
    "when: 2001-12-14t21:59:43.10-05:00\nday: 2002-12-14\nbin: !!binary aGVsbG8=\ns: !!set {a, b}\n",
    "o: !!omap [a: 1, b: 2]\np: !!pairs [a: 1, a: 2]\n= : v\n",
    "ints: [0x1F, 0o17, 017, 1_000, 1:30, -0b101, +7]\nfloats: [.inf, -.Inf, .NaN, 1e3, 6.8523015e+5, 190:20:30.15]\n",
    "bools: [yes, No, on, OFF, true, False, y, n]\nnulls: [~, null, Null]\nstr: !!str 123\nk: 'q'\n",
    "a: &x [1, *x]\nb: &m {k: *x}\nc: *m\n",
    "[1, 2]: complex\n{a: b}: other\n",
    "a: 1\na: 2\n? k\n: v\n",
    "top-level string\n",
    "- 1\n- [2, {x: y}]\n",
    "k: !custom value\n",
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
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if not isinstance(n, yaml.ScalarNode):
            if id(n) in seen:  # an alias: the node is listed once (and a recursive one ends)
                out.append(("alias", n.start_mark.line, n.start_mark.column))
                continue
            seen.add(id(n))
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


@pytest.mark.slow  # 4,000 mutations through both loaders, 10 s
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
