"""The rows `tidegate ps` shows (and prints with --json): from the state's status views, or from a
remote tidegate's control API overview.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidegate.control_client import ControlClient

if TYPE_CHECKING:
    from reconciler.cli.settings import Settings
    from reconciler.state.view import ServiceView


def service_rows(views: list[ServiceView], settings: Settings) -> list[dict[str, Any]]:
    """`ps` rows (also its --json): status views plus the URL the gateway serves each at."""
    rows = []
    for v in views:
        reason = v.reason
        for r in v.replicas:
            if r.last_error and not reason:
                reason = f"{r.id}: {r.last_error}"
        if v.diagnostics:  # the first error of its file, so `ps` alone says what to fix
            more = f" (+{len(v.diagnostics) - 1} more: `tidegate ps --json`)" if len(v.diagnostics) > 1 else ""
            reason = f"{reason}: {v.diagnostics[0]}{more}" if reason else v.diagnostics[0] + more
        rows.append(
            {
                "name": v.name,
                "revision": v.revision,
                "ready": v.ready,
                "desired": 0 if v.stopped else v.desired,
                "url": f"http://{v.host}:{settings.listen_port}" if v.host else None,
                "status": v.status,
                "reason": reason,
                "scaling": v.last_scaling,
                "scaling_history": list(v.scaling_history),
                "scaling_pending": v.scaling_pending,
                "diagnostics": list(v.diagnostics),
                "cost_per_hour": round(v.cost_per_hour, 4),
                "replicas": [
                    {
                        "id": r.id,
                        "ordinal": r.ordinal,
                        "phase": r.phase,
                        "current": r.current,
                        "address": r.address,
                        "attempts": r.attempts,
                        "error": r.last_error,
                        "probe_failures": r.probe_failures,
                        "probe_passes": r.probe_passes,
                        "log_tail": list(r.log_tail),
                        "offer": r.offer,
                        "price": r.price,
                        "machine": r.machine,
                    }
                    for r in v.replicas
                ],
            }
        )
    return rows


def remote_ps(client: ControlClient) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], list[str]]:
    """(source, ps rows, preview decision, config problems) from a remote control API's overview."""
    ov = client.call("GET", "/overview")
    rows = [
        {
            "name": s["name"],
            "revision": s["revision"],
            "ready": s["ready"],
            "desired": s["desired"],
            "url": s["url"],
            "status": s["status"],
            "reason": s["reason"],
            "scaling": None,
            "cost_per_hour": s["cost_per_hour"],
            "replicas": [],
        }
        for s in ov["services"]
    ]
    src = {"source": ov["source"], "revision": ov["revision"], "error": ov["source_error"]}
    previews = ov["previews"]
    decision = {
        "previews": [{**p, "model": None} for p in previews["previews"]],
        "rejected": previews["rejected"],
    }
    config = [f"{v['path']}:{v['line']}:{v['column']}: {v['message']}" for v in ov.get("validation", [])]
    return src, rows, decision, config

