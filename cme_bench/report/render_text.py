"""Text renderers of a ``Table``: Markdown (README), CSV (raw numbers), LaTeX (paper, best per column bold), JSON.

Pure functions: a Table in, a string out. Each renderer escapes for its own format, because every string in a table
may come from a run record written by anyone (a run named ``<script>`` or ``50% & co`` must come out as text).
"""

from __future__ import annotations

import csv
import html
import io
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


def to_csv(table: Table) -> str:
    """One header row of column keys; raw values (not x100); ordered columns get _lo, _hi and _stderr columns."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = []
    for c in table.columns:
        header.append(c.key)
        if c.ordered:
            header += [f"{c.key}_lo", f"{c.key}_hi", f"{c.key}_stderr"]
    writer.writerow(header)
    for row in table.rows:
        out: list[Any] = []
        for column, cell in zip(table.columns, row.cells):
            out.append("" if cell.value is None else _csv_value(cell.value))
            if column.ordered:
                lo, hi = cell.interval or ("", "")
                out += [lo, hi, "" if cell.stderr is None else cell.stderr]
        writer.writerow(out)
    return buf.getvalue()


def _csv_value(value: float | str) -> float | str:
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
    """A booktabs table; best value per ordered column in bold; ``±stderr`` in small type where known."""
    best = {i: table.best_rows(c.key) for i, c in enumerate(table.columns)}
    align = "".join("r" if c.ordered else "l" for c in table.columns)
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\resizebox{\linewidth}{!}{%",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(latex_escape(c.label) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for r, row in enumerate(table.rows):
        cells = [
            _latex_cell(c, cell, r in best[i], stderr) for i, (c, cell) in enumerate(zip(table.columns, row.cells))
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if caption or table.notes:
        lines.append(rf"\caption{{{latex_escape(caption or ' '.join(table.notes))}}}")
    lines += [rf"\label{{{latex_escape(label)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _latex_cell(column: Column, cell: Cell, bold: bool, stderr: bool) -> str:
    text = latex_escape(cell.display)
    if bold:
        text = rf"\textbf{{{text}}}"
    se = _scaled(cell.stderr, column)
    if stderr and se is not None and column.group in ("aggregate", "domain", "task") and not math.isnan(se):
        text += rf"{{\scriptsize$\pm${se:.1f}}}" if column.unit == "%" else rf"{{\scriptsize$\pm${se:.2g}}}"
    return text


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
