"""The leader's link to etcd: fenced journal and state, takeover pull, signals and stats between machines."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reconciler.engine.stats import read_stats
from reconciler.state.etcd_store import EtcdStore, FencedOut
from reconciler.state.etcd_sync import FencedJournal, FencedStateStore, LeaderSync
from reconciler.state.journal import Journal, Op
from reconciler.state.leader import Leadership
from tests.etcd.gateways import GatewayProc
from tests.support.etcd_cluster import EtcdCluster
from tidegate.etcd import EtcdClient, EtcdLocation
from tidegate.signals import drain_signals, send_signal


def lead(url: str, node: str) -> tuple[Leadership, EtcdStore]:
    client = EtcdClient(EtcdLocation.parse(url))
    leadership = Leadership(client, node=node, ttl=5)
    assert leadership.try_acquire()
    return leadership, EtcdStore(client, leadership.fence)


def test_journal_entries_reach_etcd_before_the_file_and_a_new_leader_settles_from_them(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    url = etcd_cluster.url()
    first, shared = lead(url, "first")
    a_dir = tmp_path / "a"
    journal = FencedJournal(a_dir, shared)
    done = journal.intent(Op.CREATE, "web-1-0", "web", "local", 1.0)
    journal.outcome(done, "ok", 1.1)
    open_id = journal.intent(Op.CREATE, "web-1-1", "web", "local", 2.0)  # the leader dies here
    first.resign()

    second, shared2 = lead(url, "second")
    try:
        b_dir = tmp_path / "b"
        LeaderSync(b_dir, shared2, "b").pull()
        pulled = Journal(b_dir)
        assert pulled.seq == journal.seq == 3
        assert [(i.intent_id, i.outcome) for i in pulled.intents_after(0)] == [(done, "ok"), (open_id, None)]

        # The old leader wakes: its next intent is refused and never reaches its own file either.
        lines = (a_dir / "journal.jsonl").read_bytes()
        with pytest.raises(FencedOut):
            journal.intent(Op.DELETE, "web-1-0", "web", "local", 3.0)
        assert (a_dir / "journal.jsonl").read_bytes() == lines

        # Compaction on the new leader keeps the sequence for the next one (a mark on etcd).
        fenced = FencedJournal(b_dir, shared2)
        fenced.outcome(open_id, "settled", 4.0)
        assert fenced.compact(fenced.seq, force=True)
        LeaderSync(tmp_path / "c", shared2, "c").pull()
        assert Journal(tmp_path / "c").seq == fenced.seq
        assert Journal(tmp_path / "c").intents_after(fenced.seq) == []
    finally:
        second.resign()


def test_state_saves_are_fenced_and_pulled_by_the_next_leader(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    url = etcd_cluster.url()
    first, shared = lead(url, "first")
    store = FencedStateStore(tmp_path / "a", shared)
    store.acquire()
    doc = store.load()
    saved = store.save(doc)
    first.resign()
    with pytest.raises(FencedOut):
        store.save(saved)
    with pytest.raises(FencedOut):
        store.check(saved)
    store.release()
    second, shared2 = lead(url, "second")
    try:
        LeaderSync(tmp_path / "b", shared2, "b").pull()
        pulled = json.loads((tmp_path / "b" / "state.json").read_bytes())
        assert pulled["lineage"] == saved.lineage and pulled["serial"] == saved.serial
    finally:
        second.resign()


def test_a_gateways_signals_and_stats_reach_the_leader(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    url = etcd_cluster.url()
    gw = GatewayProc(url, tmp_path / "gw", tmp_path / "gw.log")
    leadership, shared = lead(url, "leader")
    try:
        gw.wait_ready()
        send_signal(tmp_path / "gw", "wake", {"source": "hook"})
        sync = LeaderSync(tmp_path / "leader", shared, "leader-machine")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (sync.pull_signals() and True):
            time.sleep(0.1)
        got = drain_signals(tmp_path / "leader")
        assert [s["kind"] for s in got] == ["wake"] and got[0]["source"] == "hook"
        assert not list((tmp_path / "gw" / "signals").glob("*.json"))  # moved, not copied

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not list((tmp_path / "leader" / "gateway").glob("stats-remote-*.json")):
            sync.pull_stats()
            time.sleep(0.2)
        remote = list((tmp_path / "leader" / "gateway").glob("stats-remote-*.json"))
        assert len(remote) == 1
        assert json.loads(remote[0].read_bytes())["pid"] == gw.proc.pid
        assert read_stats(tmp_path / "leader", time.time()) == {}  # no traffic yet, but read fresh
    finally:
        leadership.resign()
        gw.close()
