"""Sweep launchers: where the runs of a sweep execute (``cme-bench sweep --launcher local|ray|slurm``).

``local`` (the default) runs them one after another in this process (``runner.sweep``). ``ray`` and ``slurm`` hand
each run, described by a picklable ``spec.RunSpec``, to a distributed engine whose workers execute it with
``spec.execute``; a run whose worker dies is given again, with ``resume``, so it continues from its last checkpoint.
Records land in the one results folder (shared storage on a cluster), so ``cme-bench report`` reads them all.

A launcher is a ``Launcher`` registered under its CLI name. It names the pip extra and modules it needs, checked
before any work, and the ``LaunchOptions`` fields it reads: an option given to a launcher that ignores it is an error.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from cme_bench.config import RunConfig
from cme_bench.errors import CmeError, ConfigError
from cme_bench.registry import Registry

# What runner.sweep takes: (settings, adapter names, with the base model's row). A sweep is a list of them (one per
# grid point of a run file).
Group = tuple[RunConfig, list[str], bool]
Emit = Callable[[str], None]
# A launcher runs every group and returns one outcome per run, {"adapter", "run_id", "status"[, "error"]} as
# runner.sweep does; None when it only submitted them (``--no-wait``). It says what happens through ``emit`` (one
# line each; the command passes ``print``).
LaunchFn = Callable[[list[Group], "LaunchOptions", Emit], "list[dict[str, Any]] | None"]


@dataclass
class LaunchOptions:
    """Where and how a sweep's runs execute; validated here, each launcher reads only its ``options``."""

    launcher: str = "local"
    max_retries: int = 2
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    ray_address: str | None = None
    partition: str | None = None
    mem_gb: int | None = None
    time_limit: int = 240
    wait: bool = True
    submitit_cluster: str = "slurm"

    def __post_init__(self) -> None:
        problems = []
        if self.max_retries < 0:
            problems.append(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.cpus_per_run < 1:
            problems.append(f"--cpus-per-run must be >= 1, got {self.cpus_per_run}")
        if self.gpus_per_run < 0:
            problems.append(f"--gpus-per-run must be >= 0, got {self.gpus_per_run}")
        if self.mem_gb is not None and self.mem_gb < 1:
            problems.append(f"--mem must be >= 1 (GB), got {self.mem_gb}")
        if self.time_limit < 1:
            problems.append(f"--time-limit must be >= 1 (minutes), got {self.time_limit}")
        if self.submitit_cluster not in ("slurm", "local"):
            problems.append(f"--submitit-cluster must be slurm or local, got {self.submitit_cluster!r}")
        if problems:
            raise ConfigError(problems, "launcher options")

    def given(self) -> set[str]:
        """The fields set to something other than their default."""
        return {f.name for f in fields(self) if f.name != "launcher" and getattr(self, f.name) != f.default}


# LaunchOptions field -> CLI flag, for messages.
FLAGS = {
    "max_retries": "--max-retries",
    "cpus_per_run": "--cpus-per-run",
    "gpus_per_run": "--gpus-per-run",
    "ray_address": "--ray-address",
    "partition": "--partition",
    "mem_gb": "--mem",
    "time_limit": "--time-limit",
    "wait": "--no-wait",
    "submitit_cluster": "--submitit-cluster",
}


@dataclass(frozen=True)
class Launcher:
    name: str
    launch: LaunchFn
    extra: str | None = None  # the pip extra that installs ``requires``
    requires: tuple[str, ...] = ()  # importable modules it needs
    options: frozenset[str] = field(default_factory=frozenset)  # LaunchOptions fields it reads
    preflight: Callable[[LaunchOptions], None] | None = None  # more checks before any work

    def check(self, opts: LaunchOptions) -> None:
        """Stop before any work when this launcher cannot run here or was given options it does not read."""
        missing = [m for m in self.requires if not _importable(m)]
        if missing:
            raise CmeError(
                f"--launcher {self.name} needs {', '.join(missing)}, which is not installed: "
                f"pip install 'cme-bench[{self.extra}]'"
            )
        ignored = sorted(FLAGS[name] for name in opts.given() - self.options)
        if ignored:
            raise ConfigError([f"{f} does not apply to --launcher {self.name}" for f in ignored], "launcher options")
        if self.preflight is not None:
            self.preflight(opts)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module blanked out in sys.modules
        return False


LAUNCHERS: Registry[Launcher] = Registry("launcher")
LAUNCHERS.register("local", "cme_bench.launchers.local:LAUNCHER")
LAUNCHERS.register("ray", "cme_bench.launchers.ray:LAUNCHER")
LAUNCHERS.register("slurm", "cme_bench.launchers.slurm:LAUNCHER")


def get(name: str) -> Launcher:
    return LAUNCHERS.get(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LaunchOptions()
    group = parser.add_argument_group("launcher (where the runs execute; README: Running a sweep on a cluster)")
    group.add_argument(
        "--launcher", default=d.launcher, help="local (one after another here) | ray | slurm (default: %(default)s)"
    )
    group.add_argument(
        "--max-retries",
        type=int,
        default=d.max_retries,
        help="ray/slurm: times a run whose worker died (or that hit its time limit) is given again, resuming from "
        "its last checkpoint (default: %(default)s)",
    )
    group.add_argument("--cpus-per-run", type=int, default=d.cpus_per_run, help="ray/slurm (default: %(default)s)")
    group.add_argument("--gpus-per-run", type=int, default=d.gpus_per_run, help="ray/slurm (default: %(default)s)")
    group.add_argument("--ray-address", help="ray: address of a running cluster (default: start a local one)")
    group.add_argument("--partition", help="slurm: partition to submit to (default: the cluster's)")
    group.add_argument("--mem", dest="mem_gb", type=int, help="slurm: memory per run in GB (default: the cluster's)")
    group.add_argument(
        "--time-limit",
        type=int,
        default=d.time_limit,
        help="slurm: minutes per job; a run that reaches it is checkpointed and requeued (default: %(default)s)",
    )
    group.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="slurm: submit and return; `cme-bench report` collects the records when the jobs are done",
    )
    group.add_argument(
        "--submitit-cluster",
        default=d.submitit_cluster,
        help="slurm: slurm, or local to run the job array as processes on this machine (default: %(default)s)",
    )


def options_from_args(args: argparse.Namespace) -> LaunchOptions:
    names = {f.name for f in fields(LaunchOptions)}
    return LaunchOptions(**{k: v for k, v in vars(args).items() if k in names})
