"""Loading a tree: discovery with ignore files, names, collisions, profiles, hashes, failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.config.loader import (
    PARSE_CACHE,
    Severity,
    derive_service_name,
    discover,
    load_tree,
    spec_hash,
)

SERVICE = "type: service\ncommands: [python3 -m http.server 8000]\nport: 8000\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("path", "name"),
    [
        pytest.param("chat/.dstack.yml", "chat", id="folder"),
        pytest.param("serve.dstack.yml", "serve", id="prefixed-file"),
        pytest.param("models/Llama_2.dstack.yml", "models-llama-2", id="folder-and-file"),
        pytest.param(".dstack.yml", "service", id="root-file"),
        pytest.param("7b/.dstack.yml", "s-7b", id="starts-with-digit"),
        pytest.param("a/.dstack.yml", "a-service", id="too-short"),
        pytest.param("x" * 80 + "/.dstack.yml", "x" * 41, id="too-long"),
        pytest.param("We Ird!!/--x--.dstack.yml", "we-ird-x", id="odd-characters"),
    ],
)
def test_derive_service_name(path: str, name: str) -> None:
    assert derive_service_name(path) == name


def test_discovery_and_ignores(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".gitignore": "build/\n*.tmp.dstack.yml\n",
            "a/.dstack.yml": SERVICE,
            "b/serve.dstack.yml": SERVICE,
            "b/notes.yml": "type: service\n",
            "b/dstack.yml": SERVICE,  # must end in .dstack.yml
            "build/.dstack.yml": SERVICE,
            "c/x.tmp.dstack.yml": SERVICE,
            ".git/.dstack.yml": SERVICE,
            "d/.dstackignore": "private/\n",
            "d/private/.dstack.yml": SERVICE,
            "d/public/.dstack.yml": SERVICE,
            "e/.dstackignore": "/.dstack.yml\n",
            "e/.dstack.yml": SERVICE,
            "e/sub/.dstack.yml": SERVICE,
        },
    )
    assert discover(tmp_path) == [
        "a/.dstack.yml",
        "b/serve.dstack.yml",
        "d/public/.dstack.yml",
        "e/sub/.dstack.yml",
    ]
    assert discover(tmp_path, "d") == ["d/public/.dstack.yml"]
    assert discover(tmp_path, "a/.dstack.yml") == ["a/.dstack.yml"]


def test_load_tree_names_and_paths(tmp_path: Path) -> None:
    write(tmp_path, {"chat/.dstack.yml": SERVICE, "named/.dstack.yml": SERVICE + "name: my-svc\n"})
    result = load_tree(tmp_path)
    assert result.ok and sorted(result.services) == ["chat", "my-svc"]
    chat = result.services["chat"]
    assert chat.path == "chat/.dstack.yml" and chat.config.name == "chat"
    assert len(chat.spec_hash) == 64


def test_subpath_derives_names_below_it(tmp_path: Path) -> None:
    write(tmp_path, {"services/chat/.dstack.yml": SERVICE})
    result = load_tree(tmp_path, "services")
    assert list(result.services) == ["chat"]
    assert result.services["chat"].path == "services/chat/.dstack.yml"


def test_name_collision_names_both_files(tmp_path: Path) -> None:
    write(tmp_path, {"a/.dstack.yml": SERVICE + "name: same\n", "b/.dstack.yml": SERVICE + "name: same\n"})
    result = load_tree(tmp_path)
    assert not result.ok and result.services == {} and "same" in result.failed
    messages = [d.format() for d in result.errors]
    assert any(m.startswith("a/.dstack.yml:") and "b/.dstack.yml" in m for m in messages)
    assert any(m.startswith("b/.dstack.yml:") and "a/.dstack.yml" in m for m in messages)


def test_invalid_file_fails_only_its_service(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "good/.dstack.yml": SERVICE,
            "bad/.dstack.yml": "type: service\nname: broken\nport: nope\ncommands: [x]\n",
            "ugly/.dstack.yml": "type: service\nport: [\n",
            "task/.dstack.yml": "type: task\ncommands: [x]\n",
        },
    )
    result = load_tree(tmp_path)
    assert list(result.services) == ["good"]
    assert result.failed == {"broken": "bad/.dstack.yml", "ugly": "ugly/.dstack.yml"}
    assert [d.path for d in result.diagnostics] == ["bad/.dstack.yml", "ugly/.dstack.yml"]
    assert [(d.path, d.severity) for d in result.skipped] == [("task/.dstack.yml", Severity.INFO)]
    bad = result.diagnostics[0]
    assert (bad.line, bad.field) == (3, "port")


def test_unreadable_inputs_become_diagnostics(tmp_path: Path) -> None:
    write(tmp_path, {"ok/.dstack.yml": SERVICE})
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/.dstack.yml").write_bytes(b"type: service\n\xff\xfe\n")
    result = load_tree(tmp_path)
    assert "ok" in result.services and result.failed == {"bin": "bin/.dstack.yml"}
    assert "not valid UTF-8" in result.errors[0].message and result.errors[0].line == 2


def test_missing_root_does_not_raise(tmp_path: Path) -> None:
    result = load_tree(tmp_path / "nowhere")
    assert not result.ok and result.services == {}


def test_empty_tree(tmp_path: Path) -> None:
    result = load_tree(tmp_path)
    assert result.ok and result.services == {} and result.diagnostics == []


PROFILES = """\
profiles:
  - name: cheap
    spot_policy: spot
    regions: [us-east-1]
  - name: default-one
    default: true
    spot_policy: auto
    max_price: 2.0
    regions: [eu-west-1]
    idle_duration: 5m
