"""The parts of a desired service that its file alone decides: the requirements, scaling policy,
route, env names and the config's part of the replica spec hash (`file_parts`), and the replica
spec hash (`replica_spec_hash`). How plans show them: reconciler.engine.desired_summary.

Why a module of its own: reconciler.engine.desired builds and memoizes the services; these pure
functions of a loaded file are what it calls once per file and settings.
"""

from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring_ascii
from typing import Any

from backends.base import Requirements
from reconciler.config.loader import SHARED_FIELDS, LoadedService, canonical_json, model_json
from reconciler.config.models import ProbeSpec, ServiceConfig
from reconciler.engine import memo
from reconciler.engine.autoscale import ScalingPolicy
from reconciler.engine.desired_summary import config_summary_parts
from reconciler.engine.naming import service_host
from reconciler.state.records import RouteInfo
from tidegate.routes import ModelFormat, ModelRoute, RateLimit


class FileParts:
    """What a service's file alone (and its name and the domain) decide, whatever the env, backend
    or code: made once per loaded file (reconciler.engine.desired keeps it with its outcomes)."""

    __slots__ = ("_summary", "config", "config_json", "env_names", "requirements", "route", "scaling")

    def __init__(
        self,
        config: ServiceConfig,
        config_json: bytes,
        requirements: Requirements,
        scaling: ScalingPolicy | None,
        route: RouteInfo,
        env_names: tuple[str, ...],
    ) -> None:
        self.config = config
        self.config_json = config_json  # the replica hash's config part (`_config_json`)
        self.requirements = requirements
        self.scaling = scaling
        self.route = route
        self.env_names = env_names
        self._summary: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] | None = None

    def summary_parts(self) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
        """The summary's fields the file decides (`config_summary_parts`), made when first read."""
        if self._summary is None:
            self._summary = config_summary_parts(self.config)
        return self._summary


def file_parts(ls: LoadedService, name: str, domain: str) -> FileParts:
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
    route = _route(
        host=service_host(name, domain),
        auth=c.auth,
        model=_model_route(ls),
        min_replicas=c.replicas.min,
        max_replicas=c.replicas.max,
        probes=tuple(c.probes),
        # longest prefix first: the gateway applies the first that matches
        rate_limits=tuple(
            sorted((r.to_route() for r in c.rate_limits), key=lambda r: (-len(r.prefix), r.prefix))
        )
        if c.rate_limits
        else (),
    )
    return FileParts(c, config_json(ls), _requirements(c), scaling, route, tuple(sorted(c.env)))


def _route(**fields: Any) -> RouteInfo:
    """`RouteInfo(**fields)` given every field: made as `model_construct` makes it (no validation)
    when every value already is of its field's type (what the validated config gives), which
    validation would hand back as it is; else validated. Tests hold both equal (`vars`, the
    fields set, `==`)."""
    if not (
        memo.enabled
        and type(fields["host"]) is str
        and type(fields["auth"]) is bool
        and type(fields["min_replicas"]) is int
        and type(fields["max_replicas"]) is int
        and (fields["model"] is None or type(fields["model"]) is ModelRoute)
        and all(type(p) is ProbeSpec for p in fields["probes"])
        and all(type(r) is RateLimit for r in fields["rate_limits"])
    ):
        return RouteInfo(**fields)
    made = _new(RouteInfo)
    _set(made, "__dict__", fields)
    _set(made, "__pydantic_fields_set__", set(_ROUTE_FIELDS))
    _set(made, "__pydantic_extra__", None)
    _set(made, "__pydantic_private__", None)
    return made


_new = object.__new__
_set = object.__setattr__
_ROUTE_FIELDS = ("host", "auth", "model", "min_replicas", "max_replicas", "probes", "rate_limits")


def _requirements(c: ServiceConfig) -> Requirements:
    """`c.requirements()`, one object per distinct value (`_interned`), kept by what it reads:
    the resources instance (the value memo shares one per distinct block) and the placement
    fields. Tests hold it equal to `c.requirements()` over varied configs."""
    if not memo.enabled:
        return _interned(c.requirements())
    res = c.resources
    key = (
        id(res),
        _tuple(c.backends),
        c.spot_policy,
        c.max_price,
        _tuple(c.regions),
        _tuple(c.instance_types),
    )
    try:
        found = _BY_FIELDS.get(key)
    except TypeError:  # an unhashable field (not made by the config models)
        return _interned(c.requirements())
    if found is not None and found[0] is res:
        return found[1]
    made = _interned(c.requirements())
    if len(_BY_FIELDS) > 10_000:
        _BY_FIELDS.clear()
    _BY_FIELDS[key] = (res, made)  # holding `res`: its id is not reused while kept
    return made


