"""quickyaml (yaml-rs, the loader's fast path) gives exactly PyYAML's SafeLoader data or MISS, and
the diagnostics and positions of a file do not depend on which path parsed it.

Checked on every YAML file of the repository, the seed page's examples, a corpus that exercises
each of quickyaml's refusals, every short number-like token, and seeded random mutations."""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.config import quickyaml
from reconciler.config.loader import load_tree
from reconciler.config.parse import parse_service_text
from reconciler.config.quickyaml import MISS, quick_load
from tests.config.test_yaml_fast_loader import PIECES, repository_yaml

ROOT = Path(__file__).resolve().parents[2]
SEED_PAGES = [ROOT.parent / "shared/seed/dstack-services.txt", Path("/work/shared/seed/dstack-services.txt")]
BASE = "type: service\nname: svc-0001\n"
GOOD = BASE + "port: 8000\ncommands:\n  - python3 app.py 8000\n"

# Documents where yaml-rs and PyYAML differ or may differ: quick_load must answer MISS.
DIFFERENT = [
    "a: yes\n", "a: No\n", "a: on\n", "a: OFF\n",  # YAML 1.1 booleans
    "a: 017\n", "a: 0o17\n", "a: 09\n", "a: +017\n", "a: -0_7\n", "a: +_1\n",  # octal, leading zeros
    "a: 1:30\n", "a: 190:20:30.15\n", "a: 1:0.\n",  # sexagesimal
    "a: 1e3\n", "a: 1.0e3\n", "a: 1e+3\n", "a: -.5\n", "a: +.5\n", "a: .INf\n", "a: -.NaN\n",  # floats
    "a: 2001-12-14\n", "when: 2001-12-14t21:59:43.10-05:00\n", "a: 2001-12-14 21:59:43.10 -5\n",
    "a: 1\na: 2\n", "'a': 1\na: 2\n", "env: {A: 1, A: 2}\n",  # duplicate keys
    "a: &x 1\nb: *x\n", "b: &b {c: 1}\nx:\n  <<: *b\n  d: 2\n", "x: {<<: {a: 1}}\n",  # anchors, merges
    "a: !!str 1\n", "a: !custom x\n", "s: !!set {a, b}\n", "b: !!binary aGVsbG8=\n",  # tags
    "a: 1\n---\nb: 2\n", "%YAML 1.1\n---\na: 1\n", "a: 1\n...\n",  # documents, directives
    "a: =\n", "[1]: 2\n", "1: a\n'1': b\n", "? a\n: b\n", "true: x\n", "~: x\n",  # keys
    "a: \x01\n", "a: \x7f\n", "a: \ufeffb\n", "a:\tb\n", "a: b\u2028c\n",  # characters
    "a: |#\n  x\n", "[" * 60 + "]" * 60 + "\n", "- " * 60 + "x\n",  # block comments, nesting
]  # fmt: skip
# Documents quick_load must read itself (the common shapes of a service file).
QUICK = [
    GOOD,
    GOOD + "env:\n  - A=1\n  - B\nresources:\n  cpu: 2..\n  memory: 16GB..\n  gpu: A100:80GB:2\n",
    GOOD + "python: '3.10'\nauth: false\nreplicas: 1..4\nscaling: {metric: rps, target: 10.5}\n",
    GOOD + "env:\n  PORT: '017'\n  FLAG: \"yes\"\nmax_price: 0.5\n",  # quoted specials are strings
    BASE + "port: 8000\ncommands:\n  - pip install -r requirements.txt && python serve.py *.bin\n",
    BASE + "commands: [x]\nmodel: {name: x/y, format: openai}\nport: '8080:8000'\n",
    "",
    "# only a comment\n",
    "---\ntype: service\n",
    "a: 'it''s'\nb: \"\\x41\\u00e9\"\nc: |\n  x\n  y\nd: >-\n  folded\n  text\n",
    "a: [1, 2.5, -3, 0, 0x1F, true, null, ~]\nb: {c: d}\n",
    "a: b\r\nc: d\r\n",
]


