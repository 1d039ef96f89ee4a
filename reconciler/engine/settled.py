"""Settled services: the per-service work of a pass skipped for services whose inputs did not change.

Why: a pass is level-based (the backends are listed, probes run when due), but most of what it
does per service — targets, the plan, syncing the records, the status line, the routes, the log
lines, the state document's JSON — is a pure function of that service's desired object, its
record and the clock. Over 1,000 services where nothing changed that was ~90 ms of Python per pass.

A service is *settled* when a pass found nothing to do for it: no step, no field change, not
kept, nothing time-dependent (below). The only edits of that pass after its plan were
`sync_records`'s, which never touch replicas and are idempotent, so the record it left is a fixed
point of the pass: a later pass that finds the same inputs would compute the same nothing again
(`Settled.update` says why in more detail). A service is skipped (`clean`) only when

- its desired object is the very object it settled with (the desired set hands back the same
  `DesiredService` for a file that did not change; a new revision, env value, token or setting
  that changes it is a new object), and
- its record's fingerprint (`fingerprint`: the versions of the record and of its replicas,
  reconciler.state.records.Versioned — a new one on every edit, never reused) equals the one it
  settled with: observation, probes, liveness, stats (`in_flight`), stop/start and workers all
  edit the record, and all of that runs before the check; and
- nothing about it depends on the clock: only services with a fixed replica count (no
  autoscaling: its windows are timers), no service backoff, and every replica READY on the current
  spec settle (a draining, failed or starting replica, a backoff or retry has a due time; those
  services are processed every pass as before). The liveness re-probes of READY replicas are
  timers too: a settled service with one due is re-probed before the plan, and stays clean only
  if that left its record as it was (a failing probe edits it).

Still run every pass, for every service: the backends' listings folded into the records
(observe stays level-based: the backend is the truth), the stats, and the check itself (a few
dict lookups and two integers per service). Readiness probes skip settled services (none of
their replicas is starting); liveness re-probes skip those with none due (`Engine._live_oldest`:
each service's oldest probe and interval) and a service re-probed stays settled only if its
record did not change. The state document is serialized only when some fingerprint (or the
document's own fields) differs from when it was last saved or found equal; routes are rebuilt
only when some fingerprint changed; the history is scanned for new log lines only for the
services processed; the schedule (`next_run_in`, `recheck_in`) leaves settled services out,
nothing of theirs being due.

`enabled = False` turns every skip off (the benchmark's "before", and the tests comparing both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.engine.autoscale import ScalingDecision
from reconciler.engine.desired import DesiredService, DesiredSet
from reconciler.engine.plan import Plan, Target
from reconciler.state.records import ReplicaPhase, ServiceRecord, StateDoc, Versions, versions

enabled = True

# A record's version and its replicas' (reconciler.state.records.Versioned), in order.
Fingerprint = Versions
fingerprint = versions  # a record's and its replicas' versions (reconciler.state.records)


def doc_key(doc: StateDoc) -> tuple[object, ...]:
    """The state document's own fields (services aside, serial and updated_at left out as `_dump` does)."""
    snap = doc.last_snapshot
    ref = None if snap is None else (snap.revision, snap.root, snap.config_path, tuple(snap.diagnostics))
    return (doc.schema_version, doc.lineage, doc.journal_seq, ref)


@dataclass(frozen=True)
class Entry:
    desired: DesiredService  # held, so its identity is never reused while the entry lives
    fp: Fingerprint
    revision: str | None  # the desired set's when it settled (`carry` moves it to a new one)
    pair: tuple[Target, ScalingDecision]  # what the pass that settled it decided (taken as it is)


@dataclass
class Settled:
    """The engine's settled services (of one state document) and the fingerprints last saved."""

    doc: StateDoc | None = None
    entries: dict[str, Entry] = field(default_factory=dict)
    # Fingerprints (and doc_key) of the document as it was when `_last_saved` was taken.
    saved: tuple[dict[str, Fingerprint], tuple[object, ...]] | None = None

    def reset(self, doc: StateDoc | None = None) -> None:
        self.doc, self.entries, self.saved = doc, {}, None

    def clean(self, doc: StateDoc, ds: DesiredSet, busy: set[str]) -> dict[str, Entry]:
        """The services this pass may skip: same desired object, same record, not busy. At a new
        revision, an unchanged service's file gives the very same object; its record is moved to
        the revision here (`_carry`), the one edit `sync_records` would make, and it stays settled."""
        if not enabled or doc is not self.doc:
            self.reset(doc)
            return {}
        services, desired = doc.services, ds.services
        clean = {
            name: e
            for name, e in self.entries.items()
            if desired.get(name) is e.desired
            and name not in busy
            and (rec := services.get(name)) is not None
            and fingerprint(rec) == e.fp
        }
        return clean if all(e.revision == ds.revision for e in clean.values()) else self._carry(doc, clean, ds)

    def _carry(self, doc: StateDoc, clean: dict[str, Entry], ds: DesiredSet) -> dict[str, Entry]:
        for name, e in clean.items():
            if e.revision != ds.revision:
                rec = doc.services[name]
                revision = ds.revision_of(e.desired)
                if rec.revision != revision:
                    rec.revision = revision
                self.entries[name] = clean[name] = Entry(e.desired, fingerprint(rec), ds.revision, e.pair)
        return clean

    def update(
        self,
        doc: StateDoc,
        desired: Mapping[str, DesiredService],
        targets: Mapping[str, Target],
        decisions: Mapping[str, ScalingDecision],
        p: Plan,
        after: Mapping[str, Fingerprint],
        dirty: set[str],
        busy: set[str],
        revision: str | None,
    ) -> None:
        """After a pass (`after`: the records' fingerprints now): the services of `dirty` it
        found nothing to do for settle; the others are processed again next pass.

        Why "nothing to do" is enough: for such a service (no step, no field change, not kept,
        a fixed count, nothing time-dependent) the only edits of this pass after the plan are
        `sync_records`'s, which never touch replicas and are idempotent (each field is set to a
        value computed from the desired object, the decision and fields it does not set). So the
        next pass, finding the same record and desired object, would compute the same target,
        an empty plan again, and a sync that changes nothing: this record is a fixed point."""
        if not enabled or doc is not self.doc:
            self.reset(doc if enabled else None)
            return
        acted = {s.service for s in p.steps} | set(p.changes)
        for name in dirty:
            rec, d, t, dec = doc.services.get(name), desired.get(name), targets.get(name), decisions.get(name)
            fp = after.get(name)
            if (
                rec is None or d is None or t is None or dec is None or fp is None
                or name in acted or name in busy or t.keep or d.scaling is not None or not _timeless(rec)
            ):  # fmt: skip
                self.entries.pop(name, None)
                continue
            self.entries[name] = Entry(d, fp, revision, (t, dec))
        if len(self.entries) > len(doc.services):
            for name in [n for n in self.entries if n not in doc.services]:
                del self.entries[name]


def _timeless(rec: ServiceRecord) -> bool:
    """Nothing in the record is due at a time: no backoff, every replica READY on the current spec
    (no drain, retry or readiness deadline) and answering its liveness probes."""
    if rec.backoff_until is not None or rec.unrouted_at is not None:
        return False
    return all(
        r.phase is ReplicaPhase.READY and r.spec_hash == rec.spec_hash and not r.probe_failures
        for r in rec.replicas
    )
