"""From run records to numbers: per-task scores with intervals, averages, win rates, rank ranges, paired tests.

``analyse(runs, task_info)`` does all the statistics once; the table builders and renderers only read the result.
Only successful runs are scored; the others are carried along so that they can be listed with their status.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from cme_bench.report import stats
from cme_bench.report.load import RunRecord, load_samples
from cme_bench.report.taskmeta import TaskInfoFn, TaskMeta, resolve_tasks

log = logging.getLogger(__name__)

# Aggregate keys, in column order. The first one present is the ranking column.
AGGREGATES = ("cme_avg_domains", "cme_avg_tasks", "chance_norm_avg")


@dataclass
class Score:
    """A value with its uncertainty. ``replicates`` are shared-index bootstrap replicates (None if unavailable)."""

    value: float | None
    stderr: float | None = None
    interval: tuple[float, float] | None = None
    n: int | None = None
    source: str = "samples"  # "samples" | "record" (normal approximation) | "aggregate"
    note: str = ""
    replicates: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Rank:
    best: int
    worst: int
    group: int


@dataclass
class TaskItems:
    """Per-sample scores of one task aligned by doc_id: ``matrix[row[run_id]]`` (NaN = item missing)."""

    doc_ids: list[object]
    row: dict[str, int]
    matrix: np.ndarray


@dataclass
class Analysis:
    runs: list[RunRecord]
    tasks: dict[str, TaskMeta]  # ordered by domain, then display name
    domains: dict[str, list[str]]
    scores: dict[tuple[str, str], Score]  # (run_id, task) -> Score
    aggregates: dict[tuple[str, str], Score]  # (run_id, "domain:<d>" | AGGREGATES) -> Score
    win_rates: dict[str, float | None]
    ranks: dict[str, Rank]
    ranking_key: str | None
    items: dict[str, TaskItems]
    n_boot: int
    seed: int

    @cached_property
    def ok_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.ok]

    @cached_property
    def unit_interval_tasks(self) -> dict[str, bool]:
        """Per task: do all its values lie in [0, 1] (accuracy-like, shown as a percentage)?"""
        out = dict.fromkeys(self.tasks, True)
        for (_, task), score in self.scores.items():
            if score.value is not None and not 0.0 <= score.value <= 1.0:
                out[task] = False
        return out

    @cached_property
    def _bases(self) -> dict[tuple, RunRecord]:
        bases: dict[tuple, RunRecord] = {}
        for run in self.ok_runs:
            if run.is_base:  # runs are sorted by id: the first one wins
                bases.setdefault(_base_key(run), run)
                bases.setdefault((run.model_name,), run)
        return bases

    def base_run(self, run: RunRecord) -> RunRecord | None:
        """The successful base-model row (adapter none) for ``run``'s model, if any: one evaluated the same way
        (suite and limit) when there is one, else any run of that base model."""
        return self._bases.get(_base_key(run)) or self._bases.get((run.model_name,))

    def paired(self, task: str, a: RunRecord, b: RunRecord) -> dict:
        """Paired test of a vs b on ``task`` (see stats.paired_test)."""
        ti = self.items.get(task)
        sa, sb = self.scores.get((a.run_id, task)), self.scores.get((b.run_id, task))
        if ti is None or a.run_id not in ti.row or b.run_id not in ti.row or sa is None or sb is None:
            return {"test": "none", "p": None, "delta": None, "n": 0}
        return stats.paired_test(
            ti.matrix[ti.row[a.run_id]], ti.matrix[ti.row[b.run_id]], sa.replicates, sb.replicates
        )


def _base_key(run: RunRecord) -> tuple:
    cfg = run.section("config")
    return (run.model_name, str(cfg.get("suite")), str(cfg.get("limit")))


def _natural(text: str) -> tuple:
    """Sort key that orders "Task 2" before "Task 10"."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", text))


def _doc_key(doc_id: object) -> object:
    # ints and strings are their own keys (cheap); anything else (already rejected: dict/list) as JSON text.
    return doc_id if isinstance(doc_id, (int, str)) else json.dumps(doc_id)


