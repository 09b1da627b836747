"""`cme-bench run`: fine-tune an adapter on the suite's mixture, evaluate it, record it, refresh the leaderboard."""

from __future__ import annotations

import argparse

from cme_bench.commands import _common
from cme_bench.config import add_run_arguments, add_seeds_argument, config_from_args, seeds_from_args

HELP = "fine-tune an adapter on the CME mixture, evaluate it through lm-eval, record and report (the main job)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", default="teamlora", help="adapter preset name or YAML path (default: teamlora)")
    add_run_arguments(parser)
    add_seeds_argument(parser)
    _common.add_report_arguments(parser)
    _common.add_file_and_tracker_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from cme_bench import runner

    seeds = seeds_from_args(args)
    configs = [config_from_args(args, seed=seed) for seed in seeds]  # every setting checked before any work
    for cfg in configs:  # model, tasks, preset, --resume: checked before the base row is evaluated
        _common.preflight(cfg)
        if cfg.adapter != "none":
            _common.require_resumable(cfg, None)
    records = []
    with _common.trackers_of(args):
        if args.baseline and configs[0].adapter != "none":
            # One base row: the base model is not trained, so its numbers do not depend on the training seed.
            _common.print_outcome(runner.run(config_from_args(args, adapter="none", resume=False, seed=seeds[0])))
        for cfg in configs:
            records.append(runner.run(cfg))
            _common.print_outcome(records[-1])
    _common.refresh_report(args)
    return 0 if all(r["status"] == "success" for r in records) else 1
