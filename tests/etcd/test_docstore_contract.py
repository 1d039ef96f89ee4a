"""The state store contract, run against both implementations: the directory and etcd (real cluster)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from reconciler.state.docstore import DirStore, DocStore
from reconciler.state.errors import StateError
from reconciler.state.etcd_store import EtcdStore
from tests.support.etcd_cluster import EtcdCluster
from tidegate.etcd import EtcdClient, EtcdLocation


@pytest.fixture(params=["dir", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DocStore:
    if request.param == "dir":
        return DirStore(tmp_path / "state")
    cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
    return EtcdStore(EtcdClient(EtcdLocation.parse(cluster.url())))


def test_get_of_a_missing_document_is_none(store: DocStore) -> None:
    assert store.get("state.json") is None
    assert store.list("journal/") == {}


def test_put_then_get_returns_the_bytes_and_put_replaces(store: DocStore) -> None:
    store.put("state.json", b'{"serial": 1}')
    assert store.get("state.json") == b'{"serial": 1}'
    store.put("state.json", b'{"serial": 2}')
    assert store.get("state.json") == b'{"serial": 2}'


def test_binary_and_empty_bodies_survive(store: DocStore) -> None:
    body = bytes(range(256))
    store.put("blob", body)
    store.put("empty", b"")
    assert store.get("blob") == body
    assert store.get("empty") == b""


def test_list_is_sorted_and_keeps_to_its_prefix(store: DocStore) -> None:
    for seq in (3, 1, 2):
        store.put(f"journal/{seq:012d}", f"entry {seq}".encode())
    store.put("journalx", b"not under the prefix")
    store.put("signals/a.json", b"{}")
    listed = store.list("journal/")
    assert list(listed) == [f"journal/{s:012d}" for s in (1, 2, 3)]
    assert listed["journal/000000000002"] == b"entry 2"


def test_create_only_when_absent(store: DocStore) -> None:
    assert store.create("installation.json", b"first") is True
    assert store.create("installation.json", b"second") is False
    assert store.get("installation.json") == b"first"


def test_concurrent_creators_agree_on_one_winner(store: DocStore) -> None:
    wins: list[str] = []
    barrier = threading.Barrier(4)

    def creator(who: str) -> None:
        barrier.wait()
        if store.create("installation.json", who.encode()):
            wins.append(who)

    threads = [threading.Thread(target=creator, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get("installation.json") == wins[0].encode()


def test_delete_removes_and_absent_is_fine(store: DocStore) -> None:
    store.put("signals/x.json", b"{}")
    store.delete("signals/x.json")
    store.delete("signals/x.json")
    assert store.get("signals/x.json") is None
    assert store.list("signals/") == {}


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", ".hidden", "a//b"])
def test_invalid_names_are_refused(store: DocStore, name: str) -> None:
    with pytest.raises(StateError, match="invalid document name"):
        store.put(name, b"x")


def test_directory_store_keeps_todays_files(tmp_path: Path) -> None:
    """The directory implementation is the state dir as it always was: a document is its file."""
    store = DirStore(tmp_path)
    store.put("routes.json", b"{}")
    store.put("signals/1-wake.json", b"{}")
    assert (tmp_path / "routes.json").read_bytes() == b"{}"
    assert (tmp_path / "signals" / "1-wake.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "signals").stat().st_mode & 0o777 == 0o700
