"""Table builders: an ``Analysis`` (numbers) becomes ``Table``s (display-ready cells). No rendering here.

- ``leaderboard_table``: one row per run (failed ones included, with their status), columns for the ranking,
  aggregates, domains, tasks, efficiency and optional cost figures;
- ``task_table``: one task, each run's score with interval, stderr, n and a paired test against its base model;
- ``domain_table``: one domain's mean and its tasks.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping
from types import MappingProxyType

from cme_bench.report.analysis import AGGREGATES, Analysis, Rank, Score, task_ranks
from cme_bench.report.load import RunRecord
from cme_bench.report.stats import ALPHA
from cme_bench.report.table import EMPTY, Cell, Column, Row, Table

AGGREGATE_LABELS = {
    "cme_avg_domains": ("CME avg (domains)", "mean of the domain means"),
    "cme_avg_tasks": ("CME avg (tasks)", "mean over all tasks"),
    "chance_norm_avg": ("Chance-norm avg", "mean over tasks of (score - chance) / (1 - chance)"),
}


def slug(text: str) -> str:
    """A file-name-safe id; changed names get a checksum suffix so two names never collide."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "_"
    return safe if safe == text else f"{safe}-{zlib.crc32(text.encode()):08x}"


# --- formatting -------------------------------------------------------------------------------------------------


def fmt_score(value: float | None, percent: bool) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{100 * value:.1f}" if percent else f"{value:.4g}"


def fmt_interval(interval: tuple[float, float] | None, percent: bool) -> str:
    if interval is None:
        return ""
    return f"[{fmt_score(interval[0], percent)}, {fmt_score(interval[1], percent)}]"


def fmt_count(value: float | None) -> str:
    if value is None:
        return "—"
    for factor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.0f}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 3600:
        return f"{value / 3600:.2g} h"
    return f"{value / 60:.2g} min" if value >= 60 else f"{value:.3g} s"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    for factor, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= factor:
            return f"{value / factor:.3g} {suffix}"
    return f"{value:.0f} B"


def score_cell(score: Score | None, percent: bool, href: str | None = None) -> Cell:
    if score is None or score.value is None:
        return Cell(note=score.note if score else "", href=href)
    note = score.note  # the interval itself is shown under the value; the note only explains special cases
    return Cell(
        value=score.value,
        display=fmt_score(score.value, percent),
        interval=score.interval,
        interval_display=fmt_interval(score.interval, percent),
        stderr=score.stderr,
        note=note,
        href=href,
    )


def number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def percent_tasks(analysis: Analysis) -> dict[str, bool]:
    """Tasks whose values all lie in [0, 1]: shown x100 like the averages; others as raw numbers."""
    return analysis.unit_interval_tasks


# --- rows shared by every table ---------------------------------------------------------------------------------


INFO_COLUMNS = (
    Column("run", "Run", "info", description="run name; links to the run page"),
    Column("status", "Status", "info"),
    Column("model", "Base model", "info"),
    Column("method", "Method", "info", description="adapter method (preset)"),
    Column("settings", "Settings", "info", description="suite, seed, training steps, learning rate, eval limit"),
)


def settings_text(run: RunRecord) -> str:
    """The settings that tell two runs of one method apart, in a few words."""
    cfg = run.section("config")
    parts = [str(cfg["suite"])] if cfg.get("suite") else []
    if cfg.get("seed") is not None:
        parts.append(f"seed {cfg['seed']}")
    if not run.is_base and cfg.get("max_steps"):
        parts.append(f"{cfg['max_steps']} steps")
    elif not run.is_base and cfg.get("epochs"):
        parts.append(f"{cfg['epochs']} epochs")
    if not run.is_base and number(cfg.get("learning_rate")) is not None:
        parts.append(f"lr {cfg['learning_rate']:.2g}")
    if cfg.get("limit"):
        parts.append(f"limit {cfg['limit']}")
    return " · ".join(parts)


def run_meta(run: RunRecord) -> Mapping[str, str]:
    return MappingProxyType({"method": run.method, "model": run.model_name, "status": run.status, "id": run.run_id})


def info_cells(run: RunRecord) -> tuple[Cell, ...]:
    method = run.method if run.preset == run.method else f"{run.method} ({run.preset})"
    return (
        Cell(run.name, run.name, href=f"runs/{slug(run.run_id)}.html", note=run.run_id),
        Cell(
            run.status,
            run.status,
            note=str((run.data.get("error") or {}).get("message", ""))
            if isinstance(run.data.get("error"), Mapping)
            else "",
        ),
        Cell(run.model_name, run.model_name),
        Cell(method, "none (base model)" if run.is_base else method),
        Cell(settings_text(run), settings_text(run) or "—"),
    )


def rank_cell(rank: Rank | None) -> Cell:
    if rank is None:
        return EMPTY
    text = str(rank.best) if rank.best == rank.worst else f"{rank.best}–{rank.worst}"
    return Cell(float(rank.best), text, note=f"rank range {text}; tie group {rank.group}")


