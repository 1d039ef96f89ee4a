"""Preview glue: settings from the file and the CLI, previews as desired services, `ps` rows."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from reconciler.config import SpotPolicy
from reconciler.config.loader import load_tree
from reconciler.engine.desired import build_desired
from reconciler.previews.decision import PreviewSettings, PullRequestInfo, decide_previews
from reconciler.previews.wiring import (
    PreviewSettingsError,
    add_preview_options,
    merge_desired,
    preview_desired,
    preview_settings,
    ps_rows,
)
from tests.reconciler.fakes import only_local_ships_workdir

NOW = 1_800_000_000.0


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_preview_options(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("section", "argv", "expected"),
    [
        pytest.param(None, (), PreviewSettings(), id="defaults-off"),
        pytest.param(None, ("--previews",), PreviewSettings(enabled=True), id="cli-on"),
        pytest.param(
            {"enabled": True, "ttl": "2h", "max_concurrent": 3, "required_label": "preview", "spot_policy": None},
            (),
            PreviewSettings(enabled=True, ttl_seconds=7200, max_concurrent=3, required_label="preview", spot_policy=None),
            id="file",
        ),
        pytest.param(
            {"enabled": True, "max_concurrent": 3, "spot_policy": "spot"},
            ("--preview-max", "1", "--preview-ttl", "30m", "--preview-label", "pv", "--preview-allow-forks",
             "--preview-replicas", "2"),
            PreviewSettings(enabled=True, max_concurrent=1, ttl_seconds=1800, required_label="pv", allow_forks=True,
                            max_replicas_per_preview=2, spot_policy=SpotPolicy.SPOT),
            id="cli-overrides-file",
        ),
        pytest.param({"fork_secrets": True, "allow_unverified": False}, (),
                     PreviewSettings(fork_secrets=True, allow_unverified=False), id="secrets-flags"),
    ],
)
def test_preview_settings(section: dict[str, Any] | None, argv: tuple[str, ...], expected: PreviewSettings) -> None:
    assert preview_settings(parse(*argv), section) == expected


@pytest.mark.parametrize(
    ("section", "argv", "match"),
    [
        pytest.param({"enable": True}, (), "unknown previews setting", id="typo"),
        pytest.param({"ttl": "soon"}, (), "duration", id="bad-ttl"),
        pytest.param({"max_concurrent": -1}, (), "whole number", id="negative"),
        pytest.param({"spot_policy": "cheap"}, (), "previews", id="bad-spot-policy"),
        pytest.param(None, ("--preview-max", "-2"), "--preview-max", id="cli-negative"),
    ],
)
def test_preview_settings_errors(section: dict[str, Any] | None, argv: tuple[str, ...], match: str) -> None:
    with pytest.raises(PreviewSettingsError, match=match):
        preview_settings(parse(*argv), section)


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


CHAT = "type: service\nname: chat\ncommands:\n  - python serve.py\nport: 8000\nmodel: llama\nenv:\n  - HF_TOKEN\n"


def test_previews_join_the_desired_set(tmp_path: Path) -> None:
    base_root = write(tmp_path / "base", {"chat/.dstack.yml": CHAT})
    pr_root = write(tmp_path / "pr7", {"chat/.dstack.yml": CHAT.replace("serve.py", "serve.py --v2") + "replicas: 3\n"})
    base = load_tree(base_root)
    fork = PullRequestInfo(7, "f" * 40, fork=True, labels=(), pushed_at=NOW)
    decision = decide_previews(
        [fork], base, {7: load_tree(pr_root)}, PreviewSettings(enabled=True, allow_forks=True), NOW
    )
    env = {"HF_TOKEN": "hf_secret"}
    previews = preview_desired(decision, {7: pr_root}, env=env, salt="s", backends=["local"], ships_workdir=only_local_ships_workdir)
    (d,) = previews.services.values()
    assert d.name == "chat-pr-7" and d.at is not None and d.at.revision == "f" * 40
    assert d.spec_for(0).workdir == str(pr_root.absolute())  # its PR's files, whatever the set's
    assert d.spec_for(0).revision == "f" * 40
    assert d.route.host == "chat-pr-7.localhost"
    assert d.route.model is not None and d.route.model.name == "llama@pr-7"
    assert (d.min_replicas, d.max_replicas) == (1, 1)
    assert "HF_TOKEN" not in d.template.env  # fork code never sees the deployment's secret
    assert d.template.requirements.spot_policy == "auto"
    assert previews.blocked == {}

    prod = build_desired(base, revision="b" * 40, workdir=str(base_root), env=env, salt="s", backends=["local"], ships_workdir=only_local_ships_workdir)
    merged = merge_desired(prod, previews)
    assert sorted(merged.services) == ["chat", "chat-pr-7"]
    assert merged.services["chat"].template.env == {"HF_TOKEN": "hf_secret"}
    assert merged.revision == "b" * 40

    # A PR whose checkout is missing this pass: its previews are blocked, never built from elsewhere.
    assert preview_desired(decision, {}, env=env, salt="s", backends=["local"], ships_workdir=only_local_ships_workdir).blocked == {
        "chat-pr-7": "PR #7 has no checkout"
    }


def test_ps_rows() -> None:
    decision = {
        "previews": [{"name": "chat-pr-7", "pr": 7, "head_sha": "a" * 40, "expires_at": NOW + 3 * 3600,
                      "model": "llama@pr-7", "withheld_env": ["HF_TOKEN"]}],
        "rejected": [{"pr": 9, "reason": "fork", "detail": "from a fork", "service": None},
                     {"pr": 8, "reason": "invalid-config", "detail": "config does not validate", "service": "x"}],
    }
    assert ps_rows(decision, NOW) == [
        ["chat-pr-7", "#7", "a" * 12, "3h", "model llama@pr-7; secrets withheld: HF_TOKEN"],
        ["-", "#9", "-", "-", "fork: from a fork"],
        ["-", "#8", "-", "-", "invalid-config: x: config does not validate"],
    ]
    assert ps_rows({"previews": [{"name": "a", "pr": 1, "expires_at": NOW - 1}]}, NOW)[0][3] == "expired"
