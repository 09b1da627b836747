"""``evaluate_run``: the vLLM counterpart of ``cme_bench.evaluate.evaluate`` for the runner (``--backend vllm``).

Same contract as the HF path: tasks run one at a time (progress and ``on_task_done`` per task, so a crash keeps the
finished tasks), the same seeds and bootstrap iterations, the same primary-metric choice and per-sample rows (the HF
module's own helpers), and an ``EvalOutput`` whose ``lm_eval`` part merges the per-task lm-eval dicts. The difference:
the adapter is served by vLLM from its saved folder (see ``serving.plan``) on one engine for all tasks, its own or
one shared with other adapters (a sweep).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def model_folder(model: str | Path) -> Path:
    """A folder vLLM can load for a ``--model`` spec (``models.materialize``: built-ins are cached once)."""
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    from cme_bench.models import materialize

    return materialize(str(model))


def evaluate_run(
    model: str | Path,
    adapter_dir: str | Path | None,
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    batch_size: int | str = "auto",
    include_path: Sequence[Path] = (),
    seed: int = 0,
    primary_metric: Callable[[str], str | None] | None = None,
    on_task_done: Callable[[Any], None] | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    lora_serving: str = "request",
    engine: Any = None,
):
    """Evaluate ``tasks`` through vLLM; returns ``cme_bench.evaluate.EvalOutput``.

    ``engine``: an open ``Engine`` whose plans include this adapter's (a sweep shares one between the base model and
    its LoRA adapters); without it, an engine is started for this adapter and closed afterwards.

    ``batch_size`` is recorded by the caller but not passed on: vLLM schedules its own batches (continuous batching),
    and lm-eval's ``"auto"`` hands it every request of a task at once. ``lora_serving="merged"`` serves a LoRA-family
    adapter merged into the base (faster on CPU; see ``serving.plan``).
    """
    from cme_bench import taskreg
    from cme_bench.evaluate import EvalOutput, simple_evaluate_kwargs, task_result
    from cme_bench.vllm_backend import plan
    from cme_bench.vllm_backend.engine import Engine

    include = [Path(p) for p in include_path]
    if primary_metric is None:

        def primary_metric(task: str) -> str | None:
            return taskreg.task_info(task, include).primary_metric

    p = plan(model_folder(model), adapter_dir, lora_serving=lora_serving)
    merged: dict[str, Any] = {"results": {}, "versions": {}, "n-samples": {}, "higher_is_better": {}, "configs": {}}
    results: dict[str, Any] = {}
    t_all = time.perf_counter()
    # A shared engine stays open for the caller's next adapter; our own closes when the tasks are done.
    context = Engine([p], seed=seed, **(engine_kwargs or {})) if engine is None else contextlib.nullcontext(engine)
    with context as engine:
        for task in tasks:
            t0 = time.perf_counter()
            out = engine.evaluate(
                p,
                [task],
                limit=limit,
                include_path=include,
                **simple_evaluate_kwargs(seed),
            )
            for key in merged:
                merged[key].update(out.get(key, {}))
            merged.setdefault("config", out.get("config", {}))
            result = task_result(out, task, primary_metric(task), t0)
            results[task] = result
            if on_task_done:
                on_task_done(result)
            log.info("%s (vLLM): %s = %.4f (n=%d, %.1fs)", task, result.metric, result.value, result.n, result.seconds)
    return EvalOutput(tasks=results, lm_eval=merged, seconds=round(time.perf_counter() - t_all, 3))
