"""The parts of a desired service that its file alone decides (and how plans show them): the
requirements, scaling policy, route and env names (`static_of`), the summary `tidegate plan`
diffs (`summary`, `route_summary`) and the replica spec hash (`replica_spec_hash`: the config's
part of it is made once per file).

Why a module of its own: reconciler.engine.desired builds and memoizes the services; these pure
functions of a loaded file are what it calls once per file and settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from json.encoder import encode_basestring_ascii

from backends.base import Requirements
from reconciler.config.loader import LoadedService, canonical_json
from reconciler.engine import memo
from reconciler.engine.autoscale import ScalingPolicy
from reconciler.engine.naming import service_host
from reconciler.state.records import RouteInfo
from tidegate.routes import ModelFormat, ModelRoute


@dataclass(frozen=True)
class Static:
    """What a service's file alone (and the domain) decide, whatever the env, backend or code."""

    requirements: Requirements
    scaling: ScalingPolicy | None
    route: RouteInfo
    env_names: tuple[str, ...]
    # the summary's fields that only the file decides, before and after the env/backend ones
    head: tuple[tuple[str, str], ...] = ()
    tail: tuple[tuple[str, str], ...] = ()


def static_of(ls: LoadedService, name: str, domain: str) -> Static:
    c = ls.config
    scaling = None
    if c.scaling is not None:
        scaling = ScalingPolicy(
            min=c.replicas.min,
            max=c.replicas.max,
            target=float(c.scaling.target),
            scale_up_delay=float(c.scaling.scale_up_delay),
            scale_down_delay=float(c.scaling.scale_down_delay),
            window=float(c.scaling.window),
        )
    route = RouteInfo(
        host=service_host(name, domain),
        auth=c.auth,
        model=_model_route(ls),
        min_replicas=c.replicas.min,
        max_replicas=c.replicas.max,
        probes=tuple(c.probes),
        # longest prefix first: the gateway applies the first that matches
        rate_limits=tuple(
            sorted((r.to_route() for r in c.rate_limits), key=lambda r: (-len(r.prefix), r.prefix))
        ),
    )
    head, tail = _summary_parts(ls)
    return Static(_interned(c.requirements()), scaling, route, tuple(sorted(c.env)), head, tail)


# Equal requirements as one object: the offers of a pass are looked up by the object's identity
# (engine.offers._Offers), and a 1,000-service repo has a handful of distinct resource specs.
_REQUIREMENTS: dict[Requirements, Requirements] = {}


def _interned(r: Requirements) -> Requirements:
    try:
        found = _REQUIREMENTS.get(r)
    except TypeError:  # an unhashable field (not made by the config models)
        return r
    if found is None:
        if len(_REQUIREMENTS) > 10_000:
            _REQUIREMENTS.clear()
        found = _REQUIREMENTS[r] = r
    return found


def summary(
    ls: LoadedService, backend: str, env: Mapping[str, str], env_hash: str, files: str | None
) -> dict[str, str]:
    head, tail = _summary_parts(ls)
    return summary_of(head, tail, backend, env, env_hash, files)


def summary_of(
    head: tuple[tuple[str, str], ...],
    tail: tuple[tuple[str, str], ...],
    backend: str,
    env: Mapping[str, str],
    env_hash: str,
    files: str | None,
) -> dict[str, str]:
    """The summary from the file's parts (`Static.head`/`tail`, `_summary_parts`) and the rest."""
    out = {"backend": backend, **dict(head)}
    out["env"] = ", ".join(sorted(env))
    out["env values"] = env_hash[:8]
    out["files"] = files[:8] if files else ""
    out.update(tail)
    return {k: v for k, v in out.items() if v}


def _summary_parts(ls: LoadedService) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    c = ls.config
    head = (
        ("port", str(c.port.container_port)),
        ("commands", " && ".join(c.commands)),
        ("resources", _SORTED_JSON(c.resources.model_dump(mode="json", exclude_none=True))),
        ("replicas", str(c.replicas.min) if c.replicas.min == c.replicas.max else f"{c.replicas.min}..{c.replicas.max}"),
    )
    tail: dict[str, str] = {}
    if c.image:
        tail["image"] = c.image
    if c.python:
        tail["python"] = c.python
    tail.update(route_summary(ls))
    return head, tuple(tail.items())


