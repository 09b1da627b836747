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


_SHOW_WAIT_POLICY = """
import os, sys
from cme_bench import cli
try:
    cli.main(["--version"])
except SystemExit:
    pass
import torch  # the OpenMP runtime starts here and reads the policy
print("policy", os.environ.get("OMP_WAIT_POLICY"), torch.get_num_threads() > 0)
"""


def _wait_policy_seen(**env: str) -> str:
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "CME_BENCH_NO_PERF_DEFAULTS")}
    out = subprocess.run(
        [sys.executable, "-c", _SHOW_WAIT_POLICY], env={**base, **env}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("policy ", 1)[1].split()[0]


def test_cli_sets_passive_openmp_wait_unless_the_user_chose():
    assert _wait_policy_seen() == "PASSIVE"  # set before torch loads OpenMP
    assert _wait_policy_seen(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"  # the user's setting wins
    assert _wait_policy_seen(CME_BENCH_NO_PERF_DEFAULTS="1") == "None"  # and all defaults can be turned off
