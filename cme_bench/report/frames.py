"""Results as data: run records as pandas DataFrames for one's own analysis.

``frame(results)`` is long format, one row per (run, task) with the run's descriptive fields and costs;
``samples_frame(results)`` has one row per (run, task, document) from the per-sample logs. Both read the records
the reporter reads (``load.load_runs``), so what a user analyses is what the leaderboard shows.
"""

from __future__ import annotations

from pathlib import Path

from cme_bench.report.build import settings_text
from cme_bench.report.groups import eval_set_key, seed_group_key, seed_of
from cme_bench.report.load import RunRecord, load_runs, load_samples
from cme_bench.report.taskmeta import TaskInfoFn, default_task_info, resolve_tasks

_DEFAULT = object()

# (frame column, record section, field): costs and sizes carried on every row of a run
COST_FIELDS = (
    ("trainable_parameters", "adapter", "trainable_parameters"),
    ("trainable_share", "adapter", "trainable_share"),
    ("train_seconds", "training", "seconds"),
    ("train_tokens_per_second", "training", "tokens_per_second"),
    ("peak_memory_bytes", "training", "peak_memory_bytes"),
    ("eval_seconds", "evaluation", "seconds"),
)


def _runs(results: Path | str | list[RunRecord]) -> list[RunRecord]:
    return results if isinstance(results, list) else load_runs(Path(results))


def frame(results: Path | str | list[RunRecord], task_info: TaskInfoFn | object | None = _DEFAULT):
    """One row per (successful run, task): run, name, method, preset, model, settings, seed, seed_group, eval_set,
    task, display_name, domain, metric, value, stderr, n, then the run's costs (training time, throughput, memory,
    trainable parameters and every figure under the record's ``costs``)."""
    import pandas as pd

    runs = [r for r in _runs(results) if r.ok]
    info = default_task_info() if task_info is _DEFAULT else task_info
    meta = resolve_tasks(sorted({t for r in runs for t in r.metrics}), runs, info)  # type: ignore[arg-type]
    rows = []
    for run in runs:
        common = {
            "run": run.run_id,
            "name": run.name,
            "method": run.method,
            "preset": run.preset,
            "model": run.model_name,
            "settings": settings_text(run),
            "seed": seed_of(run),
            "seed_group": seed_group_key(run),
            "eval_set": eval_set_key(run),
        }
        for column, section, field in COST_FIELDS:
            common[column] = run.section(section).get(field)
        for key, value in run.section("costs").items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                common[f"cost_{key}"] = value
        for task, m in run.metrics.items():
            rows.append(
                {
                    **common,
                    "task": task,
                    "display_name": meta[task].display_name,
                    "domain": meta[task].domain,
                    "metric": m.metric,
                    "value": m.value,
                    "stderr": m.stderr,
                    "n": m.n,
                }
            )
    return pd.DataFrame(rows)


def samples_frame(results: Path | str | list[RunRecord]):
    """One row per (successful run, task, document): run, method, seed, task, doc_id, score, prediction, target."""
    import pandas as pd

    rows = []
    for run in _runs(results):
        if not run.ok:
            continue
        for task in run.metrics:
            for s in load_samples(run, task):
                rows.append(
                    {
                        "run": run.run_id,
                        "method": run.method,
                        "seed": seed_of(run),
                        "task": task,
                        "doc_id": s["doc_id"],
                        "score": s["score"],
                        "prediction": s.get("prediction"),
                        "target": s.get("target"),
                    }
                )
    return pd.DataFrame(rows, columns=["run", "method", "seed", "task", "doc_id", "score", "prediction", "target"])
