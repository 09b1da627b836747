"""The ``vllm`` evaluation backend (``cme_bench.backends.EvalBackend``): adapters served from their saved folders.

``group_key`` is the serving plan's ``engine_key``: the base model and every LoRA-family adapter over one base folder
share an engine (adapters by request), each routed or merged adapter gets its own (``serving.plan``). A session owns
one ``Engine``; its ``lm`` is lm-eval's own ``vllm`` model class on that engine (``lm_eval_model.CmeVLLM``), so
request building and scoring are lm-eval's, exactly as ``--model vllm``. vLLM schedules its own batches (continuous
batching): lm-eval's ``"auto"`` batch size hands it every request of a task at once, and the run's ``batch_size`` is
only recorded.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cme_bench.backends import EvalTarget
from cme_bench.vllm_backend.check import require_vllm

if TYPE_CHECKING:
    from cme_bench.vllm_backend.engine import Engine
    from cme_bench.vllm_backend.serving import ServingPlan


def model_folder(model: str | Path) -> Path:
    """A folder vLLM can load for a ``--model`` spec (``models.materialize``: built-ins are cached once)."""
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    from cme_bench.models import materialize

    return materialize(str(model))


def _target_key(target: EvalTarget) -> tuple[str, str | None]:
    return str(target.model_spec), None if target.adapter_dir is None else str(Path(target.adapter_dir).resolve())


class VLLMSession:
    """One engine serving the plans of a group of targets."""

    def __init__(self, plans: dict[tuple[str, str | None], ServingPlan], engine: Engine) -> None:
        self.plans, self.engine = plans, engine

    def lm(self, target: EvalTarget):
        return self.engine.lm(self.plans[_target_key(target)])

    def describe(self, target: EvalTarget) -> dict[str, Any]:
        """How vLLM served the adapter: base, lora (by request), merged or routed."""
        plan = self.plans[_target_key(target)]
        return {"vllm": {"adapter_kind": plan.kind, "max_lora_rank": self.engine.max_lora_rank, "note": plan.note}}

    def __enter__(self) -> VLLMSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.close()


@dataclass
class VLLMBackend:
    """``lora_serving``: request | merged (see ``serving.plan``); ``engine_kwargs`` go to ``Engine`` unchanged."""

    lora_serving: str = "request"
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        require_vllm()

    def plan(self, target: EvalTarget) -> ServingPlan:
        from cme_bench.vllm_backend.serving import plan

        return plan(model_folder(target.model_spec), target.adapter_dir, lora_serving=self.lora_serving)

    def group_key(self, target: EvalTarget) -> Hashable:
        return self.plan(target).engine_key

    def open(self, targets: Sequence[EvalTarget], *, seed: int, batch_size: int) -> VLLMSession:
        from cme_bench.vllm_backend.engine import Engine

        plans = {_target_key(t): self.plan(t) for t in targets}
        return VLLMSession(plans, Engine(list(plans.values()), seed=seed, **self.engine_kwargs))


backend = VLLMBackend()
