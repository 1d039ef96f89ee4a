"""Who holds the SSH tunnels: only an engine that owns the state dir (`up`, `apply`). Read-only
commands (`ps`, `plan`) report the same unix-socket addresses and open nothing; closing the engine
closes the tunnels and removes their sockets (the replicas keep running)."""

from __future__ import annotations

import argparse
from pathlib import Path

from backends.aws.backend import AwsBackend
from backends.cloud.tunnels import TunnelTarget
from reconciler.cli import runtime
from reconciler.cli.settings import build_settings


def _settings(tmp_path: Path) -> argparse.Namespace:
    settings_file = tmp_path / "settings.yml"
    settings_file.write_text(
        "backends:\n  aws:\n    regions: [us-east-1]\n    allowed_cidr: 127.0.0.1/32\n"
        "    endpoint_url: http://127.0.0.1:9\n    live_offers: false\n"
    )
    (tmp_path / "repo").mkdir(exist_ok=True)
    return argparse.Namespace(repo=str(tmp_path / "repo"), state=str(tmp_path / "state"), settings=str(settings_file))


def test_only_the_state_dir_owner_opens_tunnels_and_closing_it_closes_them(tmp_path: Path) -> None:
    settings = build_settings(_settings(tmp_path), {})
    reader = runtime.build_engine(settings, read_only=True)
    ro = reader.backends.get("aws")
    assert isinstance(ro, AwsBackend) and ro.tunnels is not None and not ro.tunnels.active
    reader.close()

    engine = runtime.build_engine(settings)
    aws = engine.backends.get("aws")
    assert isinstance(aws, AwsBackend) and aws.tunnels is not None and aws.tunnels.active
    assert aws.tunnels.address("llm-abcdef12-0") == ro.tunnels.address("llm-abcdef12-0")
    # A tunnel to an instance that does not answer (port 9, loopback): the socket is there anyway.
    key = aws.tunnels.keys.host_key("x").public
    aws.tunnels.open(TunnelTarget("llm-abcdef12-0", "127.0.0.1", 9, "tidegate-tunnel", key, 8000))
    sock = aws.tunnels.socket("llm-abcdef12-0")
    assert sock.is_socket()
    ro.tunnels.open(TunnelTarget("llm-abcdef12-0", "127.0.0.1", 9, "tidegate-tunnel", key, 8000))  # no-op
    engine.close()
    assert not sock.exists()
