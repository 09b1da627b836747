"""Table builders: an ``Analysis`` (numbers) becomes ``Table``s (display-ready cells). No rendering here.

- ``leaderboard_tables``: one table per evaluation set (the main one first), one row per entry (a run, or the runs
  that differ only by seed), scores first: rank, a short label, the ranking average, domains, tasks, the other
  averages, the comparison with the leader, then the descriptive columns (status, model, settings, costs);
- ``task_table``: one task, each entry's score with interval, stderr, n and a paired test against its base model;
- ``domain_table``: one domain's mean and its tasks.
"""

from __future__ import annotations

import math
import re
import shlex
import zlib
from collections.abc import Mapping
from types import MappingProxyType

from cme_bench.report.analysis import AGGREGATES, Analysis, Entry, EvalSet, Rank, Score, task_ranks
from cme_bench.report.groups import differing_settings
from cme_bench.report.load import RunRecord
from cme_bench.report.stats import ALPHA, POWER, Z_ALPHA
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


def fmt_delta(value: float | None, percent: bool = True) -> str:
    if value is None or math.isnan(value):
        return "—"
    return ("+" if value > 0 else "") + fmt_score(value, percent)


def score_cell(score: Score | None, percent: bool, href: str | None = None) -> Cell:
    if score is None or score.value is None:
        return Cell(note=score.note if score else "", href=href)
    note = score.note  # the interval itself is shown under the value; the note only explains special cases
    display = fmt_score(score.value, percent)
    if score.seed_values is not None:
        std = score.seed_std
        display += f" ± {fmt_score(std, percent)}" if std is not None else ""
        seeds = ", ".join(fmt_score(v, percent) for v in score.seed_values)
        note = f"mean ± std over {len(score.seed_values)} seeds ({seeds}); interval: two-stage bootstrap"
    return Cell(
        value=score.value,
        display=display,
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
    Column("status", "Status", "info"),
    Column("model", "Base model", "info"),
    Column("method", "Method", "info", description="adapter method (preset)"),
    Column("settings", "Settings", "info", description="suite, seed(s), training steps, learning rate, eval limit"),
)
RUN_COLUMN = Column("run", "Run", "info", description="short label: method + the settings that differ between rows")
SEEDS_COLUMN = Column("seeds", "Seeds", "info", description="number of seeds averaged in this row")
SET_COLUMN = Column("eval_set", "Eval set", "info", description="runs are ranked only within one evaluation set")


def settings_text(run: RunRecord, seeds: list[object] | None = None) -> str:
    """The settings that tell two runs of one method apart, in a few words."""
    cfg = run.section("config")
    parts = [str(cfg["suite"])] if cfg.get("suite") else []
    if seeds and len(seeds) > 1:
        parts.append("seeds " + ", ".join(map(str, seeds)))
    elif cfg.get("seed") is not None:
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


def eval_command(run: RunRecord) -> str:
    """The shell command that evaluates a train-only run's saved adapter (each word quoted for a POSIX shell)."""
    rel = run.section("adapter").get("path")
    adapter = run.folder / (rel if isinstance(rel, str) and rel else "adapter")
    model = run.section("config").get("model")
    model_args = ["--model", str(model)] if isinstance(model, str) and model else []
    return shlex.join(["cme-bench", "eval", *model_args, "--adapter-path", str(adapter)])


def label_settings(run: RunRecord) -> dict[str, str]:
    """Settings a short label may mention when they differ between rows (seed never: seeds are averaged)."""
    cfg = run.section("config")
    out = {"model": run.model_name, "suite": str(cfg.get("suite") or "")}
    if not run.is_base:
        out["steps"] = str(cfg.get("max_steps") or "")
        out["lr"] = f"{cfg['learning_rate']:.2g}" if number(cfg.get("learning_rate")) is not None else ""
    out["limit"] = str(cfg.get("limit") or "")
    out["tag"] = str(cfg.get("tag") or "")
    return out


def short_labels(entries: list[Entry]) -> dict[str, str]:
    """Entry key -> its name plus the settings that differ between these entries ("lora · lr 0.001")."""
    extra = differing_settings({e.key: label_settings(e.run) for e in entries})
    out = {}
    for e in entries:
        name = "base model" if e.run.is_base and e.run.name in (e.run.method, "base", "none") else e.run.name
        seeds = [f"{e.n_seeds} seeds"] if e.n_seeds > 1 else []
        out[e.key] = " · ".join([name, *extra[e.key], *seeds])
    return out


