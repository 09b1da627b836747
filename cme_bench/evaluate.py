"""Evaluation through lm-evaluation-harness: the one per-task loop every backend shares, and the adapter probe.

A backend (``cme_bench.backends``) only supplies the lm-eval ``LM``; ``run_tasks`` does the rest, identically for
every backend: the same seeds and bootstrap iterations, the same primary-metric choice and per-sample rows. All
tasks' requests go to the model together by default (lm-eval batches them across tasks); each task's summary (primary
metric, stderr, n) and per-sample log is then handed over task by task. ``one_at_a_time`` evaluates and hands over
each task as soon as it finishes instead (a killed evaluation keeps the finished tasks).

Before scoring a trained adapter, ``check_adapter_applied`` compares the adapted model's logits with the base model's
on a probe batch and fails loudly when they are equal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cme_bench import backends
from cme_bench.backends import DEFAULT_BACKEND, EvalBackend, EvalTarget
from cme_bench.errors import CmeError

log = logging.getLogger(__name__)

PROBE_PROMPTS = (
    "Question: Which planet is known as the red planet?\nAnswer:",
    "Sentence 1: A man is playing a guitar.\nSentence 2: A person plays music.\nLabel:",
    "The quick brown fox jumps over the lazy dog because",
)


@dataclass
class TaskResult:
    task: str
    metric: str
    value: float
    stderr: float | None
    n: int
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalOutput:
    tasks: dict[str, TaskResult]
    lm_eval: dict[str, Any]
    seconds: float
    backend_info: dict[str, Any] = field(default_factory=dict)  # EvalSession.describe


# --------------------------------------------------------------------------------------------------------------
# The adapter-applied probe


@torch.no_grad()
def probe_logits(model: torch.nn.Module, tokenizer: Any) -> torch.Tensor:
    """Last-position logits on a fixed probe batch (fp32, CPU)."""
    enc = tokenizer(list(PROBE_PROMPTS), return_tensors="pt", padding=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))
    model.train(was_training)
    return out.logits[:, -1, :].float().cpu()


def check_adapter_applied(base_logits: torch.Tensor, model: torch.nn.Module, tokenizer: Any) -> float:
    """Max |logit difference| between the adapted model and its base on the probe batch; raises when it is zero.

    A trained adapter changes the logits. Equal logits mean the adapter was dropped, loaded as zeros, or never
    injected, and every score that follows would silently be the base model's.
    """
    delta = float((probe_logits(model, tokenizer) - base_logits).abs().max())
    if not delta > 0:
        raise CmeError(
            "the adapter is not applied: the adapted model's logits equal the base model's on the probe batch "
            "(an untrained adapter, weights loaded as zeros, or layers that were never injected)"
        )
    log.info("adapter applied: max |logit delta| on the probe batch = %.3g", delta)
    return delta


# --------------------------------------------------------------------------------------------------------------
# lm-eval


def _pick_metric(task_results: dict[str, Any], primary: str | None) -> tuple[str, str]:
    """(metric key such as "exact_match,strict", its metric name); prefers the registry's primary metric."""
    keys = [k for k in task_results if "," in k and "_stderr" not in k and k != "alias"]
    if not keys:
        raise CmeError(f"lm-eval returned no metric for this task: {sorted(task_results)}")
    if primary:
        for key in keys:
            if key.split(",")[0] == primary:
                return key, primary
    return keys[0], keys[0].split(",")[0]


def _sample_rows(samples: list[dict[str, Any]], metric: str, filter_key: str) -> list[dict[str, Any]]:
    rows = []
    for s in samples:
        if s.get("filter", filter_key) != filter_key:
            continue
        args = s["arguments"][0] if s.get("arguments") else ("",)
        resp = s["filtered_resps"][0] if s.get("filtered_resps") else None
        rows.append(
            {
                "doc_id": s["doc_id"],
                "prompt": args[0] if isinstance(args, (list, tuple)) else str(args),
                "target": s.get("target"),
                "prediction": resp if isinstance(resp, str) else str(resp),
                "score": float(s[metric]) if metric in s else None,
                "metrics": {m: s[m] for m in s.get("metrics", []) if m in s},
            }
        )
    return rows


def simple_evaluate_kwargs(seed: int) -> dict[str, Any]:
    """The lm-eval settings every cme-bench evaluation shares, whatever the backend: one seed, samples logged."""
    return {
        "log_samples": True,
        "random_seed": seed,
        "numpy_random_seed": seed,
        "torch_random_seed": seed,
        "fewshot_random_seed": seed,
        "bootstrap_iters": 1000,
    }


