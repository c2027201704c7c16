"""Draw the benchmarks' JSON results as SVG bar charts (no plotting library needed).

    python scripts/plot_benchmarks.py docs/figures/*.json --out docs/figures

Reads the ``--json`` files the benchmark scripts write (lists of ``{"case", "impl", "metric",
"value"}``) and writes:

- ``ratios.svg``: every ratio row (impl ``"ratio"``) of every file, on a logarithmic axis with
  the 1x line marked: how many times the named baseline iotdata is. Where a file has
  ``average@...`` ratio rows for a metric (the codec's averages over the series), those stand
  for its per-case rows of that metric.
- ``NAME.svg`` for each file ``NAME.json``: the rates (metrics ending in ``_per_s``) of every
  case measured for more than one implementation, side by side on a linear axis; skipped when
  a file has more than ``--max-groups`` such cases (the codec's tables say more).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

Row = dict[str, Any]

WIDTH = 900
LABEL = 380  # width of the label column
BAR = 18
GAP = 8
#: iotdata, a baseline, a ratio below 1x.
PALETTE = ("#1f6feb", "#8b949e", "#d29922")


def load(path: Path) -> list[Row]:
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and {"case", "impl", "metric", "value"} <= r.keys() for r in rows
    ):
        raise SystemExit(f"plot: {path} is not a benchmark's --json output")
    return rows


def headline_ratios(rows: Iterable[Row]) -> list[Row]:
    """The ratio rows, an ``average@`` row standing for the per-case rows of its metric."""
    ratios = [r for r in rows if r["impl"] == "ratio" and _finite(r["value"])]
    averaged = {r["metric"] for r in ratios if str(r["case"]).startswith("average")}
    return [
        r for r in ratios if r["metric"] not in averaged or str(r["case"]).startswith("average")
    ]


def rate_groups(rows: Iterable[Row]) -> dict[tuple[str, str], dict[str, float]]:
    """``(case, metric) -> {impl: value}`` for rates measured for two or more impls."""
    groups: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["impl"] != "ratio" and str(r["metric"]).endswith("_per_s") and _finite(r["value"]):
            groups[str(r["case"]), str(r["metric"])][str(r["impl"])] = float(r["value"])
    return {key: impls for key, impls in groups.items() if len(impls) > 1}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _rate(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _svg(height: int, title: str, body: list[str]) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
            f"<title>{escape(title)}</title>",
            '<rect width="100%" height="100%" fill="white"/>',
            f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
            *body,
            "</svg>",
            "",
        ]
    )


def ratio_chart(named: Sequence[tuple[str, Row]]) -> str:
    """Horizontal bars on a log axis from 0.1x to the largest ratio (at least 10x)."""
    top = 34
    plot = WIDTH - LABEL - 70
    low = 0.1
    high = max([10.0, *(float(r["value"]) for _, r in named)]) * 1.2

    def x(value: float) -> float:
        return LABEL + plot * (math.log10(value) - math.log10(low)) / math.log10(high / low)

    body = []
    y = top
    for name, r in named:
        value = float(r["value"])
        label = f"{name}: {r['case']} ({r['metric']})"
        end = x(max(value, low))
        body.append(f'<text x="{LABEL - 6}" y="{y + 13}" text-anchor="end">{escape(label)}</text>')
        colour = PALETTE[0] if value >= 1 else PALETTE[2]
        body.append(
            f'<rect x="{LABEL}" y="{y}" width="{max(end - LABEL, 1):.1f}" height="{BAR}" '
            f'fill="{colour}"/>'
        )
        body.append(f'<text x="{end + 4:.1f}" y="{y + 13}">{value:.3g}x</text>')
        y += BAR + GAP
    one = x(1.0)
    body.append(
        f'<line x1="{one:.1f}" y1="{top - 4}" x2="{one:.1f}" y2="{y}" stroke="black" '
        'stroke-dasharray="4 3"/>'
    )
    body.extend(
        f'<text x="{x(tick):.1f}" y="{y + 14}" text-anchor="middle" fill="#57606a">{tick:g}x</text>'
        for tick in (0.1, 1, 10, 100, 1000)
        if tick <= high
    )
    return _svg(y + 24, "iotdata against each baseline (times as fast or as small)", body)


def rate_chart(name: str, groups: dict[tuple[str, str], dict[str, float]]) -> str:
    """One block per case: a bar per implementation, on a linear axis per case."""
    impls = sorted({i for values in groups.values() for i in values}, key=_impl_order)
    colours = {impl: PALETTE[0] if impl.startswith("iotdata") else PALETTE[1] for impl in impls}
    plot = WIDTH - LABEL - 80
    body = []
    y = 34
    for (case, metric), values in groups.items():
        body.append(f'<text x="10" y="{y + 13}" font-weight="bold">{escape(case)}</text>')
        body.append(f'<text x="10" y="{y + 28}" fill="#57606a">{escape(metric)}</text>')
        biggest = max(values.values())
        for impl in sorted(values, key=_impl_order):
            value = values[impl]
            width = plot * value / biggest
            body.append(
                f'<text x="{LABEL - 6}" y="{y + 13}" text-anchor="end">{escape(impl)}</text>'
            )
            body.append(
                f'<rect x="{LABEL}" y="{y}" width="{max(width, 1):.1f}" height="{BAR}" '
                f'fill="{colours[impl]}"/>'
            )
            body.append(f'<text x="{LABEL + width + 4:.1f}" y="{y + 13}">{_rate(value)}/s</text>')
            y += BAR + 4
        y += GAP * 2
    return _svg(y, f"{name}: rates per implementation", body)


def _impl_order(impl: str) -> tuple[int, str]:
    return (0 if impl.startswith("iotdata") else 1, impl)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="benchmark --json files")
    parser.add_argument("--out", type=Path, required=True, help="folder for the SVG files")
    parser.add_argument("--max-groups", type=int, default=10, help="cases in a rate chart")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    named: list[tuple[str, Row]] = []
    for path in args.files:
        rows = load(path)
        named += [(path.stem, r) for r in headline_ratios(rows)]
        groups = rate_groups(rows)
        if 0 < len(groups) <= args.max_groups:
            (args.out / f"{path.stem}.svg").write_text(rate_chart(path.stem, groups))
            print(f"plot: {args.out / (path.stem + '.svg')} ({len(groups)} cases)")
        elif groups:
            print(f"plot: {path.stem}: {len(groups)} cases, more than --max-groups; no chart")
    if named:
        (args.out / "ratios.svg").write_text(ratio_chart(named))
        print(f"plot: {args.out / 'ratios.svg'} ({len(named)} ratios)")
    else:
        print("plot: no ratio rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
