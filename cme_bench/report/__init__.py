"""The reporter: run records -> statistics -> tables -> Markdown, CSV, LaTeX, JSON and a static HTML site.

Modules, in data-flow order:

- ``load``: read ``run.json`` (schema v1), per-sample logs and optional profile files; skip bad ones with a warning;
- ``taskmeta``: display names, domains, direction and chance from the task registry (injected ``task_info``);
- ``stats``: pure statistics (stderr, bootstrap intervals, McNemar, win rates, rank ranges, Pareto front) and the
  ``METHODS`` text shown in every report;
- ``analysis``: all numbers of one report (``analyse``);
- ``table`` / ``build``: the HELM-style table model and the builders that fill it;
- ``render_text`` / ``html`` / ``svg`` + ``templates/``: renderers, pure functions of tables;
- ``pipeline``: ``build_report`` and the writers used by ``cme-bench report``.
"""

from cme_bench.report.pipeline import Report, build_report, write_site, write_text_outputs
from cme_bench.report.table import Cell, Column, Row, Table

__all__ = ["Cell", "Column", "Report", "Row", "Table", "build_report", "write_site", "write_text_outputs"]
