"""From run records to numbers: per-task scores with intervals, averages, win rates, rank ranges, paired tests.

``analyse(runs, task_info)`` does all the statistics once; the table builders and renderers only read the result.
Only successful runs are scored; the others are carried along so that they can be listed with their status.

A row of a table is an ``Entry``: one run, or the runs that differ only by seed (``groups.seed_groups``), whose
scores are means over seeds with two-stage bootstrap replicates. Entries are ranked only against entries of the same
evaluation set (``groups.eval_set_key``); every score dict is keyed by the entry's key (a run id for a one-run entry).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from cme_bench.report import stats
from cme_bench.report.groups import eval_set_key, seed_groups, seed_of, tasks_of
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
    source: str = "samples"  # "samples" | "record" (normal approximation) | "aggregate" | "seeds"
    note: str = ""
    replicates: np.ndarray | None = field(default=None, repr=False)
    seed_values: tuple[float, ...] | None = None  # one value per seed (entries of several seeds only)

    @property
    def seed_std(self) -> float | None:
        v = self.seed_values
        return float(np.std(v, ddof=1)) if v is not None and len(v) > 1 else None


@dataclass
class Entry:
    """One table row: a single run, or the successful runs that differ only by seed (``runs`` sorted by seed)."""

    key: str
    runs: list[RunRecord]
    eval_set: str

    @property
    def run(self) -> RunRecord:
        return self.runs[0]

    @cached_property
    def ok(self) -> bool:
        return self.run.ok

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    @cached_property
    def seeds(self) -> list[object]:
        return [seed_of(r) for r in self.runs]


@dataclass
class EvalSet:
    """Entries scored on the same documents; ``primary`` is the largest set (the main leaderboard)."""

    key: str
    label: str
    entries: list[Entry]
    tasks: list[str]
    limit: object
    primary: bool = False


@dataclass(frozen=True)
class VsLeader:
    """An entry compared with its table's leader on the ranking column (see stats.METHODS, "What a tie means")."""

    leader: str
    delta: float  # leader - this entry
    se: float | None
    mdd: float | None  # minimum detectable difference (paired, alpha, power)
    n_docs: int | None  # documents per task now
    docs_needed: int | None  # documents per task that would resolve delta


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
    entries: list[Entry]
    eval_sets: dict[str, EvalSet]  # primary first
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
    vs_leader: dict[str, VsLeader] = field(default_factory=dict)

    @cached_property
    def ok_runs(self) -> list[RunRecord]:
        """The successful runs that were evaluated (the ones with scores)."""
        return [r for r in self.runs if r.ok and not r.train_only]

    @cached_property
    def trained_only(self) -> list[RunRecord]:
        """Trained, not evaluated yet: train-only records whose adapter no evaluation record names as its provenance
        (``adapter.provenance.run_id``). Never a row nor an evaluation set; they are listed and get a run page."""
        provenances = [r.section("adapter").get("provenance") for r in self.ok_runs]
        evaluated = {p.get("run_id") for p in provenances if isinstance(p, Mapping)}
        return [r for r in self.runs if r.train_only and r.run_id not in evaluated]

    @cached_property
    def ok_entries(self) -> list[Entry]:
        return [e for e in self.entries if e.ok]

    @cached_property
    def entry_of(self) -> dict[str, Entry]:
        """The entry of each run id."""
        return {r.run_id: e for e in self.entries for r in e.runs}

    def value(self, key: str, column: str) -> Score:
        """An entry's score on ``task:<t>``, ``domain:<d>`` or an aggregate key."""
        if column.startswith("task:"):
            return self.scores.get((key, column[5:]), Score(None))
        return self.aggregates.get((key, column), Score(None))

    def best_separable(self, keys: list[str], column: str, higher_is_better: bool = True) -> bool:
        """Is the best of these entries on ``column`` significantly better than each of the others?

        The runner-up is tested first: in most columns it is not separable, and that answers without building the
        full replicate matrix (this runs for every score column of every table).
        """
        found = [s for s in (self.value(k, column) for k in keys) if s.value is not None]
        if len(found) < 2:
            return len(found) == 1
        sign = 1.0 if higher_is_better else -1.0
        found.sort(key=lambda s: -sign * s.value)
        missing = np.full(self.n_boot, np.nan)

        def reps(group: list[Score]) -> np.ndarray:
            return np.vstack([sign * s.replicates if s.replicates is not None else missing for s in group])

        top2 = found[:2]
        if not stats.separable_best(reps(top2), np.array([sign * s.value for s in top2])):
            return False
        return stats.separable_best(reps(found), np.array([sign * s.value for s in found]))

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

    def base_entry(self, entry: Entry) -> Entry | None:
        base = self.base_run(entry.run)
        return None if base is None else self.entry_of[base.run_id]

    def paired(self, task: str, a: str, b: str) -> dict:
        """Paired test of entry (or run) key a vs b on ``task`` (see stats.paired_test)."""
        ti = self.items.get(task)
        sa, sb = self.scores.get((a, task)), self.scores.get((b, task))
        if ti is None or a not in ti.row or b not in ti.row or sa is None or sb is None:
            return {"test": "none", "p": None, "delta": None, "n": 0}
        return stats.paired_test(ti.matrix[ti.row[a]], ti.matrix[ti.row[b]], sa.replicates, sb.replicates)


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
        if score.source in ("aggregate", "seeds") and not np.isnan(d):
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


