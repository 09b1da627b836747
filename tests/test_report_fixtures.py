"""Hand-built run records for the report tests (test data only; no tests in this module).

The ``world`` has three tasks in two domains and four runs on the same four items per task, chosen so that every
average, win rate and test statistic can be worked out by hand (see test_report_table.py for the arithmetic).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FakeInfo:
    name: str
    suite: str
    domain: str
    task_type: str
    display_name: str
    primary_metric: str
    higher_is_better: bool
    chance: float | None
    output_type: str = "multiple_choice"
    version: int = 1
    reconstructed: bool = False


FAKE_TASKS = {
    "t_a": FakeInfo("t_a", "cme-mini", "reasoning", "mc", "Task A", "acc", True, 0.25),
    "t_b": FakeInfo("t_b", "cme-mini", "reasoning", "mc", "Task B", "acc", True, 0.5),
    "t_c": FakeInfo("t_c", "cme-mini", "knowledge", "gen", "Task C", "exact_match", True, 0.0),
}


def fake_task_info(name: str) -> FakeInfo:
    return FAKE_TASKS[name]  # KeyError for an unknown task, like a registry miss


# Per-sample 0/1 scores on doc_ids 0..3; means are in the comments.
SCORES = {
    "base": {"t_a": [1, 0, 0, 0], "t_b": [1, 1, 0, 0], "t_c": [0, 0, 0, 1]},  # .25 .50 .25
    "lora": {"t_a": [1, 1, 0, 0], "t_b": [1, 1, 1, 0], "t_c": [1, 0, 0, 1]},  # .50 .75 .50
    "teamlora": {"t_a": [1, 1, 1, 0], "t_b": [1, 1, 1, 1], "t_c": [1, 1, 0, 1]},  # .75 1.0 .75
}


def write_run(
    root: Path,
    run_id: str,
    *,
    name: str | None = None,
    method: str = "lora",
    status: str = "success",
    scores: dict[str, list[float]] | None = None,
    model: str = "tiny-llama",
    samples: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write results/<run_id>/run.json (+ samples) and return the run folder."""
    folder = root / run_id
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    scores = scores or {}
    metrics, sample_paths = {}, {}
    for task, values in scores.items():
        mean = sum(values) / len(values)
        metrics[task] = {
            "metric": FAKE_TASKS.get(task, FAKE_TASKS["t_a"]).primary_metric,
            "value": mean,
            "stderr": 0.1,
            "n": len(values),
        }
        if samples:
            lines = [
                json.dumps(
                    {
                        "doc_id": i,
                        "prompt": f"Q{i} of {task}?",
                        "target": f"A{i}",
                        "prediction": f"A{i}" if v == 1 else "wrong",
                        "score": v,
                        "metrics": {"acc": v},
                    }
                )
                for i, v in enumerate(values)
            ]
            (folder / "samples" / f"{task}.jsonl").write_text("\n".join(lines) + "\n")
            sample_paths[task] = f"samples/{task}.jsonl"
    base = method == "none"
    record: dict[str, Any] = {
        "schema_version": 1,
        "run_id": run_id,
        "name": name or run_id,
        "status": status,
        "error": {"type": "RuntimeError", "message": "CUDA out of memory", "traceback": "..."}
        if status == "failed"
        else None,
        "created_at": "2026-11-29T10:00:00Z",
        "finished_at": "2026-11-29T10:05:00Z",
        "config": {"model": model, "adapter": method, "suite": "cme-mini", "seed": 0, "max_steps": 10},
        "model": {"spec": model, "name": model, "source": "builtin", "parameters": 1000},
        "adapter": None
        if base
        else {
            "preset": method,
            "method": method,
            "params": {"r": 8},
            "routed": method == "teamlora",
            "mergeable": method != "teamlora",
            "trainable_parameters": 100 if method == "lora" else 40,
            "trainable_share": 0.1 if method == "lora" else 0.04,
            "path": "adapter",
        },
        "environment": {"git_revision": "abc", "git_dirty": False, "python": "3.11", "packages": {"torch": "2.13"}},
        "seeds": {"python": 0, "torch": 0, "data": 0},
        "training": None
        if base
        else {
            "seconds": 60.0 if method == "lora" else 120.0,
            "steps": 10,
            "examples": 80,
            "tokens": 8000,
            "tokens_per_second": 133.0,
            "peak_memory_bytes": 2**30,
            "loss_curve": [[1, 2.0], [5, 1.5], [10, 1.2]],
            "expert_load": {"0": [0.5, 0.3, 0.2], "1": [0.1, 0.6, 0.3]} if method == "teamlora" else {},
        },
        "evaluation": {"backend": "hf", "lm_eval": {"higher_is_better": {}}},
        "metrics": metrics,
        "samples": sample_paths,
    }
    record.update(extra or {})
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def build_world(root: Path) -> Path:
    write_run(root, "tiny--none", method="none", scores=SCORES["base"])
    write_run(root, "tiny--lora", method="lora", scores=SCORES["lora"])
    write_run(root, "tiny--teamlora", name="<script>alert(1)</script>", method="teamlora", scores=SCORES["teamlora"])
    write_run(root, "tiny--broken", method="dora", status="failed", scores={})
    return root


