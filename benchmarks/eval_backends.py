"""HF against vLLM on one adapter's evaluation, and tasks together against one at a time, side by side in one run.

Each variant evaluates the same saved adapter on the same tasks and documents in a fresh child process, as
``cme-bench eval`` would (with its performance defaults, ``cme_bench.perf_env``): ``hf-one`` (the HF backend, one
lm-eval call per task: ``--eval-one-at-a-time``), ``hf`` (the HF backend, every task's requests together: the
default), ``vllm-one`` and ``vllm`` (the vLLM backend, run from the vLLM environment through
``scripts/vllm-run.sh``). Each child reports the seconds to set up (load the model and adapter; for vLLM: import
vLLM and start the engine) and to evaluate; the parent adds the child's whole wall time (interpreter and imports
included). Printed: seconds per variant, the ratios to the first variant with and without set-up, the load average
(on a shared machine, compare only numbers measured under a similar load), and whether every variant scored every
task identically.

Usage: ``python benchmarks/eval_backends.py --adapter-path DIR [--model smollm2-135m] [--limit 20]
[--variants hf-one,hf,vllm] [--tasks t1,t2]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from cme_bench import perf_env
perf_env.apply()  # as the cme-bench command does, before torch loads
from pathlib import Path
from cme_bench import backends, taskreg
from cme_bench.backends import EvalTarget
from cme_bench.evaluate import run_tasks
args = json.loads(sys.argv[1])
tasks = args["tasks"] or taskreg.suite_tasks(args["suite"])
backend = backends.get(args["backend"])
backend.check()
target = EvalTarget(args["model"], Path(args["adapter"]) if args["adapter"] else None)
t_open = time.perf_counter()
with backend.open([target], seed=0, batch_size=args["batch_size"]) as session:
    lm = session.lm(target)
    t_eval = time.perf_counter()
    out = run_tasks(lm, tasks, limit=args["limit"], progress=False, one_at_a_time=args["one_at_a_time"])
    t_end = time.perf_counter()
print("RESULT " + json.dumps({
    "imports_s": t_open - t0, "setup_s": t_eval - t_open, "eval_s": t_end - t_eval,
    "scores": {t: r.value for t, r in out.tasks.items()},
    "task_s": {t: r.seconds for t, r in out.tasks.items()},
}))
"""

VARIANTS = {  # name -> (backend, one task at a time, runs in the vLLM environment)
    "hf-one": ("hf", True, False),
    "hf": ("hf", False, False),
    "vllm-one": ("vllm", True, True),
    "vllm": ("vllm", False, True),
}


def run_variant(name: str, args: argparse.Namespace) -> dict:
    backend, one, in_vllm_env = VARIANTS[name]
    spec = {
        "backend": backend,
        "one_at_a_time": one,
        "model": args.model,
        "adapter": str(Path(args.adapter_path).resolve()) if args.adapter_path else None,
        "suite": args.suite,
        "tasks": [t for t in args.tasks.split(",") if t] if args.tasks else None,
        "limit": args.limit,
        "batch_size": args.batch_size,
    }
    prefix = [str(ROOT / "scripts" / "vllm-run.sh"), "python"] if in_vllm_env else [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([*prefix, "-c", CHILD, json.dumps(spec)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT "))
    return {**json.loads(line[len("RESULT ") :]), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter-path", help="saved adapter folder (default: the base model alone)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--suite", default="cme-mini")
    ap.add_argument("--tasks", default="", help="comma-separated task names (default: the whole suite)")
    ap.add_argument("--limit", type=int, default=20, help="documents per task")
    ap.add_argument("--batch-size", type=int, default=16, help="the run's evaluation batch size")
    ap.add_argument("--variants", default="hf-one,hf,vllm", help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--per-task", action="store_true", help="also print each task's seconds (one-at-a-time runs)")
    args = ap.parse_args()

    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    adapter = args.adapter_path or "none"
    print(f"{args.model}, adapter {adapter}, {args.suite}, limit {args.limit}, cpus {os.cpu_count()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    res = {}
    for name in names:
        res[name] = run_variant(name, args)
        r = res[name]
        print(
            f"  {name:9} wall {r['wall_s']:7.1f} s = imports {r['imports_s']:5.1f} + set-up {r['setup_s']:5.1f} "
            f"+ evaluation {r['eval_s']:7.1f} (+ exit)   load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    first = names[0]
    print(f"ratios to {first} (>1: faster than {first})")
    for name in names[1:]:
        a, b = res[first], res[name]
        end_to_end, alone = a["wall_s"] / b["wall_s"], a["eval_s"] / b["eval_s"]
        print(f"  {name:9} end to end x{end_to_end:.2f}   evaluation alone x{alone:.2f}")
    if "hf" in res and "vllm" in res:
        a, b = res["hf"], res["vllm"]
        print(
            f"  vllm vs hf: end to end x{a['wall_s'] / b['wall_s']:.2f}, set-up included "
            f"x{(a['setup_s'] + a['eval_s']) / (b['setup_s'] + b['eval_s']):.2f}, "
            f"evaluation alone x{a['eval_s'] / b['eval_s']:.2f}"
        )
    if args.per_task:
        for name in names:
            if VARIANTS[name][1]:
                print(f"  {name} per task: " + ", ".join(f"{t}={s:.1f}" for t, s in res[name]["task_s"].items()))
    scores = {name: r["scores"] for name, r in res.items()}
    same = all(s == scores[first] for s in scores.values())
    print(f"same scores on every task: {same}")
    if not same:
        for task in scores[first]:
            row = {name: s.get(task) for name, s in scores.items()}
            if len(set(row.values())) > 1:
                print(f"  {task}: {row}")


if __name__ == "__main__":
    main()
