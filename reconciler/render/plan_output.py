"""`tidegate plan` output: the engine's PlanResult the way `terraform plan` shows it, and as JSON.

Pure formatting (values in, text out). One line per service with `+` (create), `~` (change:
replicas added, replaced, restarted, drained) or `-` (delete), the changed spec fields under it,
blocked and broken services with their reason, then the counts. Spec summaries never hold env
values (the engine summarises env as names + a salted hash), so nothing secret is printed.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from reconciler.config.diagnostics import Diagnostic
from reconciler.engine.plan import Action, Plan, Step
from reconciler.state.records import offer_label

_VERBS = {
    Action.CREATE_SERVICE: "create service",
    Action.ADD_REPLICA: "add replica",
    Action.REPLACE_REPLICA: "replace replica (rolling)",
    Action.RESTART_REPLICA: "restart replica",
    Action.DRAIN_REPLICA: "drain replica",
    Action.REMOVE_REPLICA: "remove replica",
    Action.UNROUTE_SERVICE: "unroute service (replicas stop once drained)",
    Action.DELETE_SERVICE: "delete service",
}


def symbol(steps: list[Step]) -> str:
    actions = {s.action for s in steps}
    if Action.CREATE_SERVICE in actions:
        return "+"
    if Action.DELETE_SERVICE in actions or Action.UNROUTE_SERVICE in actions:
        return "-"
    return "~"


def _describe(steps: list[Step]) -> str:
    counts = Counter(s.action for s in steps if s.action not in (Action.CREATE_SERVICE, Action.DELETE_SERVICE, Action.UNROUTE_SERVICE))
    parts = [f"{n} x {_VERBS[a]}" if n > 1 else _VERBS[a] for a, n in counts.items()]
    return ", ".join(parts)


_STARTS = (Action.CREATE_SERVICE, Action.ADD_REPLICA, Action.REPLACE_REPLICA, Action.RESTART_REPLICA)


def _offer_line(steps: list[Step], desired: Any) -> str | None:
    """`offer: aws us-east-1 p4d.24xlarge on-demand, $32.77/h per replica (+2 replicas: $65.54/h)`."""
    offer = getattr(getattr(desired, "template", None), "offer", None)
    if offer is None or offer.price <= 0:
        return None
    new = sum(1 for s in steps if s.action in _STARTS and s.replica)
    line = f"      offer: {offer_label(offer)}, ${offer.price:.2f}/h per replica"
    if new:
        line += f" (+{new} replica{'s' if new > 1 else ''}: ${offer.price * new:.2f}/h)"
    return line


def render_plan(result: Any) -> str:
    """Text for a `reconciler.engine.reconcile.PlanResult` (typed loosely: only its documented fields are read)."""
    p: Plan = result.plan
    desired = result.desired
    lines = [f"revision {str(result.revision or '-')[:12]}", ""]
    totals = Counter[str]()
    for name in p.services():
        steps = p.for_service(name)
        mark = symbol(steps)
        totals[mark] += 1
        what = _describe(steps)
        head = {"+": "create", "-": "delete", "~": "update"}[mark]
        lines.append(f"  {mark} {name}: {head}" + (f" ({what})" if what else ""))
        for change in p.changes.get(name, ()):
            lines.append(f"      {change.field}: {change.old or '(none)'} -> {change.new or '(none)'}")
        offer_line = _offer_line(steps, desired.services.get(name) if desired is not None else None)
        if offer_line:
            lines.append(offer_line)
        reasons = sorted({s.reason for s in steps if s.reason})
        for reason in reasons[:3]:
            lines.append(f"      why: {reason}")
    if desired is not None:
        for name, why in sorted(desired.warnings.items()):
            lines.append(f"  warning: {name}: {why}")
        for name, why in sorted(desired.blocked.items()):
            lines.append(f"  ! {name}: blocked: {_one_line(why)}")
        for name, path in sorted(desired.failed.items()):
            lines.append(f"  ! {name}: {path} has errors; the running service is kept as it is")
    problems = desired.problems if desired is not None else ()
    if problems:  # each with its own severity: a profile warning is not an error
        lines += [f"  {d.severity}: {d.format()}" for d in problems]
    else:
        lines += [f"  error: {diag}" for diag in result.diagnostics]
    for note in result.notes:
        lines.append(f"  note: {note}")
    if p.empty and result.exit_code == 1:
        lines.append("Nothing to apply, but the configuration has errors (above): fix them and plan again.")
    elif p.empty:
        lines.append("No changes. The deployed services match the configuration.")
    else:
        lines.append("")
        lines.append(f"Plan: {totals['+']} to create, {totals['~']} to change, {totals['-']} to delete.")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def typed(field: str, value: str | None) -> Any:
    """A summary value as JSON wants it: numbers as numbers, resources/probes/limits as objects,
    lists as lists (summaries hold strings so the plan can diff them)."""
    if value is None:
        return None
    try:
        if field in ("resources", "probes", "rate_limits", "scaling"):
            return json.loads(value)
        if field == "port":
            return int(value)
        if field == "max_price":
            return float(value)
        if field == "auth":
            return value == "true"
        if field == "replicas":
            low, sep, high = value.partition("..")
            return {"min": int(low or 0), "max": int(high)} if sep else int(value)
        if field in ("env", "regions"):
            return [v for v in value.split(", ") if v]
    except ValueError:
        return value
    return value


def _diagnostic(d: Diagnostic) -> dict[str, Any]:
    return {
        "file": d.path,
        "line": d.line,
        "column": d.column,
        "field": d.field,
        "message": d.message,
        "severity": str(d.severity),
    }


def plan_json(result: Any) -> dict[str, Any]:
    """`plan --json`: typed field values, diagnostics as objects, why each failed/blocked service
    is not deployed."""
    p: Plan = result.plan
    desired = result.desired
    problems: tuple[Diagnostic, ...] = desired.problems if desired is not None else ()
    failed = {
        name: {
            "file": path,
            "reasons": [d.message for d in problems if d.path == path and d.severity == "error"]
            or ["the file has errors"],
        }
        for name, path in (desired.failed.items() if desired is not None else ())
    }
    return {
        "revision": result.revision,
        "changes": not p.empty,
        "services": {
            name: {
                "action": {"+": "create", "-": "delete", "~": "update"}[symbol(p.for_service(name))],
                "steps": [
                    {"action": str(s.action), "replica": s.replica, "replaces": s.replaces, "reason": s.reason}
                    for s in p.for_service(name)
                ],
                "fields": [
                    {"field": c.field, "old": typed(c.field, c.old), "new": typed(c.field, c.new)}
                    for c in p.changes.get(name, ())
                ],
                "offer": _offer_json(desired.services.get(name) if desired is not None else None),
            }
            for name in p.services()
        },
        "blocked": dict(desired.blocked) if desired is not None else {},
        "warnings": dict(desired.warnings) if desired is not None else {},
        "failed": failed,
        "diagnostics": [_diagnostic(d) for d in problems]
        if problems or not result.diagnostics
        else [{"message": m} for m in result.diagnostics],
        "notes": list(result.notes),
        "exit_code": result.exit_code,
    }


def _offer_json(d: Any) -> dict[str, Any] | None:
    offer = getattr(getattr(d, "template", None), "offer", None)
    if offer is None:
        return None
    return {
        "backend": offer.backend,
        "region": offer.region,
        "instance_type": offer.instance_type,
        "spot": offer.spot,
        "price_per_hour": offer.price,
    }


def render_report(report: Any) -> str:
    """`tidegate apply`'s summary of a `reconciler.engine.reconcile.PassReport`."""
    p = report.plan
    lines = [f"revision {str(report.revision or '-')[:12]}: {len(p.steps)} step(s) applied"]
    for name in p.services():
        lines.append(f"  {symbol(p.for_service(name))} {name}")
    lines += [f"  error: {e}" for e in report.errors]
    lines += [f"  note: {n}" for n in report.notes]
    if report.next_run_in is not None:
        lines.append("  (replicas are still starting: `tidegate ps` shows progress; `tidegate up` keeps going)")
    return "\n".join(lines)