def _sorted_runs(analysis: Analysis, key: str | None, lookup) -> list[RunRecord]:
    def sort_key(run: RunRecord):
        value = lookup(run.run_id, key) if key and run.ok else None
        return (not run.ok, value is None, -(value or 0.0), run.run_id)

    return sorted(analysis.runs, key=sort_key)


# --- efficiency and cost ----------------------------------------------------------------------------------------

EFFICIENCY = (
    # key, label, higher_is_better, section, field, formatter
    ("trainable_params", "Trainable params", False, "adapter", "trainable_parameters", fmt_count),
    (
        "trainable_share",
        "Trainable share",
        False,
        "adapter",
        "trainable_share",
        lambda v: "—" if v is None else f"{100 * v:.3g}%",
    ),
    ("train_seconds", "Train time", False, "training", "seconds", fmt_seconds),
    ("tokens_per_second", "Tokens/s", True, "training", "tokens_per_second", fmt_count),
    ("peak_memory", "Peak memory", False, "training", "peak_memory_bytes", fmt_bytes),
)


def efficiency_value(run: RunRecord, section: str, name: str) -> float | None:
    value = number(run.section(section).get(name))
    if value is None and run.is_base and section == "adapter":
        return 0.0  # the base model trains nothing
    return value


def run_costs(run: RunRecord, profiles: Mapping[tuple[str, str], Mapping[str, float]]) -> dict[str, float]:
    costs = {k: v for k, v in run.section("costs").items() if number(v) is not None}
    for key in ((run.model_name, run.preset), (run.model_name, run.method)):
        if key in profiles:
            costs = {**profiles[key], **costs}  # the run's own record wins over a profile file
            break
    return costs


def cost_direction(key: str) -> bool:
    """Whether a higher cost figure is better: throughputs yes, times/memory/sizes no."""
    return any(word in key for word in ("per_second", "per_s", "throughput", "tokens_s"))


# --- tables -----------------------------------------------------------------------------------------------------


def leaderboard_table(
    analysis: Analysis, profiles: Mapping[tuple[str, str], Mapping[str, float]] = MappingProxyType({})
) -> Table:
    """One row per run (best first, unsuccessful runs last) over every column group."""
    key, pct = analysis.ranking_key, percent_tasks(analysis)
    costs = {r.run_id: run_costs(r, profiles) for r in analysis.runs}
    cost_keys = sorted({k for c in costs.values() for k in c} - {"model", "adapter"})

    def lookup(run_id: str, k: str):
        return analysis.aggregates.get((run_id, k), Score(None)).value

    rows = [
        _leaderboard_row(analysis, run, costs[run.run_id], cost_keys, pct)
        for run in _sorted_runs(analysis, key, lookup)
    ]
    notes = (
        f"Ranked by {AGGREGATE_LABELS[key][0] if key else '—'}; intervals are 95% bootstrap intervals; "
        f"rank ranges separate runs at alpha = {ALPHA} (paired bootstrap).",
    )
    return Table("Leaderboard", _leaderboard_columns(analysis, pct, cost_keys), tuple(rows), notes)


def _leaderboard_columns(analysis: Analysis, pct: Mapping[str, bool], cost_keys: list[str]) -> tuple[Column, ...]:
    key = analysis.ranking_key
    columns: list[Column] = [Column("rank", "Rank", "info", description="rank range on " + (key or "—"))]
    columns += INFO_COLUMNS
    columns += [
        Column(a, *AGGREGATE_LABELS[a][:1], "aggregate", True, AGGREGATE_LABELS[a][1], unit="%") for a in AGGREGATES
    ]
    columns.append(Column("win_rate", "Mean win rate", "aggregate", True, "HELM mean win rate over tasks", unit="%"))
    columns += [
        Column(f"domain:{d}", d, "domain", True, f"mean of {len(m)} task(s)", domain=d, unit="%")
        for d, m in analysis.domains.items()
    ]
    columns += [
        Column(
            f"task:{t}",
            m.display_name,
            "task",
            m.higher_is_better,
            f"{m.name}: {m.primary_metric}",
            domain=m.domain,
            unit="%" if pct[t] else "",
        )
        for t, m in analysis.tasks.items()
    ]
    columns += [Column(ekey, label, "efficiency", hib) for ekey, label, hib, *_ in EFFICIENCY]
    columns += [Column(f"cost:{k}", k, "cost", cost_direction(k), "from profile / run record") for k in cost_keys]
    return tuple(columns)


