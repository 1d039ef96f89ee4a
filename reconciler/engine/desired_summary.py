"""The summary `tidegate plan` diffs: a service's config as short texts (`summary_of`), made when
first read (`Summary`), and the fields that change routing or placement (`route_summary`).

Why a module of its own: reconciler.engine.desired_parts makes the parts of a service its file
decides; the summary is only how plans show them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from reconciler.config.loader import LoadedService
from reconciler.config.models import ServiceConfig
from reconciler.config.resources import ResourcesSpec
from reconciler.engine import memo
from tidegate.routes import ModelFormat

if TYPE_CHECKING:
    from reconciler.engine.desired_parts import FileParts


class Summary(Mapping[str, str]):
    """A service's summary (`summary_of`), made when first read: a cold plan of 1,000 new
    services reads none (engine.plan makes a new service's change list when it is shown). It
    reads, compares (`==` with any mapping) and pickles as the dict it stands for."""

    __slots__ = ("_made", "_parts", "_rest")

    def __init__(
        self, parts: FileParts, backend: str, env: Mapping[str, str], env_hash: str, files: str | None
    ) -> None:
        self._parts = parts
        self._rest = (backend, env, env_hash, files)
        self._made: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        made = self._made
        if made is None:
            head, tail = self._parts.summary_parts()
            made = self._made = summary_of(head, tail, *self._rest)
        return made

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __contains__(self, key: object) -> bool:
        return key in self._dict()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Summary):
            return self is other or self._dict() == other._dict()
        if isinstance(other, Mapping):
            return self._dict() == (other if isinstance(other, dict) else dict(other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a dict's

    def __repr__(self) -> str:
        return repr(self._dict())

    def __reduce__(self) -> tuple[type[dict[str, str]], tuple[dict[str, str]]]:
        return dict, (self._dict(),)


def summary(
    ls: LoadedService, backend: str, env: Mapping[str, str], env_hash: str, files: str | None
) -> dict[str, str]:
    head, tail = config_summary_parts(ls.config)
    return summary_of(head, tail, backend, env, env_hash, files)


def summary_of(
    head: tuple[tuple[str, str], ...],
    tail: tuple[tuple[str, str], ...],
    backend: str,
    env: Mapping[str, str],
    env_hash: str,
    files: str | None,
) -> dict[str, str]:
    """The summary from the file's parts (`FileParts.summary_parts`, `config_summary_parts`) and the rest."""
    out = {"backend": backend, **dict(head)}
    out["env"] = ", ".join(sorted(env))
    out["env values"] = env_hash[:8]
    out["files"] = files[:8] if files else ""
    out.update(tail)
    return {k: v for k, v in out.items() if v}


def config_summary_parts(c: ServiceConfig) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    head = (
        ("port", str(c.port.container_port)),
        ("commands", " && ".join(c.commands)),
        ("resources", _resources_text(c.resources)),
        ("replicas", str(c.replicas.min) if c.replicas.min == c.replicas.max else f"{c.replicas.min}..{c.replicas.max}"),
    )
    tail: dict[str, str] = {}
    if c.image:
        tail["image"] = c.image
    if c.python:
        tail["python"] = c.python
    tail.update(_route_summary(c))
    return head, tuple(tail.items())


def _resources_text(res: ResourcesSpec) -> str:
    """The summary's `resources`, kept by the instance (the value memo shares one per distinct
    `resources:` block across files, as `canonical.model_json` relies on): a plan after a
    restart reads every service's summary. Tests hold it equal to the plain dump."""
    if not memo.enabled:
        return _SORTED_JSON(res.model_dump(mode="json", exclude_none=True))
    kept = _RESOURCES.get(id(res))
    if kept is not None and kept[0] is res:
        return kept[1]
    text = _SORTED_JSON(res.model_dump(mode="json", exclude_none=True))
    if len(_RESOURCES) >= 4_096:
        _RESOURCES.clear()
    _RESOURCES[id(res)] = (res, text)  # holding `res`: its id is not reused while kept
    return text


_RESOURCES: dict[int, tuple[ResourcesSpec, str]] = {}
memo.on_clear(_RESOURCES.clear)


def route_summary(ls: LoadedService) -> dict[str, str]:
    """The fields that change what is routed or where/how a replica may be placed, as plan shows
    them. `auth` is always present: plan.ROUTE_FIELDS diffs them even when no replica changes."""
    return _route_summary(ls.config)


def _route_summary(c: ServiceConfig) -> dict[str, str]:
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
