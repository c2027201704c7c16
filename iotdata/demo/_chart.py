"""The demo's chart: a self-contained HTML page of inline SVG, no dependencies.

Per device: its readings (grey line), the one-minute window means (blue steps), the injected
anomalies (shaded, coloured by kind) and the alerts the pipeline raised (red marks).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import attrs

from iotdata.device import Anomaly

__all__ = ["DeviceSeries", "write_chart"]

WIDTH, HEIGHT = 960, 210
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 30
MINUTE = 60_000_000
KIND_COLOURS = {
    "spike": "#f4a261",
    "level_shift": "#e9c46a",
    "stuck": "#8ab17d",
    "dropout": "#b8b8d1",
}
ALERT_COLOUR = "#d62828"


@attrs.frozen
class DeviceSeries:
    """What one panel shows (times in microseconds)."""

    device_id: str
    readings: list[tuple[int, float]]
    window_means: list[tuple[int, float]]
    alerts: list[tuple[int, str, float | None]]
    anomalies: list[Anomaly]


def write_chart(path: Path, series: Sequence[DeviceSeries]) -> None:
    """Write the page to ``path`` (replaced if there)."""
    panels = "\n".join(_panel(s) for s in series)
    legend = " ".join(
        f'<span class="key" style="background:{colour}"></span>{html.escape(kind)}'
        for kind, colour in KIND_COLOURS.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>iotdata demo</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} h2 {{ font-size: 15px; margin: 18px 0 2px; }}
.key {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px;
  vertical-align: -1px; }}
svg text {{ font-size: 11px; fill: #555; }}
</style></head><body>
<h1>iotdata demo: readings, one-minute window means and alerts</h1>
<p><span class="key" style="background:#999"></span>readings
<span class="key" style="background:#1d4e89"></span>window mean
<span class="key" style="background:{ALERT_COLOUR}"></span>alert (&#9660;)
&nbsp; injected: {legend}</p>
{panels}
</body></html>
"""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)


def _panel(series: DeviceSeries) -> str:
    times = [t for t, _ in series.readings] or [0, MINUTE]
    values = [v for _, v in series.readings] + [v for _, v in series.window_means] or [0.0, 1.0]
    t0 = min(times)
    t1 = max(*times, t0 + MINUTE)
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    pad = (high - low) * 0.08
    low, high = low - pad, high + pad
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(ts: int) -> float:
        return LEFT + (ts - t0) / (t1 - t0) * inner_w

    def y(value: float) -> float:
        return TOP + (high - value) / (high - low) * inner_h

    parts = [
        f'<rect x="{LEFT}" y="{TOP}" width="{inner_w}" height="{inner_h}" fill="#fcfcfc" '
        'stroke="#ddd"/>'
    ]
    for event in series.anomalies:
        left, right = x(event.start_ts), max(x(event.end_ts), x(event.start_ts) + 3)
        colour = KIND_COLOURS.get(event.kind, "#ccc")
        parts.append(
            f'<rect x="{left:.1f}" y="{TOP}" width="{right - left:.1f}" height="{inner_h}" '
            f'fill="{colour}" opacity="0.55"><title>{html.escape(event.kind)}</title></rect>'
        )
    if series.readings:
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in series.readings)
        parts.append(f'<polyline points="{points}" fill="none" stroke="#999" stroke-width="1"/>')
    steps = []
    for start, mean in series.window_means:
        steps.append(f"{x(start):.1f},{y(mean):.1f} {x(start + MINUTE):.1f},{y(mean):.1f}")
    if steps:
        parts.append(
            f'<polyline points="{" ".join(steps)}" fill="none" stroke="#1d4e89" '
            'stroke-width="1.6"/>'
        )
    for ts, detector, value in series.alerts:
        cx = x(ts)
        cy = TOP + 8 if value is None else max(TOP + 8, y(value) - 6)
        parts.append(
            f'<path d="M{cx - 5:.1f},{cy - 8:.1f} L{cx + 5:.1f},{cy - 8:.1f} L{cx:.1f},{cy:.1f} Z" '
            f'fill="{ALERT_COLOUR}"><title>{html.escape(detector)} at {_clock(ts)}</title></path>'
        )
    for i in range(5):  # value axis
        value = low + (high - low) * i / 4
        parts.append(
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.1f}</text>'
        )
    for i in range(7):  # time axis
        ts = t0 + (t1 - t0) * i // 6
        parts.append(
            f'<text x="{x(ts):.1f}" y="{HEIGHT - 10}" text-anchor="middle">{_clock(ts)}</text>'
        )
    title = html.escape(series.device_id)
    counts = f"{len(series.readings):,} readings, {len(series.alerts)} alerts"
    return (
        f"<h2>{title} <small>({counts})</small></h2>\n"
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{title}">' + "".join(parts) + "</svg>"
    )


def _clock(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e6, tz=timezone.utc).strftime("%H:%M")
