"""Inline SVG charts: labels are escaped, the Pareto front is marked, empty data degrades to a note."""

from __future__ import annotations

import re

from cme_bench.report import svg


def test_scatter_marks_the_front_and_escapes_labels():
    points = [(1.0, 0.5, "<b>cheap</b>"), (2.0, 0.4, "dominated"), (3.0, 0.9, "good")]
    out = str(svg.scatter(points, [0, 2], title="t", xlabel="params", ylabel="score", log_x=True))
    assert out.count('class="pt front-pt"') == 2 and out.count('class="pt"') == 1
    assert "&lt;b&gt;cheap&lt;/b&gt;" in out and "<b>" not in out
    assert re.search(r'<path d="M[^"]+ H[^"]+ V[^"]+"', out)  # the step line through the front


def test_heatmap_and_line_chart():
    out = str(svg.heatmap([("model.layers.0.mlp", [0.5, 0.5]), ("model.layers.1.mlp", [1.0, 0.0])], title="x"))
    assert out.count("<rect") == 4 and ">0.mlp<title>model.layers.0.mlp</title>" in out
    assert 'fill-opacity="1.000"' in out and 'fill-opacity="0.080"' in out  # max load darkest, zero lightest
    assert "<path" in str(svg.line_chart([(1, 2.0), (2, 1.0)], title="l", xlabel="s", ylabel="loss"))
    assert "no data" in str(svg.line_chart([], title="l", xlabel="s", ylabel="loss"))
    assert "no expert-load data" in str(svg.heatmap([], title="x"))
