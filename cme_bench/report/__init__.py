"""The reporter: run records -> statistics -> tables -> Markdown, CSV, LaTeX, JSON and a static HTML site.

Modules, in data-flow order:

- ``load``: read ``run.json`` (schema v1 and v2, see docs/ARCHITECTURE.md), per-sample logs and profile files;
  skip bad ones with a warning;
- ``groups``: seed groups (runs that differ only by seed) and evaluation sets (runs scored on the same documents);
- ``taskmeta``: display names, domains, direction and chance from the task registry (injected ``task_info``);
- ``stats``: pure statistics (stderr, bootstrap intervals, McNemar, rank ranges, minimum detectable differences,
  two-stage bootstrap over seeds, Pareto front) and the ``METHODS`` text shown in every report;
- ``analysis``: all numbers of one report (``analyse``);
- ``table`` / ``build``: the HELM-style table model and the builders that fill it;
- ``references``: reported figures (a paper's table) shown beside measured rows, never ranked;
- ``render_text`` / ``html`` / ``svg`` + ``templates/``: renderers, pure functions of tables;
- ``frames``: run records as pandas DataFrames (``frame``, ``samples_frame``);
- ``pipeline``: ``build_report`` and the writers used by ``cme-bench report``.

The names below are loaded on first use, so importing a submodule (``from cme_bench.report import stats``) never
imports the whole pipeline, and no submodule imports this package's API back.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "Cell": "table",
    "Column": "table",
    "Row": "table",
    "Table": "table",
    "Report": "pipeline",
    "build_report": "pipeline",
    "write_site": "pipeline",
    "write_text_outputs": "pipeline",
    "frame": "frames",
    "samples_frame": "frames",
    "seed_groups": "groups",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"cme_bench.report.{_API[name]}"), name)
    raise AttributeError(f"module 'cme_bench.report' has no attribute {name!r}")
