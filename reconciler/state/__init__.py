"""What the reconciler remembers: the state directory store, the intent journal, the records
kept in state.json, secret redaction, the error hierarchy, and the views derived from the records
(routes snapshot, `ps` rows).
"""
