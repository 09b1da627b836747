"""CME-mini agreement between the vLLM and HF backends on a real model (issue 7: at least 99% of items).

Run in the vLLM environment::

    .venv-vllm/bin/python benchmarks/vllm_parity_cme_mini.py --model smollm2-135m --limit 20 [--adapter DIR]

Both backends evaluate the same CME-mini tasks (``taskreg.suite_tasks("cme-mini")``, same task configs) with the same
``--limit``; both sides are ``cme_bench.evaluate.evaluate`` (what the runner runs), with ``backend="hf"`` and
``backend="vllm"``. Reported per task and overall: the share of items whose filtered prediction is
identical, and the two scores. HF batches with left padding (``--hf-batch-size``), which can flip near-tie greedy
choices; ``--hf-batch-size 1`` removes that source of disagreement at the cost of time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", type=Path, default=None)
    parser.add_argument("--suite", default="cme-mini")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from cme_bench import taskreg, vllm_backend
    from cme_bench.adapters import load_adapter
    from cme_bench.backends import EvalTarget
    from cme_bench.evaluate import evaluate
    from cme_bench.models import load_model, materialize

    vllm_backend.require_vllm()
    model_dir = materialize(args.model)
    tasks = args.tasks.split(",") if args.tasks else taskreg.suite_tasks(args.suite)

    # HF first: an in-process vLLM engine changes process-wide CPU settings.
    t0 = time.perf_counter()
    loaded = load_model(str(model_dir))
    model = load_adapter(loaded.model, args.adapter) if args.adapter else loaded.model
    target = EvalTarget(str(model_dir), args.adapter, model=model.eval(), tokenizer=loaded.tokenizer)
    hf = evaluate(target, tasks, backend="hf", limit=args.limit, batch_size=args.hf_batch_size)
    hf_s = time.perf_counter() - t0
    del model, loaded

    t0 = time.perf_counter()
    vl = evaluate(EvalTarget(str(model_dir), args.adapter), tasks, backend="vllm", limit=args.limit)
    vllm_s = time.perf_counter() - t0

    rows: dict[str, dict[str, Any]] = {}
    agree_all = n_all = 0
    print(f"{'task':32} {'n':>4} {'agree':>7} {'HF':>7} {'vLLM':>7}")
    for task in tasks:
        result = hf.tasks[task]
        hf_pred = {r["doc_id"]: r["prediction"] for r in result.samples}
        metric = result.metric  # both sides pick the task registry's primary metric and its filter
        vl_pred = {r["doc_id"]: r["prediction"] for r in vl.tasks[task].samples}
        common = sorted(set(hf_pred) & set(vl_pred))
        agree = sum(hf_pred[d].rstrip("\ufffd") == vl_pred[d].rstrip("\ufffd") for d in common)
        vl_value = vl.tasks[task].value
        rows[task] = {"n": len(common), "agree": agree, "hf": result.value, "vllm": vl_value, "metric": metric}
        agree_all += agree
        n_all += len(common)
        print(f"{task:32} {len(common):4d} {agree / max(len(common), 1):7.1%} {result.value:7.3f} {vl_value:7.3f}")
    share = agree_all / max(n_all, 1)
    print(f"\nitems agreeing: {agree_all}/{n_all} = {share:.2%} (target >= 99%); HF {hf_s:.0f} s, vLLM {vllm_s:.0f} s")
    if args.out:
        record = {"agreement": share, "hf_seconds": hf_s, "vllm_seconds": vllm_s, "tasks": rows}
        args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
