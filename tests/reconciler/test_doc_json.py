"""state.json's text from kept per-record JSON (reconciler.state.doc_json) is byte-for-byte what
pydantic writes, through every kind of edit a pass makes."""

from __future__ import annotations

import json

from reconciler.state.doc_json import DocWriter
from reconciler.state.records import ReplicaPhase, ReplicaRecord, ServiceRecord, SnapshotRef, StateDoc
from tests.control.conftest import state_doc


def _check(writer: DocWriter, doc: StateDoc) -> None:
    text = writer.dump(doc)
    assert text == doc.model_dump_json(indent=1).encode()
    assert StateDoc.model_validate_json(text) == doc
    stamps = frozenset({"serial", "updated_at"})  # what the engine compares (StateStore.comparable)
    assert writer.dump(doc, exclude=stamps) == doc.model_dump_json(indent=1, exclude=set(stamps)).encode()


def test_equal_to_pydantic_through_every_edit() -> None:
    writer = DocWriter()
    doc = StateDoc(lineage="l-1")
    _check(writer, doc)  # no services
    doc = state_doc()
    _check(writer, doc)
    _check(writer, doc)  # all kept
    web = doc.services["web"]
    web.replicas[0].phase = ReplicaPhase.DRAINING  # a replica's field
    _check(writer, doc)
    web.note(12.0, "scaled", "1 -> 2: \"quoted\" and é")  # the history
    _check(writer, doc)
    web.replicas.append(ReplicaRecord(id="web-aaaaaaaa-9", service="web", spec_hash="a" * 16, ordinal=9, backend="local"))
    _check(writer, doc)
    web.replicas.pop(0)
    _check(writer, doc)
    doc.services["new"] = ServiceRecord(name="new", spec_hash="b" * 16)
    _check(writer, doc)
    doc.services["web"] = web.model_copy(update={"reason": "replaced by another object"})
    _check(writer, doc)
    del doc.services["new"]
    _check(writer, doc)
    doc.serial, doc.journal_seq = 7, 3
    doc.last_snapshot = SnapshotRef(revision="c" * 40, root="/tmp/x")
    _check(writer, doc)
    doc.services.clear()
    _check(writer, doc)


def test_kept_text_is_reused_only_for_the_same_unedited_record() -> None:
    writer = DocWriter()
    doc = state_doc()
    first = json.loads(writer.dump(doc))
    twin = doc.model_copy(deep=True)  # equal records, other objects: serialized on their own
    assert json.loads(writer.dump(twin)) == first
    twin.services["web"].reason = "edited"
    assert json.loads(writer.dump(twin))["services"]["web"]["reason"] == "edited"