def task_result(out: dict[str, Any], task: str, primary: str | None, seconds: float) -> TaskResult:
    """One task's summary and per-sample rows from a ``simple_evaluate`` output."""
    task_results = out["results"].get(task)
    if task_results is None:
        raise CmeError(f"lm-eval returned no results for {task!r}")
    key, metric = _pick_metric(task_results, primary)
    filter_key = key.split(",", 1)[1]
    stderr = task_results.get(f"{metric}_stderr,{filter_key}")
    rows = _sample_rows(out["samples"].get(task, []), metric, filter_key)
    return TaskResult(
        task=task,
        metric=metric,
        value=float(task_results[key]),
        stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
        n=len(rows),
        seconds=round(seconds, 3),
        samples=rows,
    )


def run_tasks(
    lm: Any,
    tasks: Sequence[str],
    *,
    include_path: Sequence[Path] = (),
    limit: int | None = None,
    seed: int = 0,
    primary_metric: Callable[[str], str | None] | None = None,
    on_task_done: Callable[[TaskResult], None] | None = None,
    progress: bool = True,
    one_at_a_time: bool = False,
) -> EvalOutput:
    """The one evaluation loop: ``tasks`` through lm-eval's ``simple_evaluate`` on ``lm``, whatever the backend.

    By default every task's requests go to the model together (one ``simple_evaluate`` call, as lm-eval's own CLI
    does with several tasks: requests of one type are batched across tasks, and the fixed cost of a call is paid
    once); the results are then handed to ``on_task_done`` task by task. ``one_at_a_time`` runs one call per task
    instead, so that a task's results are recorded as soon as it finishes (a killed evaluation keeps them).

    Args:
        lm: an lm-eval ``LM`` (``EvalSession.lm``). If it has an ``on_phase`` attribute, it is set to a callable that
            shows the phase (generating, scoring) on the progress bar.
        limit: documents per task (None: the whole test part).
        primary_metric: task name -> the metric that summarises it; default: the task registry's.
        on_task_done: called for each task, in order, e.g. to write its samples to disk at once.
    """
    from lm_eval import simple_evaluate
    from tqdm.auto import tqdm

    from cme_bench import taskreg

    include = [Path(p) for p in include_path]
    if primary_metric is None:

        def primary_metric(task: str) -> str | None:
            return taskreg.task_info(task, include).primary_metric

    manager = taskreg.task_manager(include)
    bar = tqdm(total=len(tasks), desc="eval", disable=not progress)
    label = ""
    if hasattr(lm, "on_phase"):
        lm.on_phase = lambda phase: bar.set_postfix_str(f"{label}: {phase}")
    merged: dict[str, Any] = {"results": {}, "versions": {}, "n-samples": {}, "higher_is_better": {}, "configs": {}}
    results: dict[str, TaskResult] = {}
    t_all = time.perf_counter()
    for chunk in [[t] for t in tasks] if one_at_a_time else [list(tasks)] if tasks else []:
        t0 = time.perf_counter()
        label = chunk[0] if len(chunk) == 1 else f"{len(chunk)} tasks"
        bar.set_postfix_str(f"{label}: building prompts")
        out = simple_evaluate(model=lm, tasks=chunk, limit=limit, task_manager=manager, **simple_evaluate_kwargs(seed))
        if out is None:  # non-zero ranks under distributed evaluation
            continue
        for key in merged:
            merged[key].update(out.get(key, {}))
        seconds = (time.perf_counter() - t0) / len(chunk)  # tasks run together share the call's time evenly
        for task in chunk:
            result = task_result(out, task, primary_metric(task), seconds)
            results[task] = result
            if on_task_done:
                on_task_done(result)
            bar.update(1)
            bar.set_postfix_str(f"{task}: {result.metric}={result.value:.3f}")
            log.info("%s: %s = %.4f (n=%d, %.1fs)", task, result.metric, result.value, result.n, result.seconds)
    bar.close()
    return EvalOutput(tasks=results, lm_eval=merged, seconds=round(time.perf_counter() - t_all, 3))


def evaluate(
    target: EvalTarget,
    tasks: Sequence[str],
    *,
    backend: str | EvalBackend = DEFAULT_BACKEND,
    batch_size: int = 16,
    seed: int = 0,
    **kwargs: Any,
) -> EvalOutput:
    """Evaluate one target with a backend (a registry name or an object) on a session of its own (``kwargs``: see
    ``run_tasks``).

    The runner and the sweep open sessions themselves (to share one between runs); this is the same path for one
    target, for scripts and tests.
    """
    chosen = backends.get(backend) if isinstance(backend, str) else backend
    chosen.check()
    with chosen.open([target], seed=seed, batch_size=batch_size) as session:
        out = run_tasks(session.lm(target), tasks, seed=seed, **kwargs)
        out.backend_info = session.describe(target)
    return out
