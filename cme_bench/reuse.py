"""Reuse decisions: a finished run is reused only on an exact identity match; evaluation-only records (the base
model's row, a saved adapter's evaluation) are reused task by task, and missing tasks are evaluated and merged in.

The runner asks :func:`finished` (train / run records: all or nothing) or :func:`plan_evaluation` (evaluation-only
records: per task, lm-eval's ``--use_cache`` idea at task granularity). ``--force`` always reruns. What was reused
travels back to the command in the returned record under ``REUSE_KEY`` (never written to disk), so the command can
say it plainly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cme_bench import results
from cme_bench.identity import Identity

log = logging.getLogger(__name__)

REUSE_KEY = "_reuse"  # in-memory only: {"run_id", "reused": [task, ...], "evaluated": [task, ...]}
TASK_META_KEYS = ("display_name", "suite", "domain", "task_type", "primary_metric", "higher_is_better", "chance")


def _recorded_identity(record: Mapping[str, Any] | None) -> Mapping[str, Any]:
    ident = (record or {}).get("identity")
    return ident if isinstance(ident, Mapping) else {}


def finished(force: bool, run_dir: Path, ident: Identity) -> dict[str, Any] | None:
    """The finished record at ``run_dir`` when its identity equals ``ident`` exactly (and not ``force``)."""
    record = results.read_run(run_dir)
    if force or record is None or record.get("status") != "success":
        return None
    if _recorded_identity(record).get("digest") != ident.digest:
        log.warning("%s holds a run with other settings (identity differs); running again", run_dir)
        return None
    log.info("%s: identical settings already finished", run_dir.name)
    record[REUSE_KEY] = {"run_id": record["run_id"], "reused": sorted(record.get("metrics") or {}), "evaluated": []}
    return record


@dataclass
class EvalPlan:
    """What an evaluation-only run must do: ``todo`` tasks to evaluate, merged into ``existing`` (if any)."""

    todo: list[str]
    existing: dict[str, Any] | None = None
    reused: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not self.todo and self.existing is not None


def plan_evaluation(force: bool, run_dir: Path, ident: Identity, tasks: Sequence[str]) -> EvalPlan:
    """Which of ``tasks`` a finished evaluation-only record at ``run_dir`` already holds with identical settings.

    ``run_dir`` is named by ``ident.row_key`` (everything but the task list), so the record there was made with the
    same model, adapter, limit, backend and seed; a task counts as covered when its recorded config digest equals
    the current one. Tasks whose YAML changed since are evaluated again and replace the old result.
    """
    record = results.read_run(run_dir)
    if force or record is None or record.get("status") != "success":
        return EvalPlan(todo=list(tasks))
    recorded = _recorded_identity(record)
    components = recorded.get("components") or {}
    if Identity(dict(components)).row_key != ident.row_key:
        log.warning("%s holds a run with other settings (identity differs); running again", run_dir)
        return EvalPlan(todo=list(tasks))
    have = (components.get("evaluation") or {}).get("tasks") or {}
    want = ident.task_digests
    metrics = record.get("metrics") or {}
    reused = [t for t in tasks if t in metrics and have.get(t) == want[t]]
    return EvalPlan(todo=[t for t in tasks if t not in reused], existing=record, reused=reused)


def merged_identity(ident: Identity, previous: Mapping[str, Any] | None, evaluated: Sequence[str]) -> Identity:
    """``ident`` over the tasks the merged record holds: earlier tasks keep the digest they were evaluated with."""
    old = ((_recorded_identity(previous).get("components") or {}).get("evaluation") or {}).get("tasks") or {}
    kept = {t: d for t, d in old.items() if t in ((previous or {}).get("metrics") or {})}
    return ident.with_tasks({**kept, **{t: ident.task_digests[t] for t in evaluated}})


def merge_evaluation(previous: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``evaluation`` block of a merged record: per-task lm-eval tables united, seconds added up."""
    if not previous:
        return dict(new) if new else None
    if not new:
        return dict(previous)
    out = {**previous, **{k: v for k, v in new.items() if k not in ("lm_eval", "seconds")}}
    out["seconds"] = round(float(previous.get("seconds") or 0) + float(new.get("seconds") or 0), 3)
    lm_old, lm_new = previous.get("lm_eval") or {}, new.get("lm_eval") or {}
    out["lm_eval"] = {k: {**(lm_old.get(k) or {}), **(lm_new.get(k) or {})} for k in sorted(set(lm_old) | set(lm_new))}
    return out


def tasks_meta(tasks: Sequence[str], include_path: Sequence[Path | str] = ()) -> dict[str, dict[str, Any]]:
    """Each task's metadata as the run saw it, so a report built without the task folders still knows it."""
    from cme_bench import taskreg

    out = {}
    for task in tasks:
        info = taskreg.task_info(task, include_path).to_dict()
        out[task] = {k: info[k] for k in TASK_META_KEYS}
    return out