def _leaderboard_row(
    analysis: Analysis, run: RunRecord, costs: Mapping[str, float], cost_keys: list[str], pct: Mapping[str, bool]
) -> Row:
    cells: list[Cell] = [rank_cell(analysis.ranks.get(run.run_id)), *info_cells(run)]
    if not run.ok:
        note = f"run {run.status}: not averaged"
        n_scores = len(AGGREGATES) + 1 + len(analysis.domains) + len(analysis.tasks)
        cells += [Cell(note=note)] * n_scores
    else:
        for agg in AGGREGATES:
            cells.append(score_cell(analysis.aggregates.get((run.run_id, agg)), True))
        win = analysis.win_rates.get(run.run_id)
        cells.append(Cell(win, fmt_score(win, True)) if win is not None else EMPTY)
        for domain in analysis.domains:
            cells.append(
                score_cell(
                    analysis.aggregates.get((run.run_id, f"domain:{domain}")),
                    True,
                    href=f"domains/{slug(domain)}.html",
                )
            )
        for task in analysis.tasks:
            cells.append(
                score_cell(
                    analysis.scores.get((run.run_id, task)),
                    pct[task],
                    href=f"tasks/{slug(task)}.html",
                )
            )
    for _key, _label, _hib, section, name, fmt in EFFICIENCY:
        value = efficiency_value(run, section, name)
        cells.append(Cell(value, fmt(value)) if value is not None else EMPTY)
    for k in cost_keys:
        value = costs.get(k)
        cells.append(Cell(value, f"{value:.4g}") if value is not None else EMPTY)
    return Row(run.run_id, tuple(cells), run.status, run_meta(run))


def task_table(analysis: Analysis, task: str) -> Table:
    meta = analysis.tasks[task]
    percent = percent_tasks(analysis)[task]
    ranks = task_ranks(analysis, task)
    columns = (
        Column("rank", "Rank", "info"),
        *INFO_COLUMNS,
        Column(
            "score",
            f"{meta.display_name} ({meta.primary_metric})",
            "task",
            meta.higher_is_better,
            domain=meta.domain,
            unit="%" if percent else "",
        ),
        Column("stderr", "Stderr", "task", None),
        Column("n", "n", "task", None),
        Column("delta", "Δ vs base", "task", meta.higher_is_better, "difference to the base model on common items"),
        Column("p", "p vs base", "task", None, "McNemar exact (0/1 scores) or paired bootstrap"),
    )
    rows = []

    def lookup(run_id: str, _k):
        value = analysis.scores.get((run_id, task), Score(None)).value
        return None if value is None else (value if meta.higher_is_better else -value)

    for run in _sorted_runs(analysis, task, lookup):
        score = analysis.scores.get((run.run_id, task))
        if run.ok and (score is None or score.value is None):
            continue  # a successful run that was not evaluated on this task does not belong here
        cells = [rank_cell(ranks.get(run.run_id)), *info_cells(run), score_cell(score, percent)]
        cells += [
            Cell(score.stderr, fmt_score(score.stderr, percent)) if score and score.stderr is not None else EMPTY,
            Cell(score.n, str(score.n)) if score and score.n is not None else EMPTY,
        ]
        cells += _vs_base(analysis, run, task, percent)
        rows.append(Row(run.run_id, tuple(cells), run.status, run_meta(run)))
    return Table(
        meta.display_name,
        columns,
        tuple(rows),
        (f"{meta.name}: {meta.primary_metric}, domain {meta.domain}, chance {meta.chance}",),
    )


def _vs_base(analysis: Analysis, run: RunRecord, task: str, percent: bool) -> list[Cell]:
    base = analysis.base_run(run) if run.ok else None
    if base is None or base.run_id == run.run_id:
        return [EMPTY, EMPTY]
    test = analysis.paired(task, run, base)
    if test["delta"] is None:
        return [EMPTY, EMPTY]
    delta = Cell(
        test["delta"],
        ("+" if test["delta"] >= 0 else "") + fmt_score(test["delta"], percent),
        note=f"vs {base.name} on {test['n']} common items",
    )
    if test["p"] is None:
        return [delta, EMPTY]
    star = "*" if test["p"] < ALPHA else ""
    return [delta, Cell(test["p"], f"{test['p']:.3g}{star}", note=test["test"])]


def domain_table(analysis: Analysis, domain: str) -> Table:
    members, pct = analysis.domains[domain], percent_tasks(analysis)
    columns = [
        Column("rank", "Rank", "info"),
        *INFO_COLUMNS,
        Column(f"domain:{domain}", f"{domain} (mean)", "domain", True, domain=domain, unit="%"),
    ]
    columns += [
        Column(f"task:{t}", analysis.tasks[t].display_name, "task", analysis.tasks[t].higher_is_better, domain=domain)
        for t in members
    ]

    def lookup(run_id: str, k):
        return analysis.aggregates.get((run_id, k), Score(None)).value

    rows = []
    for run in _sorted_runs(analysis, f"domain:{domain}", lookup):
        if run.ok and all(analysis.scores[(run.run_id, t)].value is None for t in members):
            continue
        cells = [EMPTY, *info_cells(run), score_cell(analysis.aggregates.get((run.run_id, f"domain:{domain}")), True)]
        cells += [
            score_cell(analysis.scores.get((run.run_id, t)), pct[t], href=f"tasks/{slug(t)}.html") for t in members
        ]
        rows.append(Row(run.run_id, tuple(cells), run.status, run_meta(run)))
    return Table(f"Domain: {domain}", tuple(columns), tuple(rows))
