"""Reading run records: bad records are skipped with a warning naming the file; the report never crashes on one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_report_fixtures import SCORES, write_run

from cme_bench.errors import CmeError
from cme_bench.report.load import load_profiles, load_runs, load_samples


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "Expecting property name"),
        ('{"schema_version": 3, "run_id": "x", "status": "success"}', "schema_version is 3"),
        ('{"schema_version": 1, "status": "success"}', "'run_id' is missing"),
        ('{"schema_version": 1, "run_id": "x", "status": "done"}', "'status' is 'done'"),
        ('{"schema_version": 1, "run_id": "x", "status": "success", "metrics": []}', "'metrics' is not an object"),
        ('{"schema_version": 1, "run_id": "x", "status": "success", "metrics": {}}', "'metrics' is empty"),
        ('{"schema_version": 1, "run_id": "x", "status": "success", "metrics": {"t": 3}}', "is not an object"),
        ('{"schema_version": 1, "run_id": "x", "status": "running", "config": []}', "'config' is not an object"),
        ("[]", "top level is not an object"),
    ],
)
def test_malformed_record_is_skipped_with_a_warning(tmp_path, caplog, content, reason):
    root = tmp_path / "results"
    write_run(root, "good", scores=SCORES["lora"])
    bad = root / "bad" / "run.json"
    bad.parent.mkdir()
    bad.write_text(content)
    with caplog.at_level(logging.WARNING):
        runs = load_runs(root)
    assert [r.run_id for r in runs] == ["good"]
    assert str(bad) in caplog.text and reason in caplog.text


def test_partial_and_running_records_load(tmp_path):
    root = tmp_path / "results"
    (root / "r").mkdir(parents=True)
    (root / "r" / "run.json").write_text(json.dumps({"schema_version": 1, "run_id": "r", "status": "running"}))
    (runs,) = load_runs(root)
    assert runs.status == "running" and runs.metrics == {} and runs.method == "none" and runs.model_name == "?"


def test_duplicate_run_id_and_output_folder_are_skipped(tmp_path, caplog):
    root = tmp_path / "results"
    write_run(root, "a", scores=SCORES["lora"])
    dup = write_run(root / "nested", "a", scores=SCORES["lora"])
    write_run(root / "leaderboard", "copy", scores=SCORES["lora"])
    with caplog.at_level(logging.WARNING):
        runs = load_runs(root, exclude=root / "leaderboard")
    assert [r.run_id for r in runs] == ["a"]
    assert str(dup / "run.json") in caplog.text


def test_missing_results_folder_is_a_user_error(tmp_path):
    with pytest.raises(CmeError, match="does not exist"):
        load_runs(tmp_path / "nope")


def test_bad_sample_lines_are_skipped(tmp_path, caplog):
    folder = write_run(tmp_path, "r", scores={"t_a": [1, 0]})
    path = folder / "samples" / "t_a.jsonl"
    path.write_text(path.read_text() + '{"doc_id": 9}\nnot json\n{"doc_id": 5, "score": "x"}\n')
    (run,) = load_runs(tmp_path)
    with caplog.at_level(logging.WARNING):
        samples = load_samples(run, "t_a")
    assert [s["doc_id"] for s in samples] == [0, 1]
    assert "skipped 3 malformed line(s)" in caplog.text and str(path) in caplog.text


def test_sample_path_may_not_leave_the_run_folder(tmp_path, caplog):
    write_run(tmp_path, "r", scores={"t_a": [1]}, extra={"samples": {"t_a": "../../etc/passwd"}})
    (run,) = load_runs(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert load_samples(run, "t_a") == []
    assert "leaves the run folder" in caplog.text


def test_profiles_are_loaded_loosely(tmp_path, caplog):
    (tmp_path / "p").mkdir()
    rows = [{"model": "tiny-llama", "adapter": "lora", "train_step_ms": 12.5, "decode_ms_per_token": 3, "note": "x"}]
    (tmp_path / "p" / "profile-cpu.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / "profile_bad.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        profiles = load_profiles(Path(tmp_path))
    assert profiles == {("tiny-llama", "lora"): {"train_step_ms": 12.5, "decode_ms_per_token": 3.0}}
    assert "profile_bad.json" in caplog.text


def test_profile_rows_match_by_label_and_by_unique_preset(tmp_path):
    """Two teamlora rows (two forms) make the preset ambiguous: only their labels match; lora's preset is unique."""
    rows = [
        {
            "model": "m",
            "adapter": "teamlora-fused",
            "preset": "teamlora",
            "method": "teamlora",
            "rank": 8,
            "train_step_ms_median": 10.0,
            "train_step_ms": {"median": 10.0},
        },
        {
            "model": "m",
            "adapter": "teamlora-ref",
            "preset": "teamlora",
            "method": "teamlora",
            "train_step_ms_median": 30.0,
        },
        {"model": "m", "adapter": "lora-r8", "preset": "lora", "method": "lora", "train_step_ms_median": 5.0},
    ]
    (tmp_path / "profile.json").write_text(json.dumps({"schema": "x", "rows": rows}))
    profiles = load_profiles(tmp_path)
    assert profiles[("m", "teamlora-fused")] == {"train_step_ms_median": 10.0}  # no "rank", no nested dict
    assert ("m", "teamlora") not in profiles
    assert profiles[("m", "lora")] == profiles[("m", "lora-r8")] == {"train_step_ms_median": 5.0}


def test_a_row_labelled_exactly_like_a_preset_wins_over_other_rows_of_that_preset(tmp_path):
    """An --experts sweep has `teamlora` (k=4) plus `teamlora-k2`/`-k8` rows of the same preset: the label wins."""
    rows = [
        {"model": "m", "adapter": "teamlora", "preset": "teamlora", "method": "teamlora", "train_step_ms_median": 4.0},
        {
            "model": "m",
            "adapter": "teamlora-k2",
            "preset": "teamlora",
            "method": "teamlora",
            "train_step_ms_median": 2.0,
        },
    ]
    (tmp_path / "profile.json").write_text(json.dumps({"rows": rows}))
    profiles = load_profiles(tmp_path)
    assert profiles[("m", "teamlora")] == {"train_step_ms_median": 4.0}
    assert profiles[("m", "teamlora-k2")] == {"train_step_ms_median": 2.0}
