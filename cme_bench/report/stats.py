"""Statistics for the report: pure functions on numpy arrays, no I/O and no table knowledge.

Every method used in the report is defined here and described in ``METHODS`` (shown on the site's methods page and in
the Markdown output), so the text and the code cannot drift apart silently.

Bootstrap replicates are *shared*: for one task, one matrix of resampling counts over the task's items is drawn and
applied to every run, so the difference of two runs' replicates is a paired bootstrap of their difference, and an
average over tasks (stratified by task) is just the same average taken over replicate vectors.
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections.abc import Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.8
Z_ALPHA = 1.959963984540054  # z_(1 - ALPHA/2)
Z_POWER = 0.8416212335729143  # z_POWER
DEFAULT_BOOTSTRAP = 1000

_METHODS = """\
**Per-task score** is the task's primary metric as recorded in `run.json` (`metrics[task].value`).

**Standard error** is `s / sqrt(n)` over the per-sample scores (`s` the sample standard deviation, ddof = 1), the
closed form lm-evaluation-harness uses for mean metrics; without a per-sample log the stderr recorded in `run.json`
is shown.

**95% intervals** are percentile bootstrap intervals (2.5th and 97.5th percentile of {n_boot} resamples of
the items, seeded, so the report is reproducible). Without a per-sample log the interval is the normal approximation
`value ± 1.96 · stderr`. One matrix of resampling counts is drawn per task and reused for every run (items pair up
by `doc_id`), which makes every comparison below a *paired* bootstrap.

**Averages.** A domain column is the mean of its tasks; *CME avg (domains)* is the mean of the domain columns;
*CME avg (tasks)* is the mean over all tasks. *Chance-normalised avg* is the mean over tasks of
`(score − chance) / (1 − chance)` with the task's chance level from the task registry (0 when unknown). Only tasks
where higher is better enter averages, and an average is shown only for runs that have every task (else "—",
with the missing tasks in the tooltip). Intervals of averages come from the same stratified bootstrap replicates.

**Mean win rate** (HELM): for each ordered task column, a run's win rate is the number of other runs it beats
(ties count one half) divided by the number of other runs with a value; the mean over task columns is reported.

**Paired tests.** Two runs on the same task are compared on their common items: McNemar's exact test (two-sided
binomial test on the discordant pairs) when both are scored 0/1, otherwise a paired bootstrap
(p = 2 · min(P(Δ ≤ 0), P(Δ ≥ 0)) over the shared replicates). Significance level α = {alpha}, not corrected for
multiple comparisons: treat stars and rank ranges as descriptive. The per-sample viewer tests any two runs you pick
the same way in the browser (McNemar for 0/1 scores, else a paired z-test on the per-item differences).

**Rank ranges and tie groups** on the ranking column (and per task on the task pages): run *i* is separable from
*j* when `|Δ| > 1.96 · se(Δ)`, with `se(Δ)² = var_i + var_j − 2 cov_ij` estimated from the shared (paired) bootstrap
replicates, i.e. a normal-approximation paired bootstrap test at level α. A run's best rank is 1 + the number of
runs significantly better than it; its worst rank is the number of runs it is not significantly better than, itself
included. Tie groups are formed top-down: a run joins the current group unless it is significantly worse than the
group's first run.

**What a tie means.** For each run compared with the leader of its table (on the ranking column), the report shows
the *minimum detectable difference* of these documents: `MDD = (z_(1−α/2) + z_power) · se(Δ)` with α = {alpha},
power {power} and `se(Δ)` the paired standard error above (the usual normal-approximation power formula for a
two-sided paired test). A difference smaller than the MDD would be missed more than {miss}% of the time, so a tie
with an observed difference below the MDD means "too few documents to tell", not "equal". *Documents per task to
resolve* is `n · (MDD / |Δ|)²` (n = documents per task now): the standard error shrinks as `1/√n`, so that many
documents would make the observed difference detectable with the stated power, if it is real. Where seeds are
aggregated, part of `se(Δ)` is seed variance, which more documents do not remove, so the figure is a lower bound.

