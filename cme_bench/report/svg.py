"""Inline SVG charts for the static site: a line chart (loss curve), a heatmap (expert load) and a scatter plot with
its Pareto front (cost plot). No JavaScript and no external resources; every label goes through ``escape``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

W, H, PAD = 560, 320, 48


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _axes(sx, sy, xticks, yticks, xlabel: str, ylabel: str, xfmt, yfmt) -> list[str]:
    """Axes, tick labels and grid for the given scale functions (the same ones the data is drawn with)."""
    out = [
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 16}" y2="{H - PAD}" class="axis"/>',
        f'<line x1="{PAD}" y1="16" x2="{PAD}" y2="{H - PAD}" class="axis"/>',
    ]
    for t in xticks:
        out.append(
            f'<text x="{sx(t):.1f}" y="{H - PAD + 16}" class="tick" text-anchor="middle">{escape(xfmt(t))}</text>'
        )
    for t in yticks:
        out.append(f'<text x="{PAD - 6}" y="{sy(t) + 4:.1f}" class="tick" text-anchor="end">{escape(yfmt(t))}</text>')
        out.append(f'<line x1="{PAD}" y1="{sy(t):.1f}" x2="{W - 16}" y2="{sy(t):.1f}" class="grid"/>')
    out.append(f'<text x="{(PAD + W) / 2:.0f}" y="{H - 8}" class="label" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text x="12" y="{H / 2:.0f}" class="label" text-anchor="middle" '
        f'transform="rotate(-90 12 {H / 2:.0f})">{escape(ylabel)}</text>'
    )
    return out


def _short(v: float) -> str:
    for factor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor * 0.9995:  # 999,999 is "1M", not "1e+03k"
            return f"{v / factor:.3g}{suffix}"
    return f"{v:.3g}"


def _svg(parts: list[str], title: str) -> Markup:
    body = "\n".join(parts)
    return Markup(
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" class="chart" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>\n{body}\n</svg>'
    )


def line_chart(points: Sequence[tuple[float, float]], *, title: str, xlabel: str, ylabel: str) -> Markup:
    pts = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return Markup('<p class="muted">no data</p>')
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    sx, sy = _scale(min(xs), max(xs), PAD, W - 16), _scale(min(ys), max(ys), H - PAD, 16)
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(pts))
    xt, yt = _ticks(min(xs), max(xs)), _ticks(min(ys), max(ys))
    parts = _axes(sx, sy, xt, yt, xlabel, ylabel, lambda v: f"{v:.0f}", lambda v: f"{v:.3g}")
    parts.append(f'<path d="{path}" class="line"/>')
    return _svg(parts, title)


def _short_labels(labels: list[str]) -> list[str]:
    """Drop the dotted prefix all labels share (``model.layers.``), keeping at least the last component."""
    if len(labels) < 2:
        return labels
    parts = [label.split(".") for label in labels]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return [".".join(p[common:]) for p in parts]


def heatmap(rows: Sequence[tuple[str, Sequence[float]]], *, title: str) -> Markup:
    """One row per routed layer, one column per expert; darker = more routing weight (row values as given)."""
    rows = [(label, [float(v) for v in values]) for label, values in rows if values]
    if not rows:
        return Markup('<p class="muted">no expert-load data</p>')
    n_cols = max(len(v) for _, v in rows)
    vmax = max((v for _, values in rows for v in values if math.isfinite(v)), default=1.0) or 1.0
    shown = _short_labels([label for label, _ in rows])
    cell = 28 if len(rows) <= 24 else 14  # many layers x modules: keep the figure a readable height
    left, top = min(360, 12 + 7 * max(len(s) for s in shown)), 24
    width, height = left + n_cols * cell + 10, top + len(rows) * cell + 10
    parts = [
        f'<text x="{left + i * cell + cell / 2}" y="{top - 6}" class="tick" text-anchor="middle">{i}</text>'
        for i in range(n_cols)
    ]
    for r, ((label, values), short) in enumerate(zip(rows, shown)):
        y = top + r * cell
        parts.append(
            f'<text x="{left - 6}" y="{y + cell / 2 + 4}" class="tick" text-anchor="end">{escape(short)}'
            f"<title>{escape(label)}</title></text>"
        )
        for c, v in enumerate(values):
            alpha = max(0.0, min(1.0, v / vmax)) if math.isfinite(v) else 0.0
            parts.append(
                f'<rect x="{left + c * cell}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
                f'fill="rgb(37,99,235)" fill-opacity="{0.08 + 0.92 * alpha:.3f}">'
                f"<title>{escape(label)}, expert {c}: {v:.4g}</title></rect>"
            )
    return Markup(
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" class="chart" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(parts)}</svg>'
    )


def scatter(
    points: Sequence[tuple[float, float, str]],
    front: Sequence[int],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
) -> Markup:
    """Points (x, y, label); ``front`` indices are drawn highlighted and joined by a step line."""

    def tx(x: float) -> float:
        return math.log10(1 + x) if log_x else x

    pts = [(tx(x), y, label, i) for i, (x, y, label) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return Markup('<p class="muted">no runs with both values</p>')
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xlo, xhi, ylo, yhi = min(xs), max(xs), min(ys), max(ys)
    sx, sy = _scale(xlo, xhi, PAD + 8, W - 24), _scale(ylo, yhi, H - PAD - 8, 24)
    xfmt = (lambda v: "0" if v == 0 else _short(10**v)) if log_x else _short  # 10^k - 1 labelled 10^k
    # log axis: ticks at 0 and at powers of ten (x = 10^k - 1 in the log10(1 + x) space)
    xt = [0.0, *range(max(1, math.ceil(xlo)), math.floor(xhi) + 1)] if log_x else _ticks(xlo, xhi)
    xt = [t for t in xt if xlo <= t <= xhi] or [xlo]
    parts = _axes(sx, sy, xt, _ticks(ylo, yhi), xlabel, ylabel, xfmt, lambda v: f"{100 * v:.1f}")
    on_front = set(front)
    fpts = sorted((p for p in pts if p[3] in on_front), key=lambda p: p[0])
    if len(fpts) > 1:
        d = f"M{sx(fpts[0][0]):.1f},{sy(fpts[0][1]):.1f}" + "".join(
            f" H{sx(p[0]):.1f} V{sy(p[1]):.1f}" for p in fpts[1:]
        )
        parts.append(f'<path d="{d}" class="front"/>')
    for x, y, label, i in pts:
        cls = "pt front-pt" if i in on_front else "pt"
        parts.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{6 if i in on_front else 4}" class="{cls}">'
            f"<title>{escape(label)}: {100 * y:.1f}{' (Pareto front)' if i in on_front else ''}</title>"
            "</circle>"
        )
    return _svg(parts, title)