"""


def test_default_profile_applies_and_file_wins(tmp_path: Path) -> None:
    write(
        tmp_path, {".dstack/profiles.yml": PROFILES, "app/.dstack.yml": SERVICE + "regions: [ap-south-1]\n"}
    )
    result = load_tree(tmp_path)
    config = result.services["app"].config
    assert config.spot_policy == "auto" and config.max_price == 2.0  # from the default profile
    assert config.regions == ["ap-south-1"]  # the service file wins
    warnings = [d for d in result.diagnostics if d.severity == Severity.WARNING]
    assert [(d.path, d.field) for d in warnings] == [(".dstack/profiles.yml", "profiles.1.idle_duration")]


@pytest.mark.parametrize(
    ("profiles", "line", "needle"),
    [
        pytest.param(
            "profiles:\n  - name: p\n    default: true\n    spot_polcy: spot\n",
            4,
            "did you mean 'spot_policy'?",
            id="typo",
        ),
        pytest.param(
            "profiles:\n  - name: p\n    default: true\n    max_price: -1\n",
            4,
            "greater than 0",
            id="bad-value",
        ),
        pytest.param("profiles: nope\n", 1, "list of profiles", id="not-a-list"),
        pytest.param("profiles:\n  - default: true\n", 2, "`name:`", id="no-name"),
        pytest.param("profiles: [\n", 2, "YAML syntax error", id="syntax"),
    ],
)
def test_broken_profiles_fail_every_service(tmp_path: Path, profiles: str, line: int, needle: str) -> None:
    write(tmp_path, {".dstack/profiles.yml": profiles, "app/.dstack.yml": SERVICE})
    result = load_tree(tmp_path)
    assert result.services == {} and result.failed == {"app": "app/.dstack.yml"}
    [d] = result.errors
    assert d.path == ".dstack/profiles.yml" and d.line == line and needle in d.message, d.format()


def test_spec_hash_tracks_what_runs(tmp_path: Path) -> None:
    variants = {
        "base": SERVICE,
        "same": "# a comment\n" + SERVICE,
        "env": SERVICE + "env: [A=1]\n",
        "env2": SERVICE + "env: [A=2]\n",
        "bare": SERVICE + "env: [A]\n",
        "port": SERVICE.replace("8000\n", "8001\n"),
    }
    hashes = {}
    for key, text in variants.items():
        root = write(tmp_path / key, {"svc/.dstack.yml": text})
        hashes[key] = load_tree(root).services["svc"].spec_hash
    assert hashes["base"] == hashes["same"]
    assert len({hashes[k] for k in ("base", "env", "env2", "bare", "port")}) == 5
    config = load_tree(tmp_path / "base").services["svc"].config
    assert spec_hash(config) == hashes["base"]


def test_the_spec_hash_is_computed_when_first_read(tmp_path: Path) -> None:
    """A load leaves it for later (a cold plan never reads it); read, it is the config's, kept."""
    PARSE_CACHE.clear()  # (the process's: another test may have loaded and hashed this content)
    text = SERVICE + "auth: false\n"
    root = write(tmp_path, {"svc/.dstack.yml": text, "other/.dstack.yml": text.replace("8000", "8001")})
    services = load_tree(root).services
    assert services and all("spec_hash" not in vars(s) for s in services.values())
    svc = services["svc"]
    assert svc.spec_hash == spec_hash(svc.config) and vars(svc)["spec_hash"] is svc.spec_hash
    assert services["other"].spec_hash != svc.spec_hash
    again = load_tree(root).services["svc"]  # (the parse cache's: the same object, the hash kept)
    assert again is svc and "spec_hash" in vars(again)


def test_diagnostics_sorted_by_path_then_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "b/.dstack.yml": "type: service\ncommands: [x]\nport: 1\nauth: 3\nreplicas: x\n",
            "a/.dstack.yml": "type: service\nport: x\ncommands: [x]\n",
        },
    )
    found = [(d.path, d.line) for d in load_tree(tmp_path).diagnostics]
    assert found == sorted(found) and found[0][0] == "a/.dstack.yml"