def entry_meta(entry: Entry, tie: int | None = None) -> Mapping[str, str]:
    run = entry.run
    meta = {"method": run.method, "model": run.model_name, "status": run.status, "id": entry.key}
    if tie is not None:
        meta["tie"] = str(tie)
    return MappingProxyType(meta)


def run_meta(run: RunRecord) -> Mapping[str, str]:
    return MappingProxyType({"method": run.method, "model": run.model_name, "status": run.status, "id": run.run_id})


def label_cell(entry: Entry, label: str) -> Cell:
    ids = ", ".join(r.run_id for r in entry.runs)
    return Cell(label, label, href=f"runs/{slug(entry.key)}.html", note=ids)


def info_cells(entry: Entry) -> tuple[Cell, ...]:
    run = entry.run
    method = run.method if run.preset == run.method else f"{run.method} ({run.preset})"
    error = run.data.get("error")
    settings = settings_text(run, entry.seeds)
    return (
        Cell(run.status, run.status, note=str(error.get("message", "")) if isinstance(error, Mapping) else ""),
        Cell(run.model_name, run.model_name),
        Cell(method, "none (base model)" if run.is_base else method),
        Cell(settings, settings or "—"),
    )


def seeds_cell(entry: Entry) -> Cell:
    seeds = ", ".join(map(str, entry.seeds))
    return Cell(float(entry.n_seeds), str(entry.n_seeds), note=f"seed(s) {seeds}" if seeds else "")


def set_cell(analysis: Analysis, entry: Entry) -> Cell:
    es = analysis.eval_sets.get(entry.eval_set)
    if es is None:
        return EMPTY
    return Cell(es.label, es.label, note=eval_set_text(es))


def eval_set_text(es: EvalSet) -> str:
    limit = f"{es.limit} documents per task" if es.limit else "all documents"
    return f"{len(es.tasks)} task(s), {limit}"


def rank_cell(rank: Rank | None, note: str = "") -> Cell:
    if rank is None:
        return Cell(note=note) if note else EMPTY
    text = str(rank.best) if rank.best == rank.worst else f"{rank.best}–{rank.worst}"
    return Cell(
        float(rank.best), text, note=f"rank range {text}; tie group {rank.group}" + (f"; {note}" if note else "")
    )


def descriptive_cells(analysis: Analysis) -> dict[str, tuple[Cell, ...]]:
    """Per entry: its label cell, then seeds, eval set and info cells, the same on every task and domain page
    (computed once per report: a 500-run report has 30 task pages)."""
    labels = short_labels(analysis.entries)
    return {
        e.key: (label_cell(e, labels[e.key]), seeds_cell(e), set_cell(analysis, e), *info_cells(e))
        for e in analysis.entries
    }


def _sorted_entries(entries: list[Entry], key: str | None, lookup) -> list[Entry]:
    def sort_key(e: Entry):
        value = lookup(e.key, key) if key and e.ok else None
        return (not e.ok, value is None, -(value or 0.0), e.key)

    return sorted(entries, key=sort_key)


def tie_groups_shown(keys: list[str], ranks: Mapping[str, Rank]) -> dict[str, int]:
    """Tie-group number of each entry whose group has at least two members here (single groups are not shown)."""
    count: dict[int, int] = {}
    for k in keys:
        if k in ranks:
            count[ranks[k].group] = count.get(ranks[k].group, 0) + 1
    return {k: ranks[k].group for k in keys if k in ranks and count[ranks[k].group] > 1}


# --- efficiency and cost ----------------------------------------------------------------------------------------

EFFICIENCY = (
    # key, label, higher_is_better, section, field, formatter
    ("trainable_params", "Trainable params", False, "adapter", "trainable_parameters", fmt_count),
    (
        "trainable_share",
        "Trainable share (%)",
        False,
        "adapter",
        "trainable_share",
        lambda v: "—" if v is None else f"{100 * v:.3g}%",
    ),
    ("train_seconds", "Train time", False, "training", "seconds", fmt_seconds),
    ("tokens_per_second", "Train throughput (tokens/s)", True, "training", "tokens_per_second", fmt_count),
    ("peak_memory", "Peak memory", False, "training", "peak_memory_bytes", fmt_bytes),
)

