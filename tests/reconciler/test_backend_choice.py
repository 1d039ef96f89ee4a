"""Backend choice like dstack: a service without `backends:` goes to the cheapest offer among the
default backends (local counts when it can run it), settings may restrict that set, and the
settings file's errors name the file and the line (no tracebacks)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backends.base import BackendRegistry, Offer, ReplicaSpec, Requirements
from reconciler.cli.settings import SettingsError, load_cloud_settings, read_settings_file
from reconciler.config.loader import load_tree
from reconciler.engine.desired import DesiredSet, build_desired
from reconciler.engine.offers import with_offers

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PricedBackend:
    """offers() at one price (None: no offer); can_run() refuses with `refuse` when set."""

    name: str
    price: float | None
    refuse: str | None = None
    ships_workdir: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ships_workdir = self.name == "local"  # as the real backends answer: only local ships the checkout

    def offers(self, requirements: Requirements) -> Sequence[Offer]:
        if self.price is None:
            return []
        return [Offer(self.name, "r1", f"{self.name}.big", 8, 32, None, False, self.price)]

    def can_run(self, spec: ReplicaSpec) -> str | None:
        return self.refuse


def desired(
    tmp_path: Path, config: str, backends: list[PricedBackend], default_backends: tuple[str, ...] = ()
) -> DesiredSet:
    (tmp_path / "svc.dstack.yml").write_text(config)
    registry = BackendRegistry()
    for b in backends:
        registry.register(b)  # type: ignore[arg-type]
    ds = build_desired(
        load_tree(tmp_path),
        revision="r1",
        workdir=None,
        env={},
        salt="s",
        backends=registry.names(),
        ships_workdir=registry.ships_workdir,
        default_backends=default_backends,
    )
    return with_offers(ds, registry)[0]


SERVICE = "type: service\nname: svc\ncommands: [serve]\nport: 8000\n"


@pytest.mark.parametrize(
    ("extra", "backends", "defaults", "chosen", "blocked"),
    [
        pytest.param(
            "",
            [PricedBackend("local", 0.0), PricedBackend("aws", 1.0)],
            (),
            "local",
            None,
            id="local-free-wins",
        ),
        pytest.param(
            "",
            [PricedBackend("local", None), PricedBackend("aws", 3.0), PricedBackend("azure", 2.5)],
            (),
            "azure",
            None,
            id="no-local-offer-cheapest-cloud",
        ),
        pytest.param(
            "",
            [PricedBackend("local", 0.0, refuse="python 3.13 is not installed"), PricedBackend("aws", 1.0)],
            (),
            "aws",
            None,
            id="local-cannot-run-it",
        ),
        pytest.param(
            "",
            [PricedBackend("local", 0.0), PricedBackend("aws", 1.0), PricedBackend("azure", 0.5)],
            ("aws", "azure"),
            "azure",
            None,
            id="settings-restrict-the-default-set",
        ),
        pytest.param(
            "",
            [PricedBackend("local", 0.0)],
            ("aws",),
            None,
            "none of the settings' default_backends (aws) is configured",
            id="restricted-to-an-unconfigured-backend",
        ),
        pytest.param(
            "backends: [aws]\n",
            [PricedBackend("local", 0.0), PricedBackend("aws", 1.0)],
            (),
            "aws",
            None,
            id="explicit-backends-win",
        ),
        pytest.param(
            "",
            [PricedBackend("local", None), PricedBackend("aws", None)],
            (),
            None,
            "no configured backend can run it (local: no offer",
            id="nobody-offers",
        ),
    ],
)
def test_cheapest_default_backend(
    tmp_path: Path,
    extra: str,
    backends: list[PricedBackend],
    defaults: tuple[str, ...],
    chosen: str | None,
    blocked: str | None,
) -> None:
    ds = desired(tmp_path, SERVICE + extra, backends, defaults)
    if chosen is None:
        assert "svc" not in ds.services and blocked is not None and blocked in ds.blocked["svc"]
        return
    d = ds.services["svc"]
    assert d.backend == chosen and d.template.offer is not None and d.template.offer.backend == chosen
    assert d.summary["backend"] == chosen


def test_a_running_service_stays_on_its_backend_while_it_can_run_there(tmp_path: Path) -> None:
    (tmp_path / "svc.dstack.yml").write_text(SERVICE)
    registry = BackendRegistry()
    aws, azure = PricedBackend("aws", 3.0), PricedBackend("azure", 2.0)
    for b in (aws, azure):
        registry.register(b)  # type: ignore[arg-type]
    ds = build_desired(
        load_tree(tmp_path), revision="r", workdir=None, env={}, salt="s", backends=registry.names(),
        ships_workdir=registry.ships_workdir,
    )
    assert with_offers(ds, registry)[0].services["svc"].backend == "azure"  # cheapest for a new service
    assert with_offers(ds, registry, running={"svc": "aws"})[0].services["svc"].backend == "aws"
    aws.price = None  # aws cannot run it any more: the cheapest that can
    assert with_offers(ds, registry, running={"svc": "aws"})[0].services["svc"].backend == "azure"


def test_the_spec_hash_follows_the_chosen_backend(tmp_path: Path) -> None:
    on_local = desired(tmp_path, SERVICE, [PricedBackend("local", 0.0), PricedBackend("aws", 1.0)])
    on_aws = desired(tmp_path, SERVICE, [PricedBackend("local", None), PricedBackend("aws", 1.0)])
    alone = desired(tmp_path, SERVICE, [PricedBackend("local", 0.0)])
    a, b = on_local.services["svc"], on_aws.services["svc"]
    assert a.spec_hash == alone.services["svc"].spec_hash  # unchanged for today's local services
    assert a.spec_hash != b.spec_hash and b.template.spec_hash == b.spec_hash


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("default_backend: aws\n", ("aws",), id="default-backend-shorthand"),
        pytest.param("default_backends: [aws, azure, aws]\n", ("aws", "azure"), id="list"),
    ],
)
def test_default_backends_in_the_settings_file(tmp_path: Path, text: str, expected: tuple[str, ...]) -> None:
    path = tmp_path / "settings.yml"
    path.write_text(text)
    assert read_settings_file(path)[1]["default_backends"] == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "# one\ndefault_backends: [local, gcp]\n",
            "settings.yml:2:27: default_backends: unknown backend 'gcp'; valid backends: local, aws, azure",
            id="unknown-default-backend",
        ),
        pytest.param(
            "default_backend: 3\n", "settings.yml:1:18: default_backend: expected a list", id="not-a-name"
        ),
        pytest.param("a: [\n", "settings.yml:2:1: YAML syntax error", id="yaml-syntax"),
        pytest.param("- a\n", "settings.yml:1:1: expected a mapping", id="not-a-mapping"),
        pytest.param(
            "backends:\n  aws:\n    regons: [us-east-1]\n",
            "settings.yml:3:5: backends.aws.regons: unknown key",
            id="unknown-cloud-key-at-its-line",
        ),
    ],
)
def test_settings_errors_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "settings.yml"
    path.write_text(text)
    with pytest.raises(SettingsError) as e:
        load_cloud_settings(path, {})
    assert str(e.value).startswith(str(tmp_path) + "/") and message in str(e.value)


def test_plan_with_a_bad_settings_file_is_one_clear_line(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "svc.dstack.yml").write_text(SERVICE)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    settings = tmp_path / "settings.yml"
    settings.write_text("default_backend: gcp\n")
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler.cli.main", "plan", "--repo", str(repo), "--settings", str(settings),
         "--state", str(tmp_path / "state")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{settings}:1:18: default_backend: unknown backend 'gcp'" in proc.stdout + proc.stderr
