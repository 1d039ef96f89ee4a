"""The etcd fixtures (tests/support/etcd_cluster.py, tests/support/etcd_secure.py) for the shared-state tests."""

from tests.support.etcd_cluster import etcd_cluster, own_etcd_cluster
from tests.support.etcd_secure import etcd_auth, etcd_pki, etcd_tls

__all__ = ["etcd_auth", "etcd_cluster", "etcd_pki", "etcd_tls", "own_etcd_cluster"]
