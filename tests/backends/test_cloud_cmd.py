"""`tidegate offers` and `tidegate gc` through the real CLI entry point (gc against moto)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import conftest_cloud as cloud
import pytest
from conftest_cloud import instances_tagged

from backends.aws.backend import AwsBackend
from backends.base import ReplicaSpec, Requirements
from reconciler.cli.main import main

moto_url, ec2, linux_ami, owner = cloud.moto_url, cloud.ec2, cloud.linux_ami, cloud.owner
aws_settings, make_aws = cloud.aws_settings, cloud.make_aws


def table(out: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in out.splitlines() if line.strip()]
    header = lines[0].split()
    rows = [line.split("  ") for line in lines[1:]]
    return header, [[c.strip() for c in row if c.strip()] for row in rows]


def test_offers_gpu_80gb_prints_the_seed_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["offers", "--gpu", "80GB"]) == 0
    header, rows = table(capsys.readouterr().out)
    assert header == ["BACKEND", "REGION", "RESOURCES", "SPOT", "PRICE"]
    assert rows and all("(80GB)" in row[2] and row[2].count("1xA100") == 1 for row in rows)
    prices = [float(row[4].lstrip("$")) for row in rows]
    assert prices == sorted(prices)
    assert ["azure", "eastus", "24xCPU, 220GB, 1xA100 (80GB)", "no", "$3.673"] in rows


@pytest.mark.parametrize(
    ("argv", "check"),
    [
        pytest.param(
            ["--gpu", "A100:8", "--backend", "aws", "--spot-policy", "on-demand", "--region", "us-east-1"],
            lambda rows: {r["instance_type"] for r in rows} == {"p4d.24xlarge", "p4de.24xlarge"},
            id="A100:8-aws-on-demand",
        ),
        pytest.param(
            ["--gpu", "24GB..", "--spot-policy", "spot", "--max-price", "0.4"],
            lambda rows: rows and all(r["spot"] and r["price"] <= 0.4 for r in rows),
            id="spot-under-max-price",
        ),
        pytest.param(["--gpu", "H100:8", "--limit", "3"], lambda rows: len(rows) == 3, id="limit"),
        pytest.param(["--gpu", "B200"], lambda rows: rows == [], id="nothing"),
    ],
)
def test_offers_filters(
    argv: list[str], check: Callable[[list[dict[str, Any]]], bool], capsys: pytest.CaptureFixture[str]
) -> None:
    main(["offers", "--json", *argv])
    rows = json.loads(capsys.readouterr().out)
    assert check(rows), rows


def test_offers_for_a_service_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "serve.dstack.yml"
    config.write_text(
        textwrap.dedent(
            """
            type: service
            name: llm
            image: ghcr.io/huggingface/text-generation-inference:latest
            port: 8000
            resources:
              gpu: L4
            spot_policy: auto
            backends: [aws]
            """
        )
    )
    assert main(["offers", "--json", "--config", str(config)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {r["instance_type"] for r in rows} == {"g6.xlarge"}
    assert {r["spot"] for r in rows} == {True, False}
    assert main(["offers", "--json", "llm", "--repo-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == rows


def _settings_file(tmp_path: Path, moto_url: str, linux_ami: str) -> Path:
    path = tmp_path / "settings.yml"
    path.write_text(
        textwrap.dedent(
            f"""
            backends:
              aws:
                regions: [us-east-1]
                endpoint_url: {moto_url}
                ami: {linux_ami}
                allowed_cidr: 203.0.113.7/32
            """
        )
    )
    return path


def test_offers_with_settings_asks_the_cloud_api(
    tmp_path: Path, moto_url: str, linux_ami: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings_file(tmp_path, moto_url, linux_ami)
    argv = ["offers", "--json", "--settings", str(settings), "--gpu", "T4", "--spot-policy", "spot"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["backend"] == "aws" for r in rows)
    assert rows[0]["price"] == pytest.approx(0.00001)  # moto's spot price history, not the catalog


def test_gc_deletes_unknown_owned_instances_and_nothing_else(
    tmp_path: Path,
    moto_url: str,
    linux_ami: str,
    make_aws: Callable[..., AwsBackend],
    owner: str,
    ec2: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "installation.json").write_text(json.dumps({"id": owner, "salt": "s", "created_at": 0}))
    settings = _settings_file(tmp_path, moto_url, linux_ami)
    argv = ["gc", "--state", str(state), "--settings", str(settings), "--grace", "0"]
    assert main(argv) == 2  # no state.json: refuses to call everything an orphan
    assert "refusing" in capsys.readouterr().err

    def spec(ordinal: int) -> ReplicaSpec:
        return ReplicaSpec(
            replica_id=f"gcsvc-abcdef12-{ordinal}",
            service="gcsvc",
            spec_hash="abcdef12",
            ordinal=ordinal,
            port=8000,
            image="x",
            requirements=Requirements(),
        )

    backend = make_aws()
    backend.create(spec(0))
    backend.create(spec(1))
    untagged = ec2.run_instances(ImageId=linux_ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    untagged_id = untagged["Instances"][0]["InstanceId"]
    (state / "state.json").write_text(
        json.dumps({"services": {"gcsvc": {"replicas": [{"id": "gcsvc-abcdef12-0"}]}}})
    )

    assert main([*argv, "--dry-run"]) == 0
    assert "would delete aws gcsvc-abcdef12-1" in capsys.readouterr().out
    assert len(instances_tagged(ec2, "tidegate:replica", "gcsvc-abcdef12-1")) == 1

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "deleted aws gcsvc-abcdef12-1" in out
    assert instances_tagged(ec2, "tidegate:replica", "gcsvc-abcdef12-1") == []
    assert len(instances_tagged(ec2, "tidegate:replica", "gcsvc-abcdef12-0")) == 1
    reservation = ec2.describe_instances(InstanceIds=[untagged_id])["Reservations"][0]
    assert reservation["Instances"][0]["State"]["Name"] == "running"
    backend.delete("gcsvc-abcdef12-0")
    ec2.terminate_instances(InstanceIds=[untagged_id])


def test_gc_waits_out_the_grace_period(
    tmp_path: Path,
    moto_url: str,
    linux_ami: str,
    make_aws: Callable[..., AwsBackend],
    owner: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "installation.json").write_text(json.dumps({"id": owner, "salt": "s", "created_at": 0}))
    (state / "state.json").write_text(json.dumps({"services": {}}))
    make_aws().create(
        ReplicaSpec(
            replica_id="late-abcdef12-0",
            service="late",
            spec_hash="abcdef12",
            ordinal=0,
            port=8000,
            image="x",
        )
    )
    settings = _settings_file(tmp_path, moto_url, linux_ami)
    assert main(["gc", "--state", str(state), "--settings", str(settings), "--grace", "3600"]) == 0
    assert "waiting aws late-abcdef12-0" in capsys.readouterr().out
    assert "late-abcdef12-0" in json.loads((state / "gc-seen.json").read_text())["first_seen"]
    make_aws().delete("late-abcdef12-0")