def _score_task(task: str, runs: list[RunRecord], n_boot: int, seed: int) -> tuple[dict[str, Score], TaskItems]:
    per_run: dict[str, dict[str, float]] = {}
    for run in runs:
        samples = load_samples(run, task)
        if samples:
            per_run[run.run_id] = {_doc_key(s["doc_id"]): s["score"] for s in samples}
    doc_ids = sorted({d for scores in per_run.values() for d in scores}, key=lambda d: (type(d).__name__, d))
    col = {d: j for j, d in enumerate(doc_ids)}
    row = {rid: i for i, rid in enumerate(per_run)}
    matrix = np.full((len(row), len(doc_ids)), np.nan)
    for rid, scores in per_run.items():
        for d, v in scores.items():
            matrix[row[rid], col[d]] = v
    reps = np.empty((len(row), n_boot))
    if doc_ids:
        counts = stats.bootstrap_counts(len(doc_ids), n_boot, np.random.default_rng(stats.seed_for(seed, task)))
        reps = stats.replicate_means(matrix, counts)
    out = {run.run_id: _score_one(run, task, matrix, row, reps, n_boot, seed) for run in runs}
    fill_intervals(list(out.values()))
    return out, TaskItems(doc_ids, row, matrix)


def fill_intervals(scores: list[Score]) -> None:
    """Percentile intervals (and, for aggregates, the bootstrap stderr) of many scores in one vectorised call."""
    todo = [s for s in scores if s.replicates is not None and s.interval is None]
    if not todo:
        return
    reps = np.vstack([s.replicates for s in todo])
    q = [100 * stats.ALPHA / 2, 100 * (1 - stats.ALPHA / 2)]
    # np.percentile on the NaN-free rows in one call; nanpercentile (a per-row Python loop) only where needed.
    has_nan = np.isnan(reps).any(axis=1)
    lo, hi = np.full(len(todo), np.nan), np.full(len(todo), np.nan)
    sd = np.full(len(todo), np.nan)
    clean = ~has_nan
    if clean.any():
        lo[clean], hi[clean] = np.percentile(reps[clean], q, axis=1)
        sd[clean] = reps[clean].std(axis=1, ddof=1)
    if has_nan.any():
        with warnings.catch_warnings():  # all-NaN rows (no usable resample) simply get no interval
            warnings.simplefilter("ignore", RuntimeWarning)
            lo[has_nan], hi[has_nan] = np.nanpercentile(reps[has_nan], q, axis=1)
            sd[has_nan] = np.nanstd(reps[has_nan], axis=1, ddof=1)
    for score, a, b, d in zip(todo, lo, hi, sd):
        if not np.isnan(a):
            score.interval = (float(a), float(b))
        if score.source == "aggregate" and not np.isnan(d):
            score.stderr = float(d)


def _score_one(run, task, matrix, row, reps, n_boot, seed) -> Score:
    metric = run.metrics.get(task)
    recorded = metric.value if metric else None
    if run.run_id in row:
        x = matrix[row[run.run_id]]
        x = x[~np.isnan(x)]
        mean = float(x.mean())
        value = recorded if recorded is not None else mean
        if abs(value - mean) > 1e-6:
            log.warning("%s: %s recorded %.6g but its samples average %.6g", run.path, task, value, mean)
        rep = reps[row[run.run_id]]
        return Score(value, stats.mean_stderr(x), None, int(x.size), "samples", "", rep)  # interval: fill_intervals
    if recorded is None:
        return Score(None, note="no value recorded")
    stderr = metric.stderr
    if stderr is None:
        return Score(recorded, n=metric.n, source="record", note="no per-sample log and no stderr: no interval")
    rng = np.random.default_rng(stats.seed_for(seed, task, run.run_id))
    rep = recorded + stderr * rng.standard_normal(n_boot)
    return Score(
        recorded,
        stderr,
        stats.normal_interval(recorded, stderr),
        metric.n,
        "record",
        "no per-sample log: normal-approximation interval from the recorded stderr",
        rep,
    )


def _mean_score(parts: list[Score], transform=lambda v, rep: (v, rep)) -> Score:
    vals, reps = [], []
    for s in parts:
        v, r = transform(s.value, s.replicates)
        vals.append(v)
        reps.append(r)
    value = float(np.mean(vals))
    rep = None if any(r is None for r in reps) else np.mean(np.vstack(reps), axis=0)
    return Score(value, None, None, None, "aggregate", "", rep)  # interval and stderr: fill_intervals