def route_summary(ls: LoadedService) -> dict[str, str]:
    """The fields that change what is routed or where/how a replica may be placed, as plan shows
    them. `auth` is always present: plan.ROUTE_FIELDS diffs them even when no replica changes."""
    c = ls.config
    out = {
        "auth": "true" if c.auth else "false",
        "spot_policy": str(c.spot_policy) if c.spot_policy else "",
        "max_price": f"{c.max_price:g}" if c.max_price is not None else "",
        "regions": ", ".join(c.regions or ()),
        "probes": _compact([p.model_dump(mode="json") for p in c.probes]),
        "rate_limits": _compact([r.model_dump(mode="json") for r in c.rate_limits]),
        "scaling": _compact(c.scaling.model_dump(mode="json")) if c.scaling else "",
    }
    if c.model is not None:
        m = c.model
        where = f"prefix {m.prefix}" if m.format == ModelFormat.OPENAI else "tgi"
        out["model"] = f"{m.name} ({where})"
        if m.chat_template:
            out["model.chat_template"] = hashlib.sha256(m.chat_template.encode()).hexdigest()[:8]
        if m.eos_token:
            out["model.eos_token"] = m.eos_token
    return out


def _compact(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":")) if value else ""


# `json.dumps(x, sort_keys=True)` without making an encoder per call (the very encoder it makes)
_SORTED_JSON = json.JSONEncoder(sort_keys=True).encode


def _model_route(ls: LoadedService) -> ModelRoute | None:
    m = ls.config.model
    if m is None:
        return None
    return ModelRoute(
        name=m.name,
        type=m.type,
        format=ModelFormat(str(m.format)),
        prefix=m.prefix or "/v1",
        chat_template=m.chat_template,
        eos_token=m.eos_token,
    )


# Fields that change routing or the replica count but not what a replica runs: changing them
# must not roll the replicas (the loader's own spec_hash covers the whole file).
# `probes` decide when a replica is routed, `rate_limits` what the gateway lets through.
ROUTING_ONLY_FIELDS = frozenset({"replicas", "scaling", "auth", "model", "probes", "rate_limits"})
_ROUTING_ONLY = set(ROUTING_ONLY_FIELDS)  # as model_dump takes it (never changed)
# `retry` and `max_duration` only take the values that say what tidegate does anyway
# (reconciler.config.models.RETRY_UNSUPPORTED): `retry: true` changes nothing that runs. They are
# hashed as unset (not left out, which would change every existing hash and roll every replica).
NO_EFFECT_FIELDS = ("retry", "max_duration")


def replica_spec_hash(ls: LoadedService, env_hash: str, backend: str, files: str | None = None) -> str:
    """What a replica runs: the config minus routing-only fields, the backend, the env digest and,
    for a backend that ships the checkout, the code hash (`files`; None leaves the hash as it was).

    The text hashed is `json.dumps({"config": ..., "env": ..., "backend": ..., "files": ...},
    sort_keys=True, separators=(",", ":"))`, written as its parts: the config's canonical JSON is
    made once per loaded file (`_config_json`) and shared by every backend and env."""
    return _replica_hash(_CONFIG_JSON.get(ls, (), partial(_config_json, ls)), env_hash, backend, files)


def replica_spec_hash_plain(ls: LoadedService, env_hash: str, backend: str, files: str | None = None) -> str:
    """`replica_spec_hash` as it was first written, with `json.dumps` (the tests hold both equal)."""
    config = ls.config.model_dump(mode="json", exclude=set(ROUTING_ONLY_FIELDS))
    config.update(dict.fromkeys(NO_EFFECT_FIELDS))
    payload: dict[str, object] = {"config": config, "env": env_hash, "backend": backend}
    if files is not None:
        payload["files"] = files
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _config_json(ls: LoadedService) -> bytes:
    config = ls.config.model_dump(mode="json", exclude=_ROUTING_ONLY)
    config.update(dict.fromkeys(NO_EFFECT_FIELDS))
    return canonical_json(config)


def _replica_hash(config: bytes, env_hash: str, backend: str, files: str | None) -> str:
    # the keys in sorted order: backend, config, env, files
    h = hashlib.sha256(b'{"backend":' + _json_str(backend) + b',"config":')
    h.update(config)
    h.update(b',"env":' + _json_str(env_hash))
    if files is not None:
        h.update(b',"files":' + _json_str(files))
    h.update(b"}")
    return h.hexdigest()


def _json_str(text: str) -> bytes:
    """`json.dumps(text).encode()`: the very function json.dumps writes a str with (ensure_ascii)."""
    return encode_basestring_ascii(text).encode()


_CONFIG_JSON: memo.IdentityMemo[bytes] = memo.memo()  # ()
