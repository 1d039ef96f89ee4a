"""The plan as GitHub-flavoured markdown: what a PR would change in production, for one PR comment.

Why this module exists: reviewers of a config repository approve a deployment, not a YAML diff.
`tidegate plan --format markdown` prints this; the example workflow posts it as ONE comment that
each push edits (found again by `PLAN_COMMENT_MARKER`). The page says which services would be
created, updated (with the fields that change, before and after), scaled or deleted, their replica
counts, the hourly price of the chosen cloud offer when there is one, and every config error —
because a broken file in a PR is exactly what the comment must not hide.

`baseline_plan` answers the question a PR comment asks when no production state is at hand (in CI):
GitOps says production runs the base branch, so the PR's desired set is planned against records
made from the base branch's desired set, every replica ready. That is exactly the PR's change.

Pure: a PlanResult in, a string out. Nothing secret reaches it (env values are summarised by name
and a salted hash upstream), and every user-supplied value is escaped for markdown tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.engine.plan import Action, Desired, FieldChange, Plan, Target, plan
from reconciler.state.records import ReplicaPhase, ReplicaRecord, ServiceRecord

if TYPE_CHECKING:
    from reconciler.engine.desired import DesiredService, DesiredSet
    from reconciler.engine.values import PlanResult

PLAN_COMMENT_MARKER = "<!-- tidegate-plan -->"
MAX_CELL = 80
NONE = "-"
_SCALE_ACTIONS = {Action.ADD_REPLICA, Action.DRAIN_REPLICA, Action.REMOVE_REPLICA}
_ROLL_ACTIONS = {Action.REPLACE_REPLICA, Action.RESTART_REPLICA}


@dataclass(frozen=True)
class ServiceRow:
    verb: str  # create | update | scale | restart | delete
    name: str
    replicas: str
    price: str
    changed: tuple[str, ...]


def cell(value: str | None, limit: int = MAX_CELL) -> str:
    """One markdown table cell: pipes escaped, newlines flattened, long values cut."""
    if value is None or value == "":
        return NONE
    text = " ".join(value.split()).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _replicas(d: DesiredService | None, changes: Sequence[FieldChange]) -> str:
    for c in changes:
        if c.field == "replicas":
            return f"{c.old} → {c.new}" if c.old is not None else str(c.new)
    if d is None:
        return NONE
    return str(d.min_replicas) if d.min_replicas == d.max_replicas else f"{d.min_replicas}..{d.max_replicas}"


def _price(d: DesiredService | None) -> str:
    offer = d.template.offer if d is not None else None
    if offer is None or offer.price <= 0:
        return NONE
    kind = "spot" if offer.spot else "on-demand"
    return f"${offer.price:.2f}/h per replica ({offer.backend} {offer.instance_type}, {kind})"


def rows(plan: Plan, services: Mapping[str, DesiredService]) -> list[ServiceRow]:
    """One row per service the plan touches, in the plan's order."""
    out: list[ServiceRow] = []
    for name in plan.services():
        actions = {s.action for s in plan.for_service(name)}
        changes = plan.changes.get(name, ())
        d = services.get(name)
        if Action.DELETE_SERVICE in actions or Action.UNROUTE_SERVICE in actions:
            verb = "delete"
        elif Action.CREATE_SERVICE in actions:
            verb = "create"
        elif actions & _SCALE_ACTIONS and {c.field for c in changes} <= {"replicas"}:
            verb, changes = "scale", ()  # a new fixed count: the scale steps say it all
        elif changes:
            verb = "update"
        elif actions & _ROLL_ACTIONS:
            verb = "restart"
        elif actions & _SCALE_ACTIONS:
            verb = "scale"
        else:  # pragma: no cover - every Action is handled above
            verb = "change"
        replicas = NONE if verb == "delete" else _replicas(d, changes)
        if verb == "scale" and replicas != NONE:
            replicas = f"→ {replicas}"  # the count moves; the plan does not carry the current one
        shown = () if verb == "create" else tuple(c.field for c in changes)
        out.append(ServiceRow(verb, name, replicas, NONE if verb == "delete" else _price(d), shown))
    return out


# GitHub emoji shortcodes: readable in a terminal, rendered on github.com.
_ICONS = {
    "create": ":sparkles:",
    "update": ":arrows_counterclockwise:",
    "scale": ":arrow_up_down:",
    "restart": ":recycle:",
    "delete": ":wastebasket:",
    "change": ":small_blue_diamond:",
}


def _headline(table: Sequence[ServiceRow]) -> str:
    counts: dict[str, int] = {}
    for r in table:
        counts[r.verb] = counts.get(r.verb, 0) + 1
    order = ("create", "update", "scale", "restart", "delete")
    parts = [f"{counts[v]} to {v}" for v in order if counts.get(v)]
    return " · ".join(parts)


def _hourly_total(services: Mapping[str, DesiredService]) -> float:
    total = 0.0
    for d in services.values():
        offer = d.template.offer
        if offer is not None and offer.price > 0:
            total += offer.price * max(d.min_replicas, 1 if d.max_replicas else 0)
    return total