# Human names (with units) of the cost figures a run record or a profile file may carry.
COST_LABELS = {
    "train_step_ms": "Train step (ms)",
    "prefill_ms": "Prefill (ms)",
    "decode_ms_per_token": "Decode (ms/token)",
    "train_tokens_per_s": "Train throughput (tokens/s)",
    "infer_tokens_per_s": "Inference throughput (tokens/s)",
    "peak_memory_bytes": "Peak memory (bytes)",
    "train_peak_bytes": "Train peak memory (bytes)",
    "infer_peak_bytes": "Inference peak memory (bytes)",
    "adapter_bytes": "Adapter size (bytes)",
    "trainable_parameters": "Trainable params",
}
_UNIT_SUFFIXES = (
    ("_ms_per_token", "(ms/token)"),
    ("_tokens_per_s", "(tokens/s)"),
    ("_tokens_per_second", "(tokens/s)"),
    ("_per_second", "(/s)"),
    ("_per_s", "(/s)"),
    ("_seconds", "(s)"),
    ("_ms", "(ms)"),
    ("_bytes", "(bytes)"),
    ("_mib", "(MiB)"),
    ("_gib", "(GiB)"),
)


def cost_label(key: str) -> str:
    """A cost field's human name with its unit: ``decode_ms_per_token`` -> "Decode (ms/token)"."""
    if key in COST_LABELS:
        return COST_LABELS[key]
    for suffix, unit in _UNIT_SUFFIXES:
        if key.endswith(suffix):
            return f"{key[: -len(suffix)].replace('_', ' ').capitalize()} {unit}"
    return key.replace("_", " ").capitalize()