def _aggregate_run(key: str, tasks, domains, scores) -> dict[str, Score]:
    """Domain and overall averages of one entry over ``tasks`` (the tasks of its evaluation set)."""
    have = {t for t in tasks if scores[(key, t)].value is not None}
    averaged = [t for t in tasks if tasks[t].higher_is_better]
    out: dict[str, Score] = {}
    for domain, members in domains.items():
        members = [t for t in members if t in tasks and tasks[t].higher_is_better]
        missing = [tasks[t].display_name for t in members if t not in have]
        if members and not missing:
            out[f"domain:{domain}"] = _mean_score([scores[(key, t)] for t in members])
        elif members:
            out[f"domain:{domain}"] = Score(None, note="missing: " + ", ".join(missing))
    missing = [tasks[t].display_name for t in averaged if t not in have]
    if not averaged or missing:
        note = "missing: " + ", ".join(missing) if missing else "no higher-is-better tasks"
        return out | {k: Score(None, note=note) for k in AGGREGATES}
    domain_scores = [out[f"domain:{d}"] for d in domains if f"domain:{d}" in out]
    out["cme_avg_domains"] = _mean_score(domain_scores)
    out["cme_avg_tasks"] = _mean_score([scores[(key, t)] for t in averaged])

    def normalise(task):
        chance = tasks[task].chance
        return lambda v, rep: (
            stats.chance_normalise(v, chance),
            None if rep is None else (rep - (chance or 0)) / (1 - (chance or 0)),
        )

    parts = [_mean_score([scores[(key, t)]], normalise(t)) for t in averaged]
    out["chance_norm_avg"] = _mean_score(parts)
    return out


def _rank(keys: list[str], aggregates, key: str, n_boot: int) -> dict[str, Rank]:
    ranked = [k for k in keys if aggregates[(k, key)].value is not None]
    if not ranked:
        return {}
    values = np.array([aggregates[(k, key)].value for k in ranked])
    # An entry without replicates gets NaNs: it is then separable from nobody (rank range spans everything).
    missing = np.full(n_boot, np.nan)
    reps = np.vstack(
        [aggregates[(k, key)].replicates if aggregates[(k, key)].replicates is not None else missing for k in ranked]
    )
    better = stats.significance_matrix(reps, values)
    ranges = stats.rank_ranges(better)
    order = list(np.argsort(-values, kind="stable"))
    groups = stats.tie_groups(order, better)
    return {k: Rank(ranges[i][0], ranges[i][1], groups[i]) for i, k in enumerate(ranked)}


