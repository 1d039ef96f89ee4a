"""The service page's chart: rps and ready replicas over time, scaling decisions marked. Pure SVG text."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from reconciler.control.models import SamplePoint, ScalingOut

W, H, PAD = 720, 200, 32
MIN_SPAN, MAX_SPAN = 120.0, 3600.0


def rps_chart(
    series: Sequence[SamplePoint], decisions: Sequence[ScalingOut], now: float, span: float | None = None
) -> str:
    """An inline `<svg>`: rps (line, left axis), ready replicas (steps, right axis), one marker per
    scaling decision inside the window (its reason as the marker's tooltip). The window is the last
    hour, or less while fewer samples exist (two minutes at least), so a fresh `up` shows a curve."""
    if span is None:
        oldest = min((p.at for p in series), default=now)
        span = min(MAX_SPAN, max(MIN_SPAN, now - oldest))
    start = now - span
    points = [p for p in series if p.at >= start]
    max_rps = max([p.rps for p in points] + [1.0])
    max_rep = max([p.ready for p in points] + [d.count for d in decisions if d.at >= start] + [1])

    def x(t: float) -> float:
        return PAD + (t - start) / span * (W - 2 * PAD)

    def y(v: float, top: float) -> float:
        return H - PAD - v / top * (H - 2 * PAD)

    parts = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="requests per second and ready replicas">',
        f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" class="frame"/>',
        f'<text x="4" y="{PAD - 8}" class="axis rps">{max_rps:.3g} rps</text>',
        f'<text x="{W - 4}" y="{PAD - 8}" class="axis replicas" text-anchor="end">{max_rep} replicas</text>',
        f'<text x="{PAD}" y="{H - 8}" class="axis">-{span / 60:.0f} min</text>',
        f'<text x="{W - PAD}" y="{H - 8}" class="axis" text-anchor="end">now</text>',
    ]
    if points:
        line = " ".join(f"{x(p.at):.1f},{y(p.rps, max_rps):.1f}" for p in points)
        parts.append(f'<polyline class="rps" points="{line}"/>')
        steps: list[str] = []
        for i, p in enumerate(points):
            if i:
                steps.append(f"{x(p.at):.1f},{y(points[i - 1].ready, max_rep):.1f}")
            steps.append(f"{x(p.at):.1f},{y(p.ready, max_rep):.1f}")
        parts.append(f'<polyline class="replicas" points="{" ".join(steps)}"/>')
    else:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" class="axis" text-anchor="middle">collecting samples…</text>')
    for d in decisions:
        if d.at < start:
            continue
        cx = x(d.at)
        parts.append(
            f'<g class="decision"><title>{escape(f"{d.previous} -> {d.count}: {d.reason}")}</title>'
            f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{PAD}" y2="{H - PAD}"/>'
            f'<text x="{cx + 3:.1f}" y="{PAD + 12}">{d.previous}→{d.count}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
