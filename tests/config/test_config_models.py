"""The service model: every field's accepted forms, dstack's defaults, cross-field rules, round-trip."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from backends.base import Range
from reconciler.config import ModelFormat, ServiceConfig, SpotPolicy
from reconciler.config.parse import parse_service_text

BASE: dict[str, Any] = {"type": "service", "commands": ["python3 -m http.server 8000"], "port": 8000}


def make(**fields: Any) -> ServiceConfig:
    return ServiceConfig.model_validate({**BASE, **fields})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(["A=1", "B=x=y"], {"A": "1", "B": "x=y"}, id="list-key-value"),
        pytest.param(["TOKEN"], {"TOKEN": None}, id="list-bare-key"),
        pytest.param(["EMPTY="], {"EMPTY": ""}, id="list-empty-value"),
        pytest.param({"A": "1", "B": None}, {"A": "1", "B": None}, id="mapping"),
        pytest.param(
            {"N": 3, "F": 1.5, "T": True, "O": False},
            {"N": "3", "F": "1.5", "T": "true", "O": "false"},
            id="mapping-coerced",
        ),
        pytest.param([], {}, id="empty-list"),
    ],
)
def test_env_forms(env: Any, expected: dict[str, str | None]) -> None:
    assert make(env=env).env == expected


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        pytest.param(["A=1", "A=2"], "duplicate environment variable 'A'", id="duplicate"),
        pytest.param(["1A=x"], "invalid environment variable name", id="bad-name"),
        pytest.param([3], "expected `KEY=VALUE`", id="not-a-string"),
        pytest.param({"A": [1]}, "must be a string or a number", id="mapping-list-value"),
        pytest.param({"A-B": "1"}, "invalid environment variable name", id="mapping-bad-name"),
        pytest.param("A=1", "valid dictionary", id="plain-string"),
    ],
)
def test_env_errors(env: Any, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        make(env=env)


@pytest.mark.parametrize(
    ("port", "container", "local"),
    [
        pytest.param(8000, 8000, None, id="int"),
        pytest.param("8000", 8000, None, id="string"),
        pytest.param("8080:8000", 8000, 8080, id="mapping-string"),
        pytest.param("*:8000", 8000, None, id="any-local"),
        pytest.param({"container_port": 9000, "local_port": 80}, 9000, 80, id="dumped-form"),
    ],
)
def test_port(port: Any, container: int, local: int | None) -> None:
    config = make(port=port)
    assert (config.port.container_port, config.port.local_port) == (container, local)


@pytest.mark.parametrize("port", [0, 70000, "80:", "a:b", True, None, [8000]])
def test_port_errors(port: Any) -> None:
    with pytest.raises(ValidationError):
        make(port=port)


def test_port_is_required() -> None:
    with pytest.raises(ValidationError, match="port"):
        ServiceConfig.model_validate({"type": "service", "commands": ["x"]})


SCALING = {"metric": "rps", "target": 10}


@pytest.mark.parametrize(
    ("replicas", "scaling", "bounds"),
    [
        pytest.param(None, None, (1, 1), id="default-one"),
        pytest.param(2, None, (2, 2), id="fixed"),
        pytest.param("3", None, (3, 3), id="fixed-string"),
        pytest.param("1..4", SCALING, (1, 4), id="range"),
        pytest.param("0..4", SCALING, (0, 4), id="scale-to-zero"),
        pytest.param("..4", SCALING, (0, 4), id="open-min-is-zero"),
        pytest.param(0, None, (0, 0), id="zero"),
    ],
)
def test_replicas(replicas: Any, scaling: Any, bounds: tuple[int, int]) -> None:
    fields: dict[str, Any] = {}
    if replicas is not None:
        fields["replicas"] = replicas
    if scaling is not None:
        fields["scaling"] = scaling
    config = make(**fields)
    assert (config.replicas.min, config.replicas.max) == bounds


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        pytest.param({"replicas": "1.."}, "maximum number of replicas is required", id="no-max"),
        pytest.param({"replicas": "4..1", "scaling": SCALING}, "order", id="reversed"),
        pytest.param({"replicas": -1}, "negative", id="negative"),
        pytest.param({"replicas": [{"count": 1}]}, "replica groups", id="groups-unsupported"),
        pytest.param({"replicas": "1..4"}, "`scaling` is required", id="range-needs-scaling"),
        pytest.param(
            {"replicas": 2, "scaling": SCALING}, "needs `replicas` to be a range", id="scaling-needs-range"
        ),
        pytest.param(
            {"scaling": SCALING}, "needs `replicas` to be a range", id="scaling-with-default-replicas"
        ),
    ],
)
def test_replica_errors(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        make(**fields)


@pytest.mark.parametrize(
    ("scaling", "up", "down", "window"),
    [
        pytest.param({}, 300, 600, 60, id="dstack-defaults"),
        pytest.param({"scale_up_delay": 30, "scale_down_delay": 90}, 30, 90, 60, id="seconds"),
        pytest.param({"scale_up_delay": "5m", "scale_down_delay": "1h"}, 300, 3600, 60, id="units"),
        pytest.param({"scale_up_delay": "45s", "window": "2m"}, 45, 600, 120, id="window"),
    ],
)
def test_scaling(scaling: dict[str, Any], up: int, down: int, window: int) -> None:
    config = make(replicas="1..4", scaling={**SCALING, **scaling})
    assert config.scaling is not None
    assert (config.scaling.scale_up_delay, config.scaling.scale_down_delay, config.scaling.window) == (
        up,
        down,
        window,
    )
    assert config.scaling.metric == "rps"
    assert config.scaling.target == 10


@pytest.mark.parametrize(
    "scaling",
    [
        pytest.param({"metric": "cpu", "target": 1}, id="metric-not-rps"),
        pytest.param({"metric": "rps", "target": 0}, id="target-zero"),
        pytest.param({"metric": "rps", "target": -3}, id="target-negative"),
        pytest.param({"metric": "rps"}, id="target-missing"),
        pytest.param({"metric": "rps", "target": 1, "scale_up_delay": "5 minutes"}, id="bad-duration"),
        pytest.param({"metric": "rps", "target": 1, "window": 0}, id="zero-window"),
    ],
)
def test_scaling_errors(scaling: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make(replicas="1..4", scaling=scaling)


def test_model_bare_string_is_openai_chat() -> None:
    model = make(model="meta/llama").model
    assert model is not None
    assert (model.type, model.name, model.format, model.prefix) == (
        "chat",
        "meta/llama",
        ModelFormat.OPENAI,
        "/v1",
    )


def test_model_tgi_mapping() -> None:
    model = make(
        model={"type": "chat", "name": "m", "format": "tgi", "chat_template": "{{ x }}", "eos_token": "</s>"}
    ).model
    assert model is not None
    assert (model.format, model.chat_template, model.eos_token, model.prefix) == (
        ModelFormat.TGI,
        "{{ x }}",
        "</s>",
        None,
    )


def test_model_openai_prefix() -> None:
    model = make(model={"name": "m", "format": "openai", "prefix": "/api/v1"}).model
    assert model is not None and model.prefix == "/api/v1"


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        pytest.param(
            {"name": "m", "format": "openai", "chat_template": "x"},
            "only for `format: tgi`",
            id="openai-template",
        ),
        pytest.param(
            {"name": "m", "format": "tgi", "prefix": "/v1"}, "only for `format: openai`", id="tgi-prefix"
        ),
        pytest.param({"name": "m", "format": "vllm"}, "format", id="unknown-format"),
        pytest.param({"name": "m"}, "format", id="format-missing"),
        pytest.param({"name": "m", "format": "openai", "type": "embeddings"}, "type", id="type-not-chat"),
        pytest.param({"name": "m", "format": "openai", "prefix": "v1"}, "start with", id="prefix-slash"),
        pytest.param({"format": "openai"}, "name", id="name-missing"),
    ],
)
def test_model_errors(model: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        make(model=model)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        pytest.param({"image": "x", "python": "3.11"}, "mutually exclusive", id="image-and-python"),
        pytest.param({"commands": []}, "either `commands` or `image`", id="nothing-to-run"),
        pytest.param({"python": "2.7"}, "unsupported python", id="old-python"),
        pytest.param({"name": "Bad_Name"}, "invalid name", id="bad-name"),
        pytest.param({"auth": "maybe"}, "boolean", id="auth-not-bool"),
        pytest.param({"spot_policy": "cheap"}, "spot", id="bad-spot-policy"),
        pytest.param({"max_price": 0}, "greater than 0", id="max-price-zero"),
        pytest.param({"commands": "echo hi"}, "`commands` is a list", id="commands-string"),
        pytest.param({"type": "task"}, "service", id="wrong-type"),
    ],
)
def test_rules(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        make(**fields)


def test_image_without_commands_is_fine() -> None:
    config = ServiceConfig.model_validate({"type": "service", "image": "nginx", "port": 80})
    assert config.commands == [] and config.image == "nginx"


@pytest.mark.parametrize(
    ("python", "expected"),
    [
        pytest.param("3.11", "3.11", id="string"),
        pytest.param(3.12, "3.12", id="float"),
        pytest.param(3.10, "3.10", id="float-3.10"),
    ],
)
def test_python_versions(python: Any, expected: str) -> None:
    assert make(python=python).python == expected


def _retry(config: ServiceConfig) -> Any:
    return None if config.retry is None else ([str(e) for e in config.retry.on_events], config.retry.duration)


@pytest.mark.parametrize(
    ("fields", "read", "expected"),
    [
        pytest.param(
            {"retry": True}, _retry, (["no-capacity", "interruption", "error"], None), id="retry-true"
        ),
        pytest.param(
            {"retry": {"on_events": ["error", "no-capacity", "interruption"]}},
            _retry,
            (["error", "no-capacity", "interruption"], None),
            id="retry-every-event-is-retry-true",
        ),
        pytest.param({"max_duration": "off"}, lambda c: c.max_duration, None, id="max-duration-off"),
        pytest.param({"backends": ["aws", "local"]}, lambda c: c.backends, ["aws", "local"], id="backends"),
        pytest.param({"spot_policy": "auto"}, lambda c: c.spot_policy, SpotPolicy.AUTO, id="spot-auto"),
    ],
)
def test_profile_params(fields: dict[str, Any], read: Any, expected: Any) -> None:
    assert read(make(**fields)) == expected


# `retry` / `max_duration` forms whose dstack meaning tidegate does not carry out: refused, with
# the file and line, rather than parsed and ignored.
@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        pytest.param("retry: false\n", 4, "retry", "restarts a failed replica", id="retry-false"),
        pytest.param("retry:\n  on_events: [error]\n", 5, "retry", "only `retry: true`", id="retry-some-events"),
        pytest.param("retry:\n  duration: 1h\n", 5, "retry", "no `duration`", id="retry-duration"),
        pytest.param("max_duration: 2h\n", 4, "max_duration", "not supported", id="max-duration"),
        pytest.param("max_duration: 3x\n", 4, "max_duration", "expected a duration", id="max-duration-malformed"),
    ],
)
def test_retry_and_max_duration_that_would_do_nothing_are_refused(text: str, line: int, field: str, says: str) -> None:
    parsed = parse_service_text("type: service\ncommands: [x]\nport: 8000\n" + text, "svc.dstack.yml")
    assert parsed.config is None
    [d] = parsed.diagnostics
    assert (d.path, d.line, d.field) == ("svc.dstack.yml", line, field) and says in d.message


def test_defaults() -> None:
    config = make()
    assert config.auth is True
    assert config.model is None and config.scaling is None
    assert config.env == {} and config.spot_policy is None


def test_requirements_resolve_defaults_and_profile_params() -> None:
    req = make(
        resources={"gpu": "A100:2", "cpu": "4..", "memory": "32GB"}, regions=["eu-west-1"], max_price=2.5
    ).requirements()
    assert req.cpus == Range(4, None)
    assert req.memory_gb == Range(32.0, 32.0)
    assert req.disk_gb == Range(100.0, None)
    assert req.gpu is not None and req.gpu.names == ("A100",) and req.gpu.count == Range(2, 2)
    assert req.spot_policy == "on-demand"  # services default to on-demand
    assert req.regions == ("eu-west-1",) and req.max_price == 2.5
    assert make(spot_policy="spot").requirements().spot_policy == "spot"


FULL: dict[str, Any] = {
    **BASE,
    "name": "full-service",
    "python": "3.11",
    "env": ["A=1", "TOKEN"],
    "port": "8080:8000",
    "resources": {"gpu": "nvidia:A100,H100:40GB..80GB:1..2", "cpu": "4..", "disk": {"size": "200GB"}},
    "model": {"type": "chat", "name": "m", "format": "tgi", "chat_template": "t", "eos_token": "</s>"},
    "replicas": "0..4",
    "scaling": {"metric": "rps", "target": 2.5, "scale_up_delay": "1m"},
    "auth": False,
    "backends": ["aws"],
    "regions": ["us-east-1"],
    "instance_types": ["g5.xlarge"],
    "spot_policy": "auto",
    "max_price": 1.5,
    "retry": True,
    "max_duration": "off",
}


@pytest.mark.parametrize("mode", ["python", "json"])
def test_round_trip(mode: str) -> None:
    config = ServiceConfig.model_validate(FULL)
    again = ServiceConfig.model_validate(config.model_dump(mode=mode))  # type: ignore[arg-type]
    assert again == config
