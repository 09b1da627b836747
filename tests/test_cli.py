"""The console script: every verb is listed, and user errors print one readable line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

from cme_bench.cli import VERBS, build_parser, main


def test_help_lists_every_verb():
    text = build_parser().format_help()
    for verb in ("run", "train", "eval", "sweep", "report", "tasks", "adapters", "profile"):
        assert verb in VERBS and verb in text


def test_bad_model_is_one_readable_error(capsys, tmp_path):
    out = tmp_path / "results"
    rc = main(["run", "--model", "does/not/exist", "--max-steps", "1", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "does/not/exist" in err and "Tried, in order" in err
    assert "Traceback" not in err
    assert not out.exists()  # a run that never started leaves no record (and no leaderboard row)


def test_console_script_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "cme_bench.cli", "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    assert "sweep" in out.stdout