def _entries(runs: list[RunRecord]) -> list[Entry]:
    """Seed groups of the successful runs plus one entry per unsuccessful run, in run-id order."""
    entries = []
    for members in seed_groups(runs).values():
        key = members[0].run_id if len(members) == 1 else _group_key(members)
        entries.append(Entry(key, members, eval_set_key(members[0])))
    entries += [Entry(r.run_id, [r], eval_set_key(r)) for r in runs if not r.ok]
    return sorted(entries, key=lambda e: e.run.run_id)


def _group_key(members: list[RunRecord]) -> str:
    """A readable key for a seed group: the first run id with its seed part replaced by the seeds."""
    first = members[0].run_id
    seeds = "s" + "+".join(str(seed_of(r)) for r in members)
    key = re.sub(r"--s[^-]+(?=--|$)", "--" + seeds, first, count=1)
    return key if key != first else f"{first}--{seeds}"


def _eval_sets(entries: list[Entry], tasks: dict[str, TaskMeta]) -> dict[str, EvalSet]:
    """Entries by evaluation set, largest first. An unsuccessful run has no scores to compare: it is listed with the
    main set unless successful runs share its set."""
    by_key: dict[str, list[Entry]] = {}
    for e in entries:
        if e.ok:
            by_key.setdefault(e.eval_set, []).append(e)
    order = sorted(by_key, key=lambda k: (-len(by_key[k]), k))
    for e in entries:
        if not e.ok:
            if e.eval_set not in by_key:
                e.eval_set = order[0] if order else e.eval_set
                if not order:
                    order.append(e.eval_set)
            by_key.setdefault(e.eval_set, []).append(e)
    out: dict[str, EvalSet] = {}
    for i, k in enumerate(order):
        members = by_key[k]
        names = {t for e in members if e.ok for r in e.runs for t in tasks_of(r)}
        limit = members[0].run.section("config").get("limit")
        label = "main" if i == 0 else f"set {i + 1}"
        out[k] = EvalSet(k, label, members, [t for t in tasks if t in names], limit, primary=i == 0)
    return out


