"""Golden tests for the table model built from hand-built run records (tests/test_report_fixtures.py).

The world, per task (0/1 scores on four items): base .25/.50/.25, lora .50/.75/.50, teamlora .75/1.0/.75 on
t_a/t_b/t_c; t_a and t_b are "reasoning" (chance .25 and .5), t_c is "knowledge" (chance 0). So:
reasoning means .375/.625/.875, knowledge .25/.5/.75; CME avg over domains .3125/.5625/.8125; over tasks
1/3, 7/12, 5/6; chance-normalised: base (0 + 0 + .25)/3, lora (1/3 + 1/2 + 1/2)/3, teamlora (2/3 + 1 + 3/4)/3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report_fixtures import SCORES, build_world, fake_task_info, write_run

from cme_bench.report.analysis import analyse
from cme_bench.report.build import domain_table, leaderboard_table, leaderboard_tables, slug, task_table
from cme_bench.report.load import load_runs


@pytest.fixture
def analysis(tmp_path: Path):
    return analyse(load_runs(build_world(tmp_path / "results")), fake_task_info, n_boot=400)


def test_leaderboard_golden(analysis):
    table = leaderboard_table(analysis)
    assert [r.key for r in table.rows] == ["tiny--teamlora", "tiny--lora", "tiny--none", "tiny--broken"]
    expected = {
        "cme_avg_domains": [0.8125, 0.5625, 0.3125],
        "cme_avg_tasks": [5 / 6, 7 / 12, 1 / 3],
        "chance_norm_avg": [(2 / 3 + 1 + 0.75) / 3, (1 / 3 + 0.5 + 0.5) / 3, 0.25 / 3],
        "win_rate": [1.0, 0.5, 0.0],
        "domain:reasoning": [0.875, 0.625, 0.375],
        "domain:knowledge": [0.75, 0.5, 0.25],
        "task:t_a": [0.75, 0.5, 0.25],
        "trainable_params": [40, 100, 0],
    }
    for key, values in expected.items():
        assert table.column_values(key)[:3] == pytest.approx(values), key
    assert table.cell("tiny--teamlora", "cme_avg_domains").display == "81.2"


def test_columns_come_from_the_task_registry(analysis):
    table = leaderboard_table(analysis)
    labels = {c.key: c for c in table.columns}
    assert labels["task:t_a"].label == "Task A" and labels["task:t_a"].domain == "reasoning"
    assert labels["task:t_c"].label == "Task C" and labels["task:t_c"].domain == "knowledge"
    # Scores first: rank and label, then the ranking average, domains and tasks; descriptive columns after them.
    assert [c.key for c in table.columns][:8] == [
        "rank",
        "run",
        "cme_avg_domains",
        "domain:knowledge",
        "domain:reasoning",
        "task:t_c",
        "task:t_a",
        "task:t_b",
    ]
    keys = [c.key for c in table.columns]
    assert keys.index("settings") > keys.index("win_rate") > keys.index("task:t_b")
    assert table.cell("tiny--lora", "settings").display == "cme-mini · seed 0 · 10 steps"
    assert table.cell("tiny--none", "settings").display == "cme-mini · seed 0"  # a base model has no training
    assert labels["trainable_params"].higher_is_better is False and labels["tokens_per_second"].higher_is_better


def test_failed_run_is_listed_not_averaged(analysis):
    table = leaderboard_table(analysis)
    row = table.rows[-1]
    assert row.status == "failed" and not row.ok
    assert table.cell("tiny--broken", "status").note == "CUDA out of memory"
    assert table.cell("tiny--broken", "cme_avg_domains").value is None
    assert "not averaged" in table.cell("tiny--broken", "cme_avg_domains").note
    assert "tiny--broken" not in analysis.win_rates and "tiny--broken" not in analysis.ranks


def test_task_cell_stderr_interval_and_base_row(analysis):
    cell = leaderboard_table(analysis).cell("tiny--none", "task:t_a")
    assert cell.stderr == pytest.approx(0.25) and cell.display == "25.0"
    lo, hi = cell.interval
    assert 0.0 <= lo <= 0.25 <= hi <= 1.0
    assert leaderboard_table(analysis).cell("tiny--none", "method").display == "none (base model)"


def test_task_table_paired_test_against_base(analysis):
    """teamlora vs base on t_a: [1,1,1,0] vs [1,0,0,0]; 2 discordant, both for teamlora: McNemar p = .5."""
    table = task_table(analysis, "t_a")
    assert table.cell("tiny--teamlora", "delta").value == pytest.approx(0.5)
    assert table.cell("tiny--teamlora", "p").value == pytest.approx(0.5)
    assert table.cell("tiny--teamlora", "p").note == "mcnemar"
    assert table.cell("tiny--none", "delta").value is None  # the base row is not compared with itself
    assert table.cell("tiny--teamlora", "n").value == 4


def test_domain_table(analysis):
    table = domain_table(analysis, "reasoning")
    assert [c.key for c in table.columns][2:5] == ["domain:reasoning", "task:t_a", "task:t_b"]
    assert table.column_values("domain:reasoning")[:3] == pytest.approx([0.875, 0.625, 0.375])


def test_best_rows(analysis):
    table = leaderboard_table(analysis)
    # Four documents per task cannot separate 81 from 56: no score is bold; exact cost figures still are.
    assert table.best_rows("cme_avg_domains") == set() and "cme_avg_domains" in table.inseparable
    assert table.best_rows("trainable_params") == {2}  # the base model trains nothing
    assert table.best_rows("run") == set()


def test_best_is_bold_only_where_separable(tmp_path):
    root = tmp_path / "results"
    strong, weak = [1] * 180 + [0] * 20, [1] * 60 + [0] * 140
    write_run(root, "strong", scores={"t_a": strong, "t_b": strong, "t_c": strong})
    write_run(root, "weak", method="dora", scores={"t_a": weak, "t_b": weak, "t_c": weak})
    table = leaderboard_table(analyse(load_runs(root), fake_task_info, n_boot=300))
    assert table.best_rows("cme_avg_domains") == {0} and table.best_rows("task:t_a") == {0}


def test_incomplete_run_has_no_average(tmp_path):
    """A run without Task C was scored on other documents: its own table, its own ranks, averages over its tasks."""
    root = tmp_path / "results"
    write_run(root, "full", scores=SCORES["lora"])
    write_run(root, "partial", method="dora", scores={"t_a": [1, 1, 1, 1], "t_b": [1, 1, 1, 1]})
    a = analyse(load_runs(root), fake_task_info, n_boot=100)
    main, other = leaderboard_tables(a)
    assert [r.key for r in main.rows] == ["full"] and [r.key for r in other.rows] == ["partial"]
    assert "task:t_c" not in [c.key for c in other.columns]
    assert other.cell("partial", "domain:reasoning").value == 1.0
    assert a.ranking_key == "cme_avg_domains" and a.ranks["full"].best == a.ranks["partial"].best == 1


def test_missing_task_has_no_average(tmp_path):
    root = tmp_path / "results"
    write_run(root, "full", scores=SCORES["lora"])
    # Same evaluation set (the identity says so), but no value recorded for Task C.
    identity = {"identity": {"eval_set": "e1", "seed_group": "g2"}}
    write_run(root, "gap", scores={"t_a": [1, 1, 0, 0], "t_b": [1, 1, 1, 1]}, extra=identity)
    write_run(root, "full2", scores=SCORES["base"], extra={"identity": {"eval_set": "e1", "seed_group": "g3"}})
    a = analyse(load_runs(root), fake_task_info, n_boot=100)
    table = leaderboard_tables(a)[0]
    cell = table.cell("gap", "cme_avg_domains")
    assert cell.value is None and cell.note == "missing: Task C"
    assert table.cell("gap", "domain:reasoning").value == 0.75  # its own domain is complete
    assert set(a.ranks) == {"full", "full2"}


def test_record_without_samples_uses_normal_interval(tmp_path):
    root = tmp_path / "results"
    write_run(root, "nosamples", scores={"t_a": [1, 1, 0, 0]}, samples=False)
    a = analyse(load_runs(root), fake_task_info, n_boot=100)
    score = a.scores[("nosamples", "t_a")]
    assert score.source == "record" and score.stderr == 0.1
    assert score.interval == pytest.approx((0.5 - 0.196, 0.5 + 0.196), abs=1e-3)


def test_fallback_metadata_from_the_run_record(tmp_path):
    """No registry: display name = task name, domain from lm-eval groups, direction from lm-eval's table."""
    root = tmp_path / "results"
    lm_eval = {"higher_is_better": {"ppl_task": {"acc": False}}, "group_subtasks": {"lm": ["ppl_task"]}}
    write_run(root, "r1", scores={"ppl_task": [3.0, 5.0]}, extra={"evaluation": {"lm_eval": lm_eval}})
    write_run(root, "r2", scores={"ppl_task": [1.0, 2.0]}, extra={"evaluation": {"lm_eval": lm_eval}})
    a = analyse(load_runs(root), None, n_boot=100)
    meta = a.tasks["ppl_task"]
    assert (meta.display_name, meta.domain, meta.higher_is_better, meta.source) == (
        "ppl_task",
        "lm",
        False,
        "run record",
    )
    table = leaderboard_table(a)
    assert table.cell("r1", "task:ppl_task").display == "4"  # not in [0, 1]: raw, not x100
    assert table.best_rows("task:ppl_task") == {table.rows.index(next(r for r in table.rows if r.key == "r2"))}
    assert a.win_rates == {"r1": 0.0, "r2": 1.0}  # lower is better
    assert table.cell("r1", "cme_avg_tasks").value is None  # no higher-is-better task to average


