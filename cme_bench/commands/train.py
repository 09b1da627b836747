"""`cme-bench train`: the training half of `run` (fine-tune and save the adapter, no evaluation)."""

from __future__ import annotations

import argparse

from cme_bench.commands import _common
from cme_bench.config import add_run_arguments, config_from_args

HELP = "fine-tune an adapter on the CME mixture and save it (no evaluation); works under torchrun/accelerate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", default="teamlora", help="adapter preset name or YAML path (default: teamlora)")
    add_run_arguments(parser, evaluate=False)
    _common.add_file_and_tracker_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from cme_bench import runner

    cfg = config_from_args(args)
    _common.preflight(cfg)
    _common.require_resumable(cfg, "train")
    with _common.trackers_of(args):
        record = runner.train_only(cfg)
    _common.print_outcome(record)
    return 0 if record["status"] == "success" else 1
