"""The pure preview decision: names, clamping, gates, the concurrency cap — as tables."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.config import ServiceConfig, SpotPolicy
from reconciler.config.loader import LoadedService, LoadResult, spec_hash
from reconciler.previews.decision import (
    MAX_DNS_LABEL,
    PreviewSettings,
    PullRequestHead,
    PullRequestInfo,
    PullRequestState,
    RejectReason,
    clamp_config,
    combine,
    decide_previews,
    preview_model_name,
    preview_name,
    previews_by_pr,
)

NOW = 1_800_000_000.0
PR_ENV = {"TIDEGATE_PREVIEW_PR": "7", "TIDEGATE_PREVIEW_SHA": f"{7:040x}"}
HOUR = 3600.0
ON = PreviewSettings(enabled=True)


def svc(name: str, **fields: Any) -> LoadedService:
    body: dict[str, Any] = {"type": "service", "name": name, "commands": ["python serve.py"], "port": 8000}
    body.update(fields)
    config = ServiceConfig.model_validate(body)
    return LoadedService(name, f"{name}/.dstack.yml", config)


def tree(*services: LoadedService, failed: dict[str, str] | None = None) -> LoadResult:
    return LoadResult(services={s.name: s for s in services}, failed=dict(failed or {}))


BASE = tree(svc("chat"), svc("embed", commands=["python embed.py"]))


def pr(number: int, **fields: Any) -> PullRequestInfo:
    fields.setdefault("head_sha", f"{number:040x}")
    fields.setdefault("pushed_at", NOW - HOUR)
    fields.setdefault("fork", False)
    fields.setdefault("labels", ())
    fields.setdefault("base_ref", "main")
    return PullRequestInfo(number=number, **fields)


CHANGED_CHAT = tree(svc("chat", commands=["python serve.py --v2"]), svc("embed", commands=["python embed.py"]))


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "number", "expected"),
    [
        pytest.param("chat", 7, "chat-pr-7", id="plain"),
        pytest.param("Chat_Bot.v2", 12, "chat-bot-v2-pr-12", id="unsafe-chars-lowered-and-dashed"),
        pytest.param("-x-", 3, "x-pr-3", id="no-leading-or-trailing-dash"),
        pytest.param("___", 3, "svc-pr-3", id="nothing-left-becomes-svc"),
    ],
)
def test_preview_name(service: str, number: int, expected: str) -> None:
    assert preview_name(service, number) == expected


@pytest.mark.parametrize(
    "service",
    [
        pytest.param("a" * 70, id="long"),
        pytest.param("a" * 56 + "-" + "b" * 10, id="cut-lands-on-dash"),
        pytest.param("m" * 63, id="exactly-a-label-before-suffix"),
    ],
)
def test_long_names_are_one_dns_label_and_stay_distinct(service: str) -> None:
    name = preview_name(service, 12345)
    assert len(name) <= MAX_DNS_LABEL
    assert name.endswith("-pr-12345")
    assert all(c.isdigit() or c == "-" or ("a" <= c <= "z") for c in name)
    assert not name.startswith("-") and "--" not in name.replace("-pr-", "")
    assert preview_name(service + "x", 12345) != name


def test_model_name() -> None:
    assert preview_model_name("llama-3", 7) == "llama-3@pr-7"


# -- config clamping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "settings", "replicas", "scaling", "spot"),
    [
        pytest.param({}, ON, (1, 1), False, SpotPolicy.AUTO, id="default-one-replica-auto-spot"),
        pytest.param({"replicas": 3}, ON, (1, 1), False, SpotPolicy.AUTO, id="fixed-count-capped"),
        pytest.param(
            {"replicas": "1..4", "scaling": {"metric": "rps", "target": 5}},
            ON, (1, 1), False, SpotPolicy.AUTO, id="range-collapses-scaling-dropped",
        ),
        pytest.param(
            {"replicas": "0..4", "scaling": {"metric": "rps", "target": 5}},
            ON, (0, 1), True, SpotPolicy.AUTO, id="scale-to-zero-range-kept",
        ),
        pytest.param(
            {"replicas": "1..4", "scaling": {"metric": "rps", "target": 5}},
            PreviewSettings(enabled=True, max_replicas_per_preview=2), (1, 2), True, SpotPolicy.AUTO, id="cap-two",
        ),
        pytest.param(
            {"spot_policy": "on-demand"},
            PreviewSettings(enabled=True, spot_policy=None), (1, 1), False, SpotPolicy.ON_DEMAND, id="spot-policy-kept",
        ),
        pytest.param({"spot_policy": "on-demand"}, ON, (1, 1), False, SpotPolicy.AUTO, id="spot-policy-forced"),
    ],
)
def test_clamp_config(
    fields: dict[str, Any], settings: PreviewSettings, replicas: tuple[int, int], scaling: bool, spot: SpotPolicy
) -> None:
    config = clamp_config(svc("chat", **fields).config, 7, settings)
    assert (config.replicas.min, config.replicas.max) == replicas
    assert (config.scaling is not None) == scaling
    assert config.spot_policy == spot
    # The clamped config is still a valid service config.
    ServiceConfig.model_validate(config.model_dump())


def test_clamp_renames_model() -> None:
    config = clamp_config(svc("chat", model="llama").config, 7, ON)
    assert config.model is not None and config.model.name == "llama@pr-7"


# -- gates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "settings", "reason"),
    [
        pytest.param(pr(7, state=PullRequestState.CLOSED), ON, RejectReason.CLOSED, id="closed"),
        pytest.param(pr(7, state=PullRequestState.CLOSED, merged=True), ON, RejectReason.MERGED, id="merged"),
        pytest.param(pr(7, base_ref="release"), ON, RejectReason.OTHER_BASE, id="other-base-branch"),
        pytest.param(pr(7, fork=True), ON, RejectReason.FORK, id="fork-not-allowed"),
        pytest.param(
            pr(7, fork=None, labels=None), PreviewSettings(enabled=True, allow_unverified=False),
            RejectReason.UNVERIFIED_ORIGIN, id="unverified-refused-when-configured",
        ),
        pytest.param(
            pr(7, labels=("bug",)), PreviewSettings(enabled=True, required_label="preview"),
            RejectReason.MISSING_LABEL, id="label-missing",
        ),
        pytest.param(
            pr(7, fork=None, labels=None), PreviewSettings(enabled=True, required_label="preview"),
            RejectReason.MISSING_LABEL, id="labels-unknown-with-required-label",
        ),
        pytest.param(pr(7, pushed_at=NOW - 25 * HOUR), ON, RejectReason.EXPIRED, id="ttl-expired"),
        pytest.param(
            pr(7, pushed_at=NOW - 2 * HOUR), PreviewSettings(enabled=True, ttl_seconds=HOUR),
            RejectReason.EXPIRED, id="ttl-configured",
        ),
    ],
)
def test_gates(info: PullRequestInfo, settings: PreviewSettings, reason: RejectReason) -> None:
    decision = decide_previews([info], BASE, {7: CHANGED_CHAT}, settings, NOW, watched_branch="main")
    assert decision.previews == []
    assert [(r.pr, r.reason) for r in decision.rejected] == [(7, reason)]
    assert decision.rejected[0].detail


@pytest.mark.parametrize(
    ("info", "settings"),
    [
        pytest.param(pr(7), ON, id="same-repo"),
        pytest.param(pr(7, fork=True), PreviewSettings(enabled=True, allow_forks=True), id="fork-allowed"),
        pytest.param(pr(7, fork=None, labels=None, base_ref=None), ON, id="unverified-ref-counts-as-open"),
        pytest.param(
            pr(7, labels=("preview", "x")), PreviewSettings(enabled=True, required_label="preview"), id="label-present"
        ),
        pytest.param(pr(7, pushed_at=NOW - 23 * HOUR), ON, id="within-ttl"),
        pytest.param(pr(7, pushed_at=None), ON, id="push-time-unknown-never-expires"),
    ],
)
def test_gates_pass(info: PullRequestInfo, settings: PreviewSettings) -> None:
    decision = decide_previews([info], BASE, {7: CHANGED_CHAT}, settings, NOW, watched_branch="main")
    assert [p.name for p in decision.previews] == ["chat-pr-7"]
    assert decision.rejected == []


def test_disabled_decides_nothing() -> None:
    decision = decide_previews([pr(7)], BASE, {7: CHANGED_CHAT}, PreviewSettings(), NOW)
    assert decision.previews == [] and decision.rejected == []


# -- what gets a preview ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected", "reasons"),
    [
        pytest.param(CHANGED_CHAT, ["chat-pr-7"], [], id="changed-service-only"),
        pytest.param(BASE, [], [RejectReason.NO_CHANGES], id="nothing-changed"),
        pytest.param(
            tree(*BASE.services.values(), svc("rerank", commands=["python r.py"])), ["rerank-pr-7"], [], id="added"
        ),
        pytest.param(tree(svc("chat")), [], [RejectReason.NO_CHANGES], id="removal-needs-no-preview"),
        pytest.param(
            tree(svc("chat"), svc("embed", commands=["python embed.py"]), failed={"broken": "broken/.dstack.yml"}),
            [], [RejectReason.INVALID_CONFIG], id="invalid-config-reported",
        ),
        pytest.param(
            tree(svc("chat", replicas=2), svc("embed", commands=["python embed.py", "echo 2"])),
            ["chat-pr-7", "embed-pr-7"], [], id="two-changed",
        ),
    ],
)
def test_changed_services(head: LoadResult, expected: list[str], reasons: list[RejectReason]) -> None:
    decision = decide_previews([pr(7)], BASE, {7: head}, ON, NOW)
    assert [p.name for p in decision.previews] == expected
    assert [r.reason for r in decision.rejected] == reasons


def test_pr_not_loaded_yet_gets_nothing_and_no_reason() -> None:
    decision = decide_previews([pr(7)], BASE, {}, ON, NOW)
    assert decision.previews == [] and decision.rejected == []


def test_preview_service_shape() -> None:
    head = tree(svc("chat", model="llama", replicas=3, env=["A=1", "HF_TOKEN"]), svc("embed", commands=["python embed.py"]))
    (p,) = decide_previews([pr(7, pushed_at=NOW - HOUR)], BASE, {7: head}, ON, NOW).previews
    assert (p.name, p.pr, p.head_sha, p.source_service) == ("chat-pr-7", 7, f"{7:040x}", "chat")
    assert p.expires_at == NOW - HOUR + 24 * HOUR
    assert p.loaded.name == "chat-pr-7" and p.loaded.config.name == "chat-pr-7"
    assert p.loaded.path == "chat/.dstack.yml"
    assert p.loaded.spec_hash == spec_hash(p.loaded.config) != head.services["chat"].spec_hash
    assert p.model_name == "llama@pr-7"
    assert p.loaded.config.replicas.max == 1
    # A same-repo PR (fork known False) keeps the bare-KEY secret.
    assert p.loaded.config.env == {**PR_ENV, "A": "1", "HF_TOKEN": None} and p.withheld_env == ()


@pytest.mark.parametrize(
    ("info", "settings", "env", "withheld"),
    [
        pytest.param(pr(7, fork=False), ON, {"A": "1", "HF_TOKEN": None}, (), id="same-repo-gets-secrets"),
        pytest.param(
            pr(7, fork=True), PreviewSettings(enabled=True, allow_forks=True), {"A": "1"}, ("HF_TOKEN",),
            id="fork-never-gets-secrets",
        ),
        pytest.param(pr(7, fork=None, labels=None), ON, {"A": "1"}, ("HF_TOKEN",), id="unverified-never-gets-secrets"),
        pytest.param(
            pr(7, fork=True), PreviewSettings(enabled=True, allow_forks=True, fork_secrets=True),
            {"A": "1", "HF_TOKEN": None}, (), id="fork-secrets-explicitly-allowed",
        ),
    ],
)
def test_secrets(info: PullRequestInfo, settings: PreviewSettings, env: dict[str, str | None], withheld: tuple[str, ...]) -> None:
    head = tree(svc("chat", env=["A=1", "HF_TOKEN"]), svc("embed", commands=["python embed.py"]))
    (p,) = decide_previews([info], BASE, {7: head}, settings, NOW).previews
    assert p.loaded.config.env == {**env, **PR_ENV}
    assert p.withheld_env == withheld


def test_preview_name_clashing_with_a_service_is_refused() -> None:
    base = tree(svc("chat"), svc("chat-pr-7", commands=["x"]))
    head = tree(svc("chat", replicas=2), svc("chat-pr-7", commands=["x"]))
    decision = decide_previews([pr(7)], base, {7: head}, ON, NOW)
    assert decision.previews == []
    assert [(r.reason, r.service) for r in decision.rejected] == [(RejectReason.NAME_CLASH, "chat")]


# -- the concurrency cap -----------------------------------------------------------------------------


def _one_change(number: int) -> LoadResult:
    return tree(svc("chat", commands=[f"python serve.py --pr {number}"]), svc("embed", commands=["python embed.py"]))


def _two_changes(number: int) -> LoadResult:
    return tree(svc("chat", commands=[f"python serve.py --pr {number}"]), svc("embed", commands=[f"e {number}"]))


@pytest.mark.parametrize(
    ("pushed", "loads", "cap", "kept", "pending", "too_large"),
    [
        pytest.param({1: 5, 2: 4, 3: 3}, {}, 5, [1, 2, 3], [], [], id="under-cap"),
        pytest.param({1: 1, 2: 3, 3: 2}, {}, 2, [2, 3], [1], [], id="oldest-pushed-kept"),
        pytest.param({1: 3, 2: 3, 3: 3}, {}, 2, [1, 2], [3], [], id="tie-broken-by-number"),
        pytest.param({1: 5, 2: 4, 3: 3}, {1: _two_changes(1)}, 2, [1], [2, 3], [], id="previews-counted-not-prs"),
        pytest.param({1: 5, 2: 4}, {1: _two_changes(1)}, 1, [2], [], [1], id="pr-larger-than-cap"),
        pytest.param({1: 5, 2: 4, 3: 3}, {2: _two_changes(2)}, 2, [1], [2, 3], [], id="no-queue-jumping"),
        pytest.param({1: 5}, {}, 0, [], [], [1], id="cap-zero"),
    ],
)
def test_concurrency_cap(
    pushed: dict[int, int],
    loads: dict[int, LoadResult],
    cap: int,
    kept: list[int],
    pending: list[int],
    too_large: list[int],
) -> None:
    prs = [pr(n, pushed_at=NOW - hours_ago * HOUR) for n, hours_ago in pushed.items()]
    heads = {n: loads.get(n) or _one_change(n) for n in pushed}
    decision = decide_previews(prs, BASE, heads, PreviewSettings(enabled=True, max_concurrent=cap), NOW)
    assert sorted({p.pr for p in decision.previews}) == kept
    assert [r.pr for r in decision.rejected if r.reason == RejectReason.PENDING_CAPACITY] == pending
    assert [r.pr for r in decision.rejected if r.reason == RejectReason.TOO_LARGE] == too_large
    assert len(decision.previews) <= cap


# -- combining refs with GitHub's word -------------------------------------------------------------


def test_combine() -> None:
    heads = [PullRequestHead(9, "c" * 40, NOW - 10), PullRequestHead(7, "a" * 40, NOW - 50)]
    known = {
        7: pr(7, head_sha="0" * 40, labels=("preview",), pushed_at=None),
        8: pr(8),  # a saved record without a ref: the PR no longer exists for us
    }
    out = combine(heads, known)
    assert [p.number for p in out] == [7, 9]
    seven, nine = out
    # The ref wins for the head commit and push time; the record adds labels and origin.
    assert (seven.head_sha, seven.pushed_at, seven.labels, seven.fork) == ("a" * 40, NOW - 50, ("preview",), False)
    # Known from the ref only: open, unverified, labels unknown.
    assert (nine.state, nine.verified, nine.labels, nine.base_ref) == (PullRequestState.OPEN, False, None, None)


def test_combine_with_api_open_list_closes_the_rest() -> None:
    heads = [PullRequestHead(7, "a" * 40, NOW), PullRequestHead(9, "c" * 40, NOW)]
    known = {9: pr(9)}  # stale: the webhook for closing #9 was missed
    out = combine(heads, known, open_pulls={7: pr(7, labels=("x",))})
    assert [(p.number, p.state, p.labels) for p in out] == [
        (7, PullRequestState.OPEN, ("x",)),
        (9, PullRequestState.CLOSED, ()),
    ]


def test_previews_by_pr_groups_for_build_desired() -> None:
    heads = {1: _two_changes(1), 2: _one_change(2)}
    decision = decide_previews([pr(1), pr(2)], BASE, heads, ON, NOW)
    grouped = previews_by_pr(decision)
    assert sorted(grouped) == [1, 2]
    sha, load = grouped[1]
    assert sha == f"{1:040x}"
    assert sorted(load.services) == ["chat-pr-1", "embed-pr-1"]
    assert sorted(grouped[2][1].services) == ["chat-pr-2"]


def test_every_push_rolls_the_preview() -> None:
    """Same config, new head commit (only code changed): a new spec hash, so the engine rolls it."""
    one = decide_previews([pr(7, head_sha="1" * 40)], BASE, {7: CHANGED_CHAT}, ON, NOW).previews[0]
    two = decide_previews([pr(7, head_sha="2" * 40)], BASE, {7: CHANGED_CHAT}, ON, NOW).previews[0]
    assert one.loaded.config.model_dump(exclude={"env"}) == two.loaded.config.model_dump(exclude={"env"})
    assert one.loaded.config.env["TIDEGATE_PREVIEW_SHA"] == "1" * 40
    assert one.loaded.spec_hash != two.loaded.spec_hash
