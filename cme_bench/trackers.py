"""Experiment trackers (``--log-to tensorboard,wandb,mlflow,trackio``): training curves and final scores.

Each tracker is a small class over its library's own API, registered under its CLI name with a lazy target, so a
missing optional library costs nothing until it is asked for. ``check`` runs before any work: a missing package is a
``CmeError`` carrying the install command, and MLflow's store is opened once, so a run never trains for an hour and
then fails to log.

The runner drives the active trackers through three calls, and nothing else in cme-bench knows about them:
``start_run`` (when a run record opens), ``log_step`` (the training loop's per-step callback, bound to the run id;
``train.train`` only sees a callable) and ``finish_run`` (when the record gets its final status: per-task and average
scores). Tracker runs are kept per run id, because a sweep trains every adapter before it evaluates any.
``use(names)`` activates trackers for the duration of a command.

What is logged: ``train/loss``, ``train/aux_loss``, ``train/lr``, ``train/tokens_per_second``,
``train/expert_load/<expert>`` (mean routing share per expert over the routed layers of the last micro-batch),
``train/expert_load/max`` (the busiest expert's share), then ``eval/<task>`` and ``eval/average``. Where they go:

- tensorboard: event files in ``<run folder>/tensorboard/`` (``tensorboard --logdir results``);
- wandb: the project ``$WANDB_PROJECT`` (default ``cme-bench``), files under the run folder; ``WANDB_MODE=offline``
  keeps everything local (``wandb sync`` uploads later);
- mlflow: the tracking URI ``$MLFLOW_TRACKING_URI`` (a server, ``sqlite:///mlflow.db`` or a ``file:`` folder),
  experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``cme-bench``);
- trackio: local SQLite under ``$TRACKIO_DIR`` (trackio's default: the Hugging Face cache), project ``cme-bench``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cme_bench.errors import CmeError
from cme_bench.registry import Registry

log = logging.getLogger(__name__)

PROJECT = "cme-bench"


class Tracker:
    """One run in one tracking library. Subclasses implement ``start``, ``log`` and ``finish``."""

    name = ""
    module = ""  # the import that must succeed
    install = ""  # the pip requirement that provides it

    @classmethod
    def check(cls) -> None:
        """Raise CmeError (with the install command) when the library is missing or cannot record here."""
        if importlib.util.find_spec(cls.module) is None:
            raise CmeError(
                f"--log-to {cls.name} needs the {cls.install.split('=')[0]} package: pip install '{cls.install}' "
                "(or every tracker at once: pip install 'cme-bench[trackers]')"
            )

    def start(self, run_id: str, config: dict[str, Any], run_dir: Path) -> None:
        raise NotImplementedError

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    name, module, install = "tensorboard", "tensorboard", "tensorboard==2.21.0"

    def start(self, run_id: str, config: dict[str, Any], run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def finish(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    name, module, install = "wandb", "wandb", "wandb==0.31.0"

    def start(self, run_id: str, config: dict[str, Any], run_dir: Path) -> None:
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        project = os.environ.get("WANDB_PROJECT", PROJECT)
        self.run = wandb.init(project=project, name=run_id, config=config, dir=str(run_dir), reinit="create_new")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    name, module, install = "mlflow", "mlflow", "mlflow-skinny==3.17.2"

    @classmethod
    def check(cls) -> None:
        super().check()
        from mlflow.tracking import MlflowClient

        try:  # opens the store: a missing database driver or a refused file store fails here, before any work
            MlflowClient().search_experiments(max_results=1)
        except Exception as exc:
            raise CmeError(
                f"--log-to mlflow cannot open the tracking store {_mlflow_uri()!r}: {exc}. Point MLFLOW_TRACKING_URI "
                "at a tracking server, or use a local folder: MLFLOW_TRACKING_URI=file:./mlruns "
                "MLFLOW_ALLOW_FILE_STORE=true (the sqlite:// default needs the full `mlflow` package)"
            ) from None

    def start(self, run_id: str, config: dict[str, Any], run_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_id).info.run_id
        from mlflow.entities import Param

        # MLflow params are strings of at most 6000 characters.
        params = [Param(key, json.dumps(value, default=str)[:6000]) for key, value in config.items()]
        self.client.log_batch(self.run_id, params=params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        batch = [Metric(_mlflow_key(k), float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioTracker(Tracker):
    name, module, install = "trackio", "trackio", "trackio==0.43.0"

    def start(self, run_id: str, config: dict[str, Any], run_dir: Path) -> None:
        import trackio

        # embed=False: no local dashboard server is started; `trackio show` opens it on demand.
        self.run = trackio.init(
            project=PROJECT, name=run_id, config=config, embed=False, auto_log_cpu=False, auto_log_gpu=False
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()


TRACKERS: Registry[type[Tracker]] = Registry("experiment tracker")
TRACKERS.register("tensorboard", "cme_bench.trackers:TensorBoardTracker")
TRACKERS.register("wandb", "cme_bench.trackers:WandbTracker")
TRACKERS.register("mlflow", "cme_bench.trackers:MlflowTracker")
TRACKERS.register("trackio", "cme_bench.trackers:TrackioTracker")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _mlflow_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _mlflow_key(key: str) -> str:
    # MLflow keys allow letters, digits, _ - . space / only.
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)


# ----------------------------------------------------------------------------------------------------------------
# The active trackers of a command


def parse_names(text: str | None) -> list[str]:
    """``"tensorboard,wandb"`` -> names; an unknown name is a CmeError with near matches."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    for name in names:
        TRACKERS.get(name)  # raises with suggestions
    return list(dict.fromkeys(names))


