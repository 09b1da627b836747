"""Text renderers of a ``Table``: Markdown (README), CSV and parquet (raw numbers, through a pandas DataFrame),
LaTeX (paper, best per column bold, through pandas' Styler), JSON.

Pure functions: a Table in, a string (or DataFrame) out. Each renderer escapes for its own format, because every
string in a table may come from a run record written by anyone (a run named ``<script>`` or ``50% & co`` must come
out as text).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from cme_bench.report.table import Cell, Column, Table


def _md_escape(text: str) -> str:
    # HTML-escape (Markdown viewers render inline HTML), then neutralise table pipes and emphasis markers.
    text = html.escape(text, quote=False).replace("|", "\\|")
    for ch in "*_`[]":
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def _scaled(value: float | None, column: Column) -> float | None:
    if value is None:
        return None
    return 100 * value if column.unit == "%" else value


def to_markdown(table: Table, *, intervals_for: Sequence[str] = ("aggregate",)) -> str:
    """A GitHub-flavoured Markdown table; best value per ordered column in bold; intervals for chosen groups."""
    best = {i: table.best_rows(c.key) for i, c in enumerate(table.columns)}
    lines = [
        "| " + " | ".join(_md_escape(c.label) for c in table.columns) + " |",
        "|" + "|".join("---:" if c.ordered else "---" for c in table.columns) + "|",
    ]
    for r, row in enumerate(table.rows):
        out = []
        for i, (column, cell) in enumerate(zip(table.columns, row.cells)):
            text = _md_escape(cell.display)
            if r in best[i]:
                text = f"**{text}**"
            if cell.interval_display and column.group in intervals_for:
                text += " " + _md_escape(cell.interval_display)
            out.append(text)
        lines.append("| " + " | ".join(out) + " |")
    notes = [""] + [f"_{_md_escape(n)}_" for n in table.notes] if table.notes else []
    return "\n".join(lines + notes) + "\n"


def table_frame(table: Table):
    """A pandas DataFrame of a table: one column per table column key with raw values (not x100); ordered columns get
    ``_lo``, ``_hi`` and ``_stderr`` columns. The CSV and parquet outputs are this frame."""
    import pandas as pd

    data: dict[str, list[Any]] = {}
    for i, c in enumerate(table.columns):
        cells = [row.cells[i] for row in table.rows]
        data[c.key] = [cell.value for cell in cells]
        if c.ordered:
            data[f"{c.key}_lo"] = [cell.interval[0] if cell.interval else None for cell in cells]
            data[f"{c.key}_hi"] = [cell.interval[1] if cell.interval else None for cell in cells]
            data[f"{c.key}_stderr"] = [cell.stderr for cell in cells]
    return pd.DataFrame(data, columns=list(data))


def to_csv(table: Table, frame=None) -> str:
    """The table's DataFrame (``frame``, if already built) as CSV, with text that a spreadsheet would run as a
    formula quoted out."""
    frame = (table_frame(table) if frame is None else frame).map(_csv_value)
    return frame.to_csv(index=False, lineterminator="\n")


def _csv_value(value: Any) -> Any:
    # A leading =, +, - or @ makes spreadsheets evaluate a string as a formula; quote it out.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text).replace("\n", " ")


def to_latex(table: Table, *, caption: str = "", label: str = "tab:cme-bench", stderr: bool = True) -> str:
    """A booktabs table through pandas' Styler: best value per ordered column in bold, ``±stderr`` in small type.

    Cells are escaped here (``latex_escape`` also covers ``<``, ``>`` and ``|``, which Styler's escaping leaves
    alone); Styler lays the table out and turns the bold style into ``\\bfseries``.
    """
    import pandas as pd

    best = {i: table.best_rows(c.key) for i, c in enumerate(table.columns)}
    headers = [latex_escape(c.label) for c in table.columns]
    if len(set(headers)) < len(headers):  # Styler needs unique column names; a label may repeat (two domains)
        headers = [h + "\u200b" * i for i, h in enumerate(headers)]
    body = [[_latex_cell(c, cell, stderr) for c, cell in zip(table.columns, row.cells)] for row in table.rows]
    frame = pd.DataFrame(body, columns=headers)
    bold = pd.DataFrame(
        [["font-weight: bold" if r in best[i] else "" for i in range(len(table.columns))] for r in range(len(body))],
        columns=headers,
    )
    styler = frame.style.hide(axis="index").apply(lambda _: bold, axis=None)
    tex = styler.to_latex(
        column_format="".join("r" if c.ordered else "l" for c in table.columns),
        hrules=True,
        convert_css=True,
        position="t",
        position_float="centering",
        caption=latex_escape(caption or " ".join(table.notes)) or None,
        label=latex_escape(label),
    ).replace("\u200b", "")
    # A wide leaderboard must fit the page: scale the tabular to the line width.
    tex = tex.replace("\\begin{tabular}", "\\resizebox{\\linewidth}{!}{%\n\\begin{tabular}", 1)
    tex = tex.replace("\\end{tabular}", "\\end{tabular}}", 1)
    return "% requires \\usepackage{booktabs}\n" + tex


def _latex_cell(column: Column, cell: Cell, stderr: bool) -> str:
    text = latex_escape(cell.display)
    se = _scaled(cell.stderr, column)
    if stderr and se is not None and column.group in ("aggregate", "domain", "task") and not math.isnan(se):
        text += rf"{{\scriptsize$\pm${se:.1f}}}" if column.unit == "%" else rf"{{\scriptsize$\pm${se:.2g}}}"
    return text


def references_markdown(refs) -> str:
    """Reported figures with their source, as a Markdown table (never ranked with the leaderboard)."""
    lines = [
        "| Reported row | CME avg (%) | Training (h) | Model | Source | Confidence |",
        "|---|---:|---:|---|---|---|",
    ]
    for r in refs:
        hours = "—" if r.training_hours is None else f"{r.training_hours:g}"
        source = f"{r.paper}, {r.table}" if r.table else r.paper
        cells = [r.label, f"{r.value:.2f}", hours, r.model, source, r.confidence]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def trained_markdown(runs: Sequence[tuple[str, str]]) -> str:
    """(name, eval command) of each trained, not yet evaluated run, as a Markdown list (never a table row)."""
    return "".join(f"- {_md_escape(name)}: `` {command} ``\n" for name, command in runs)


def table_to_dict(table: Table) -> dict[str, Any]:
    """A JSON-ready dict (raw values, intervals, display strings, notes)."""
    return {
        "title": table.title,
        "columns": [
            {
                "key": c.key,
                "label": c.label,
                "group": c.group,
                "higher_is_better": c.higher_is_better,
                "description": c.description,
                "domain": c.domain,
                "unit": c.unit,
            }
            for c in table.columns
        ],
        "rows": [
            {
                "key": row.key,
                "status": row.status,
                "meta": dict(row.meta),
                "cells": {
                    c.key: {
                        "value": _finite(cell.value),
                        "display": cell.display,
                        "interval": cell.interval,
                        "stderr": _finite(cell.stderr),
                        "note": cell.note,
                    }
                    for c, cell in zip(table.columns, row.cells)
                },
            }
            for row in table.rows
        ],
        "notes": list(table.notes),
    }


def to_json(tables: Mapping[str, Table], extra: Mapping[str, Any] | None = None) -> str:
    doc = {"format": "cme-bench-report", "format_version": 1, **(extra or {})}
    doc["tables"] = {name: table_to_dict(t) for name, t in tables.items()}
    # Compact on purpose: with indent=, json falls back to its pure-Python encoder (10x slower on 500 runs).
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=_json_default)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
