"""Seed groups, evaluation sets, ties explained, reference rows, results as data, the terminal summaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_report_fixtures import SCORES, fake_task_info, write_run

from cme_bench.errors import CmeError
from cme_bench.report import stats
from cme_bench.report.analysis import analyse
from cme_bench.report.build import cost_label, leaderboard_tables
from cme_bench.report.groups import eval_set_key, seed_group_key, seed_groups
from cme_bench.report.load import load_runs
from cme_bench.report.pipeline import build_report, write_text_outputs
from cme_bench.report.references import BUILTIN, load_references, references


def _seed_run(root: Path, seed: int, scores, *, lr: float = 5e-4, limit: int | None = None, **kw) -> Path:
    cfg = {"model": "tiny-llama", "adapter": "lora", "suite": "cme-mini", "seed": seed, "max_steps": 2}
    cfg |= {"learning_rate": lr, "limit": limit}
    return write_run(
        root, f"tiny--lora--s{seed}--lr{lr}--l{limit}", name="lora", scores=scores, extra={"config": cfg}, **kw
    )


SEED_SCORES = {0: [1, 1, 0, 0], 1: [1, 1, 1, 0], 2: [1, 0, 0, 0]}  # means .5, .75, .25


def test_seed_groups_from_config_fields(tmp_path):
    root = tmp_path / "results"
    for seed, a in SEED_SCORES.items():
        _seed_run(root, seed, {"t_a": a})
    _seed_run(root, 0, {"t_a": [1, 1, 1, 1]}, lr=1e-3)  # another learning rate: another group
    _seed_run(root, 0, {"t_a": [0, 0, 0, 0]}, limit=2)  # another limit: another group (and evaluation set)
    groups = seed_groups(load_runs(root))
    sizes = sorted(len(m) for m in groups.values())
    assert sizes == [1, 1, 3]
    three = next(m for m in groups.values() if len(m) == 3)
    assert [r.section("config")["seed"] for r in three] == [0, 1, 2]


def test_identity_block_wins_over_config(tmp_path):
    root = tmp_path / "results"
    identity = {"digest": "d", "seed_group": "same-group", "eval_set": "docs-1", "components": {}}
    write_run(root, "a", scores={"t_a": [1]}, extra={"schema_version": 2, "identity": identity})
    write_run(root, "b", method="dora", scores={"t_a": [0]}, extra={"schema_version": 2, "identity": identity})
    runs = load_runs(root)
    assert {seed_group_key(r) for r in runs} == {"same-group"} and {eval_set_key(r) for r in runs} == {"docs-1"}


def test_same_seed_twice_is_a_repeat_not_two_seeds(tmp_path):
    root = tmp_path / "results"
    write_run(root, "x1", scores={"t_a": [1, 0]})
    write_run(root, "x2", scores={"t_a": [1, 1]})  # identical config, same seed 0
    assert sorted(len(m) for m in seed_groups(load_runs(root)).values()) == [1, 1]


def test_seed_aggregate_row(tmp_path):
    root = tmp_path / "results"
    for seed, a in SEED_SCORES.items():
        _seed_run(root, seed, {"t_a": a, "t_b": a, "t_c": a})
    a = analyse(load_runs(root), fake_task_info, n_boot=500)
    (entry,) = a.entries
    assert entry.n_seeds == 3 and entry.key == "tiny--lora--s0+1+2--lr0.0005--lNone"
    score = a.scores[(entry.key, "t_a")]
    assert score.value == pytest.approx(0.5) and score.seed_std == pytest.approx(0.25)
    assert score.seed_values == (0.5, 0.75, 0.25)
    # the two-stage interval is wider than any single seed's item-only interval
    lo, hi = score.interval
    widths = [np.subtract(*a.scores[(r.run_id, "t_a")].interval[::-1]) for r in entry.runs]
    assert hi - lo > max(widths) * 0.9
    avg = a.aggregates[(entry.key, "cme_avg_domains")]
    assert avg.value == pytest.approx(0.5) and avg.seed_values == pytest.approx((0.5, 0.75, 0.25))
    board = leaderboard_tables(a)[0]
    assert len(board.rows) == 1 and board.cell(entry.key, "seeds").display == "3"
    assert board.cell(entry.key, "task:t_a").display == "50.0 ± 25.0"
    assert "0.5" not in board.cell(entry.key, "run").display and "3 seeds" in board.cell(entry.key, "run").display


def test_other_evaluation_set_gets_its_own_table_and_ranks(tmp_path):
    root = tmp_path / "results"
    _seed_run(root, 0, {"t_a": [1, 1, 0, 0]}, limit=4)
    write_run(
        root,
        "dora",
        method="dora",
        scores={"t_a": [1, 1, 1, 0]},
        extra={"config": {"model": "tiny-llama", "adapter": "dora", "suite": "cme-mini", "seed": 0, "limit": 4}},
    )
    write_run(
        root,
        "small",
        method="teamlora",
        scores={"t_a": [1, 1]},
        extra={"config": {"model": "tiny-llama", "adapter": "teamlora", "suite": "cme-mini", "limit": 2}},
    )
    a = analyse(load_runs(root), fake_task_info, n_boot=200)
    main, other = leaderboard_tables(a)
    assert {r.key for r in main.rows} == {"dora", "tiny--lora--s0--lr0.0005--l4"}
    assert [r.key for r in other.rows] == ["small"] and other.title.startswith("Evaluated on other documents")
    assert a.ranks["small"].best == 1 and "small" not in a.vs_leader  # alone in its set: no leader to compare


def test_vs_leader_minimum_detectable_difference():
    assert stats.min_detectable(0.1) == pytest.approx((1.959964 + 0.841621) * 0.1, rel=1e-6)
    # 20 documents, se .1, observed gap .05: n (MDD / gap)^2 = 20 * 5.6032^2 = 627.9 -> 628
    assert stats.docs_to_resolve(20, 0.1, 0.05) == 628
    assert stats.docs_to_resolve(20, 0.1, 0.0) is None
    assert stats.docs_to_resolve(20, 0.01, 0.5) == 20  # already resolvable: never fewer than now


def test_vs_leader_in_the_analysis(tmp_path):
    root = tmp_path / "results"
    write_run(root, "lead", method="teamlora", scores=SCORES["teamlora"])
    write_run(root, "next", method="lora", scores=SCORES["lora"])
    a = analyse(load_runs(root), fake_task_info, n_boot=400)
    v = a.vs_leader["next"]
    assert v.leader == "lead" and v.delta == pytest.approx(0.25) and v.n_docs == 4
    assert v.mdd == pytest.approx(stats.min_detectable(v.se)) and v.docs_needed >= 4
    board = leaderboard_tables(a)[0]
    assert board.cell("next", "mdd").value == pytest.approx(v.mdd) and board.cell("lead", "mdd").value is None


def test_hierarchical_replicates_and_separable_best():
    reps = np.array([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    draws = np.array([[0, 0], [0, 1], [1, 1]])
    assert stats.hierarchical_replicates(reps, draws).tolist() == [1.0, 2.0, 3.0]
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, size=(3, 200))
    assert stats.separable_best(noise + np.array([[0.9], [0.5], [0.4]]), np.array([0.9, 0.5, 0.4]))
    assert not stats.separable_best(noise + np.array([[0.9], [0.9], [0.4]]), np.array([0.9, 0.9, 0.4]))


def test_builtin_references_are_the_papers_figures():
    refs = load_references(BUILTIN)
    assert [r.value for r in refs] == [57.44, 58.81, 59.69, 59.06, 60.29, 59.95]
    assert [r.training_hours for r in refs] == [25, 26, 42, 34, 29, 28]
    assert all(
        r.model == "Chinese-LLaMA-2-7B" and "unverified" in r.confidence and "2408.09856" in r.paper for r in refs
    )


def test_user_references_file_and_errors(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("rows:\n  - {label: 'Ours, published', value: 61.0, paper: 'Us 2026', confidence: high}\n")
    assert [r.label for r in references([good])][-1] == "Ours, published"
    assert [r.label for r in references([good], builtin=False)] == ["Ours, published"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows:\n  - {label: x, value: high}\n")
    with pytest.raises(CmeError, match="'value' must be a number"):
        load_references(bad)


def test_references_appear_in_outputs_never_in_ranks(tmp_path):
    root = tmp_path / "results"
    write_run(root, "r", scores=SCORES["lora"])
    out = tmp_path / "site"
    report = build_report(root, task_info=fake_task_info, out=out, n_boot=50)
    assert len(report.references) == 6 and set(report.analysis.ranks) == {"r"}
    files = write_text_outputs(report, out)
    md = files["md"].read_text()
    assert "Reported, not reproduced here" in md and "57.44" in md
    doc = json.loads(files["json"].read_text())
    assert len(doc["references"]) == 6 and list(doc["ranks"]) == ["r"]


def test_frames_and_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    from cme_bench.report import frame, samples_frame

    root = tmp_path / "results"
    for seed, a in SEED_SCORES.items():
        _seed_run(root, seed, {"t_a": a, "t_b": a})
    df = frame(root, task_info=fake_task_info)
    assert len(df) == 6 and {"run", "method", "settings", "seed", "task", "metric", "value", "stderr", "n"} <= set(df)
    assert df.groupby("task")["value"].mean()["t_a"] == pytest.approx(0.5)
    assert df["seed_group"].nunique() == 1 and df.loc[0, "display_name"] == "Task A"
    per_item = samples_frame(root)
    assert len(per_item) == 3 * 2 * 4 and per_item["score"].sum() == 2 * (2 + 3 + 1)
    out = tmp_path / "site"
    files = write_text_outputs(build_report(root, task_info=fake_task_info, out=out, n_boot=50), out)
    board = pd.read_parquet(files["parquet"])
    assert len(board) == 1 and board.loc[0, "seeds"] == 3.0


def test_cost_columns_have_human_names():
    assert cost_label("decode_ms_per_token") == "Decode (ms/token)"
    assert cost_label("train_step_ms") == "Train step (ms)"
    assert cost_label("warmup_seconds") == "Warmup (s)"


def test_importing_a_report_module_does_not_import_the_pipeline():
    code = "import sys, cme_bench.report.stats; print('cme_bench.report.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_outcome_line_uses_the_leaderboard_scale(tmp_path):
    from cme_bench.report.summary import outcome_line

    folder = write_run(tmp_path, "r", scores=SCORES["lora"])  # .50 .75 .50; domains .625 / .5
    record = json.loads((folder / "run.json").read_text())
    line = outcome_line(record, fake_task_info)
    assert line == "r: success, CME avg (domains) 56.2%, CME avg (tasks) 58.3% over 3 task(s)"


def test_report_command_prints_top_rows_and_takes_references(tmp_path, capsys):
    from cme_bench.cli import main

    root = tmp_path / "results"
    write_run(root, "tiny--lora", scores=SCORES["lora"])
    refs = tmp_path / "refs.yaml"
    refs.write_text("rows:\n  - {label: Mine, value: 50}\n")
    assert main(["report", "--results", str(root), "--no-html", "--bootstrap", "50", "--references", str(refs)]) == 0
    out = capsys.readouterr().out
    assert "7 reported reference row(s)" in out and "top of the leaderboard by" in out
    assert "Mine" in (root / "leaderboard" / "leaderboard.md").read_text()