**Seeds.** Runs that differ only by their seed (same model, adapter method and parameters, training budget and
data, evaluation set) form one row: the value is the mean over seeds, "± std" the standard deviation over seeds
(ddof = 1) and n the number of seeds; the run page of each seed holds its own figures. The interval of such a row
comes from a *two-stage (hierarchical) bootstrap*: each replicate draws the seeds with replacement and, for every
drawn seed, uses that seed's item-bootstrap replicate (items resampled with the shared counts). Its spread therefore
holds both sources of variance, seed to seed (training randomness) and item to item (finite test set), which a
plain item bootstrap of one seed (too narrow) or a t-interval over a few seed means (ignores the items, and is
undefined for one seed) do not. Because the same replicates feed the rank ranges and paired comparisons, those use
the aggregate too. With few seeds (2-3) the seed stage is coarse; treat such intervals as approximate.

**Comparability.** Runs are ranked together only when they were scored on the same documents: the same evaluation
set (the record's `identity.eval_set` digest of task names, task configurations, document ids and limit; for older
records the task names and the limit). Runs on another evaluation set get their own table with their own ranks.

**Reference rows** are figures reported elsewhere (a paper's table), shown with their source in their own block.
They are not reproduced here, have no intervals and are never ranked with measured rows.

**Pareto front** (cost plot): runs for which no other run has a cost at most as large and a score at least as high,
one of them strictly.

Failed, running and cancelled runs are listed with their status and never enter averages, ranks or win rates.
"""


def methods_text(n_boot: int = DEFAULT_BOOTSTRAP, alpha: float = ALPHA) -> str:
    """The methods section of a report, with the parameters it actually used."""
    return _METHODS.format(n_boot=n_boot, alpha=alpha, power=POWER, miss=round(100 * (1 - POWER)))


METHODS = methods_text()


def seed_for(*parts: object) -> int:
    """A stable 32-bit seed from strings/ints (Python's hash() is salted per process)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


def mean_stderr(scores: Sequence[float] | np.ndarray) -> float | None:
    """Closed-form standard error of the mean (ddof=1); None for fewer than two items."""
    x = np.asarray(scores, dtype=float)
    if x.size < 2:
        return None
    return float(x.std(ddof=1) / math.sqrt(x.size))


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) resampling counts: row b says how often each item is drawn in resample b."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (np.arange(n_boot)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def replicate_means(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Bootstrap means of each row of ``scores`` (runs x items, NaN = item missing) under shared ``counts``.

    A run missing some items is averaged over the resampled items it has, so runs with partial coverage still get a
    (slightly less paired) replicate. Returns (runs x n_boot); NaN where a resample holds none of a run's items.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    present = ~np.isnan(scores)
    # float32 products: ~2x faster than float64 and exact for 0/1 scores (sums stay far below 2**24); the result is
    # float64 again so later arithmetic is not done in single precision.
    c32 = counts.T.astype(np.float32)
    if present.all():  # the common case (every run on every item): one product, no coverage correction
        return (scores.astype(np.float32) @ c32).astype(float) / counts.sum(axis=1)[None, :]
    num = (np.where(present, scores, 0.0).astype(np.float32) @ c32).astype(float)
    den = (present.astype(np.float32) @ c32).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def percentile_interval(replicates: np.ndarray, alpha: float = ALPHA) -> tuple[float, float] | None:
    r = np.asarray(replicates, dtype=float)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return None
    lo, hi = np.percentile(r, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def normal_interval(value: float, stderr: float, alpha: float = ALPHA) -> tuple[float, float]:
    z = 1.959963984540054 if alpha == 0.05 else float(_norm_ppf(1 - alpha / 2))
    return value - z * stderr, value + z * stderr


def _norm_ppf(q: float) -> float:
    # Bisection on erf: only used for a non-default alpha, so speed does not matter.
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def bootstrap_p_value(diff_replicates: np.ndarray) -> float:
    """Two-sided paired-bootstrap p-value of a difference: 2 · min(P(Δ ≤ 0), P(Δ ≥ 0)), capped at 1."""
    d = np.asarray(diff_replicates, dtype=float)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return 1.0
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> tuple[float, int, int]:
    """McNemar's exact test on paired 0/1 scores. Returns (p, n_only_a_correct, n_only_b_correct)."""
    x = np.asarray(a, dtype=float) > 0.5
    y = np.asarray(b, dtype=float) > 0.5
    only_a = int(np.sum(x & ~y))
    only_b = int(np.sum(~x & y))
    n = only_a + only_b
    if n == 0:
        return 1.0, only_a, only_b
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail), only_a, only_b


def is_binary(scores: np.ndarray) -> bool:
    s = np.asarray(scores, dtype=float)
    s = s[~np.isnan(s)]
    return bool(np.all((s == 0) | (s == 1)))


def paired_test(a: np.ndarray, b: np.ndarray, rep_a: np.ndarray | None, rep_b: np.ndarray | None) -> dict:
    """Compare two runs on their common items (arrays aligned by doc_id, NaN = missing).

    McNemar for 0/1 scores, else paired bootstrap over the shared replicates. Returns
    ``{"test", "p", "delta", "n"}`` (delta = mean(a) - mean(b) over the common items).
    """
    both = ~np.isnan(a) & ~np.isnan(b)
    n = int(both.sum())
    if n == 0:
        return {"test": "none", "p": None, "delta": None, "n": 0}
    delta = float(np.mean(a[both]) - np.mean(b[both]))
    if is_binary(a[both]) and is_binary(b[both]):
        p, _, _ = mcnemar_exact(a[both], b[both])
        return {"test": "mcnemar", "p": p, "delta": delta, "n": n}
    if rep_a is None or rep_b is None:
        return {"test": "none", "p": None, "delta": delta, "n": n}
    return {"test": "paired-bootstrap", "p": bootstrap_p_value(rep_a - rep_b), "delta": delta, "n": n}


def significance_matrix(replicates: np.ndarray, values: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """better[i, j] = run i is significantly better than run j, for a higher-is-better score.

    The standard error of each difference comes from the shared bootstrap replicates, covariance included (that is
    the pairing): se_ij² = var_i + var_j - 2 cov_ij, and i beats j when (v_i - v_j) / se_ij > z_(1 - alpha/2).
    One covariance matrix (runs x runs) instead of runs² replicate comparisons keeps 500 runs fast. A run whose
    replicates are missing (NaN) is separable from nobody.
    """
    reps = np.asarray(replicates, dtype=float)
    values = np.asarray(values, dtype=float)
    usable = ~np.isnan(reps).any(axis=1)
    n = len(values)
    better = np.zeros((n, n), dtype=bool)
    if usable.sum() < 2:
        return better
    idx = np.flatnonzero(usable)
    centred = reps[idx] - reps[idx].mean(axis=1, keepdims=True)
    c32 = centred.astype(np.float32)  # float32 product: half the time, and plenty of precision for a z-test
    cov = (c32 @ c32.T).astype(float) / (reps.shape[1] - 1)
    var = np.diag(cov)
    se = np.sqrt(np.maximum(var[:, None] + var[None, :] - 2 * cov, 0.0))
    diff = values[idx][:, None] - values[idx][None, :]
    z = 1.959963984540054 if alpha == 0.05 else _norm_ppf(1 - alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        sig = np.where(se > 0, diff / np.where(se > 0, se, 1.0) > z, diff > 0)
    better[np.ix_(idx, idx)] = sig
    np.fill_diagonal(better, False)
    return better


def paired_se(rep_a: np.ndarray, rep_b: np.ndarray) -> float | None:
    """Standard error of a paired difference from shared bootstrap replicates (None without usable replicates)."""
    d = np.asarray(rep_a, dtype=float) - np.asarray(rep_b, dtype=float)
    d = d[~np.isnan(d)]
    return float(d.std(ddof=1)) if d.size > 1 else None


def min_detectable(se: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true difference a two-sided paired test at ``alpha`` detects with ``power``: (z_a/2 + z_power) · se."""
    za = Z_ALPHA if alpha == ALPHA else _norm_ppf(1 - alpha / 2)
    zp = Z_POWER if power == POWER else _norm_ppf(power)
    return (za + zp) * se


def docs_to_resolve(n: int, se: float, delta: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Documents per task that make ``delta`` detectable (se shrinks as 1/sqrt(n)); None for a zero difference."""
    if delta == 0 or not math.isfinite(delta) or n <= 0:
        return None
    return max(n, math.ceil(n * (min_detectable(se, alpha, power) / abs(delta)) ** 2))


def separable_best(replicates: np.ndarray, values: np.ndarray, alpha: float = ALPHA) -> bool:
    """Is the row with the highest value significantly better than every other row (paired, as in ranks)?

    Only the leader's covariances are needed: O(rows x replicates), cheap enough for every column of a big table.
    Rows without replicates (NaN) make the best inseparable from them.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return values.size == 1
    reps = np.asarray(replicates, dtype=float)
    best = int(np.argmax(values))
    if np.sum(values == values[best]) > 1:
        return False
    if np.isnan(reps).any():
        return False
    diff_reps = reps[best][None, :] - reps
    se = np.delete(diff_reps.std(axis=1, ddof=1), best)
    diff = np.delete(values[best] - values, best)
    z = Z_ALPHA if alpha == ALPHA else _norm_ppf(1 - alpha / 2)
    return bool(np.all(np.where(se > 0, diff > z * se, diff > 0)))


def seed_draws(n_seeds: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_seeds) seed indices drawn with replacement: the first stage of the two-stage bootstrap."""
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds))


def hierarchical_replicates(member_reps: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Two-stage bootstrap of a mean over seeds: replicate b averages, over the seeds drawn in ``draws[b]``, each
    drawn seed's own item-bootstrap replicate b (``member_reps`` is seeds x n_boot)."""
    reps = np.asarray(member_reps, dtype=float)
    cols = np.arange(reps.shape[1])[:, None]
    return reps[draws, cols].mean(axis=1)


def rank_ranges(better: np.ndarray) -> list[tuple[int, int]]:
    """(best, worst) 1-based rank per run from a significance matrix (see METHODS)."""
    n = better.shape[0]
    beaten_by = better.sum(axis=0)  # how many runs are significantly better than j
    beats = better.sum(axis=1)
    return [(int(beaten_by[j]) + 1, int(n - beats[j])) for j in range(n)]


def tie_groups(order: Sequence[int], better: np.ndarray) -> dict[int, int]:
    """Group number (1-based) per run index, walking ``order`` (best first)."""
    groups: dict[int, int] = {}
    leader, group = None, 0
    for i in order:
        if leader is None or better[leader, i]:
            leader, group = i, group + 1
        groups[i] = group
    return groups


def mean_win_rates(columns: Sequence[Sequence[float | None]], higher_is_better: Sequence[bool]) -> list[float | None]:
    """HELM's aggregate row win rate. ``columns[c][r]`` is row r's value in column c (None = missing).

    Per column, a row's wins are the rows with a worse value plus half of the other rows tied with it, divided by
    (rows with a value - 1); columns with fewer than two values are skipped. The mean over columns is returned.
    """
    n_rows = len(columns[0]) if columns else 0
    per_row: list[list[float]] = [[] for _ in range(n_rows)]
    for values, hib in zip(columns, higher_is_better, strict=True):
        present = [v for v in values if v is not None and not math.isnan(v)]
        if len(present) < 2:
            continue
        present.sort()
        for r, v in enumerate(values):
            if v is None or math.isnan(v):
                continue
            below, upto = bisect.bisect_left(present, v), bisect.bisect_right(present, v)
            worse = below if hib else len(present) - upto
            ties = upto - below - 1
            per_row[r].append((worse + ties / 2) / (len(present) - 1))
    return [float(np.mean(w)) if w else None for w in per_row]


def chance_normalise(score: float, chance: float | None) -> float:
    c = chance or 0.0
    if c >= 1:
        return float("nan")
    return (score - c) / (1 - c)


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of points not dominated (lower cost and higher score are better), sorted by cost."""
    pts = [(c, s, i) for i, (c, s) in enumerate(zip(costs, scores)) if not (math.isnan(c) or math.isnan(s))]
    front = []
    for c, s, i in pts:
        dominated = any(c2 <= c and s2 >= s and (c2 < c or s2 > s) for c2, s2, _ in pts)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (costs[i], -scores[i]))
