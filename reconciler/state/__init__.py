"""What the reconciler remembers: the state directory store, the intent journal, the records
kept in state.json, secret redaction, the error hierarchy, and the views derived from the records
(routes snapshot, `ps` rows), and copies of the state document (a deep copy, a copy-on-write scratch).
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("doc_copy", "errors", "etcd_store", "etcd_sync", "journal", "leader", "records", "redact", "store", "view")
