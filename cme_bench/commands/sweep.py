"""`cme-bench sweep`: several adapters in turn with identical data, seed and budget; failures don't stop it."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from cme_bench.commands import _common
from cme_bench.config import add_run_arguments, config_from_args
from cme_bench.errors import CmeError

HELP = "run several adapters with identical data, seed and budget; a failing one is recorded and the sweep goes on"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapters", required=True, help="comma-separated preset names, e.g. lora,moelora,teamlora")
    add_run_arguments(parser)
    _common.add_report_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from cme_bench import runner
    from cme_bench.adapters import preset_names
    from cme_bench.registry import suggest

    names = [n.strip() for n in args.adapters.split(",") if n.strip()]
    if not names:
        raise CmeError("--adapters is empty")
    cfg = config_from_args(args, adapter=names[0])
    _common.preflight(replace(cfg, adapter="none"))
    # A misspelt name stops the sweep before it starts; a preset that exists but is invalid is one failed run.
    known = set(preset_names())
    for name in names:
        if name not in known and name != "none" and not Path(name).expanduser().is_file():
            raise CmeError(suggest(name, sorted(known), "adapter preset") + " (in --adapters)")
    outcomes = runner.sweep(cfg, names, baseline=args.baseline)
    print(f"{'adapter':<20} {'status':<10} run")
    for o in outcomes:
        print(f"{o['adapter']:<20} {o['status']:<10} {o['run_id']}" + (f"  ({o['error']})" if o.get("error") else ""))
    _common.refresh_report(args)
    failed = [o["adapter"] for o in outcomes if o["status"] != "success"]
    if failed:
        print(f"{len(failed)} of {len(outcomes)} runs failed: {', '.join(failed)}")
    return 1 if failed else 0
