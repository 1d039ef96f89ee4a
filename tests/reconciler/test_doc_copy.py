"""`reconciler.state.doc_copy.deep_copy` makes what `model_copy(deep=True)` makes: equal documents,
no mutable object shared with the original, shared objects copied once, fields-set and versions
as pydantic and `Versioned` give them; and editing the copy leaves the original as it was."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from reconciler.config.routing import ProbeSpec
from reconciler.state.doc_copy import deep_copy
from reconciler.state.records import (
    HistoryEntry,
    ReplicaPhase,
    ReplicaRecord,
    RouteInfo,
    ScalingRecord,
    ServiceRecord,
    SnapshotRef,
    StateDoc,
    versions,
)
from tests.control.conftest import state_doc
from tidegate.routes import ModelRoute, RateLimit, TunnelRoute

_ATOMS = (str, int, float, bool, type(None), Enum)


def _rich_doc() -> StateDoc:
    """Every kind of field a record holds, with edge values (nested dicts, tuples of models, an
    object reached twice, fields set after construction, unusual strings)."""
    doc = state_doc()
    tunnel = TunnelRoute(backend="aws", host="203.0.113.5", port=22, user="tg", host_key="ssh-ed25519 AAAA", service_port=8000)
    route = RouteInfo(
        host="llm.example.com",
        model=ModelRoute(name="m", eos_token={"content": "</s>", "lstrip": False}, chat_template="{{ x }}"),
        min_replicas=0,
        max_replicas=3,
        probes=(ProbeSpec(url="/health"), ProbeSpec(url="/ready", method="post", body="é\"\n", headers=[{"name": "X-A", "value": "b"}])),
        rate_limits=(RateLimit(rps=2.5, burst=3),),
    )
    replicas = [
        ReplicaRecord(
            id=f"llm-bbbbbbbb-{i}", service="llm", spec_hash="b" * 16, ordinal=i, backend="aws", phase=phase,
            address="http://10.0.0.1:8000", tunnel=tunnel, secrets={"HF_TOKEN": "c" * 32}, offer="aws us-east-1 g5 spot",
            price=1.006, last_error="exit 1: ***" if phase is ReplicaPhase.FAILED else None, next_attempt_at=9.5,
            in_flight=i, probed_at=3.0,
        )
        for i, phase in enumerate(ReplicaPhase)
    ]
    llm = ServiceRecord(
        name="llm", spec_hash="b" * 16, backend="aws", env_names=["HF_TOKEN", "MODEL"],
        spec_summary={"image": "vllm/vllm-openai:latest", "resources": '{"gpu": "24GB"}', "": ""},
        route=route, replicas=replicas, diagnostics=["llm.dstack.yml:3:1: x: bad"],
        scaling=[ScalingRecord(at=1.0, previous=0, count=1, reason="demand")], panic_since=2.0,
        history=[HistoryEntry(at=float(i), event="e", detail="d" * i) for i in range(50)],
    )
    llm.stopped = True  # set after construction: in fields-set, a new version
    llm.note(99.0, "stopped", "tidegate stop")
    doc.services["llm"] = llm
    doc.services["twin"] = ServiceRecord(name="twin", spec_hash="", route=route)  # `route` reached twice
    doc.services["empty"] = ServiceRecord(name="empty", spec_hash="")
    doc.last_snapshot = SnapshotRef(revision="d" * 40, root="/srv/rev", diagnostics=["a.yml:1:1: bad"])
    doc.updated_at = 1234.5
    return doc


def _walk(a: Any, b: Any, seen: dict[int, int], path: str = "doc") -> None:
    """`b` mirrors `a`: same types, equal atoms, fields-set; every model, list and dict a new
    object; objects reached twice in `a` are one object in `b` too (`seen`: id in a -> id in b)."""
    assert type(a) is type(b), path
    if isinstance(a, _ATOMS):
        assert a == b, path
        return
    assert a is not b or (type(a) is tuple and all(isinstance(x, _ATOMS) for x in a)), path
    if id(a) in seen:
        assert seen[id(a)] == id(b), f"{path}: shared in the original, not in the copy"
        return
    seen[id(a)] = id(b)
    if isinstance(a, BaseModel):
        assert a.__pydantic_fields_set__ == b.__pydantic_fields_set__, path
        assert a.__pydantic_fields_set__ is not b.__pydantic_fields_set__, path
        _walk(a.__dict__, b.__dict__, seen, path)
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _walk(a[k], b[k], seen, f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(x, y, seen, f"{path}[{i}]")
    else:
        raise AssertionError(f"{path}: unexpected {type(a).__name__}")


def _docs(tmp_path: Path) -> list[StateDoc]:
    return [StateDoc(), StateDoc(lineage="l-1"), state_doc(), _rich_doc(), StateDoc.model_validate_json(_rich_doc().model_dump_json())]


def test_same_as_pydantic_deep_copy(tmp_path: Path) -> None:
    for doc in _docs(tmp_path):
        plain = doc.model_copy(deep=True)
        fast = deep_copy(doc)
        assert fast == plain == doc
        assert fast.model_dump_json() == plain.model_dump_json() == doc.model_dump_json()
        assert fast.model_dump() == plain.model_dump()  # fields left out of the JSON too
        _walk(doc, fast, {})
        for name, rec in doc.services.items():
            # versions: each copied record and replica has a new one, as with model_copy
            assert not set(versions(rec)) & set(versions(fast.services[name]))
            assert fast.services[name].__pydantic_private__.keys() == plain.services[name].__pydantic_private__.keys()


def test_editing_the_copy_leaves_the_original() -> None:
    doc = _rich_doc()
    before = doc.model_dump_json()
    kept = {n: versions(r) for n, r in doc.services.items()}
    copy = deep_copy(doc)
    llm = copy.services["llm"]
    llm.replicas[0].phase = ReplicaPhase.FAILED
    llm.replicas[0].secrets["X"] = "y"
    llm.replicas.pop()
    llm.note(100.0, "replica failed", "gone")
    llm.spec_summary["image"] = "other"
    llm.env_names.append("NEW")
    copy.services["web"].history.clear()
    copy.services["adopted"] = ServiceRecord(name="adopted", spec_hash="e" * 16)
    assert copy.last_snapshot is not None
    copy.last_snapshot.diagnostics.append("more")
    assert doc.model_dump_json() == before
    assert {n: versions(r) for n, r in doc.services.items()} == kept
