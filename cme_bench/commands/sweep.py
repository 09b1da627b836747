"""`cme-bench sweep`: several adapters with identical data, seed and budget; failures don't stop it.

``--launcher`` says where the runs execute (cme_bench/launchers/): one after another here (local, the default), as
Ray tasks, or as a SLURM job array. Every launcher ends with the same summary table.
"""

from __future__ import annotations

import argparse

from cme_bench import launchers
from cme_bench.commands import _common
from cme_bench.config import add_run_arguments, config_from_args
from cme_bench.errors import CmeError

HELP = "run several adapters with identical data, seed and budget; a failing one is recorded and the sweep goes on"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapters", required=True, help="comma-separated preset names, e.g. lora,moelora,teamlora")
    add_run_arguments(parser)
    _common.add_report_arguments(parser)
    launchers.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.adapters.split(",") if n.strip()]
    if not names:
        raise CmeError("--adapters is empty")
    launcher, opts = launchers.get(args.launcher), launchers.options_from_args(args)
    launcher.check(opts)  # before any work: a missing extra, a misplaced option
    cfg = config_from_args(args, adapter=names[0])
    outcomes = launcher.launch(cfg, names, args.baseline, opts, print)
    if outcomes is None:  # submitted only (--no-wait): `cme-bench report` collects the records later
        return 0
    print(f"{'adapter':<20} {'status':<10} run")
    for o in outcomes:
        print(f"{o['adapter']:<20} {o['status']:<10} {o['run_id']}" + (f"  ({o['error']})" if o.get("error") else ""))
    _common.refresh_report(args)
    failed = [o["adapter"] for o in outcomes if o["status"] != "success"]
    if failed:
        print(f"{len(failed)} of {len(outcomes)} runs failed: {', '.join(failed)}")
    return 1 if failed else 0
