"""What the reconciler remembers: the state directory store, the intent journal, the records
kept in state.json, secret redaction, the error hierarchy, and the views derived from the records
(routes snapshot, `ps` rows).
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("errors", "journal", "records", "redact", "store", "view")
