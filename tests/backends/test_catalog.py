"""Pure parts of the cloud backends: the shipped catalog and offer matching, the settings file,
the startup script, and the orphan decision."""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backends.base import (
    GpuInfo,
    GpuRequirement,
    Offer,
    Range,
    ReplicaInfo,
    ReplicaSpec,
    ReplicaStatus,
    Requirements,
)
from backends.cloud.catalog import (
    SHIPPED_CATALOG,
    CatalogError,
    load_catalog,
    matches,
    resolve_catalog_path,
    select_offers,
)
from backends.cloud.orphans import find_orphans, read_known_replica_ids
from backends.cloud.ssh_keys import derive_host_key
from backends.cloud.startup import render_startup_script
from backends.cloud.tunnel_userdata import TunnelEndpoint
from backends.settings import AwsSettings, AzureSettings, SettingsError, load_settings, parse_settings

A100_80 = Offer("azure", "eastus", "NC24", 24, 220, GpuInfo("A100", 80, 1), False, 3.673)
A100_40x8 = Offer("aws", "us-east-1", "p4d.24xlarge", 96, 1152, GpuInfo("A100", 40, 8), False, 32.77)
A10G_SPOT = Offer("aws", "eu-west-1", "g5.xlarge", 4, 16, GpuInfo("A10G", 24, 1), True, 0.4)
CPU_ONLY = Offer("aws", "us-east-1", "c5.large", 2, 8, None, False, 0.085)


def req(**kw: object) -> Requirements:
    return Requirements(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("offer", "requirements", "expected"),
    [
        pytest.param(A100_80, req(gpu=GpuRequirement(memory_gb=Range(80, 80))), True, id="80GB"),
        pytest.param(A100_40x8, req(gpu=GpuRequirement(memory_gb=Range(80, 80))), False, id="80GB-not-40GB"),
        pytest.param(
            A100_40x8, req(gpu=GpuRequirement(names=("A100",), count=Range(2, None))), True, id="A100:2.."
        ),
        pytest.param(
            A100_40x8, req(gpu=GpuRequirement(names=("A100",), count=Range(2, 2))), False, id="A100:2-exact"
        ),
        pytest.param(
            A10G_SPOT,
            req(gpu=GpuRequirement(names=("h100", "a10g")), spot_policy="auto"),
            True,
            id="any-of-names",
        ),
        pytest.param(
            A10G_SPOT,
            req(gpu=GpuRequirement(memory_gb=Range(24, None)), spot_policy="auto"),
            True,
            id="24GB..",
        ),
        pytest.param(CPU_ONLY, req(gpu=GpuRequirement()), False, id="gpu-wanted-none-there"),
        pytest.param(CPU_ONLY, req(), True, id="no-gpu-requirement"),
        pytest.param(A10G_SPOT, req(spot_policy="on-demand"), False, id="on-demand-excludes-spot"),
        pytest.param(A100_80, req(spot_policy="spot"), False, id="spot-excludes-on-demand"),
        pytest.param(A10G_SPOT, req(spot_policy="auto"), True, id="auto-takes-spot"),
        pytest.param(A100_80, req(spot_policy="auto"), True, id="auto-takes-on-demand"),
        pytest.param(A100_80, req(max_price=3.0), False, id="over-max-price"),
        pytest.param(A100_80, req(max_price=4.0), True, id="under-max-price"),
        pytest.param(A100_80, req(regions=("westus3",)), False, id="other-region"),
        pytest.param(A100_80, req(backends=("aws",)), False, id="other-backend"),
        pytest.param(A100_80, req(instance_types=("NC24",)), True, id="instance-type"),
        pytest.param(A100_80, req(cpus=Range(32, None)), False, id="too-few-cpus"),
        pytest.param(A100_80, req(memory_gb=Range(None, 128)), False, id="too-much-memory"),
        pytest.param(A100_80, req(disk_gb=Range(2000, None)), True, id="disk-is-a-sized-volume"),
    ],
)
def test_matching(offer: Offer, requirements: Requirements, expected: bool) -> None:
    assert matches(offer, requirements) is expected