def check(names: list[str]) -> None:
    """Every requested tracker can record here; all problems in one error, before any work."""
    problems = []
    for name in names:
        try:
            TRACKERS.get(name).check()
        except CmeError as exc:
            problems.append(str(exc))
    if problems:
        raise CmeError("; ".join(problems))


_active: list[str] = []
_running: dict[str, list[Tracker]] = {}  # run id -> its open tracker runs (a sweep trains all, then evaluates)


def active() -> list[str]:
    """The trackers ``use`` activated here (a cluster launcher hands them to its workers)."""
    return list(_active)


@contextmanager
def use(names: list[str]) -> Iterator[None]:
    """Log every run started inside the block to ``names`` (checked first)."""
    check(names)
    previous = list(_active)
    _active[:] = names
    try:
        yield
    finally:
        for run_id in list(_running):
            _close(run_id)
        _active[:] = previous


def start_run(run_id: str, config: dict[str, Any], run_dir: Path) -> None:
    """Open one tracker run per active tracker for ``run_id`` (kept open when it already is: a resumed stage)."""
    if not _active or run_id in _running:
        return
    opened: list[Tracker] = []
    _running[run_id] = opened
    for name in _active:
        tracker = TRACKERS.get(name)()
        tracker.start(run_id, config, Path(run_dir))
        opened.append(tracker)


def log_step(run_id: str, step: int, metrics: dict[str, float]) -> None:
    """The training loop's callback (bound to a run id): one optimiser step's metrics to the run's trackers.

    A tracker that fails (a lost connection, a full disk) is dropped with a warning: the run it describes goes on.
    """
    opened = _running.get(run_id, [])
    for tracker in list(opened):
        try:
            tracker.log(metrics, step)
        except Exception as exc:
            log.warning("%s: logging failed, no more metrics go to it for this run: %s", tracker.name, exc)
            opened.remove(tracker)


def finish_run(record: dict[str, Any]) -> None:
    """Final per-task scores and their average from a finished run record, then close that run's trackers."""
    run_id = record.get("run_id", "")
    if run_id not in _running:
        return
    scores = {f"eval/{task}": float(m["value"]) for task, m in (record.get("metrics") or {}).items()}
    if scores:
        scores["eval/average"] = sum(scores.values()) / len(scores)
        log_step(run_id, int((record.get("training") or {}).get("steps") or 0), scores)
    _close(run_id)


def _close(run_id: str) -> None:
    for tracker in _running.pop(run_id, []):
        try:
            tracker.finish()
        except Exception as exc:  # a tracker that cannot close must not fail the run it describes
            log.warning("%s: could not close the run: %s", tracker.name, exc)
