"""`cme-bench eval`: the evaluation half of `run`, for a saved adapter (ours or PEFT's) or the base model."""

from __future__ import annotations

import argparse
from pathlib import Path

from cme_bench.commands import _common
from cme_bench.config import add_run_arguments, config_from_args
from cme_bench.errors import CmeError

HELP = "evaluate a saved adapter (--adapter-path DIR) or the base model (--adapter none) on a suite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Not required=True: the choice may come from a run file (--config); main checks that one was made.
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--adapter-path", type=Path, help="a saved adapter folder (cme-bench's or PEFT's)")
    which.add_argument("--adapter", choices=["none"], help="`none`: evaluate the base model itself")
    add_run_arguments(parser, train=False)
    _common.add_report_arguments(parser)
    _common.add_file_and_tracker_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from cme_bench import runner

    if (args.adapter_path is None) == (args.adapter is None):
        raise CmeError("give exactly one of --adapter-path DIR and --adapter none (command line or --config)")
    args.adapter_path = None if args.adapter_path is None else Path(args.adapter_path)
    if args.adapter_path is not None and not (args.adapter_path / "adapter_config.json").is_file():
        raise CmeError(f"{args.adapter_path} is not an adapter folder (no adapter_config.json in it)")
    cfg = config_from_args(args, adapter="none")
    _common.preflight(cfg, adapter_path=args.adapter_path)
    with _common.trackers_of(args):
        record = runner.evaluate_base_or_adapter(cfg, args.adapter_path)
    _common.print_outcome(record)
    _common.refresh_report(args)
    return 0 if record["status"] == "success" else 1
