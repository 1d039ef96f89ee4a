"""The canonical JSON of a service config's hashed fields, the text its replica spec hash covers.

Why a module of its own: `desired_parts._config_json` (a full `model_dump` then `canonical_json`,
the reference) is a third of the cost of a cold desired set. Most of that goes to dumping and
checking the same `resources:` instance again for every file (the config's value memo,
reconciler.config.value_memo, hands equal blocks back as one instance) and to reading the whole
text back to prove msgspec wrote what `json.dumps` would. Here the document is written from the
config's own attributes with the resources' text made once per instance (`resources_json`), and
the read-back is replaced by checking the types it guards against: a value that is not plain
JSON data of the types the models declare (a float anywhere, a model put in by hand) returns None
and the caller takes the reference path. Equal bytes are held by tests over varied configs.
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec

from reconciler.config.loader import canonical_json
from reconciler.config.models import ServiceConfig, SpotPolicy
from reconciler.config.resources import ResourcesSpec
from reconciler.engine import memo

# What the replica hash covers (the config minus the routing-only fields, desired_parts), in the
# order this module writes them; another field in ServiceConfig turns the fast path off.
HASHED = (
    "backends", "commands", "env", "image", "instance_types", "max_duration", "max_price", "name",
    "port", "python", "regions", "resources", "retry", "spot_policy", "type",
)  # fmt: skip
# Fields that change routing or the replica count but not what a replica runs: changing them
# must not roll the replicas (the loader's own spec_hash covers the whole file).
# `probes` decide when a replica is routed, `rate_limits` what the gateway lets through.
ROUTING_ONLY_FIELDS = frozenset({"replicas", "scaling", "auth", "model", "probes", "rate_limits"})
ENABLED = set(ServiceConfig.model_fields) - ROUTING_ONLY_FIELDS == set(HASHED) and not ServiceConfig.model_computed_fields

_ENCODE = msgspec.json.Encoder(order="sorted").encode
_Raw = msgspec.Raw


def fast_config_json(c: ServiceConfig) -> bytes | None:
    """`desired_parts._config_json(c)`'s bytes, or None when this config needs the reference path
    (a `max_price`: a float; a value of a type the models do not make)."""
    if not ENABLED or type(c) is not ServiceConfig or c.max_price is not None or c.__pydantic_extra__:
        return None
    res = c.resources
    if type(res) is not ResourcesSpec:
        return None
    port = c.port.model_dump(mode="json")
    spot: Any = c.spot_policy
    if spot is not None:
        if type(spot) is not SpotPolicy:
            return None
        spot = spot.value
    env = c.env
    if not (
        _texts(c.image, c.name, c.python, c.type)
        and _str_list(c.commands)
        and _str_list(c.backends)
        and _str_list(c.regions)
        and _str_list(c.instance_types)
        and type(env) is dict
        and all(type(k) is str and (type(v) is str or v is None) for k, v in env.items())
        and all(type(v) is int or v is None for v in port.values())
    ):
        return None
    text = _ENCODE({
        "backends": c.backends, "commands": c.commands, "env": env, "image": c.image,
        "instance_types": c.instance_types, "max_duration": None, "max_price": None, "name": c.name,
        "port": port, "python": c.python, "regions": c.regions, "resources": _Raw(resources_json(res)),
        "retry": None, "spot_policy": spot, "type": c.type,
    })  # fmt: skip
    # json.dumps escapes non-ASCII and DEL; the rest of ASCII text msgspec writes alike
    if not text.isascii() or b"\x7f" in text:
        return None
    return text


def _texts(*values: object) -> bool:
    return all(v is None or type(v) is str for v in values)


def _str_list(value: object) -> bool:
    return value is None or (type(value) is list and all(type(v) is str for v in value))


def resources_json(res: ResourcesSpec) -> bytes:
    """`canonical_json(res.model_dump(mode="json"))`, made once per instance while kept."""
    if not memo.enabled:
        return canonical_json(res.model_dump(mode="json"))
    found = _RESOURCES.get(id(res))
    if found is not None and found[0] is res:
        return found[1]
    made = canonical_json(res.model_dump(mode="json"))
    with _LOCK:
        if len(_RESOURCES) >= _MAX:
            _RESOURCES.clear()
        _RESOURCES[id(res)] = (res, made)  # holding `res`: its id is not reused while kept
    return made


_RESOURCES: dict[int, tuple[ResourcesSpec, bytes]] = {}
_MAX = 10_000  # distinct resources blocks; a full table starts over
_LOCK = threading.Lock()
memo.on_clear(_RESOURCES.clear)
