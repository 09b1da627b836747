"""Golden tests for cme_bench.report.stats: every expected number is worked out by hand in the comment beside it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cme_bench.report import stats


def test_mean_stderr_closed_form():
    """[1,0,0,0]: mean .25, sample sd sqrt((.75² + 3·.25²)/3) = .5, stderr .5/2 = .25."""
    assert stats.mean_stderr([1, 0, 0, 0]) == pytest.approx(0.25)
    assert stats.mean_stderr([1.0]) is None


def test_bootstrap_counts_are_resamples():
    counts = stats.bootstrap_counts(7, 50, np.random.default_rng(0))
    assert counts.shape == (50, 7)
    assert np.all(counts.sum(axis=1) == 7)


def test_percentile_interval_two_items():
    """Resampling {0,1}: the mean is 0 w.p. 1/4, .5 w.p. 1/2, 1 w.p. 1/4, so the 2.5/97.5 percentiles are 0 and 1."""
    counts = stats.bootstrap_counts(2, 1000, np.random.default_rng(1))
    reps = stats.replicate_means(np.array([[0.0, 1.0]]), counts)[0]
    assert stats.percentile_interval(reps) == (0.0, 1.0)


def test_constant_scores_have_a_point_interval():
    counts = stats.bootstrap_counts(5, 200, np.random.default_rng(2))
    reps = stats.replicate_means(np.full((1, 5), 0.7), counts)[0]
    assert stats.percentile_interval(reps) == pytest.approx((0.7, 0.7))


def test_replicates_skip_missing_items():
    """A run with items {1, NaN}: every resample that draws item 0 averages to 1; one drawing only item 1 is NaN."""
    counts = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    reps = stats.replicate_means(np.array([[1.0, np.nan]]), counts)[0]
    assert reps[0] == 1.0 and reps[1] == 1.0 and math.isnan(reps[2])


def test_normal_interval():
    lo, hi = stats.normal_interval(0.5, 0.1)
    assert lo == pytest.approx(0.5 - 0.196, abs=1e-4) and hi == pytest.approx(0.5 + 0.196, abs=1e-4)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 1, 1, 0], [1, 0, 0, 0], (0.5, 2, 0)),  # 2 discordant, both for a: p = 2 · (1/2)² = .5
        ([1] * 5, [0] * 5, (0.0625, 5, 0)),  # p = 2 · (1/2)^5
        ([1, 1, 1, 0], [0, 0, 0, 1], (0.625, 3, 1)),  # n = 4, k = 1: 2 · (1 + 4)/16
        ([1, 0], [0, 1], (1.0, 1, 1)),  # balanced: capped at 1
        ([1, 0], [1, 0], (1.0, 0, 0)),  # no discordant pairs
    ],
)
def test_mcnemar_exact(a, b, expected):
    p, only_a, only_b = stats.mcnemar_exact(a, b)
    assert (pytest.approx(p), only_a, only_b) == expected


def test_bootstrap_p_value():
    assert stats.bootstrap_p_value(np.array([1.0, 2.0, 3.0])) == 0.0
    assert stats.bootstrap_p_value(np.array([-1.0, 1.0])) == 1.0
    assert stats.bootstrap_p_value(np.array([1.0, 1.0, 1.0, -1.0])) == 0.5  # 2 · min(1/4, 3/4)


def test_paired_test_picks_the_test():
    a, b = np.array([1.0, 1.0, 0.0, np.nan]), np.array([0.0, 1.0, 0.0, 1.0])
    result = stats.paired_test(a, b, None, None)
    assert result["test"] == "mcnemar" and result["n"] == 3 and result["delta"] == pytest.approx(1 / 3)
    c, d = np.array([0.5, 0.7]), np.array([0.1, 0.2])
    result = stats.paired_test(c, d, np.array([0.6, 0.6]), np.array([0.1, 0.2]))
    assert result["test"] == "paired-bootstrap" and result["p"] == 0.0 and result["delta"] == pytest.approx(0.45)


def test_mean_win_rates_helm_definition():
    """Column 1 (3,2,1): 1, 1/2, 0. Column 2 (1,1,0): row 0 beats one and ties one: (1 + 1/2)/2 = .75; same row 1."""
    rates = stats.mean_win_rates([[3, 2, 1], [1, 1, 0]], [True, True])
    assert rates == pytest.approx([0.875, 0.625, 0.0])


def test_mean_win_rates_lower_is_better_and_missing():
    rates = stats.mean_win_rates([[1.0, None, 3.0]], [False])
    assert rates[0] == 1.0 and rates[1] is None and rates[2] == 0.0
    assert stats.mean_win_rates([[1.0, None]], [True]) == [None, None]  # one value: column skipped


def test_rank_ranges_and_tie_groups():
    """0 beats 2 and 3; 1 beats 3. Best rank = 1 + #better-than-me; worst = n - #I-beat."""
    better = np.zeros((4, 4), dtype=bool)
    better[0, 2] = better[0, 3] = better[1, 3] = True
    assert stats.rank_ranges(better) == [(1, 2), (1, 3), (2, 4), (3, 4)]
    assert stats.tie_groups([0, 1, 2, 3], better) == {0: 1, 1: 1, 2: 2, 3: 2}


def test_significance_matrix():
    rng = np.random.default_rng(0)
    reps = np.vstack(
        [
            0.9 + 0.01 * rng.standard_normal(500),
            0.1 + 0.01 * rng.standard_normal(500),
            0.1 + 0.01 * rng.standard_normal(500),
            np.full(500, np.nan),
        ]
    )
    better = stats.significance_matrix(reps, np.array([0.9, 0.1, 0.1, 0.5]))
    assert better[0, 1] and better[0, 2]
    assert not better[1, 2] and not better[2, 1] and not better[1, 0]
    assert not better[3].any() and not better[:, 3].any()  # no replicates: separable from nobody


def test_pareto_front():
    """(1,.5) and (2,.9) are not dominated; (2,.4) loses to (1,.5); (3,.9) loses to (2,.9)."""
    assert stats.pareto_front([1, 2, 3, 2], [0.5, 0.4, 0.9, 0.9]) == [0, 3]
    assert stats.pareto_front([1, float("nan")], [0.5, 0.9]) == [0]


def test_chance_normalise():
    assert stats.chance_normalise(0.75, 0.25) == pytest.approx(2 / 3)
    assert stats.chance_normalise(0.4, None) == 0.4
    assert math.isnan(stats.chance_normalise(0.4, 1.0))


def test_methods_text_states_the_parameters():
    assert str(stats.DEFAULT_BOOTSTRAP) in stats.METHODS and "McNemar" in stats.METHODS