def fmt_cost(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    if key.endswith("_bytes"):
        return fmt_bytes(value)
    if "per_s" in key or key.endswith("parameters"):
        return fmt_count(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def efficiency_value(run: RunRecord, section: str, name: str) -> float | None:
    value = number(run.section(section).get(name))
    if value is None and run.is_base and section == "adapter":
        return 0.0  # the base model trains nothing
    return value


def entry_efficiency(entry: Entry, section: str, name: str) -> float | None:
    """Mean over the entry's seeds (None unless every seed has the figure)."""
    values = [efficiency_value(r, section, name) for r in entry.runs]
    return None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


def run_costs(run: RunRecord, profiles: Mapping[tuple[str, str], Mapping[str, float]]) -> dict[str, float]:
    costs = {k: v for k, v in run.section("costs").items() if number(v) is not None}
    for key in ((run.model_name, run.preset), (run.model_name, run.method)):
        if key in profiles:
            costs = {**profiles[key], **costs}  # the run's own record wins over a profile file
            break
    return costs


def entry_costs(entry: Entry, profiles) -> dict[str, float]:
    per = [run_costs(r, profiles) for r in entry.runs]
    keys = set.intersection(*(set(c) for c in per)) if per else set()
    return {k: sum(c[k] for c in per) / len(per) for k in keys}


def cost_direction(key: str) -> bool:
    """Whether a higher cost figure is better: throughputs yes, times/memory/sizes no."""
    return any(word in key for word in ("per_second", "per_s", "throughput", "tokens_s"))


# --- tables -----------------------------------------------------------------------------------------------------


def leaderboard_tables(
    analysis: Analysis, profiles: Mapping[tuple[str, str], Mapping[str, float]] = MappingProxyType({})
) -> list[Table]:
    """One leaderboard per evaluation set, the main (largest) one first."""
    return [leaderboard_table(analysis, profiles, es) for es in analysis.eval_sets.values()] or [
        leaderboard_table(analysis, profiles)
    ]


def leaderboard_table(
    analysis: Analysis,
    profiles: Mapping[tuple[str, str], Mapping[str, float]] = MappingProxyType({}),
    eval_set: EvalSet | None = None,
) -> Table:
    """One row per entry of ``eval_set`` (default: the main set), best first, unsuccessful runs last."""
    es = eval_set or next(iter(analysis.eval_sets.values()), None)
    entries = es.entries if es else []
    tasks = es.tasks if es else list(analysis.tasks)
    domains = [d for d, members in analysis.domains.items() if any(t in tasks for t in members)]
    key, pct = analysis.ranking_key, percent_tasks(analysis)
    costs = {e.key: entry_costs(e, profiles) for e in entries}
    cost_keys = sorted({k for c in costs.values() for k in c} - {"model", "adapter"})

    def lookup(k: str, col: str):
        return analysis.aggregates.get((k, col), Score(None)).value

    ordered = _sorted_entries(entries, key, lookup)
    labels = short_labels(ordered)
    ties = tie_groups_shown([e.key for e in ordered], analysis.ranks)
    rows = [
        _leaderboard_row(analysis, e, labels[e.key], ties.get(e.key), costs[e.key], cost_keys, tasks, domains, pct)
        for e in ordered
    ]
    columns = _leaderboard_columns(analysis, pct, cost_keys, tasks, domains)
    ok_keys = [e.key for e in ordered if e.ok]
    inseparable = {
        c.key
        for c in columns
        if c.group in ("aggregate", "domain", "task")
        and c.key != "win_rate"
        and c.ordered
        and not analysis.best_separable(ok_keys, c.key, bool(c.higher_is_better))
    }
    if key is None or key in inseparable:  # the win rate has no interval: it is as separable as the ranking column
        inseparable.add("win_rate")
    notes = (
        f"Ranked by {AGGREGATE_LABELS[key][0] if key else '—'}; intervals are 95% bootstrap intervals; "
        f"rank ranges separate runs at alpha = {ALPHA} (paired bootstrap); shaded rows with one tie group are not "
        "separable; bold marks a best value only where it is separable from every other row.",
    )
    title = "Leaderboard" if es is None or es.primary else f"Evaluated on other documents ({es.label})"
    return Table(title, columns, tuple(rows), notes, frozenset(inseparable))


def _leaderboard_columns(
    analysis: Analysis, pct: Mapping[str, bool], cost_keys: list[str], tasks: list[str], domains: list[str]
) -> tuple[Column, ...]:
    key = analysis.ranking_key
    aggregates = [key, *[a for a in AGGREGATES if a != key]] if key else list(AGGREGATES)
    agg_cols = [
        Column(a, *AGGREGATE_LABELS[a][:1], "aggregate", True, AGGREGATE_LABELS[a][1], unit="%") for a in aggregates
    ]
    columns: list[Column] = [Column("rank", "Rank", "info", description="rank range on " + (key or "—")), RUN_COLUMN]
    columns.append(agg_cols[0])
    columns += [
        Column(f"domain:{d}", d, "domain", True, f"mean of {len(m)} task(s)", domain=d, unit="%")
        for d, m in analysis.domains.items()
        if d in domains
    ]
    columns += [
        Column(
            f"task:{t}",
            analysis.tasks[t].display_name,
            "task",
            analysis.tasks[t].higher_is_better,
            f"{t}: {analysis.tasks[t].primary_metric}",
            domain=analysis.tasks[t].domain,
            unit="%" if pct[t] else "",
        )
        for t in tasks
    ]
    columns += agg_cols[1:]
    columns.append(Column("win_rate", "Mean win rate", "aggregate", True, "HELM mean win rate over tasks", unit="%"))
    columns += [
        Column("delta_leader", "Behind leader", "tie", None, "leader minus this row on the ranking column", unit="pp"),
        Column(
            "mdd",
            "Detectable Δ",
            "tie",
            None,
            f"minimum difference these documents detect (paired, alpha {ALPHA}, power {POWER})",
            unit="pp",
        ),
        Column("docs_needed", "Docs/task to resolve", "tie", None, "documents per task that would resolve the gap"),
        SEEDS_COLUMN,
        *INFO_COLUMNS,
    ]
    columns += [Column(ekey, label, "efficiency", hib) for ekey, label, hib, *_ in EFFICIENCY]
    columns += [
        Column(f"cost:{k}", cost_label(k), "cost", cost_direction(k), f"{k}, from profile / run record")
        for k in cost_keys
    ]
    return tuple(columns)


def vs_leader_cells(analysis: Analysis, entry: Entry) -> list[Cell]:
    """Behind leader, detectable difference and documents to resolve (see stats.METHODS, "What a tie means")."""
    v = analysis.vs_leader.get(entry.key)
    if v is None:
        return [EMPTY, EMPTY, EMPTY]
    gap = fmt_score(v.delta, True)
    se = "" if v.se is None else f"; paired se {fmt_score(v.se, True)} pp"
    delta = Cell(v.delta, gap, note=f"{gap} pp behind the leader{se}")
    if v.mdd is None:
        return [delta, EMPTY, EMPTY]
    mdd_text = fmt_score(v.mdd, True)
    mdd = Cell(
        v.mdd,
        mdd_text,
        note=f"a true difference of {mdd_text} pp is detected {round(100 * POWER)}% of the time on these "
        f"{v.n_docs or '?'} documents per task (paired, alpha {ALPHA}); smaller ones are missed more often",
    )
    if v.delta == 0:
        return [delta, mdd, Cell(note="equal scores: no number of documents separates them")]
    separable = v.se is not None and v.delta > Z_ALPHA * v.se
    if separable:
        verdict = "separable from the leader"
    elif v.delta < v.mdd:
        verdict = "not separable: the gap is below what these documents can detect (too few documents)"
    else:
        verdict = "not separable at this alpha"
    need = (
        Cell(float(v.docs_needed), f"≈{fmt_count(v.docs_needed)}", note=f"now {v.n_docs} per task; {verdict}")
        if v.docs_needed is not None
        else Cell(note=verdict)
    )
    return [delta, mdd, need]


def _leaderboard_row(
    analysis: Analysis,
    entry: Entry,
    label: str,
    tie: int | None,
    costs: Mapping[str, float],
    cost_keys: list[str],
    tasks: list[str],
    domains: list[str],
    pct: Mapping[str, bool],
) -> Row:
    key = analysis.ranking_key
    aggregates = [key, *[a for a in AGGREGATES if a != key]] if key else list(AGGREGATES)
    cells: list[Cell] = [rank_cell(analysis.ranks.get(entry.key)), label_cell(entry, label)]
    if not entry.ok:
        note = f"run {entry.run.status}: not averaged"
        cells += [Cell(note=note)] * (len(AGGREGATES) + 1 + len(domains) + len(tasks))
        cells += [EMPTY, EMPTY, EMPTY]
    else:
        k = entry.key
        cells.append(score_cell(analysis.aggregates.get((k, aggregates[0])), True))
        for domain in domains:
            cells.append(
                score_cell(analysis.aggregates.get((k, f"domain:{domain}")), True, href=f"domains/{slug(domain)}.html")
            )
        for task in tasks:
            cells.append(score_cell(analysis.scores.get((k, task)), pct[task], href=f"tasks/{slug(task)}.html"))
        for agg in aggregates[1:]:
            cells.append(score_cell(analysis.aggregates.get((k, agg)), True))
        win = analysis.win_rates.get(k)
        cells.append(Cell(win, fmt_score(win, True)) if win is not None else EMPTY)
        cells += vs_leader_cells(analysis, entry)
    cells.append(seeds_cell(entry))
    cells += info_cells(entry)
    for _key, _label, _hib, section, name, fmt in EFFICIENCY:
        value = entry_efficiency(entry, section, name)
        cells.append(Cell(value, fmt(value)) if value is not None else EMPTY)
    for c in cost_keys:
        value = costs.get(c)
        cells.append(Cell(value, fmt_cost(c, value)) if value is not None else EMPTY)
    return Row(entry.key, tuple(cells), entry.run.status, entry_meta(entry, tie))


def _task_entries(analysis: Analysis, task: str) -> list[Entry]:
    return [
        e for e in analysis.entries if not e.ok or analysis.scores.get((e.key, task), Score(None)).value is not None
    ]


def task_table(analysis: Analysis, task: str, desc: Mapping[str, tuple[Cell, ...]] | None = None) -> Table:
    meta = analysis.tasks[task]
    percent = percent_tasks(analysis)[task]
    ranks = task_ranks(analysis, task)
    columns = (
        Column("rank", "Rank", "info"),
        RUN_COLUMN,
        Column(
            "score",
            f"{meta.display_name} ({meta.primary_metric})",
            "task",
            meta.higher_is_better,
            domain=meta.domain,
            unit="%" if percent else "",
        ),
        Column("stderr", "Stderr", "task", None),
        Column("n", "Documents", "task", None),
        Column("delta", "Δ vs base", "task", meta.higher_is_better, "difference to the base model on common items"),
        Column("p", "p vs base", "task", None, "McNemar exact (0/1 scores) or paired bootstrap"),
        SEEDS_COLUMN,
        SET_COLUMN,
        *INFO_COLUMNS,
    )
    rows = []

    def lookup(k: str, _col):
        value = analysis.scores.get((k, task), Score(None)).value
        return None if value is None else (value if meta.higher_is_better else -value)

    entries = [e for e in _task_entries(analysis, task) if e.ok or e.eval_set in analysis.eval_sets]
    ordered = _sorted_entries(entries, task, lookup)
    desc = desc or descriptive_cells(analysis)
    ties = tie_groups_shown([e.key for e in ordered], ranks)
    for e in ordered:
        score = analysis.scores.get((e.key, task))
        es = analysis.eval_sets.get(e.eval_set)
        other = "" if es is None or es.primary else f"ranked within {es.label} (other documents)"
        cells = [rank_cell(ranks.get(e.key), other), desc[e.key][0], score_cell(score, percent)]
        cells += [
            Cell(score.stderr, fmt_score(score.stderr, percent)) if score and score.stderr is not None else EMPTY,
            Cell(score.n, str(score.n)) if score and score.n is not None else EMPTY,
        ]
        cells += _vs_base(analysis, e, task, percent)
        cells += desc[e.key][1:]
        rows.append(Row(e.key, tuple(cells), e.run.status, entry_meta(e, ties.get(e.key))))
    ok_keys = [e.key for e in ordered if e.ok and analysis.eval_sets[e.eval_set].primary]
    # Δ vs base is judged by its own p-value (shown beside it), never by being the largest.
    inseparable = frozenset(
        ("delta",) if analysis.best_separable(ok_keys, f"task:{task}", meta.higher_is_better) else ("score", "delta")
    )
    return Table(
        meta.display_name,
        columns,
        tuple(rows),
        (f"{meta.name}: {meta.primary_metric}, domain {meta.domain}, chance {meta.chance}",),
        inseparable,
    )


def _vs_base(analysis: Analysis, entry: Entry, task: str, percent: bool) -> list[Cell]:
    base = analysis.base_entry(entry) if entry.ok else None
    if base is None or base.key == entry.key:
        return [EMPTY, EMPTY]
    test = analysis.paired(task, entry.key, base.key)
    if test["delta"] is None:
        return [EMPTY, EMPTY]
    delta = Cell(
        test["delta"],
        fmt_delta(test["delta"], percent),
        note=f"vs {base.run.name} on {test['n']} common items",
    )
    if test["p"] is None:
        return [delta, EMPTY]
    star = "*" if test["p"] < ALPHA else ""
    return [delta, Cell(test["p"], f"{test['p']:.3g}{star}", note=test["test"])]


def domain_table(analysis: Analysis, domain: str, desc: Mapping[str, tuple[Cell, ...]] | None = None) -> Table:
    members, pct = analysis.domains[domain], percent_tasks(analysis)
    columns = [
        Column("rank", "Rank", "info"),
        RUN_COLUMN,
        Column(f"domain:{domain}", f"{domain} (mean)", "domain", True, domain=domain, unit="%"),
    ]
    columns += [
        Column(
            f"task:{t}",
            analysis.tasks[t].display_name,
            "task",
            analysis.tasks[t].higher_is_better,
            domain=domain,
            unit="%" if pct[t] else "",
        )
        for t in members
    ]
    columns += [SEEDS_COLUMN, SET_COLUMN, *INFO_COLUMNS]

    def lookup(k: str, col):
        return analysis.aggregates.get((k, col), Score(None)).value

    entries = [
        e
        for e in analysis.entries
        if not e.ok or any(analysis.scores.get((e.key, t), Score(None)).value is not None for t in members)
    ]
    ordered = _sorted_entries(entries, f"domain:{domain}", lookup)
    desc = desc or descriptive_cells(analysis)
    rows = []
    for e in ordered:
        cells = [
            EMPTY,
            desc[e.key][0],
            score_cell(analysis.aggregates.get((e.key, f"domain:{domain}")), True),
        ]
        cells += [score_cell(analysis.scores.get((e.key, t)), pct[t], href=f"tasks/{slug(t)}.html") for t in members]
        cells += desc[e.key][1:]
        rows.append(Row(e.key, tuple(cells), e.run.status, entry_meta(e)))
    return Table(f"Domain: {domain}", tuple(columns), tuple(rows))