# --- a leaderboard shaped like the default run's (real cme-mini task names, long run ids, seeds) ----------------

DEFAULT_SKILL = {  # method label -> (probability of a correct answer, trainable params, training seconds or None)
    "none": (0.40, None, None),
    "lora": (0.50, 1_800_000, 410.0),
    "lora-r128": (0.52, 7_300_000, 430.0),
    "moelora-fused": (0.55, 7_400_000, 980.0),
    "hydralora": (0.53, 5_000_000, 700.0),
    "teamlora-balance": (0.56, 7_400_000, None),  # no training time recorded: listed as "not plotted"
}


def default_run_id(label: str, seed: int, digest: str = "1a2b3c4d") -> str:
    return f"smollm2-135m--{label}--cme-mini--s{seed}--{digest}"


def write_default_run(
    root: Path, label: str, seed: int, tasks: list[str], *, skill: float, limit: int = 20, params=None, seconds=None
) -> Path:
    import random
    import zlib

    rng = random.Random(f"{label}-{seed}-{limit}")
    scores = {t: [1.0 if rng.random() < skill else 0.0 for _ in range(limit)] for t in tasks}
    method = "none" if label == "none" else label.split("-")[0]
    digest = f"{zlib.crc32(f'{label}-{seed}-{limit}'.encode()):08x}"
    extra = {
        "config": {
            "model": "smollm2-135m",
            "adapter": label,
            "suite": "cme-mini",
            "seed": seed,
            "max_steps": 60,
            "learning_rate": 5e-4,
            "limit": limit,
        },
        "model": {"spec": "smollm2-135m", "name": "smollm2-135m", "source": "hub", "parameters": 134_515_008},
    }
    if method != "none":
        extra["adapter"] = {
            "preset": label,
            "method": method,
            "params": {"r": 32},
            "trainable_parameters": params,
            "trainable_share": params / 134_515_008,
            "path": "adapter",
        }
        extra["training"] = {
            "steps": 60,
            "examples": 480,
            "tokens": 61_000,
            "tokens_per_second": 150.0,
            "peak_memory_bytes": 3 * 2**30,
            "loss_curve": [[1, 2.5], [30, 1.9], [60, 1.6]],
        }
        if seconds is not None:
            extra["training"]["seconds"] = seconds
        extra["costs"] = {"train_step_ms": 6800.0, "prefill_ms": 41.0, "decode_ms_per_token": 19.5}
    return write_run(root, default_run_id(label, seed, digest), name=label, method=method, scores=scores, extra=extra)


def build_default_world(root: Path, tasks: list[str]) -> Path:
    """The default run's leaderboard: base + five adapters, TeamLoRA over three seeds, one run on another limit."""
    for label, (skill, params, seconds) in DEFAULT_SKILL.items():
        write_default_run(root, label, 0, tasks, skill=skill, params=params, seconds=seconds)
    for seed in (0, 1, 2):
        write_default_run(root, "teamlora", seed, tasks, skill=0.6, params=7_400_000, seconds=620.0 + seed)
    write_default_run(root, "dora", 0, tasks, skill=0.5, limit=10, params=1_900_000, seconds=500.0)
    return root
