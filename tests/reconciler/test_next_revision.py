"""A new revision looks at what changed only: the loader starts from the last load when a few
service files changed in content, the desired set reuses the last call's outcomes, the code hash
is the last one when only config files changed, and the offers' placement is last pass's when
the answer is the same. Each equals what the uncached path gives at every step (real git
repositories through the real GitSource), and each input that counts changes the result.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from backends.base import BackendRegistry
from reconciler.config.loader import PARSE_CACHE, LoadResult, load_tree
from reconciler.engine import memo
from reconciler.engine.desired import (
    DesiredSet,
    build_desired,
    replica_spec_hash,
    replica_spec_hash_plain,
)
from reconciler.engine.offers import with_offers
from reconciler.source import code_files
from reconciler.source.checkout import Checkout, GitSource
from tests.reconciler.fakes import FakeBackend, only_local_ships_workdir
from tests.reconciler.test_tree_index import TREE, checkout, service
from tests.support.git_repo import commit_push

ROOT = Path(__file__).resolve().parents[2]


def walked(c: Checkout) -> LoadResult:
    """The load without the index or any cache: every file read and parsed."""
    PARSE_CACHE.enabled = False
    try:
        return load_tree(c.root)
    finally:
        PARSE_CACHE.enabled = True


MODEL = "model:\n  name: shared\n  format: openai\n"

# each step is a commit on top of the last; every load through the index must equal the walk
STEPS: list[dict[str, str | None]] = [
    {"a/.dstack.yml": service("alpha", "v2")},  # content only: the kept load's path
    {"app.py": "print(2)\n"},  # no config file changed
    {"a/.dstack.yml": service("alpha-renamed")},  # a new name
    {"b.dstack.yml": service("keep")},  # the name of another service: both fail
    {"b.dstack.yml": service("bee")},  # fixed again
    {"a/.dstack.yml": "type: service\nport: [\n"},  # broken YAML
    {"a/.dstack.yml": service("alpha")},  # fixed
    {"a/.dstack.yml": service("alpha") + MODEL, "b.dstack.yml": service("bee") + MODEL},  # shared model
    {"b.dstack.yml": service("bee")},  # one keeps it
    {"a/.dstack.yml": service("alpha", "v3").replace("name: alpha\n", "")},  # a name from its path
    {"kept/.gitignore": "/sub/\n"},  # an ignore file: other files found
    {".dstack/profiles.yml": "profiles:\n  - name: p\n    default: true\n    max_price: 1.5\n"},
    {"new.dstack.yml": service("new")},  # a file added
    {"new.dstack.yml": None},  # and removed
]


def test_every_next_revision_loads_as_the_walk(tmp_path: Path) -> None:
    c, bare, work = checkout(tmp_path, TREE)
    source = GitSource(str(bare), "main", tmp_path / "state")
    PARSE_CACHE.clear()
    last = load_tree(c.root, None, c.index)
    assert last == walked(c)
    for step in STEPS:
        commit_push(work, step)
        c = source.current()
        assert c.index is not None
        loaded = load_tree(c.root, None, c.index)
        assert loaded == walked(c), step
        changed = {p for p in step if p.endswith(".dstack.yml")}
        if ".dstack/profiles.yml" in step:  # every service's file merged with the new default
            assert all(ls is not last.services.get(n) for n, ls in loaded.services.items())
            changed = set(loaded.services)
        for name, ls in loaded.services.items():
            if ls.path not in changed and name not in changed and name in last.services and last.services[name].path == ls.path:
                assert ls is last.services[name], (step, name)  # an unchanged file: the very object
        last = loaded


def test_a_content_change_looks_at_no_other_file(tmp_path: Path) -> None:
    """The kept load stands for the scan: an ignore file gone from the folder (but in the index)
    is not read again, so what it hides stays hidden (the walk would find it)."""
    c1, bare, work = checkout(tmp_path, TREE)
    PARSE_CACHE.clear()
    first = load_tree(c1.root, None, c1.index)
    commit_push(work, {"a/.dstack.yml": service("alpha", "v2")})
    c2 = GitSource(str(bare), "main", tmp_path / "state").current()
    assert c2.index is not None
    (c2.root / "kept" / ".gitignore").unlink()
    second = load_tree(c2.root, None, c2.index)
    assert second.services.keys() == first.services.keys()
    assert second.services["alpha"].config.env == {"GREETING": "v2"}
    assert "skip" in load_tree(c2.root).services  # the walk reads the folder as it now is
    PARSE_CACHE.clear()  # nothing kept: the scan reads the folder
    assert "skip" in load_tree(c2.root, None, c2.index).services


def test_the_code_hash_of_a_config_only_change_is_the_last_one_and_right(tmp_path: Path) -> None:
    c1, bare, work = checkout(tmp_path, TREE)  # (commit_push's `add -A` would drop an executable bit)
    source = GitSource(str(bare), "main", tmp_path / "state")
    code_files.clear_cache()
    hashes = [code_files.code_hash_at(c1.root, c1.revision, c1.index)]
    steps: list[dict[str, str | None]] = [
        {"a/.dstack.yml": service("alpha", "v2"), "new.dstack.yml": service("new")},  # configs only
        {"app.py": "print(5)\n"},  # code
        {".dstackignore": "/data/\n"},  # what is shipped
        {"a/.dstack.yml": service("alpha", "v3")},  # configs only again
    ]
    for step in steps:
        commit_push(work, step)
        c = source.current()
        assert c.index is not None
        fast = code_files.code_hash_at(c.root, c.revision, c.index)
        assert fast == code_files.code_hash(c.root)  # the walk of the folder
        hashes.append(fast)
    assert hashes[1] == hashes[0] and hashes[4] == hashes[3]
    assert len({hashes[1], hashes[2], hashes[3]}) == 3


def test_an_executable_change_is_not_taken_for_a_config_change(tmp_path: Path) -> None:
    c, _, _ = checkout(tmp_path, TREE)
    assert c.index is not None
    code_files.clear_cache()
    before = code_files.code_hash_at(c.root, c.revision, c.index)
    flipped = type(c.index)(c.index.files, c.index.executable | {"app.py"})
    (c.root / "app.py").chmod(0o755)
    after = code_files.code_hash_at(c.root, "another", flipped)
    assert after != before and after == code_files.code_hash(c.root)


def build(c: Checkout, env: dict[str, str], **kw: object) -> DesiredSet:
    args: dict[str, object] = {
        "revision": c.revision, "workdir": str(c.root), "env": env, "salt": "s",
        "backends": ["local", "aws"], "ships_workdir": only_local_ships_workdir,
        "code_hash": lambda: code_files.code_hash_at(c.root, c.revision, c.index),
    }  # fmt: skip
    args.update(kw)
    return build_desired(load_tree(c.root, None, c.index), **args)  # type: ignore[arg-type]


def uncached(c: Checkout, env: dict[str, str], **kw: object) -> DesiredSet:
    memo.enabled = PARSE_CACHE.enabled = False
    try:
        return build(c, env, **kw)
    finally:
        memo.enabled = PARSE_CACHE.enabled = True


def test_the_desired_set_of_each_revision_reuses_only_what_did_not_change(tmp_path: Path) -> None:
    c1, bare, work = checkout(tmp_path, TREE)
    source = GitSource(str(bare), "main", tmp_path / "state")
    env = {"X": "1"}
    first = build(c1, env)
    assert first == uncached(c1, env)
    again = build(c1, env)
    assert all(again.services[n] is d for n, d in first.services.items())
    commit_push(work, {"a/.dstack.yml": service("alpha", "v2")})
    c2 = source.current()
    second = build(c2, env)
    assert second == uncached(c2, env)
    assert second.services["bee"] is first.services["bee"]
    assert second.services["alpha"].spec_hash != first.services["alpha"].spec_hash
    commit_push(work, {"app.py": "print(7)\n"})  # the code: every service on local rolls
    c3 = source.current()
    third = build(c3, env)
    assert third == uncached(c3, env)
    assert all(third.services[n].spec_hash != d.spec_hash for n, d in second.services.items())
    other_salt = build(c3, env, salt="t")  # another input of the outcome: another result
    assert other_salt == uncached(c3, env, salt="t")
    assert all(other_salt.services[n].spec_hash != d.spec_hash for n, d in third.services.items())
    fewer = build(c3, env, backends=["aws"])
    assert fewer == uncached(c3, env, backends=["aws"])
    assert {d.backend for d in fewer.services.values()} == {"aws"}


def test_the_split_replica_hash_is_the_json_dumps_one() -> None:
    """The spec hash rolls replicas: it is written in parts, and must be the very bytes of the
    whole document json.dumps wrote (the examples, plus non-ASCII text and floats)."""
    loads = [load_tree(p) for p in sorted((ROOT / "examples").iterdir()) if p.is_dir()]
    services = [ls for load in loads for ls in load.services.values()]
    assert len(services) > 5
    odd = services[0]
    odd = replace(odd, config=odd.config.model_copy(update={"env": {"GRÜSSE": "grüße \u2603", "Q": '"'}}))
    for ls in [*services, odd]:
        for backend, files in (("local", "f" * 64), ("aws", None), ('we"ird\u00e9', "x")):
            assert replica_spec_hash(ls, "e" * 64, backend, files) == replica_spec_hash_plain(ls, "e" * 64, backend, files)
    assert replica_spec_hash(odd, "e", "local") != replica_spec_hash(services[0], "e", "local")


def test_placement_follows_the_answer_and_equals_the_uncached_one(tmp_path: Path) -> None:
    c, _, _ = checkout(tmp_path, TREE)
    ds = build(c, {})
    local = FakeBackend()
    registry = BackendRegistry({"local": local, "aws": FakeBackend(name="aws", ships_workdir=False)})
    first, _ = with_offers(ds, registry)
    second, _ = with_offers(ds, registry)
    assert all(second.services[n] is d for n, d in first.services.items())
    local.cpus *= 2  # another answer: another offer on every service local places
    third, _ = with_offers(ds, registry)
    assert all(third.services[n] is not d for n, d in first.services.items() if d.backend == "local")
    offers = [d.template.offer for d in third.services.values() if d.backend == "local"]
    assert offers and {o.cpus if o else None for o in offers} == {local.cpus}
    memo.enabled = False
    try:
        assert with_offers(ds, registry)[0] == third
    finally:
        memo.enabled = True


@pytest.fixture(autouse=True)
def _clean() -> None:
    PARSE_CACHE.clear()
    memo.clear_all()
    code_files.clear_cache()