def test_registry_miss_falls_back_per_task(tmp_path):
    root = tmp_path / "results"
    write_run(root, "r", scores={"t_a": [1, 0], "unknown_task": [1, 1]})
    a = analyse(load_runs(root), fake_task_info, n_boot=50)
    assert a.tasks["t_a"].source == "registry" and a.tasks["unknown_task"].source == "run record"


def test_rank_ranges_separate_clear_differences(tmp_path):
    """200 items: 90% vs 30% correct is separable; two identical runs are not (rank range 2-3 for both)."""
    root = tmp_path / "results"
    strong = [1] * 180 + [0] * 20
    weak = [1] * 60 + [0] * 140
    for rid, scores in (("strong", strong), ("weak1", weak), ("weak2", weak)):
        write_run(root, rid, scores={"t_a": scores, "t_b": scores, "t_c": scores})
    a = analyse(load_runs(root), fake_task_info, n_boot=500)
    assert (a.ranks["strong"].best, a.ranks["strong"].worst) == (1, 1)
    assert (a.ranks["weak1"].best, a.ranks["weak1"].worst) == (2, 3)
    assert a.ranks["weak1"].group == a.ranks["weak2"].group == 2
    assert leaderboard_table(a).cell("weak2", "rank").display == "2–3"


def test_slug_is_safe_and_unique():
    assert slug("tiny--lora") == "tiny--lora"
    assert slug("a/b") != slug("a_b") and "/" not in slug("a/b")
    assert not slug("../x").startswith(".")


def test_base_row_evaluated_the_same_way_is_preferred(tmp_path):
    root = tmp_path / "results"
    write_run(
        root,
        "a-base-limited",
        method="none",
        scores={"t_a": [1, 0]},
        extra={"config": {"model": "tiny-llama", "suite": "cme-mini", "limit": 2}},
    )
    write_run(
        root,
        "b-base-full",
        method="none",
        scores={"t_a": [1, 0, 0, 0]},
        extra={"config": {"model": "tiny-llama", "suite": "cme-mini", "limit": None}},
    )
    write_run(
        root,
        "c-lora",
        scores={"t_a": [1, 1, 0, 0]},
        extra={"config": {"model": "tiny-llama", "suite": "cme-mini", "limit": None}},
    )
    write_run(
        root,
        "d-other-limit",
        scores={"t_a": [1, 1]},
        extra={"config": {"model": "tiny-llama", "suite": "cme-mini", "limit": 7}},
    )
    a = analyse(load_runs(root), fake_task_info, n_boot=50)
    runs = {r.run_id: r for r in a.runs}
    assert a.base_run(runs["c-lora"]).run_id == "b-base-full"
    assert a.base_run(runs["d-other-limit"]).run_id == "a-base-limited"  # no exact match: first base of the model
