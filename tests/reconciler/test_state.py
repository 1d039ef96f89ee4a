"""State store (lock, atomic writes, serial, lineage, installation) and the journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reconciler.engine.naming import parse_replica_id, replica_id
from reconciler.state.errors import StaleStateError, StateError, StateLockedError
from reconciler.state.journal import Journal, Op
from reconciler.state.records import ServiceRecord
from reconciler.state.store import StateStore


def test_fresh_state_then_serial_bumps_and_lineage_is_kept(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.acquire()
    doc = store.load()
    assert doc.serial == 0 and doc.lineage
    doc.services["web"] = ServiceRecord(name="web", spec_hash="x")
    store.save(doc)
    store.save(doc)
    raw = json.loads((tmp_path / "state.json").read_text())
    assert raw["serial"] == 2 and raw["lineage"] == doc.lineage and raw["schema_version"] == 1
    again = StateStore(tmp_path).load()
    assert again.services["web"].spec_hash == "x" and again.lineage == doc.lineage
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"


def test_save_refuses_other_lineage_and_older_serial(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.acquire()
    doc = store.load()
    store.save(doc)
    stale = doc.model_copy(deep=True)
    store.save(doc)  # disk is now at serial 2
    with pytest.raises(StaleStateError, match="moved on"):
        store.save(stale.model_copy(update={"serial": 0}))
    other = doc.model_copy(update={"lineage": "someone-else"})
    with pytest.raises(StaleStateError, match="lineage"):
        store.save(other)


def test_write_requires_lock_and_reads_do_not(tmp_path: Path) -> None:
    owner = StateStore(tmp_path)
    owner.acquire()
    owner.save(owner.load())
    reader = StateStore(tmp_path)
    assert reader.load().serial == 1  # ps / plan read without the lock
    with pytest.raises(StateError, match="acquire"):
        reader.save(reader.load())


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"schema_version": 99, "lineage": "x"}))
    with pytest.raises(StateError, match="schema_version 99"):
        StateStore(tmp_path).load()


def test_second_owner_is_refused_naming_the_holder_process(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time
        from reconciler.state.store import StateStore
        s = StateStore({str(tmp_path)!r}); s.acquire(); print("locked", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(StateLockedError) as err:
            StateStore(tmp_path).acquire()
        assert f"pid={proc.pid}" in str(err.value)
        assert StateStore(tmp_path).holder() is not None
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    # The holder died: the lock is free again (flock dies with the process).
    s = StateStore(tmp_path)
    assert s.holder() is None
    s.acquire()
    s.release()


def test_installation_is_created_once(tmp_path: Path) -> None:
    a = StateStore(tmp_path).installation()
    b = StateStore(tmp_path).installation()
    assert a == b and a.id.startswith("tg-") and len(a.salt) == 32


@pytest.mark.parametrize(
    ("service", "ordinal"),
    [
        pytest.param("web", 0, id="short"),
        pytest.param("Some_Service.Name", 3, id="unsafe-chars"),
        pytest.param("x" * 80, 12, id="long-name-trimmed"),
    ],
)
def test_replica_ids_are_dns_labels_and_parse_back(service: str, ordinal: int) -> None:
    rid = replica_id(service, "0123456789abcdef", ordinal)
    assert len(rid) <= 63 and rid == rid.lower() and all(c.isalnum() or c == "-" for c in rid)
    parsed = parse_replica_id(rid)
    assert parsed is not None and parsed.spec_hash8 == "01234567" and parsed.ordinal == ordinal


def test_journal_open_intents_and_outcomes(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    a = j.intent(Op.CREATE, "web-aaaaaaaa-0", "web", "local", 1.0)
    j.outcome(a, "ok", 2.0)
    j.intent(Op.DELETE, "web-aaaaaaaa-1", "web", "local", 3.0)
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"seq": 99, "kind": "intent", "op": "cre')  # torn last line from a crash
    j2 = Journal(tmp_path)
    assert j2.seq == 3
    pending = j2.intents_after(0)
    assert [(i.replica, i.outcome) for i in pending] == [("web-aaaaaaaa-0", "ok"), ("web-aaaaaaaa-1", None)]
    # Entries at or before the state's seq only come back while still open.
    assert [i.replica for i in j2.intents_after(3)] == ["web-aaaaaaaa-1"]


def test_journal_compaction_keeps_open_intents_and_sequence(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    for i in range(10):
        iid = j.intent(Op.CREATE, f"web-aaaaaaaa-{i}", "web", "local", float(i))
        j.outcome(iid, "ok", float(i))
    j.intent(Op.CREATE, "web-aaaaaaaa-99", "web", "local", 50.0)
    assert j.compact(upto_seq=j.seq, force=True)
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the sequence mark + the open intent
    j2 = Journal(tmp_path)
    assert j2.seq == 21
    assert [i.replica for i in j2.intents_after(j2.seq)] == ["web-aaaaaaaa-99"]
    os.remove(tmp_path / "journal.jsonl")
