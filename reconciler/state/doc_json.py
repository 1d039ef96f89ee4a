"""state.json's text, with each service record's JSON kept while the record is unedited.

Why: a pass that changes one service of 1,000 still writes the whole document (one file, replaced
atomically); pydantic serializing all 1,000 records with indentation took ~20 ms of each such
pass. Records are `Versioned` (reconciler.state.records): every field assignment gives the record
(or replica) a new version, never reused in the process, so a record whose version and whose
replicas' versions are those of the kept text serializes to that text. The document is assembled
from the kept texts exactly as `model_dump_json(indent=1)` lays it out (`services` is the
document's last field; a record nested two levels deep is its own text indented by two spaces), so
the file is byte-for-byte what pydantic writes (tests/reconciler/test_doc_json.py holds it).
"""

from __future__ import annotations

import json

from reconciler.state.records import ServiceRecord, StateDoc, Versions, versions


class DocWriter:
    """`dump(doc)`: the document's indented JSON, re-serializing only records edited since."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[ServiceRecord, Versions, str]] = {}

    def dump(self, doc: StateDoc, exclude: frozenset[str] = frozenset()) -> bytes:
        """`exclude`: document fields left out (the engine compares documents without `serial`
        and `updated_at`); the records' kept texts serve both."""
        head = doc.model_dump_json(indent=1, exclude={"services", *exclude})
        kept = self._records
        parts: list[str] = []
        for name, rec in doc.services.items():
            v = versions(rec)
            got = kept.get(name)
            if got is None or got[0] is not rec or got[1] != v:
                got = kept[name] = (rec, v, rec.model_dump_json(indent=1).replace("\n", "\n  "))
            parts.append(f"  {json.dumps(name, ensure_ascii=False)}: {got[2]}")
        if len(kept) > len(doc.services):
            for name in [n for n in kept if n not in doc.services]:
                del kept[name]
        services = "{\n" + ",\n".join(parts) + "\n }" if parts else "{}"
        assert head.endswith("\n}")  # an object with at least one field (schema_version)
        return f'{head[:-2]},\n "services": {services}\n}}'.encode()
