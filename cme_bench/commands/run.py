"""`cme-bench run`: fine-tune an adapter on the suite's mixture, evaluate it, record it, refresh the leaderboard."""

from __future__ import annotations

import argparse

from cme_bench.commands import _common
from cme_bench.config import add_run_arguments, config_from_args

HELP = "fine-tune an adapter on the CME mixture, evaluate it through lm-eval, record and report (the main job)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", default="teamlora", help="adapter preset name or YAML path (default: teamlora)")
    add_run_arguments(parser)
    _common.add_report_arguments(parser)
    _common.add_file_and_tracker_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from cme_bench import runner

    cfg = config_from_args(args)
    _common.preflight(cfg)
    if cfg.adapter != "none":
        _common.require_resumable(cfg, None)
    with _common.trackers_of(args):
        if args.baseline and cfg.adapter != "none":
            _common.print_outcome(runner.run(config_from_args(args, adapter="none", resume=False)))
        record = runner.run(cfg)
    _common.print_outcome(record)
    _common.refresh_report(args)
    return 0 if record["status"] == "success" else 1
