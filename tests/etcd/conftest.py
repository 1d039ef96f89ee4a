"""The etcd cluster fixtures (tests/support/etcd_cluster.py) for the shared-state tests."""

from tests.support.etcd_cluster import etcd_cluster, own_etcd_cluster

__all__ = ["etcd_cluster", "own_etcd_cluster"]
