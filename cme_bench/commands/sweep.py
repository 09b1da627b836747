"""`cme-bench sweep`: several adapters in turn with identical data, seed and budget; failures don't stop it.

With a run file (``--config``), ``grid:`` adds axes (seeds, learning rates, any run setting): the sweep runs every
adapter at every grid point (``runfile.expand``). ``--launcher`` says where the runs execute (cme_bench/launchers/):
one after another here (local, the default), as Ray tasks, or as one SLURM job array; all end with the same table.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from cme_bench import launchers
from cme_bench.commands import _common
from cme_bench.config import add_run_arguments, add_seeds_argument, config_from_args, seeds_from_args
from cme_bench.errors import CmeError

HELP = "run several adapters with identical data, seed and budget; a failing one is recorded and the sweep goes on"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Not required=True: the adapters may come from a run file (`adapters:` or `grid: {adapter: [...]}`).
    parser.add_argument("--adapters", help="comma-separated preset names, e.g. lora,moelora,teamlora")
    add_run_arguments(parser)
    add_seeds_argument(parser)
    _common.add_report_arguments(parser)
    _common.add_file_and_tracker_arguments(parser)
    launchers.add_arguments(parser)
    parser.set_defaults(grid={})  # filled from a run file's `grid:`


def main(args: argparse.Namespace) -> int:
    from cme_bench import runfile
    from cme_bench.adapters import preset_names
    from cme_bench.registry import suggest

    names = runfile.adapters_of(args.grid, [n.strip() for n in (args.adapters or "").split(",") if n.strip()])
    if not names:
        raise CmeError(
            "no adapters to sweep: give --adapters a,b,c (or `adapters:` or `grid: {adapter: [...]}` in --config)"
        )
    launcher, opts = launchers.get(args.launcher), launchers.options_from_args(args)
    launcher.check(opts)  # before any work: a missing extra, a misplaced option
    grid = dict(args.grid)
    if getattr(args, "seeds", None) is not None:  # --seeds is one more grid axis: one run per seed
        if "seed" in grid:
            raise CmeError("seeds given twice: by --seeds and by the run file's grid; keep one")
        grid["seed"] = seeds_from_args(args)
    base = config_from_args(args, adapter=names[0])
    _common.preflight(replace(base, adapter="none"))
    # A misspelt name stops the sweep before it starts; a preset that exists but is invalid is one failed run.
    known = set(preset_names())
    for name in names:
        if name not in known and name != "none" and not Path(name).expanduser().is_file():
            raise CmeError(suggest(name, sorted(known), "adapter preset") + " (in --adapters)")
    points = runfile.points(base, grid)
    if len(points) > 1:
        print(f"grid: {len(points)} points x {len(names)} adapters = {len(points) * len(names)} runs")
    groups: list[launchers.Group] = []
    seeds: set[int] = set()
    for point in points:
        if args.baseline and point.seed not in seeds and len(points) > 1:
            # The base model's row depends on the seed only: once per seed, without the grid point's tag.
            groups.append((replace(base, seed=point.seed), [], True))
        seeds.add(point.seed)
        groups.append((point, names, args.baseline and len(points) == 1))
    with _common.trackers_of(args):
        outcomes = launcher.launch(groups, opts, print)
    if outcomes is None:  # submitted only (--no-wait): `cme-bench report` collects the records later
        return 0
    print(f"{'adapter':<20} {'status':<18} run")
    for o in outcomes:
        status = o["status"] + (" (reused)" if o.get("reused") else "")
        print(f"{o['adapter']:<20} {status:<18} {o['run_id']}" + (f"  ({o['error']})" if o.get("error") else ""))
    _common.refresh_report(args)
    failed = [o["run_id"] for o in outcomes if o["status"] != "success"]
    if failed:
        print(f"{len(failed)} of {len(outcomes)} runs failed: {', '.join(failed)}")
    return 1 if failed else 0
