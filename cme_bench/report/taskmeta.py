"""Task metadata for the report: display names, domains, direction and chance level.

The source of truth is the task registry (``cme_bench.taskreg.task_info``), injected as a callable so tests and other
suites can pass their own. For a task the registry does not know (a user task of a report built without its
``--include-path``), the report uses the metadata the run records saved (``tasks_meta``, schema v2), and for older
records falls back to the metric name from ``metrics[task]``, lm-eval's ``higher_is_better`` table, and lm-eval's
group membership as the domain. Nothing about specific tasks is hard-coded here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from cme_bench.report.load import RunRecord

log = logging.getLogger(__name__)

UNKNOWN_DOMAIN = "other"

TaskInfoFn = Callable[[str], Any]


@dataclass(frozen=True)
class TaskMeta:
    """The subset of ``taskreg.TaskInfo`` the report needs, plus where it came from."""

    name: str
    display_name: str
    domain: str
    primary_metric: str
    higher_is_better: bool
    chance: float | None
    source: str  # "registry" | "run record"


def default_task_info() -> TaskInfoFn | None:
    """taskreg's ``task_info`` if that module is importable, else None (fallbacks only)."""
    try:
        from cme_bench.taskreg import task_info
    except Exception as err:  # any import problem just means "no registry"
        log.info("task registry unavailable (%s); using metadata from the run records", err)
        return None
    return task_info


def _from_records(task: str, runs: Iterable[RunRecord]) -> TaskMeta:
    metric, hib, domain = "score", True, UNKNOWN_DOMAIN
    for run in runs:
        if task in run.metrics:
            metric = run.metrics[task].metric
            lm_eval = run.section("evaluation").get("lm_eval") or {}
            table = (lm_eval.get("higher_is_better") or {}).get(task) or {}
            if isinstance(table, dict) and isinstance(table.get(metric), bool):
                hib = table[metric]
            for group, subtasks in (lm_eval.get("group_subtasks") or {}).items():
                if isinstance(subtasks, list) and task in subtasks:
                    domain = str(group)
            break
    return TaskMeta(task, task, domain, metric, hib, None, "run record")


def _recorded_meta(task: str, runs: Iterable[RunRecord]) -> SimpleNamespace | None:
    for run in runs:
        meta = run.section("tasks_meta").get(task)
        if isinstance(meta, Mapping):
            return SimpleNamespace(**meta)
    return None


def resolve_tasks(tasks: Iterable[str], runs: list[RunRecord], task_info: TaskInfoFn | None) -> dict[str, TaskMeta]:
    """TaskMeta for each task: from ``task_info`` when it knows the task, else from the run records."""
    out: dict[str, TaskMeta] = {}
    unknown: list[str] = []
    for task in tasks:
        fallback = _from_records(task, runs)
        info, source = None, "registry"
        if task_info is not None:
            try:
                info = task_info(task)
            except Exception as err:  # an unknown task is expected, not fatal
                log.debug("task %r not in the task registry: %s", task, err)
        if info is None:  # schema v2 records carry the metadata the run saw (user tasks built elsewhere included)
            info, source = _recorded_meta(task, runs), "run record"
        if info is None:
            unknown.append(task)
            out[task] = fallback
            continue
        hib = getattr(info, "higher_is_better", None)
        chance = getattr(info, "chance", None)
        out[task] = TaskMeta(
            name=task,
            display_name=str(getattr(info, "display_name", None) or task),
            domain=str(getattr(info, "domain", None) or fallback.domain),
            primary_metric=str(getattr(info, "primary_metric", None) or fallback.primary_metric),
            higher_is_better=hib if isinstance(hib, bool) else fallback.higher_is_better,
            chance=float(chance) if isinstance(chance, (int, float)) and not isinstance(chance, bool) else None,
            source=source,
        )
    if unknown and task_info is not None:
        log.info(
            "%d task(s) not in the task registry, described from the run records: %s", len(unknown), ", ".join(unknown)
        )
    return out