def render(result: PlanResult, *, marker: bool = True, title: str = "tidegate plan") -> str:
    """The whole comment body. `marker` puts PLAN_COMMENT_MARKER first so the comment can be found."""
    plan = result.plan
    desired = result.desired
    services: Mapping[str, DesiredService] = desired.services if desired is not None else {}
    lines: list[str] = []
    if marker:
        lines.append(PLAN_COMMENT_MARKER)
    rev = f" · revision `{result.revision[:12]}`" if result.revision else ""
    lines.append(f"### {title}{rev}")
    lines.append("")
    table = rows(plan, services)
    if table:
        lines.append(f"**{_headline(table)}**")
        lines.append("")
        lines.append("| | Service | Replicas | Price | Changed |")
        lines.append("|---|---|---|---|---|")
        for r in table:
            changed = ", ".join(f"`{cell(f, 40)}`" for f in r.changed) or NONE
            lines.append(
                f"| {_ICONS[r.verb]} {r.verb} | `{cell(r.name, 63)}` | {cell(r.replicas)} | {cell(r.price)} | {changed} |"
            )
        lines.append("")
    elif result.exit_code == 1:
        lines.append("**Nothing can be applied yet:** fix the problems below.")
        lines.append("")
    else:
        lines.append("**No changes.** Production already matches this revision.")
        lines.append("")

    total = _hourly_total(services)
    if total > 0:
        lines.append(f"Estimated cost at minimum replicas: **${total:.2f}/h**.")
        lines.append("")

    detailed = [(r.name, plan.changes.get(r.name, ())) for r in table if r.verb in ("create", "update")]
    detailed = [(n, ch) for n, ch in detailed if ch]
    if detailed:
        lines.append("<details><summary>What changes</summary>")
        lines.append("")
        for name, changes in detailed:
            lines.append(f"#### `{cell(name, 63)}`")
            lines.append("")
            lines.append("| Field | Before | After |")
            lines.append("|---|---|---|")
            for c in changes:
                lines.append(f"| {cell(c.field, 40)} | {cell(c.old)} | {cell(c.new)} |")
            lines.append("")
        lines.append("</details>")
        lines.append("")

    warnings = sorted(desired.warnings.items()) if desired is not None else []
    if warnings:
        lines.append("#### :warning: Warnings")
        lines.append("")
        lines.extend(f"- `{cell(name, 63)}`: {cell(why, 300)}" for name, why in warnings)
        lines.append("")

    problems = _problems(result)
    if problems:
        lines.append("#### :x: Problems")
        lines.append("")
        lines.extend(f"- {p}" for p in problems)
        lines.append("")

    if result.diagnostics:
        lines.append("<details><summary>Diagnostics</summary>")
        lines.append("")
        lines.append("```")
        lines.extend(d.replace("```", "'''") for d in result.diagnostics)
        lines.append("```")
        lines.append("")
        lines.append("</details>")
        lines.append("")

    notes = list(dict.fromkeys(result.notes))
    if notes:
        lines.append("#### Notes")
        lines.append("")
        lines.extend(f"- {cell(n, 300)}" for n in notes)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _problems(result: PlanResult) -> list[str]:
    desired = result.desired
    if desired is None:
        return []
    out = [f"`{cell(name, 63)}`: `{cell(path, 120)}` has errors; the running service is left as it is"
           for name, path in sorted(desired.failed.items())]
    out += [f"`{cell(name, 63)}`: cannot be deployed: {cell(why, 300)}" for name, why in sorted(desired.blocked.items())]
    return out


def baseline_plan(base: DesiredSet, head: DesiredSet, now: float = 0.0) -> Plan:
    """The plan that takes a deployment of `base` (every replica ready, at minimum count) to `head`.
    Services failing or blocked in `head` are kept as they are, as the engine would keep them."""
    actual: dict[str, ServiceRecord] = {}
    for name, d in base.services.items():
        replicas = [
            ReplicaRecord(
                id=d.spec_for(i).replica_id, service=name, spec_hash=d.spec_hash, ordinal=i,
                backend=d.backend, phase=ReplicaPhase.READY,
            )
            for i in range(d.min_replicas)
        ]
        actual[name] = ServiceRecord(
            name=name, spec_hash=d.spec_hash, spec_summary=dict(d.summary), desired_count=d.min_replicas,
            replicas=replicas,
        )
    targets: dict[str, Target] = {}
    for name, d in head.services.items():
        targets[name] = Target(name, d.spec_hash, d.min_replicas, summary=d.summary)
    for name, why in [*head.failed.items(), *head.blocked.items()]:
        if name in actual and name not in targets:
            rec = actual[name]
            targets[name] = Target(name, rec.spec_hash, rec.desired_count, keep=True, keep_reason=why)
    return plan(Desired(targets, prune=not head.empty), actual, now)