def same(a: Any, b: Any) -> bool:
    """Equal data of equal types (1 != True != 1.0 here), NaN equal to itself, same key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def pyyaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError, ValueError) as e:  # ValueError: PyYAML's `0x_`
        return e


def agrees(text: str) -> bool:
    quick = quick_load(text)
    if quick is MISS:
        return True
    expected = pyyaml(text)
    return not isinstance(expected, Exception) and same(quick, expected)


def seed_examples() -> list[str]:
    """The `type: service` blocks of the dstack page tidegate follows (when it is beside the repo)."""
    page = next((p for p in SEED_PAGES if p.is_file()), None)
    if page is None:
        return []
    yaml_line = re.compile(r"^(\s+\S|[\w.-]+:|#|-\s)")
    examples: list[str] = []
    current: list[str] | None = None
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("type: service"):
            current = []
            examples.append("")
        if current is None:
            continue
        if line.strip() and not yaml_line.match(line):
            examples[-1] = "\n".join(current) + "\n"
            current = None
            continue
        current.append(line)
    if current is not None:
        examples[-1] = "\n".join(current) + "\n"
    return examples


def example_configs() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted((ROOT / "examples").rglob("*.dstack.yml"))]


def number_tokens() -> Iterator[str]:
    """Every token of up to 4 number-ish characters, and random longer ones."""
    for n in range(1, 5):
        for combo in itertools.product("019+-._:eExob", repeat=n):
            yield "".join(combo)
    rng = random.Random(3)
    alphabet = "0123456789+-._:eExXoObBfFtTnNyY~ aAlLsSrRuUiI"
    for _ in range(30_000):
        yield "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))).strip()


def mutations(texts: list[str], count: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(count):
        text = rng.choice(texts)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text) + 1)
            if rng.random() < 0.6:
                text = text[:at] + rng.choice([*PIECES, "0", "017", "yes", "1e3", "<<", "1:30"]) + text[at:]
            else:
                text = text[:at] + text[at + rng.randint(1, 4) :]
        yield text


SCALARS = [
    "service", "x/y", "8000", "0", "1..4", "64MB..", "A100:80GB:2", "3.10", "0.5", "-3", "+7", "1_000", "0x1F",
    "017", "09", "0o17", "1e3", "1.5e+3", "-.5", ".5", ".inf", ".NaN", "1:30", "2024-01-01", "yes", "No", "on",
    "true", "False", "null", "~", "", "<<", "=", "a b", "a: b", "a #b", "#x", "- x", "it's", "say \"hi\"", "é",
    "pip install x && run *.py", "http://x:8000/v1", "8080:8000", "$HOME", "{{ x }}", "@x", "%x", "!x", "&x",
    "*x", "|x", ">x", "?x", ":x", "[x]", "0X1", "_1", "\\", "a\\nb", "  padded  ", "tab\there",
]  # fmt: skip


BENIGN = [s for s in SCALARS if s and quick_load(f"k: {s}\n") is not MISS and "#" not in s]


def scalar(rng: random.Random, pool: list[str], key: bool = False) -> str:
    value = rng.choice(pool)
    style = rng.random()
    if style < 0.5 and not key:
        return value  # plain (may be invalid YAML: both parsers must agree or quick_load misses)
    if style < 0.7:
        return "'" + value.replace("'", "''") + "'"
    if style < 0.9 or key:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return "|\n  " + value if rng.random() < 0.5 else ">-\n  " + value


def node(rng: random.Random, pool: list[str], indent: int, depth: int) -> str:
    """A random block or flow node at `indent` (the text after `key:` or `- `)."""
    pad = " " * indent
    roll = rng.random()
    if depth > 2 or roll < 0.5:
        text = scalar(rng, pool)
        return " " + text.replace("\n  ", "\n" + pad + "  ")
    if roll < 0.6:
        items = ", ".join(scalar(rng, pool) for _ in range(rng.randint(0, 3)))
        return f" [{items}]"
    if roll < 0.7:
        items = ", ".join(
            f"{rng.choice(['a', 'b', 'k'])}{i}: {scalar(rng, pool)}" for i in range(rng.randint(0, 3))
        )
        return " {" + items + "}"
    if roll < 0.85:
        return "".join(
            f"\n{pad}  -{node(rng, pool, indent + 4, depth + 1)}" for _ in range(rng.randint(1, 3))
        )
    keys = rng.sample(["a", "b", "c", "yes", "1", "name", "x y", "'q'", "on", "A_B"], rng.randint(1, 3))
    return "".join(f"\n{pad}  {k}:{node(rng, pool, indent + 2, depth + 1)}" for k in keys)


def generated_documents(count: int, seed: int) -> Iterator[str]:
    """Random documents of config-like shape: block and flow collections, every scalar style."""
    rng = random.Random(seed)
    keys = ["type", "name", "env", "commands", "port", "resources", "model", "x", "y", "z", "yes", "'017'"]
    for _ in range(count):
        pool = SCALARS if rng.random() < 0.5 else BENIGN  # half of them mostly quick
        lines = [f"{k}:{node(rng, pool, 0, 0)}" for k in rng.sample(keys, rng.randint(1, 6))]
        if rng.random() < 0.2:
            lines.insert(rng.randrange(len(lines) + 1), "# " + rng.choice(SCALARS))
        yield "\n".join(lines) + ("\n" if rng.random() < 0.9 else "")


@contextmanager
def quick(enabled: bool) -> Iterator[None]:
    saved = quickyaml.ENABLED
    quickyaml.ENABLED = enabled
    try:
        yield
    finally:
        quickyaml.ENABLED = saved


def parsed_outcome(text: str) -> tuple[Any, ...]:
    p = parse_service_text(text, "svc/.dstack.yml", {"regions": ["eu-west-1"]})
    config = p.config.model_dump() if p.config else None
    return (p.kind, p.name, config, [tuple(vars(d).values()) for d in p.diagnostics], dict(p.positions))


def test_refusals_miss() -> None:
    missed = [text for text in DIFFERENT if quick_load(text) is not MISS]
    assert missed == []
    assert all(agrees(text) for text in DIFFERENT)


def test_common_shapes_are_read_quickly_and_equal() -> None:
    for text in QUICK:
        data = quick_load(text)
        assert data is not MISS, text
        assert same(data, pyyaml(text)), text


def test_examples_and_seed_configs_take_the_quick_path() -> None:
    configs = example_configs() + seed_examples()
    assert len(configs) >= 5
    quick_ones = [text for text in configs if quick_load(text) is not MISS]
    assert all(agrees(text) for text in configs)
    assert len(quick_ones) == len(configs)


def test_off_switch_misses_everything() -> None:
    with quick(False):
        assert quick_load(GOOD) is MISS


def test_diagnostics_and_positions_do_not_depend_on_the_path() -> None:
    """Valid files, files with errors and warnings (re-parsed with marks), and each refusal."""
    texts = [
        GOOD,
        GOOD + "resources:\n  gpu: Z999\n",  # an unknown GPU: a warning with a position
        GOOD + "retry:\n  duration: 1h\nspot_policy: auto\n",
        GOOD + "replicas: 1..4\n",  # a cross-field error
        GOOD + "env:\n  - 1BAD=x\n",
        GOOD + "porrt: 80\n",
        GOOD + "name: Bad_Name\n",
        GOOD.replace("type: service", "type: task"),
        GOOD + "model: x/y\n",
        *(GOOD + t for t in DIFFERENT if t.startswith("a:")),
        *example_configs(),
        *seed_examples(),
        *QUICK,
        *DIFFERENT,
    ]
    for text in texts:
        with quick(True):
            fast = parsed_outcome(text)
        with quick(False):
            slow = parsed_outcome(text)
        assert fast == slow, text


def test_cross_file_positions_of_quick_files(tmp_path: Path) -> None:
    """Two files with one name: the diagnostics point at each `name:` key (found lazily)."""
    for sub, pad in (("a", ""), ("b", "# a comment\n\n")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / ".dstack.yml").write_text(pad + GOOD)
    with quick(True):
        fast = load_tree(tmp_path).diagnostics
    with quick(False):
        slow = load_tree(tmp_path).diagnostics
    assert fast == slow
    assert [(d.path, d.line, d.column) for d in fast] == [("a/.dstack.yml", 2, 1), ("b/.dstack.yml", 4, 1)]


@pytest.mark.slow  # ~100,000 documents through yaml-rs and PyYAML's pure-Python loader, ~30 s
def test_quick_load_matches_pyyaml_on_fuzzed_documents() -> None:
    texts = repository_yaml() + seed_examples() + example_configs() + QUICK + DIFFERENT
    tokens = list(number_tokens())
    cases = [
        *texts,
        *(f"k: {token}\n" for token in tokens),
        *(f"- [{token}, '{token}']\n" for token in tokens[::7]),
        *(f"{token}: v\n" for token in tokens[::5]),
        *mutations(texts, 20_000, 14),
        *generated_documents(20_000, 16),
    ]
    mismatches = [text for text in cases if not agrees(text)]
    assert mismatches == [], f"{len(mismatches)} of {len(cases)} differ, first: {mismatches[:5]!r}"


@pytest.mark.slow  # 3,000 mutated service files parsed both ways, ~20 s
def test_parse_results_match_on_fuzzed_service_files() -> None:
    texts = example_configs() + seed_examples() + QUICK[:6]
    for text in [*mutations(texts, 2_000, 15), *(GOOD + t for t in generated_documents(1_000, 17))]:
        with quick(True):
            fast = parsed_outcome(text)
        with quick(False):
            slow = parsed_outcome(text)
        assert fast == slow, text


def test_reads_of_large_and_unreadable_files(tmp_path: Path) -> None:
    """The loader's reads: a file over 64 KiB is read whole, one over MAX_FILE_BYTES refused, a
    folder named like a config file left alone."""
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / ".dstack.yml").write_text(GOOD + "".join(f"# {'x' * 70}\n" for _ in range(2000)))
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / ".dstack.yml").write_text(GOOD + "#" * 1_000_001 + "\n")
    (tmp_path / "dir.dstack.yml").mkdir()
    loaded = load_tree(tmp_path)
    assert "svc-0001" in loaded.services  # the big one (the huge one fails, same name)
    messages = {(d.path, d.message) for d in loaded.diagnostics}
    assert ("huge/.dstack.yml", "the file is larger than 1000000 bytes") in messages
    assert loaded.services["svc-0001"].path == "big/.dstack.yml"
    assert not any(d.path.startswith("dir.") for d in loaded.diagnostics)