def _tuple(value: list[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


_BY_FIELDS: dict[tuple[object, ...], tuple[object, Requirements]] = {}
memo.on_clear(_BY_FIELDS.clear)


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
    made once per loaded file (`config_json`; the desired set keeps it in `FileParts`) and shared by
    every backend and env."""
    return replica_hash_of(config_json(ls), env_hash, backend, files)


def replica_spec_hash_plain(ls: LoadedService, env_hash: str, backend: str, files: str | None = None) -> str:
    """`replica_spec_hash` as it was first written, with `json.dumps` (the tests hold both equal)."""
    config = ls.config.model_dump(mode="json", exclude=set(ROUTING_ONLY_FIELDS))
    config.update(dict.fromkeys(NO_EFFECT_FIELDS))
    payload: dict[str, object] = {"config": config, "env": env_hash, "backend": backend}
    if files is not None:
        payload["files"] = files
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_json(ls: LoadedService) -> bytes:
    """The canonical JSON of the config's hashed fields: `_config_json`'s bytes, written from the
    config's fields by the loader's `model_json` (the spec hash's writer; the reference when
    the memos are off)."""
    if not memo.enabled:
        return _config_json(ls)
    return model_json(ls.config, exclude=ROUTING_ONLY_FIELDS, nulls=NO_EFFECT_FIELDS, shared=SHARED_FIELDS)


def _config_json(ls: LoadedService) -> bytes:
    """The reference: a full `model_dump` and `canonical_json`."""
    config = ls.config.model_dump(mode="json", exclude=_ROUTING_ONLY)
    config.update(dict.fromkeys(NO_EFFECT_FIELDS))
    return canonical_json(config)


def replica_hash_of(config: bytes, env_hash: str, backend: str, files: str | None) -> str:
    """`replica_spec_hash` from the config's JSON (`config_json`, `FileParts.config_json`)."""
    # the keys in sorted order: backend, config, env, files. The text before the config is
    # hashed once per backend (`_head`), the one after it once per env digest and code hash.
    h = _head(backend).copy()
    h.update(config)
    tail = _TAILS.get((env_hash, files))
    if tail is None:
        tail = _tail(env_hash, files)
    h.update(tail)
    return h.hexdigest()


def _head(backend: str) -> hashlib._Hash:
    found = _HEADS.get(backend)
    if found is None:
        if len(_HEADS) > 64:
            _HEADS.clear()
        found = _HEADS[backend] = hashlib.sha256(b'{"backend":%b,"config":' % _json_str(backend))
    return found


def _tail(env_hash: str, files: str | None) -> bytes:
    tail = b',"env":' + _json_str(env_hash)
    if files is not None:
        tail += b',"files":' + _json_str(files)
    tail += b"}"
    if len(_TAILS) > 1_024:
        _TAILS.clear()
    _TAILS[(env_hash, files)] = tail
    return tail


# Pure texts of a few keys each: a backend's head (hashed), an env digest and code hash's tail.
# (a sha256 object's `copy` is the one used; `update` is never called on a kept one)
_HEADS: dict[str, hashlib._Hash] = {}
_TAILS: dict[tuple[str, str | None], bytes] = {}


def replica_hash_plain_text(config: bytes, env_hash: str, backend: str, files: str | None) -> str:
    """`replica_hash_of` as one text hashed (the tests hold both equal)."""
    text = b'{"backend":%b,"config":%b,"env":%b' % (_json_str(backend), config, _json_str(env_hash))
    if files is not None:
        text += b',"files":' + _json_str(files)
    return hashlib.sha256(text + b"}").hexdigest()


def _json_str(text: str) -> bytes:
    """`json.dumps(text).encode()`: the very function json.dumps writes a str with (ensure_ascii)."""
    return encode_basestring_ascii(text).encode()