def test_shipped_catalog_loads_and_sorts_cheapest_first() -> None:
    offers = load_catalog()
    assert {o.backend for o in offers} == {"aws", "azure"}
    assert all(o.price > 0 and o.gpu is not None for o in offers)
    picked = select_offers(offers, req(gpu=GpuRequirement(memory_gb=Range(80, 80)), spot_policy="auto"))
    assert picked and [o.price for o in picked] == sorted(o.price for o in picked)
    assert all(o.gpu is not None and o.gpu.memory_gb == 80 and o.gpu.count == 1 for o in picked)
    h100 = select_offers(offers, req(gpu=GpuRequirement(names=("H100",), count=Range(8, 8))))
    assert {o.instance_type for o in h100} == {"p5.48xlarge", "Standard_ND96isr_H100_v5"}


def test_catalog_path_resolution(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    assert resolve_catalog_path(None, env) == SHIPPED_CATALOG
    cached = tmp_path / "tidegate" / "catalog.csv"
    cached.parent.mkdir()
    cached.write_text(SHIPPED_CATALOG.read_text())
    assert resolve_catalog_path(None, env) == cached
    assert resolve_catalog_path("/x.csv", env) == Path("/x.csv")
    with pytest.raises(CatalogError):
        load_catalog(tmp_path / "missing.csv")


# ---- settings ------------------------------------------------------------------------------------
def test_settings_list_and_mapping_forms_with_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "settings.yml"
    path.write_text(
        textwrap.dedent(
            """
            backends:
              aws:
                regions: [us-east-1, eu-west-1]
                subnet_id: {us-east-1: subnet-1}
                allowed_cidr: 198.51.100.4/32
              azure:
                subscription_id: sub
                resource_group: rg
            """
        )
    )
    env = {
        "TIDEGATE_AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "TIDEGATE_AZURE_LOCATIONS": "westus3, eastus",
    }
    settings = load_settings(path, env)
    aws, azure = settings.get("aws"), settings.get("azure")
    assert isinstance(aws, AwsSettings) and isinstance(azure, AzureSettings)
    assert aws.endpoint_url == "http://127.0.0.1:5000"
    assert aws.subnet_id == {"us-east-1": "subnet-1"}
    assert azure.locations == ["westus3", "eastus"]
    listed = parse_settings({"backends": [{"type": "aws"}]}, {})
    assert listed.get("aws") == AwsSettings()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        pytest.param({"backends": [{"type": "gcp"}]}, "backends.0", id="unknown-backend"),
        pytest.param({"backends": {"aws": {"region": "x"}}}, "region", id="unknown-field"),
        pytest.param({"backends": {"azure": {}}}, "subscription_id", id="missing-required"),
        pytest.param(["not", "a", "mapping"], "mapping", id="not-a-mapping"),
    ],
)
def test_settings_errors_name_the_field(raw: object, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        parse_settings(raw, {})


def test_build_backends_makes_one_per_cloud_without_touching_it(tmp_path: Path) -> None:
    from backends.aws.backend import AwsBackend
    from backends.azure.backend import AzureBackend
    from backends.registry import build_backends
    settings = parse_settings(
        {"backends": {"aws": {}, "azure": {"subscription_id": "s", "resource_group": "r"}}}, {}
    )
    built = build_backends(settings, "tg-owner", tmp_path, azure_credential=object())
    assert [type(b) for b in built] == [AwsBackend, AzureBackend]
    assert [b.name for b in built] == ["aws", "azure"]
    assert build_backends(parse_settings({}, {}), "tg-owner", tmp_path) == []


def test_importing_settings_imports_no_cloud_sdk() -> None:
    code = (
        "import sys, backends.settings, backends.cloud.catalog, backends.cloud.orphans; "
        "print([m for m in ('boto3', 'botocore', 'azure') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- startup script --------------------------------------------------------------------------
def _spec(**kw: object) -> ReplicaSpec:
    base: dict[str, object] = {
        "replica_id": "svc-abcdef12-0",
        "service": "svc",
        "spec_hash": "abcdef12",
        "ordinal": 0,
        "port": 8000,
        "env": {"HF_TOKEN": 'it\'s a "secret"\nline2'},
    }
    base.update(kw)
    return ReplicaSpec(**base)  # type: ignore[arg-type]


def _tunnel(port: int = 8000) -> TunnelEndpoint:
    client = derive_host_key(b"c" * 32, "client").public  # any ed25519 public key line
    return TunnelEndpoint(client_public=client, host_key=derive_host_key(b"k" * 32, "test"), service_port=port)


def test_startup_script_for_an_image() -> None:
    spec = _spec(
        image="ghcr.io/huggingface/text-generation-inference:latest",
        commands=("serve --port 8000",),
        requirements=Requirements(gpu=GpuRequirement()),
    )
    script = render_startup_script(spec, _tunnel())
    assert script.startswith("#!/bin/bash\n")
    # Published on the instance's loopback only: the SSH tunnel is the way in.
    assert "--gpus all" in script and "-p 127.0.0.1:8000:8000" in script and "-e HF_TOKEN" in script
    # The tunnel is set up before anything slow (docker pull) can fail the script.
    assert script.index("sshd -t") < script.index("docker pull")
    assert "/bin/sh -c '(serve --port 8000)'" in script
    assert "secret" not in script  # only inside the base64 env file
    env_line = next(line for line in script.splitlines() if "base64 -d > /etc/tidegate/" in line)
    decoded = base64.b64decode(env_line.split()[1]).decode()
    assert decoded.startswith("export HF_TOKEN=")


def test_startup_script_for_python_commands_runs_a_unit() -> None:
    script = render_startup_script(_spec(python="3.11", commands=("pip install vllm", "vllm serve m")), _tunnel())
    assert "docker" not in script and "systemd-run --unit=tidegate-svc-abcdef12-0" in script
    run_line = next(line for line in script.splitlines() if "base64 -d > /opt/" in line)
    run = base64.b64decode(run_line.split()[1]).decode()
    assert "uv venv --python 3.11" in run and "(pip install vllm) && (vllm serve m)" in run


def test_startup_script_rejects_bad_env_names() -> None:
    with pytest.raises(ValueError, match="invalid environment"):
        render_startup_script(_spec(env={"BAD-NAME": "x"}, image="x"), _tunnel())


def test_startup_script_refuses_a_tunnel_to_another_port() -> None:
    with pytest.raises(ValueError, match="tunnel forwards to port 9000"):
        render_startup_script(_spec(image="x"), _tunnel(9000))


# ---- orphans ---------------------------------------------------------------------------------------
def _info(rid: str, status: ReplicaStatus = ReplicaStatus.RUNNING) -> ReplicaInfo:
    return ReplicaInfo(replica_id=rid, backend="aws", status=status)


@pytest.mark.parametrize(
    ("owned", "known", "first_seen", "now", "expected"),
    [
        pytest.param([_info("a")], {"a"}, {}, 1000.0, [], id="known-is-kept"),
        pytest.param([_info("b")], set(), {}, 1000.0, [], id="first-sighting-waits"),
        pytest.param([_info("b")], set(), {"b": 500.0}, 1000.0, [], id="inside-grace"),
        pytest.param([_info("b")], set(), {"b": 400.0}, 1000.0, ["b"], id="past-grace"),
        pytest.param(
            [_info("b", ReplicaStatus.TERMINATING)], set(), {"b": 0.0}, 1000.0, [], id="already-going"
        ),
        pytest.param([_info("c"), _info("a")], {"x"}, {"a": 0.0, "c": 0.0}, 1000.0, ["a", "c"], id="sorted"),
    ],
)
def test_find_orphans(
    owned: list[ReplicaInfo], known: set[str], first_seen: dict[str, float], now: float, expected: list[str]
) -> None:
    assert [i.replica_id for i in find_orphans(owned, known, first_seen, now, grace=600)] == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            '{"services": {"s": {"replicas": [{"id": "s-1-0"}, {"id": "s-1-1"}]}}}',
            {"s-1-0", "s-1-1"},
            id="dict",
        ),
        pytest.param('{"services": [{"replicas": [{"id": "s-1-0"}]}]}', {"s-1-0"}, id="list"),
        pytest.param('{"services": {"s": {"replicas": "odd"}}}', set(), id="odd-shape"),
        pytest.param("not json", None, id="garbage"),
        pytest.param(None, None, id="missing"),
    ],
)
def test_read_known_replica_ids(tmp_path: Path, content: str | None, expected: set[str] | None) -> None:
    path = tmp_path / "state.json"
    if content is not None:
        path.write_text(content)
    assert read_known_replica_ids(path) == expected