def _aggregate_run(run, tasks, domains, scores) -> dict[str, Score]:
    have = {t for t in tasks if scores[(run.run_id, t)].value is not None}
    averaged = [t for t in tasks if tasks[t].higher_is_better]
    out: dict[str, Score] = {}
    for domain, members in domains.items():
        members = [t for t in members if tasks[t].higher_is_better]
        missing = [tasks[t].display_name for t in members if t not in have]
        if members and not missing:
            out[f"domain:{domain}"] = _mean_score([scores[(run.run_id, t)] for t in members])
        elif members:
            out[f"domain:{domain}"] = Score(None, note="missing: " + ", ".join(missing))
    missing = [tasks[t].display_name for t in averaged if t not in have]
    if not averaged or missing:
        note = "missing: " + ", ".join(missing) if missing else "no higher-is-better tasks"
        return out | {k: Score(None, note=note) for k in AGGREGATES}
    domain_scores = [out[f"domain:{d}"] for d in domains if f"domain:{d}" in out]
    out["cme_avg_domains"] = _mean_score(domain_scores)
    out["cme_avg_tasks"] = _mean_score([scores[(run.run_id, t)] for t in averaged])

    def normalise(task):
        chance = tasks[task].chance
        return lambda v, rep: (
            stats.chance_normalise(v, chance),
            None if rep is None else (rep - (chance or 0)) / (1 - (chance or 0)),
        )

    parts = [_mean_score([scores[(run.run_id, t)]], normalise(t)) for t in averaged]
    out["chance_norm_avg"] = _mean_score(parts)
    return out


def _rank(ok: list[RunRecord], aggregates, key: str, n_boot: int) -> dict[str, Rank]:
    ranked = [r for r in ok if aggregates[(r.run_id, key)].value is not None]
    if not ranked:
        return {}
    values = np.array([aggregates[(r.run_id, key)].value for r in ranked])
    # A run without replicates gets NaNs: it is then separable from nobody (rank range spans everything).
    missing = np.full(n_boot, np.nan)
    reps = np.vstack(
        [
            aggregates[(r.run_id, key)].replicates if aggregates[(r.run_id, key)].replicates is not None else missing
            for r in ranked
        ]
    )
    better = stats.significance_matrix(reps, values)
    ranges = stats.rank_ranges(better)
    order = list(np.argsort(-values, kind="stable"))
    groups = stats.tie_groups(order, better)
    return {r.run_id: Rank(ranges[i][0], ranges[i][1], groups[i]) for i, r in enumerate(ranked)}


def analyse(
    runs: list[RunRecord], task_info: TaskInfoFn | None, n_boot: int = stats.DEFAULT_BOOTSTRAP, seed: int = 0
) -> Analysis:
    """All statistics of the report (see ``stats.METHODS``)."""
    ok = [r for r in runs if r.ok]
    names = sorted({t for r in ok for t in r.metrics})
    meta = resolve_tasks(names, runs, task_info)
    tasks = dict(sorted(meta.items(), key=lambda kv: (_natural(kv[1].domain), _natural(kv[1].display_name), kv[0])))
    domains: dict[str, list[str]] = {}
    for t, m in tasks.items():
        domains.setdefault(m.domain, []).append(t)
    scores: dict[tuple[str, str], Score] = {}
    items: dict[str, TaskItems] = {}
    for task in tasks:
        with_task = [r for r in ok if task in r.metrics]
        per_run, items[task] = _score_task(task, with_task, n_boot, seed)
        for r in ok:
            scores[(r.run_id, task)] = per_run.get(r.run_id) or Score(None, note="not evaluated on this task")
    aggregates: dict[tuple[str, str], Score] = {}
    for r in ok:
        for key, score in _aggregate_run(r, tasks, domains, scores).items():
            aggregates[(r.run_id, key)] = score
    for key in {k for _, k in aggregates}:
        fill_intervals([s for (_, k), s in aggregates.items() if k == key])
    columns = [[scores[(r.run_id, t)].value for r in ok] for t in tasks]
    win = stats.mean_win_rates(columns, [tasks[t].higher_is_better for t in tasks]) if ok else []
    win_rates = {r.run_id: w for r, w in zip(ok, win)}
    ranking_key = next(
        (k for k in AGGREGATES if any(aggregates.get((r.run_id, k), Score(None)).value is not None for r in ok)), None
    )
    ranks = _rank(ok, aggregates, ranking_key, n_boot) if ranking_key else {}
    return Analysis(runs, tasks, domains, scores, aggregates, win_rates, ranks, ranking_key, items, n_boot, seed)


def task_ranks(analysis: Analysis, task: str) -> dict[str, Rank]:
    """Rank ranges of the successful runs on one task (direction from the task's metadata)."""
    sign = 1.0 if analysis.tasks[task].higher_is_better else -1.0
    fake = {}
    for r in analysis.ok_runs:
        s = analysis.scores[(r.run_id, task)]
        rep = None if s.replicates is None else sign * s.replicates
        fake[(r.run_id, task)] = Score(None if s.value is None else sign * s.value, replicates=rep)
    return _rank(analysis.ok_runs, fake, task, analysis.n_boot)
