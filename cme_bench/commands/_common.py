"""Helpers shared by the run/train/eval/sweep verbs: run files, trackers, the outcome line, the leaderboard."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_file_and_tracker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE.yaml`` (a run file) and ``--log-to`` (experiment trackers)."""
    from cme_bench import runfile

    runfile.add_config_argument(parser)
    parser.add_argument(
        "--log-to",
        default="",
        metavar="TRACKERS",
        help="experiment trackers, comma-separated: tensorboard,wandb,mlflow,trackio (optional packages; "
        "pip install 'cme-bench[trackers]')",
    )


def trackers_of(args: argparse.Namespace):
    """The context that logs every run of this command to ``--log-to`` (checked before any work)."""
    from cme_bench import trackers

    return trackers.use(trackers.parse_names(args.log_to))


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="skip evaluating the base model (every leaderboard needs that row; it is reused once recorded)",
    )
    parser.add_argument("--no-report", dest="report", action="store_false", help="do not refresh the leaderboard")


def reuse_line(record: dict[str, Any]) -> str | None:
    """What was reused instead of computed, in words (None: everything was computed)."""
    from cme_bench.reuse import REUSE_KEY

    reuse = record.pop(REUSE_KEY, None)
    if not reuse or (not reuse["reused"] and reuse["evaluated"]):
        return None
    if not reuse["evaluated"]:
        return f"reused finished run {reuse['run_id']} (identical settings); --force to rerun"
    return (
        f"{reuse['run_id']}: evaluated {', '.join(reuse['evaluated'])} and merged into the finished run's "
        f"{len(reuse['reused'])} task(s) with identical settings; --force to rerun all"
    )


def preflight(cfg: Any, *, adapter_path: Path | None = None) -> None:
    """Check every input of a run before anything heavy is loaded: a bad value costs seconds and leaves no record.

    The model spec must resolve, the tasks (or the suite) must exist, the adapter preset or saved adapter must
    load, and ``--resume`` must find something to resume.
    """
    from cme_bench import adapters, models, taskreg
    from cme_bench.config import NO_ADAPTER
    from cme_bench.tuners.checkpoint import read_adapter_config

    models.check_spec(cfg.model)
    for task in cfg.tasks or taskreg.suite_tasks(cfg.suite, cfg.include_path):
        taskreg.task_info(task, cfg.include_path)
    if adapter_path is not None:
        read_adapter_config(adapter_path)
    elif cfg.adapter != NO_ADAPTER:
        adapters.load_preset(cfg.adapter)


def require_resumable(cfg: Any, stage: str | None) -> None:
    """``--resume`` with nothing to resume is an error for a single run (a sweep starts what never started)."""
    from cme_bench import runlock, runner

    if cfg.resume:
        runlock.require_resumable(Path(cfg.output) / runner.planned_run_id(cfg, evaluate=stage is None))


def print_outcome(record: dict[str, Any]) -> None:
    """One line per run, on the leaderboard's scale (%) and with its names (see report.summary.outcome_line); first
    what was reused instead of computed."""
    from cme_bench.report.summary import outcome_line

    if line := reuse_line(record):
        print(line)
    print(outcome_line(record))


def refresh_report(args: argparse.Namespace) -> None:
    """Rebuild the leaderboard from every run under --output; a reporting problem never fails the run."""
    if not getattr(args, "report", False):
        return
    results, out = Path(args.output), Path(args.output) / "leaderboard"
    try:
        from cme_bench.report import build_report, write_site, write_text_outputs

        report = build_report(results, out=out)
        write_text_outputs(report, out)
        print(f"leaderboard: {write_site(report, out)}")
    except Exception as exc:  # the run itself is recorded; the report can be rebuilt with `cme-bench report`
        log.warning("could not refresh the leaderboard: %s", exc)
