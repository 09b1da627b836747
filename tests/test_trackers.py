"""Experiment trackers (``--log-to``): TensorBoard event files read back, wandb / MLflow / trackio in their offline
modes, and the checks that run before any work (unknown name, missing package)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cme_bench import trackers
from cme_bench.cli import main

TASKS = "cme_mini_boolq,cme_mini_arc_easy"
RUN = ["run", "--model", "tiny-llama", "--adapter", "teamlora", "--tasks", TASKS, "--train-cap", "24",
       "--batch-size", "4", "--max-steps", "3", "--limit", "4", "--eval-batch-size", "4", "--no-baseline",
       "--no-report"]  # fmt: skip
RUN_ID = "tiny-llama--teamlora--cme-mini--s0"


def _record(out: Path) -> dict:
    return json.loads(next(out.glob(f"{RUN_ID}*/run.json")).read_text())


def test_tensorboard_event_file_holds_the_loss_curve_and_final_scores(tmp_path: Path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("CME_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results"
    assert main([*RUN, "--output", str(out), "--log-to", "tensorboard"]) == 0
    rec = _record(out)
    events = EventAccumulator(str(out / rec["run_id"] / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in loss] == [s for s, _ in rec["training"]["loss_curve"]] == [1, 2, 3]
    assert [v for _, v in loss] == pytest.approx([v for _, v in rec["training"]["loss_curve"]], abs=1e-5)
    assert {"train/aux_loss", "train/lr", "train/tokens_per_second", "train/expert_load/max"} <= set(scalars)
    assert {f"train/expert_load/{i}" for i in range(4)} <= set(scalars)  # TeamLoRA preset: k = 4
    # The rate each step used: 0 during the one warm-up step, then the peak (cosine decay afterwards).
    assert [e.value for e in events.Scalars("train/lr")][:2] == pytest.approx([0.0, rec["config"]["learning_rate"]])
    for task in TASKS.split(","):
        (event,) = events.Scalars(f"eval/{task}")
        assert event.value == pytest.approx(rec["metrics"][task]["value"]) and event.step == 3
    mean = sum(m["value"] for m in rec["metrics"].values()) / 2
    assert events.Scalars("eval/average")[0].value == pytest.approx(mean)


def test_wandb_mlflow_and_trackio_record_offline(tmp_path: Path):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    pytest.importorskip("trackio")
    out = tmp_path / "results"
    env = {
        **os.environ,
        "CME_BENCH_CACHE": str(tmp_path / "cache"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "TRACKIO_DIR": str(tmp_path / "trackio"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cme_bench.cli", *RUN, "--output", str(out), "--log-to", "wandb,mlflow,trackio"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = _record(out)
    losses = [v for _, v in rec["training"]["loss_curve"]]

    # MLflow: the file store under tmp_path, read back with MLflow's own client.
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("cme-bench").experiment_id])
    assert run.info.run_name == rec["run_id"]
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3] and [m.value for m in history] == pytest.approx(losses)
    assert run.data.metrics["eval/cme_mini_boolq"] == pytest.approx(rec["metrics"]["cme_mini_boolq"]["value"])
    assert json.loads(run.data.params["max_steps"]) == 3

    # trackio: its local SQLite database.
    (db,) = (tmp_path / "trackio").rglob("cme-bench.db")
    rows = sqlite3.connect(db).execute("select step, metrics from metrics where run_name = ?", (rec["run_id"],))
    logged: dict[int, dict] = {}
    for step, blob in rows:  # step 3 has two rows: the last training step and the final scores
        logged.setdefault(step, {}).update(json.loads(blob))
    assert [logged[s]["train/loss"] for s in (1, 2, 3)] == pytest.approx(losses)
    assert logged[3]["eval/average"] == pytest.approx(sum(m["value"] for m in rec["metrics"].values()) / 2)

    # wandb: an offline run in the run folder (its binary log holds every metric key).
    (log_file,) = (out / rec["run_id"] / "wandb").glob("offline-run-*/run-*.wandb")
    data = log_file.read_bytes()
    assert all(key.encode() in data for key in ("train/loss", "train/expert_load/0", "eval/cme_mini_arc_easy"))


def test_unknown_tracker_is_refused_with_a_suggestion(tmp_path: Path, capsys):
    assert main([*RUN, "--output", str(tmp_path), "--log-to", "tensorbord"]) == 2
    assert "did you mean 'tensorboard'" in capsys.readouterr().err.lower()
    assert not any(tmp_path.iterdir())


def test_missing_tracker_package_gives_the_install_command_before_any_work(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(trackers.TrackioTracker, "module", "trackio_not_installed_here")
    assert main([*RUN, "--output", str(tmp_path), "--log-to", "tensorboard,trackio"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'trackio==0.43.0'" in err and "cme-bench[trackers]" in err
    assert not any(tmp_path.iterdir())  # nothing trained, no run folder


def test_mlflow_store_that_cannot_open_fails_before_any_work(tmp_path: Path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses its file store without it
    assert main([*RUN, "--output", str(tmp_path / "results"), "--log-to", "mlflow"]) == 2
    assert "MLFLOW_TRACKING_URI" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_a_failing_tracker_is_dropped_and_the_run_goes_on(tmp_path: Path, monkeypatch, caplog):
    class Broken(trackers.Tracker):
        name, module, install = "broken", "json", "json"

        def start(self, run_id, config, run_dir):
            pass

        def log(self, metrics, step):
            raise OSError("disk full")

        def finish(self):
            pass

    monkeypatch.setitem(trackers.TRACKERS._items, "broken", Broken)
    with trackers.use(["broken", "tensorboard"]):
        trackers.start_run("r", {"seed": 0}, tmp_path)
        trackers.log_step("r", 1, {"train/loss": 1.0})  # does not raise
        assert [t.name for t in trackers._running["r"]] == ["tensorboard"]
        trackers.finish_run({"run_id": "r", "metrics": {"t": {"value": 0.5}}, "training": {"steps": 1}})
        assert not trackers._running
    assert "broken: logging failed" in caplog.text and list((tmp_path / "tensorboard").iterdir())
