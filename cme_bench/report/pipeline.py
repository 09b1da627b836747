"""The report pipeline: results folder -> Analysis -> Tables -> files. ``cme-bench report`` is a thin shell over it.

Outputs under ``out``: ``index.html`` plus ``tasks/``, ``domains/``, ``samples/``, ``runs/``, ``costs.html`` and
``methods.html`` (the static site), and ``leaderboard.{md,csv,tex,json}`` (+ ``leaderboard.parquet`` when a parquet
engine such as pyarrow is installed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cme_bench.report import stats
from cme_bench.report.analysis import Analysis, analyse
from cme_bench.report.build import descriptive_cells, domain_table, eval_command, leaderboard_tables, task_table
from cme_bench.report.files import write_text_replace
from cme_bench.report.load import load_profiles, load_runs
from cme_bench.report.references import Reference, references
from cme_bench.report.table import Table
from cme_bench.report.taskmeta import TaskInfoFn, default_task_info

log = logging.getLogger(__name__)

_DEFAULT = object()


@dataclass
class Report:
    analysis: Analysis
    leaderboard: Table  # the main evaluation set
    tasks: dict[str, Table] = field(default_factory=dict)
    domains: dict[str, Table] = field(default_factory=dict)
    others: list[Table] = field(default_factory=list)  # runs evaluated on other documents, one table per set
    references: list[Reference] = field(default_factory=list)  # reported figures, never ranked


def build_report(
    results: Path | str,
    *,
    task_info: TaskInfoFn | object | None = _DEFAULT,
    out: Path | None = None,
    n_boot: int = stats.DEFAULT_BOOTSTRAP,
    seed: int = 0,
    reference_files: tuple[Path | str, ...] = (),
    builtin_references: bool = True,
) -> Report:
    """Read every run record under ``results`` and compute all tables.

    ``task_info`` defaults to the task registry's ``task_info`` (None: use the run records only). ``out`` is left out
    of the record search so a leaderboard folder inside ``results`` is never read as runs. Reference rows come from
    the shipped file (unless ``builtin_references`` is False) and ``reference_files``.
    """
    results = Path(results)
    runs = load_runs(results, exclude=out)
    info = default_task_info() if task_info is _DEFAULT else task_info
    analysis = analyse(runs, info, n_boot=n_boot, seed=seed)  # type: ignore[arg-type]
    profiles = load_profiles(results)
    boards = leaderboard_tables(analysis, profiles)
    desc = descriptive_cells(analysis)
    return Report(
        analysis,
        boards[0],
        {t: task_table(analysis, t, desc) for t in analysis.tasks},
        {d: domain_table(analysis, d, desc) for d in analysis.domains},
        boards[1:],
        references(reference_files, builtin=builtin_references),
    )


def write_text_outputs(report: Report, out: Path) -> dict[str, Path]:
    from cme_bench.report.render_text import (
        references_markdown,
        table_frame,
        to_csv,
        to_json,
        to_latex,
        to_markdown,
        trained_markdown,
    )

    board = report.leaderboard
    frame = table_frame(board)
    md = "# cme-bench leaderboard\n\n" + to_markdown(board)
    for other in report.others:
        md += f"\n## {other.title}\n\nNot ranked against the leaderboard above.\n\n" + to_markdown(other)
    if report.analysis.trained_only:
        trained = [(r.name, eval_command(r)) for r in report.analysis.trained_only]
        md += "\n## Trained, not evaluated yet\n\nNo scores yet, so in no table above. Evaluate with:\n\n"
        md += trained_markdown(trained)
    if report.references:
        md += "\n## Reported, not reproduced here\n\n" + references_markdown(report.references)
    md += "\n## Statistical methods\n\n" + stats.methods_text(report.analysis.n_boot)
    files = {
        "md": (out / "leaderboard.md", md),
        "csv": (out / "leaderboard.csv", to_csv(board, frame)),
        "tex": (out / "leaderboard.tex", to_latex(board, caption="cme-bench leaderboard. " + " ".join(board.notes))),
        "json": (
            out / "leaderboard.json",
            to_json(
                {
                    "leaderboard": board,
                    **{f"other:{t.title}": t for t in report.others},
                    **{f"task:{k}": v for k, v in report.tasks.items()},
                    **{f"domain:{k}": v for k, v in report.domains.items()},
                },
                extra=_json_extra(report),
            ),
        ),
    }
    for path, text in files.values():
        write_text_replace(path, text)
    written = {k: v[0] for k, v in files.items()}
    parquet = _write_parquet(frame, out / "leaderboard.parquet")
    if parquet is not None:
        written["parquet"] = parquet
    return written


def _write_parquet(frame, path: Path) -> Path | None:
    """``leaderboard.parquet`` beside the CSV when pandas finds a parquet engine (pyarrow or fastparquet)."""
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("pyarrow", "fastparquet")):
        log.info("no parquet engine installed (pip install pyarrow): leaderboard.parquet not written")
        return None
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)  # atomic, like every other report file
    return path


def _json_extra(report: Report) -> Mapping[str, object]:
    a = report.analysis
    return {
        "references": [vars(r) for r in report.references],
        "eval_sets": {
            k: {"label": es.label, "tasks": es.tasks, "limit": es.limit, "entries": [e.key for e in es.entries]}
            for k, es in a.eval_sets.items()
        },
        "trained_not_evaluated": [r.run_id for r in a.trained_only],
        "seed_groups": {e.key: [r.run_id for r in e.runs] for e in a.entries if e.n_seeds > 1},
        "methods": stats.methods_text(a.n_boot),
        "ranking": a.ranking_key,
        "ranks": {rid: {"best": r.best, "worst": r.worst, "tie_group": r.group} for rid, r in a.ranks.items()},
        "tasks": {t: vars(m) for t, m in a.tasks.items()},
        "bootstrap": {"resamples": a.n_boot, "seed": a.seed, "alpha": stats.ALPHA},
    }


def write_site(report: Report, out: Path, max_sample_runs: int = 40) -> Path:
    from cme_bench.report.html import Site

    site = Site(report.analysis, out, max_sample_runs=max_sample_runs)
    index = site.leaderboard(report.leaderboard, report.others, report.references)
    for task, table in report.tasks.items():
        site.task_page(task, table)
        site.samples_page(task)
    for domain, table in report.domains.items():
        site.domain_page(domain, table)
    for run in report.analysis.runs:
        site.run_page(run)
    for entry in report.analysis.entries:
        if entry.n_seeds > 1:
            site.group_page(entry)
    site.costs_page(report.references)
    site.methods_page()
    return index
