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
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
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


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering [lo, hi], about ``n`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, t = [], first
    while t <= hi + step * 1e-9:
        out.append(round(t, 12))
        t += step
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis over [lo, hi] (both > 0): powers of ten, plus 2x and 5x when fewer than 3 decades."""
    if lo <= 0 or hi <= 0:
        return []
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1, 2, 5) if b - a < 3 else (1,)
    ticks = [m * 10.0**k for k in range(a, b + 1) for m in mults]
    inside = [t for t in ticks if lo <= t <= hi]
    return inside if len(inside) >= 2 else [t for t in ticks if lo / 10 <= t <= hi * 10][:4]


def scatter(
    points: Sequence[tuple[float, float, str]],
    front: Sequence[int],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    xfmt=_short,
    baseline: tuple[float, str] | None = None,
    max_labels: int = 40,
) -> Markup:
    """Points (x, y, label), each labelled (up to ``max_labels``; beyond, only the front); ``front`` indices drawn
    highlighted and joined by a step line; a legend. On a log axis x must be > 0: nothing pretends that 0 is on it.
    ``baseline`` (y, label) is a dashed horizontal line, for a row with no cost on this axis (the base model)."""
    pts = [
        (math.log10(x) if log_x else x, y, label, i)
        for i, (x, y, label) in enumerate(points)
        if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x)
    ]
    if not pts:
        return Markup('<p class="muted">no runs with both values</p>')
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if baseline is not None:
        ys = [*ys, baseline[0]]
    xlo, xhi, ylo, yhi = min(xs), max(xs), min(ys), max(ys)
    if log_x:
        xt = [math.log10(t) for t in log_ticks(10**xlo, 10**xhi)]
        xlo, xhi = min([xlo, *xt]), max([xhi, *xt])
    else:
        xt = nice_ticks(xlo, xhi)
        xlo, xhi = min([xlo, *xt]), max([xhi, *xt])
    yt = nice_ticks(ylo, yhi)
    ylo, yhi = min([ylo, *yt]), max([yhi, *yt])
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    if yhi == ylo:
        ylo, yhi = ylo - 0.01, yhi + 0.01
    right = W - 110  # room for labels of the rightmost points
    sx, sy = _scale(xlo, xhi, PAD + 16, right), _scale(ylo, yhi, H - PAD - 8, 40)
    tick_fmt = (lambda v: xfmt(10**v)) if log_x else xfmt
    parts = _axes(sx, sy, xt, yt, xlabel, ylabel, tick_fmt, lambda v: f"{100 * v:.3g}")
    if baseline is not None:
        y = sy(baseline[0])
        parts.append(f'<line x1="{PAD}" y1="{y:.1f}" x2="{W - 16}" y2="{y:.1f}" class="baseline"/>')
        parts.append(
            f'<text x="{W - 18}" y="{y - 4:.1f}" class="pt-label" text-anchor="end">{escape(baseline[1])}</text>'
        )
    on_front = set(front)
    fpts = sorted((p for p in pts if p[3] in on_front), key=lambda p: p[0])
    if len(fpts) > 1:
        d = f"M{sx(fpts[0][0]):.1f},{sy(fpts[0][1]):.1f}" + "".join(
            f" H{sx(p[0]):.1f} V{sy(p[1]):.1f}" for p in fpts[1:]
        )
        parts.append(f'<path d="{d}" class="front"/>')
    label_all = len(pts) <= max_labels
    placed: list[tuple[float, float, float]] = []  # (x0, x1, y) of labels already drawn
    for x, y, label, i in pts:
        cls = "pt front-pt" if i in on_front else "pt"
        cx, cy = sx(x), sy(y)
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{6 if i in on_front else 4}" class="{cls}" data-label="'
            f'{escape(label)}"><title>{escape(label)}: {100 * y:.3g}'
            f"{' (Pareto front)' if i in on_front else ''}</title></circle>"
        )
        if not (label_all or i in on_front):
            continue
        width = 6.2 * len(label)
        lx, ly = cx + 8, cy + 4
        for _ in range(4):  # step down past labels already drawn there
            if not any(a < lx + width and lx < b and abs(ly - c) < 12 for a, b, c in placed):
                break
            ly += 12
        placed.append((lx, lx + width, ly))
        parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}" class="pt-label">{escape(label)}</text>')
    legend = [
        ('<circle cx="{x}" cy="14" r="6" class="legend-pt front-pt"/>', "Pareto front"),
        ('<circle cx="{x}" cy="14" r="4" class="legend-pt"/>', "other runs"),
    ]
    if baseline is not None:
        legend.append(('<line x1="{x0}" y1="14" x2="{x1}" y2="14" class="baseline"/>', "base model"))
    x = PAD + 8
    for shape, text in legend:
        parts.append(shape.format(x=x, x0=x - 8, x1=x + 8))
        parts.append(f'<text x="{x + 12}" y="18" class="tick legend">{escape(text)}</text>')
        x += 24 + 6.5 * len(text)
    if not label_all:
        parts.append(f'<text x="{W - 18}" y="18" class="tick" text-anchor="end">labels: Pareto front only</text>')
    return _svg(parts, title)
