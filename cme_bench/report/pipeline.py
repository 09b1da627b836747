"""The report pipeline: results folder -> Analysis -> Tables -> files. ``cme-bench report`` is a thin shell over it.

Outputs under ``out``: ``index.html`` plus ``tasks/``, ``domains/``, ``samples/``, ``runs/``, ``costs.html`` and
``methods.html`` (the static site), and ``leaderboard.{md,csv,tex,json}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cme_bench.report import stats
from cme_bench.report.analysis import Analysis, analyse
from cme_bench.report.build import domain_table, leaderboard_table, task_table
from cme_bench.report.files import write_text_replace
from cme_bench.report.load import load_profiles, load_runs
from cme_bench.report.table import Table
from cme_bench.report.taskmeta import TaskInfoFn, default_task_info

log = logging.getLogger(__name__)

_DEFAULT = object()


@dataclass
class Report:
    analysis: Analysis
    leaderboard: Table
    tasks: dict[str, Table] = field(default_factory=dict)
    domains: dict[str, Table] = field(default_factory=dict)


def build_report(
    results: Path | str,
    *,
    task_info: TaskInfoFn | object | None = _DEFAULT,
    out: Path | None = None,
    n_boot: int = stats.DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> Report:
    """Read every run record under ``results`` and compute all tables.

    ``task_info`` defaults to the task registry's ``task_info`` (None: use the run records only). ``out`` is left out
    of the record search so a leaderboard folder inside ``results`` is never read as runs.
    """
    results = Path(results)
    runs = load_runs(results, exclude=out)
    info = default_task_info() if task_info is _DEFAULT else task_info
    analysis = analyse(runs, info, n_boot=n_boot, seed=seed)  # type: ignore[arg-type]
    profiles = load_profiles(results)
    return Report(
        analysis,
        leaderboard_table(analysis, profiles),
        {t: task_table(analysis, t) for t in analysis.tasks},
        {d: domain_table(analysis, d) for d in analysis.domains},
    )


def write_text_outputs(report: Report, out: Path) -> dict[str, Path]:
    from cme_bench.report.render_text import to_csv, to_json, to_latex, to_markdown

    board = report.leaderboard
    files = {
        "md": (
            out / "leaderboard.md",
            "# cme-bench leaderboard\n\n"
            + to_markdown(board)
            + "\n## Statistical methods\n\n"
            + stats.methods_text(report.analysis.n_boot),
        ),
        "csv": (out / "leaderboard.csv", to_csv(board)),
        "tex": (out / "leaderboard.tex", to_latex(board, caption="cme-bench leaderboard. " + " ".join(board.notes))),
        "json": (
            out / "leaderboard.json",
            to_json(
                {
                    "leaderboard": board,
                    **{f"task:{k}": v for k, v in report.tasks.items()},
                    **{f"domain:{k}": v for k, v in report.domains.items()},
                },
                extra=_json_extra(report.analysis),
            ),
        ),
    }
    for path, text in files.values():
        write_text_replace(path, text)
    return {k: v[0] for k, v in files.items()}


def _json_extra(a: Analysis) -> Mapping[str, object]:
    return {
        "methods": stats.methods_text(a.n_boot),
        "ranking": a.ranking_key,
        "ranks": {rid: {"best": r.best, "worst": r.worst, "tie_group": r.group} for rid, r in a.ranks.items()},
        "tasks": {t: vars(m) for t, m in a.tasks.items()},
        "bootstrap": {"resamples": a.n_boot, "seed": a.seed, "alpha": stats.ALPHA},
    }


def write_site(report: Report, out: Path, max_sample_runs: int = 40) -> Path:
    from cme_bench.report.html import Site

    site = Site(report.analysis, out, max_sample_runs=max_sample_runs)
    index = site.leaderboard(report.leaderboard)
    for task, table in report.tasks.items():
        site.task_page(task, table)
        site.samples_page(task)
    for domain, table in report.domains.items():
        site.domain_page(domain, table)
    for run in report.analysis.runs:
        site.run_page(run)
    site.costs_page(report.leaderboard)
    site.methods_page()
    return index
