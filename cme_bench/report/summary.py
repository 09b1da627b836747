"""One-line and short-table summaries for the terminal, on the leaderboard's scale (%) and with its column names."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cme_bench.report.build import AGGREGATE_LABELS, fmt_interval, fmt_score
from cme_bench.report.load import RunRecord, parse_record
from cme_bench.report.taskmeta import TaskInfoFn, default_task_info, resolve_tasks

_DEFAULT = object()


def outcome_line(record: Mapping[str, Any], task_info: TaskInfoFn | object | None = _DEFAULT) -> str:
    """``<run id>: <status>, CME avg (domains) 41.2%, CME avg (tasks) 40.9% over 20 tasks`` (percent, as on the
    leaderboard; a task outside [0, 1] is left out of the averages and named)."""
    line = f"{record.get('run_id')}: {record.get('status')}"
    try:
        run = parse_record(Path("run.json"), record)
    except ValueError:
        run = None
    if run is not None and run.metrics:
        line += ", " + scores_text(run, default_task_info() if task_info is _DEFAULT else task_info)  # type: ignore[arg-type]
    error = record.get("error")
    if isinstance(error, Mapping):
        line += f" ({error.get('type')}: {error.get('message')})"
    return line


def scores_text(run: RunRecord, task_info: TaskInfoFn | None) -> str:
    meta = resolve_tasks(sorted(run.metrics), [run], task_info)
    values = {t: m.value for t, m in run.metrics.items() if m.value is not None}
    averaged = {t: v for t, v in values.items() if meta[t].higher_is_better and 0.0 <= v <= 1.0}
    if not averaged:
        return ", ".join(f"{meta[t].display_name} {v:.4g}" for t, v in values.items())
    domains: dict[str, list[float]] = {}
    for t, v in averaged.items():
        domains.setdefault(meta[t].domain, []).append(v)
    by_domain = sum(sum(v) / len(v) for v in domains.values()) / len(domains)
    by_task = sum(averaged.values()) / len(averaged)
    text = (
        f"{AGGREGATE_LABELS['cme_avg_domains'][0]} {fmt_score(by_domain, True)}%, "
        f"{AGGREGATE_LABELS['cme_avg_tasks'][0]} {fmt_score(by_task, True)}% over {len(averaged)} task(s)"
    )
    other = sorted(set(values) - set(averaged))
    if other:
        text += " (not averaged: " + ", ".join(f"{meta[t].display_name} {values[t]:.4g}" for t in other) + ")"
    return text


def top_rows(report, n: int = 5) -> list[str]:
    """The first ``n`` rows of the main leaderboard: rank, label, ranking average with its interval, seeds."""
    board, a = report.leaderboard, report.analysis
    key = a.ranking_key
    if key is None:
        return []
    label = AGGREGATE_LABELS[key][0]
    lines = [f"top of the leaderboard by {label} (%, 95% interval):"]
    for row in board.rows[:n]:
        if not row.ok:
            continue
        rank, name, score = board.cell(row.key, "rank"), board.cell(row.key, "run"), board.cell(row.key, key)
        lines.append(
            f"  {rank.display:>5}  {name.display:<40.40}  {score.display} {fmt_interval(score.interval, True)}"
        )
    if report.others:
        n_other = sum(len(t.rows) for t in report.others)
        lines.append(f"  ({n_other} row(s) evaluated on other documents are in their own table, not ranked here)")
    return lines
