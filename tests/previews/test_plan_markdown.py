"""`tidegate plan --format markdown`: a golden page built from a real plan over a real loaded tree."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from backends.base import GpuInfo, Offer
from reconciler.config.loader import load_tree
from reconciler.engine.desired import DesiredSet, build_desired
from reconciler.engine.plan import Action, Desired, Plan, Step, Target, plan
from reconciler.engine.reconcile import PlanResult
from reconciler.render.plan_markdown import PLAN_COMMENT_MARKER, baseline_plan, cell, render, rows
from reconciler.state.records import ReplicaPhase, ReplicaRecord, ServiceRecord
from tests.reconciler.fakes import only_local_ships_workdir

GOLDEN = Path(__file__).parent / "golden" / "plan.md"
NOW = 1_800_000_000.0

FILES = {
    # new in the PR, on a cloud GPU offer
    "mistral/.dstack.yml": (
        "type: service\nname: mistral\nimage: ghcr.io/huggingface/text-generation-inference:latest\n"
        "env:\n  - MODEL_ID=mistralai/Mistral-7B-Instruct-v0.1\n  - HF_TOKEN\n"
        "commands:\n  - text-generation-launcher --port 8000\nport: 8000\nresources:\n  gpu: 24GB\nbackends: [aws]\n"
        "replicas: 1..2\nscaling:\n  metric: rps\n  target: 10\nmodel:\n  format: tgi\n  name: mistral\n"
    ),
    # changed by the PR: command and replicas
    "chat/.dstack.yml": "type: service\nname: chat\ncommands:\n  - python serve.py --v2 | tee log\nport: 8000\nreplicas: 2\n",
    # unchanged
    "embed/.dstack.yml": "type: service\nname: embed\ncommands:\n  - python embed.py\nport: 8001\n",
    # broken in the PR
    "broken/.dstack.yml": "type: service\nname: broken\ncommands:\n  - x\nport: 8000\nreplicas: 1..3\n",
}

GPU_OFFER = Offer(
    backend="aws", region="us-east-1", instance_type="g5.xlarge", cpus=4, memory_gb=16,
    gpu=GpuInfo("A10G", 24, 1), spot=True, price=0.4512,
)
LOCAL_OFFER = Offer(backend="local", region="local", instance_type="process", cpus=2, memory_gb=8, gpu=None, spot=False, price=0.0)


def record(name: str, summary: dict[str, str], count: int) -> ServiceRecord:
    replicas = [
        ReplicaRecord(id=f"{name}-0ld0ld00-{i}", service=name, spec_hash="0ld", ordinal=i, backend="local",
                      phase=ReplicaPhase.READY)
        for i in range(count)
    ]
    return ServiceRecord(name=name, spec_hash="0ld", spec_summary=summary, desired_count=count, replicas=replicas)


def build_result(tmp_path: Path) -> PlanResult:
    for rel, text in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    load = load_tree(tmp_path)
    ds = build_desired(
        load, revision="0123456789abcdef0123", workdir=str(tmp_path), env={"HF_TOKEN": "hf_secret_value"},
        salt="salt", backends=["aws", "local"], ships_workdir=only_local_ships_workdir, domain="localhost",
    )
    services = {
        n: replace(d, template=replace(d.template, offer=GPU_OFFER if n == "mistral" else LOCAL_OFFER))
        for n, d in ds.services.items()
    }
    ds = replace(ds, services=services)
    actual = {
        # embed: deployed at exactly this spec
        "embed": ServiceRecord(
            name="embed", spec_hash=ds.services["embed"].spec_hash, spec_summary=dict(ds.services["embed"].summary),
            desired_count=1,
            replicas=[ReplicaRecord(id="embed-x-0", service="embed", spec_hash=ds.services["embed"].spec_hash,
                                    ordinal=0, backend="local", phase=ReplicaPhase.READY)],
        ),
        "chat": record("chat", {**ds.services["chat"].summary, "commands": "python serve.py", "replicas": "1"}, 1),
        "legacy": record("legacy", {"commands": "python old.py", "replicas": "1"}, 1),
    }
    targets = {
        n: Target(n, d.spec_hash, d.min_replicas, summary=d.summary) for n, d in ds.services.items()
    }
    p = plan(Desired(targets), actual, NOW)
    return PlanResult(p, ds, ds.revision, ds.diagnostics, ("pruning is on",))


def test_golden(tmp_path: Path) -> None:
    text = render(build_result(tmp_path))
    if os.environ.get("TIDEGATE_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    # The secret value resolved for HF_TOKEN never reaches the page (only its name).
    assert "hf_secret_value" not in text and "HF_TOKEN" in text


def test_rows_classify_every_kind_of_change() -> None:
    p = Plan(
        steps=(
            Step(Action.CREATE_SERVICE, "a"),
            Step(Action.ADD_REPLICA, "a", "a-1-0", 0),
            Step(Action.REPLACE_REPLICA, "b", "b-2-0", 0, replaces="b-1-0"),
            Step(Action.ADD_REPLICA, "c", "c-1-1", 1),
            Step(Action.RESTART_REPLICA, "d", "d-1-0", 0),
            Step(Action.DELETE_SERVICE, "e"),
        ),
    )
    assert [(r.verb, r.name) for r in rows(p, {})] == [
        ("create", "a"), ("restart", "b"), ("scale", "c"), ("restart", "d"), ("delete", "e"),
    ]


def test_no_changes() -> None:
    text = render(PlanResult(Plan(), DesiredSet(services={}), "abc", (), ()), marker=False)
    assert PLAN_COMMENT_MARKER not in text
    assert "**No changes.**" in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, "-", id="none"),
        pytest.param("a | b", "a \\| b", id="pipe-escaped"),
        pytest.param("line1\nline2", "line1 line2", id="newline-flattened"),
        pytest.param("`x`", "'x'", id="backtick"),
        pytest.param("x" * 100, "x" * 79 + "…", id="cut"),
    ],
)
def test_cell(value: str | None, expected: str) -> None:
    assert cell(value) == expected


def _desired(root: Path, files: dict[str, str]) -> DesiredSet:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return build_desired(
        load_tree(root), revision=root.name, workdir=str(root), env={}, salt="s", backends=["local"],
        ships_workdir=only_local_ships_workdir,
    )


def test_baseline_plan_is_the_pr_diff(tmp_path: Path) -> None:
    """In CI there is no production state: plan the PR against the base branch as if deployed."""
    chat = FILES["chat/.dstack.yml"].replace("replicas: 2\n", "")
    embed = FILES["embed/.dstack.yml"]
    base = _desired(tmp_path / "base", {"chat/.dstack.yml": chat, "embed/.dstack.yml": embed,
                                        "old/.dstack.yml": embed.replace("embed", "old")})
    head = _desired(tmp_path / "head", {
        "chat/.dstack.yml": chat + "replicas: 3\n",
        "embed/.dstack.yml": embed.replace("embed.py", "embed.py --fast"),
        "new/.dstack.yml": embed.replace("embed", "new"),
    })
    p = baseline_plan(base, head)
    assert [(r.verb, r.name, r.replicas, r.changed) for r in rows(p, head.services)] == [
        ("scale", "chat", "→ 3", ()),  # a replica count is not a spec change: nothing rolls
        ("update", "embed", "1", ("commands",)),
        ("create", "new", "1", ()),
        ("delete", "old", "-", ()),
    ]
    assert baseline_plan(head, head).empty


def test_baseline_plan_keeps_a_service_whose_file_broke(tmp_path: Path) -> None:
    embed = FILES["embed/.dstack.yml"]
    base = _desired(tmp_path / "base", {"embed/.dstack.yml": embed})
    head = _desired(tmp_path / "head", {"embed/.dstack.yml": embed + "replicas: 1..3\n"})
    assert "embed" in head.failed
    p = baseline_plan(base, head)
    assert p.empty and any("embed" in n for n in p.notes)
