"""The fixed cost per task of an evaluation: tasks one at a time against every task's requests together.

``evaluate.run_tasks`` either calls lm-eval's ``simple_evaluate`` once per task (``one_at_a_time``: each task is
recorded as soon as it finishes) or once for all tasks (the default: lm-eval batches requests of one type across
tasks, and what a call costs besides generation is paid once). With a tiny model and a few documents per task the
generation time is small, so the time per task is close to that fixed floor. Both variants run side by side on the
same in-memory model (HF backend), alternating, and the scores are checked to be equal.

Usage: ``python benchmarks/eval_task_floor.py [--model tiny-llama] [--tasks 8] [--limit 2] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--suite", default="cme-mini")
    parser.add_argument("--tasks", type=int, default=8, help="the suite's first N tasks")
    parser.add_argument("--limit", type=int, default=2, help="documents per task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from cme_bench import taskreg
    from cme_bench.backends import EvalTarget
    from cme_bench.evaluate import run_tasks
    from cme_bench.hf_backend import backend
    from cme_bench.models import load_model

    tasks = taskreg.suite_tasks(args.suite)[: args.tasks]
    loaded = load_model(args.model)
    target = EvalTarget(args.model, None, model=loaded.model, tokenizer=loaded.tokenizer)
    lm = backend.open([target], seed=0, batch_size=args.batch_size).lm(target)
    times: dict[str, list[float]] = {"one at a time": [], "together": []}
    values: dict[str, dict[str, float]] = {}
    run_tasks(lm, tasks[:1], limit=1, progress=False)  # warm-up: task configs, Jinja templates, datasets cached
    for _ in range(args.repeats):
        for name, one in (("one at a time", True), ("together", False)):
            t0 = time.perf_counter()
            out = run_tasks(lm, tasks, limit=args.limit, progress=False, one_at_a_time=one)
            times[name].append(time.perf_counter() - t0)
            values[name] = {t: r.value for t, r in out.tasks.items()}
    print(f"{len(tasks)} tasks x {args.limit} docs, {args.model}, batch {args.batch_size}, {args.repeats} repeats")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"  {name:14} {median:7.2f} s in all, {median / len(tasks):6.3f} s per task (median)")
    ratio = statistics.median(times["together"]) / statistics.median(times["one at a time"])
    print(f"  together / one at a time: {ratio:.2f}")
    same = values["together"] == values["one at a time"]
    print(f"  same scores: {same}" + ("" if same else f"\n  {values}"))


if __name__ == "__main__":
    main()