def _seed_scores(entry: Entry, tasks, scores, items: dict[str, TaskItems], n_boot: int, seed: int) -> None:
    """Per-task scores of a several-seed entry: mean over seeds, two-stage bootstrap replicates, per-item means."""
    draws = stats.seed_draws(entry.n_seeds, n_boot, np.random.default_rng(stats.seed_for(seed, entry.key, "seeds")))
    for task in tasks:
        parts = [scores[(r.run_id, task)] for r in entry.runs]
        if any(p.value is None for p in parts):
            scores[(entry.key, task)] = Score(None, note="not every seed has a value")
            continue
        reps = None
        if all(p.replicates is not None for p in parts):
            reps = stats.hierarchical_replicates(np.vstack([p.replicates for p in parts]), draws)
        values = tuple(float(p.value) for p in parts)
        n = parts[0].n
        scores[(entry.key, task)] = Score(float(np.mean(values)), None, None, n, "seeds", "", reps, seed_values=values)
        ti = items.get(task)
        if ti is not None and all(r.run_id in ti.row for r in entry.runs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an item no seed has stays NaN
                row = np.nanmean(ti.matrix[[ti.row[r.run_id] for r in entry.runs]], axis=0)
            ti.row[entry.key] = len(ti.matrix)
            ti.matrix = np.vstack([ti.matrix, row[None, :]])


def _vs_leader(keys: list[str], aggregates, key: str, n_docs: int | None) -> dict[str, VsLeader]:
    ranked = [k for k in keys if aggregates[(k, key)].value is not None]
    if len(ranked) < 2:
        return {}
    leader = max(ranked, key=lambda k: aggregates[(k, key)].value)
    lead = aggregates[(leader, key)]
    out = {}
    for k in ranked:
        if k == leader:
            continue
        s = aggregates[(k, key)]
        delta = float(lead.value - s.value)
        se = None
        if lead.replicates is not None and s.replicates is not None:
            se = stats.paired_se(lead.replicates, s.replicates)
        mdd = None if se is None else stats.min_detectable(se)
        need = None if se is None or n_docs is None else stats.docs_to_resolve(n_docs, se, delta)
        out[k] = VsLeader(leader, delta, se, mdd, n_docs, need)
    return out


def analyse(
    runs: list[RunRecord], task_info: TaskInfoFn | None, n_boot: int = stats.DEFAULT_BOOTSTRAP, seed: int = 0
) -> Analysis:
    """All statistics of the report (see ``stats.METHODS``). Train-only records take no part in them."""
    evaluated = [r for r in runs if not r.train_only]
    ok = [r for r in evaluated if r.ok]
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
    entries = _entries(evaluated)
    sets = _eval_sets(entries, tasks)
    for entry in entries:
        if entry.ok and entry.n_seeds > 1:
            _seed_scores(entry, tasks, scores, items, n_boot, seed)
    aggregates: dict[tuple[str, str], Score] = {}
    for es in sets.values():
        set_tasks = {t: tasks[t] for t in es.tasks}
        for e in es.entries:
            if not e.ok:
                continue
            keys = [r.run_id for r in e.runs] + ([e.key] if e.n_seeds > 1 else [])
            for k in keys:
                for agg, score in _aggregate_run(k, set_tasks, domains, scores).items():
                    aggregates[(k, agg)] = score
            if e.n_seeds > 1:  # the per-seed values of each average, for "± std" and the drill-down
                for agg in [a for (k, a) in list(aggregates) if k == e.key]:
                    parts = [aggregates[(r.run_id, agg)].value for r in e.runs]
                    if all(v is not None for v in parts):
                        aggregates[(e.key, agg)].seed_values = tuple(float(v) for v in parts)
    for key in {k for _, k in aggregates}:
        fill_intervals([s for (_, k), s in aggregates.items() if k == key])
    fill_intervals([s for s in scores.values() if s.source == "seeds"])
    ranking_key = next(
        (k for k in AGGREGATES if any(aggregates.get((e.key, k), Score(None)).value is not None for e in entries)),
        None,
    )
    win_rates: dict[str, float | None] = {}
    ranks: dict[str, Rank] = {}
    vs_leader: dict[str, VsLeader] = {}
    for es in sets.values():
        keys = [e.key for e in es.entries if e.ok]
        if not keys:
            continue
        columns = [[scores[(k, t)].value for k in keys] for t in es.tasks]
        win = stats.mean_win_rates(columns, [tasks[t].higher_is_better for t in es.tasks])
        win_rates |= dict(zip(keys, win))
        if ranking_key:
            ranks |= _rank(keys, aggregates, ranking_key, n_boot)
            ns = [scores[(keys[0], t)].n for t in es.tasks if scores[(keys[0], t)].n]
            vs_leader |= _vs_leader(keys, aggregates, ranking_key, int(np.median(ns)) if ns else None)
    return Analysis(
        runs,
        entries,
        sets,
        tasks,
        domains,
        scores,
        aggregates,
        win_rates,
        ranks,
        ranking_key,
        items,
        n_boot,
        seed,
        vs_leader,
    )


def task_ranks(analysis: Analysis, task: str) -> dict[str, Rank]:
    """Rank ranges of the successful entries on one task, within each evaluation set (direction from the task)."""
    sign = 1.0 if analysis.tasks[task].higher_is_better else -1.0
    out: dict[str, Rank] = {}
    for es in analysis.eval_sets.values():
        keys = [e.key for e in es.entries if e.ok]
        fake = {}
        for k in keys:
            s = analysis.scores.get((k, task), Score(None))
            rep = None if s.replicates is None else sign * s.replicates
            fake[(k, task)] = Score(None if s.value is None else sign * s.value, replicates=rep)
        out |= _rank(keys, fake, task, analysis.n_boot)
    return out
