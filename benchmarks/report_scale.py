"""Scale check for `cme-bench report`: N runs x T tasks (with per-sample logs) must render in under 10 s.

    .venv/bin/python benchmarks/report_scale.py [--runs 500] [--tasks 30] [--items 100] [--seeds 1] [--keep DIR]

``--seeds N`` makes every N consecutive runs one configuration trained with seeds 0..N-1 (one aggregated row each).

Writes synthetic run records into a temporary folder (not timed), then times reading + statistics + tables and the
text/HTML outputs separately, and prints the size of the leaderboard page.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from cme_bench.report.pipeline import build_report, write_site, write_text_outputs

METHODS = ("lora", "dora", "teamlora", "moelora", "hydralora", "none")


def fake_task_info(name: str):
    from types import SimpleNamespace

    i = int(name.rsplit("_", 1)[1])
    return SimpleNamespace(
        display_name=f"Task {i}",
        domain=f"domain{i % 6}",
        primary_metric="acc",
        higher_is_better=True,
        chance=0.25 if i % 2 else 0.5,
    )


def write_world(root: Path, n_runs: int, n_tasks: int, n_items: int, seed: int = 0, seeds: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for r in range(n_runs):
        config_index = r // seeds
        method = METHODS[config_index % len(METHODS)]
        folder = root / f"run{r:04d}"
        (folder / "samples").mkdir(parents=True)
        skill = rng.uniform(0.3, 0.9)
        metrics, samples = {}, {}
        for t in range(n_tasks):
            task = f"task_{t}"
            scores = (rng.random(n_items) < skill).astype(float)
            lines = "".join(
                json.dumps(
                    {
                        "doc_id": i,
                        "prompt": f"question {i} of {task}",
                        "target": "A",
                        "prediction": "A" if s else "B",
                        "score": s,
                    }
                )
                + "\n"
                for i, s in enumerate(scores)
            )
            (folder / "samples" / f"{task}.jsonl").write_text(lines)
            metrics[task] = {"metric": "acc", "value": float(scores.mean()), "stderr": 0.05, "n": n_items}
            samples[task] = f"samples/{task}.jsonl"
        status = "failed" if r % 50 == 49 else "success"
        record = {
            "schema_version": 1,
            "run_id": folder.name,
            "name": f"{method} #{r}",
            "status": status,
            "config": {"model": f"model{config_index % 3}", "adapter": method, "max_steps": config_index}
            | ({"seed": r % seeds} if seeds > 1 else {}),
            "model": {"name": f"model{config_index % 3}"},
            "adapter": None
            if method == "none"
            else {
                "method": method,
                "preset": method,
                "trainable_parameters": int(rng.integers(1e5, 1e7)),
                "trainable_share": float(rng.uniform(0.001, 0.05)),
            },
            "training": None
            if method == "none"
            else {
                "seconds": float(rng.uniform(60, 3600)),
                "tokens_per_second": 1000.0,
                "peak_memory_bytes": 2**31,
                "loss_curve": [[s, 2.0 / (1 + s)] for s in range(0, 200, 10)],
            },
            "metrics": metrics if status == "success" else {},
            "samples": samples if status == "success" else {},
        }
        (folder / "run.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=1, help="seeds per configuration (aggregated rows)")
    parser.add_argument("--keep", type=Path, default=None, help="write into this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        results, out = root / "results", root / "site"
        t0 = time.perf_counter()
        if not (results / "run0000" / "run.json").exists():  # --keep DIR a second time reuses the records
            write_world(results, args.runs, args.tasks, args.items, seeds=args.seeds)
        t1, c1 = time.perf_counter(), time.process_time()
        report = build_report(results, task_info=fake_task_info, out=out)
        t2 = time.perf_counter()
        write_text_outputs(report, out)
        t3 = time.perf_counter()
        index = write_site(report, out)
        t4, c4 = time.perf_counter(), time.process_time()
        n_files = sum(1 for _ in out.rglob("*.html"))
        print(
            f"{args.runs} runs x {args.tasks} tasks x {args.items} items, {args.seeds} seed(s) per configuration, "
            f"{len(report.leaderboard.rows)} leaderboard rows (generation {t1 - t0:.1f} s, not timed)"
        )
        print(f"read + statistics + tables: {t2 - t1:.2f} s")
        print(f"markdown/csv/latex/json:    {t3 - t2:.2f} s")
        print(f"HTML site ({n_files} pages):  {t4 - t3:.2f} s")
        print(f"total:                      {t4 - t1:.2f} s wall, {c4 - c1:.2f} s CPU   (budget 10 s)")
        print(f"leaderboard page: {index.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
