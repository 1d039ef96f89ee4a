"""The loader's parse cache: a file is parsed and validated once per content (and default profile),
results with and without the cache are identical, and a changed file or profile is re-parsed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.config import loader
from reconciler.config.loader import PARSE_CACHE, load_tree

GOOD = "type: service\nname: {name}\nport: 8000\ncommands: [python3 app.py]\n"
BAD = "type: service\nname: broken\nport: eighty\ncommands: [python3 app.py]\nfoo: 1\n"


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    PARSE_CACHE.clear()
    yield
    PARSE_CACHE.enabled = True
    PARSE_CACHE.clear()


def write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def tree(root: Path) -> Path:
    for i in range(3):
        write(root, f"s{i}/.dstack.yml", GOOD.format(name=f"svc-{i}"))
    write(root, "broken/.dstack.yml", BAD)
    return root


def test_unchanged_files_are_not_parsed_again(tmp_path: Path) -> None:
    root = tree(tmp_path)
    first = load_tree(root)
    write(root, "s1/.dstack.yml", GOOD.format(name="svc-1") + "auth: false\n")
    second = load_tree(root)
    assert second.services["svc-0"] is first.services["svc-0"]  # the very same object: no re-parse
    assert second.services["svc-1"] is not first.services["svc-1"]
    assert second.services["svc-1"].config.auth is False and first.services["svc-1"].config.auth is True
    assert second.diagnostics == first.diagnostics


def test_results_are_the_same_with_and_without_the_cache(tmp_path: Path) -> None:
    root = tree(tmp_path)
    cached = [load_tree(root), load_tree(root)]
    PARSE_CACHE.enabled = False
    plain = load_tree(root)
    for result in cached:
        assert result.services == plain.services
        assert result.failed == plain.failed and result.failed == {"broken": "broken/.dstack.yml"}
        assert [d.format() for d in result.diagnostics] == [d.format() for d in plain.diagnostics]
        assert any("port" in d.format() for d in result.diagnostics)


def test_a_changed_default_profile_re_parses_every_file(tmp_path: Path) -> None:
    root = tree(tmp_path)
    before = load_tree(root)
    write(
        root,
        ".dstack/profiles.yml",
        "profiles:\n  - name: p\n    default: true\n    spot_policy: on-demand\n",
    )
    after = load_tree(root)
    assert after.services["svc-0"] is not before.services["svc-0"]
    assert after.services["svc-0"].config.spot_policy == "on-demand"


def test_evicted_entries_are_parsed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = loader.ParseCache(min_entries=1)
    monkeypatch.setattr(loader, "PARSE_CACHE", small)
    roots = [tree(tmp_path / name) for name in ("a", "b", "c")]
    for root in roots:  # same paths, other contents: other entries (a shared one would be right too)
        for rel in ("s0", "s1", "s2", "broken"):
            (root / rel / ".dstack.yml").write_text(
                (root / rel / ".dstack.yml").read_text() + f"# {root.name}\n"
            )
    first = load_tree(roots[0])
    assert small.max_entries == 8  # room for twice the tree
    for root in roots[1:]:
        load_tree(root)  # 12 entries for room for 8: the first tree's are dropped
    again = load_tree(roots[0])
    assert again.services == first.services and again.services["svc-0"] is not first.services["svc-0"]
    assert [d.format() for d in again.diagnostics] == [d.format() for d in first.diagnostics]
