"""What the cluster launchers share: the picklable description of one run, the worker's entry point, progress lines.

A ``RunSpec`` is the run's own ``RunConfig`` (adapter set, paths absolute so any worker on shared storage finds
them) plus its attempt number. ``execute`` is all a worker does: the run as a one-run sweep (``runner.sweep``), so a
failing run is recorded and reported exactly as in a local sweep, then the record notes how it was launched.
A retry is the same spec with ``resume`` on and the attempt counted: it continues from the run's last checkpoint, or
only evaluates again when the adapter was already saved (the runner's resume).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cme_bench import results
from cme_bench.config import NO_ADAPTER, RunConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    config: RunConfig
    launcher: str
    attempt: int = 1
    trackers: tuple[str, ...] = ()  # --log-to of the sweep

    @property
    def key(self) -> str:
        """The run's id: what progress lines and outcomes are keyed by."""
        return self.config.run_id()

    def retry(self) -> RunSpec:
        """The next attempt: same run, resumed from whatever the last one left."""
        return replace(self, config=replace(self.config, resume=True), attempt=self.attempt + 1)


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def sweep_specs(groups: list[tuple[RunConfig, list[str], bool]], launcher: str) -> list[RunSpec]:
    """One spec per run of the sweep's groups (each base model's row first), each run once even if named twice."""
    from cme_bench import trackers

    active = tuple(trackers.active())  # --log-to: the workers log to the same trackers
    specs: dict[str, RunSpec] = {}
    for cfg, names, baseline in groups:
        shipped = replace(
            cfg,
            output=_absolute(cfg.output),
            include_path=[_absolute(p) for p in cfg.include_path],
            extra_data=[_absolute(p) for p in cfg.extra_data],
            # a local model folder or .gguf: absolute, so a worker started elsewhere finds it (built-in names stay)
            model=_absolute(cfg.model) if Path(cfg.model).expanduser().exists() else cfg.model,
        )
        for name in ([NO_ADAPTER] if baseline else []) + names:
            # a preset file given by path: absolute for the same reason (its name, hence the run id, is unchanged)
            adapter = _absolute(name) if name != NO_ADAPTER and Path(name).is_file() else name
            spec = RunSpec(replace(shipped, adapter=adapter, name=None), launcher, trackers=active)
            specs.setdefault(spec.key, spec)
    return list(specs.values())


def execute(spec: RunSpec, worker: str) -> dict[str, Any]:
    """Run ``spec`` here (on a worker) and return its outcome, as ``runner.sweep`` reports it, plus attempt and worker.

    Exceptions from the run itself are recorded in its ``run.json`` and returned as a ``failed`` outcome; only the
    death of this process (or a cluster's signal) keeps a run from ending with an outcome.
    """
    from cme_bench import runner, trackers

    cfg = spec.config
    started = results.now()
    base = cfg.adapter == NO_ADAPTER
    with trackers.use(list(spec.trackers)):
        (outcome,) = runner.sweep(cfg, [] if base else [cfg.adapter], baseline=base)
    _note_launch(cfg, outcome["run_id"], spec, worker, started)
    return {**outcome, "attempts": spec.attempt, "worker": worker}


def _note_launch(cfg: RunConfig, run_id: str, spec: RunSpec, worker: str, started: str) -> None:
    """Add ``launch`` to the record this attempt finished (not to one an earlier sweep finished, reused here)."""
    if not cfg.is_main_process():
        return
    run_dir = Path(cfg.output) / run_id
    record = results.read_run(run_dir)
    if record is None or (record.get("finished_at") or "") < started:
        return
    record["launch"] = {"launcher": spec.launcher, "attempts": spec.attempt, "worker": worker}
    results.write_json_atomic(run_dir / "run.json", record)


def lost(spec: RunSpec, exc: BaseException) -> dict[str, Any]:
    """The outcome of a run whose worker died on its last allowed attempt; its record says so."""
    from cme_bench import runner

    outcome = runner.record_failure(spec.config, exc)
    return {**outcome, "attempts": spec.attempt}


class Progress:
    """One line per state change of a run: queued, running (on which worker), retried, done, failed."""

    def __init__(self, total: int, emit: Callable[[str], None]) -> None:
        self.total, self.emit, self.finished = total, emit, 0

    def __call__(self, state: str, spec: RunSpec, detail: str = "") -> None:
        if state in ("done", "failed"):
            self.finished += 1
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        counter = f"[{self.finished}/{self.total}]"
        line = f"{stamp} {counter} {state:<8} {spec.key}" + (f"  {detail}" if detail else "")
        self.emit(line)

    def outcome(self, spec: RunSpec, outcome: dict[str, Any]) -> None:
        tries = outcome.get("attempts", spec.attempt)
        detail = f"after {tries} attempts" if tries > 1 else ""
        if outcome.get("error"):
            error = " ".join(str(outcome["error"]).split())  # one line per state change, even for a long error
            detail = "; ".join(d for d in (detail, error) if d)
        self("done" if outcome["status"] == "success" else "failed", spec, detail)
