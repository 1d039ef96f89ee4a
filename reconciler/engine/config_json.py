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

import math
import threading
from itertools import chain

import msgspec

from reconciler.config.loader import canonical_json
from reconciler.config.models import PortMapping, ServiceConfig, SpotPolicy
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
ENABLED = (
    set(ServiceConfig.model_fields) - ROUTING_ONLY_FIELDS == set(HASHED)
    and not ServiceConfig.model_computed_fields
    and set(PortMapping.model_fields) == {"container_port", "local_port"}
)

_ENCODE = msgspec.json.Encoder(order="sorted").encode
_Raw = msgspec.Raw


def fast_config_json(c: ServiceConfig) -> bytes | None:
    """`desired_parts._config_json(c)`'s bytes, or None when this config needs the reference path
    (a value of a type the models do not make, an infinite `max_price`)."""
    if not ENABLED or type(c) is not ServiceConfig or c.__pydantic_extra__:
        return None
    price: _Raw | None = None
    if c.max_price is not None:
        if type(c.max_price) is not float or not math.isfinite(c.max_price):
            return None
        price = _Raw(float.__repr__(c.max_price).encode())  # as json.dumps writes a finite float
    res, port, spot, env = c.resources, c.port, c.spot_policy, c.env
    if type(res) is not ResourcesSpec or type(port) is not PortMapping or type(env) is not dict:
        return None
    commands, backends, regions, types = c.commands, c.backends, c.regions, c.instance_types
    local = port.local_port
    if not (
        type(commands) is list
        and (backends is None or type(backends) is list)
        and (regions is None or type(regions) is list)
        and (types is None or type(types) is list)
        and type(port.container_port) is int
        and (local is None or type(local) is int)
        and all(map(_IS_TEXT, chain(commands, backends or (), regions or (), types or (), env)))
        # falsy values are left out: None and "" as validated, and any other (0, 0.0, False, [])
        # is written alike by both; what differs (inf, nan, 1e16, a model) is never falsy
        and all(map(_IS_TEXT, filter(None, env.values())))
        and all(map(_IS_TEXT, filter(None, (c.image, c.name, c.python, c.type))))
    ):
        return None
    if spot is not None and type(spot) is not SpotPolicy:
        return None
    text = _ENCODE({
        "backends": backends, "commands": commands, "env": env, "image": c.image,
        "instance_types": types, "max_duration": None, "max_price": price, "name": c.name,
        "port": {"container_port": port.container_port, "local_port": local}, "python": c.python, "regions": regions,
        "resources": _Raw(resources_json(res)), "retry": None, "spot_policy": None if spot is None else spot.value, "type": c.type,
    })  # fmt: skip
    # json.dumps escapes non-ASCII and DEL; the rest of ASCII text msgspec writes alike
    if not text.isascii() or b"\x7f" in text:
        return None
    return text


# what `model_dump(mode="json")` of a field holds as it is (no serializer of its own: by test)
_IS_TEXT = str.__instancecheck__


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
