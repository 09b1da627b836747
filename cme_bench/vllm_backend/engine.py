"""vLLM engines for cme-bench: one engine per base model serving many LoRA adapters, or one per routed/merged adapter.

``Engine`` owns a ``vllm.LLM``; ``Engine.generate`` and ``Engine.lm`` take a ``ServingPlan`` saying which adapter a
call uses. ``Engine.lm`` is lm-eval's own ``vllm`` model class (same task configs, same request building and scoring
as ``--model vllm``), given our already-built engine and LoRA request (``CmeVLLM``); evaluation itself is the shared
per-task loop (``cme_bench.evaluate.run_tasks``) through the backend seam (``backend.py``).

Process rules (ecosystem.md (b)): a script that builds an engine keeps an ``if __name__ == "__main__":`` guard: with
vLLM's multi-process layout (``VLLM_ENABLE_V1_MULTIPROCESSING=1``; on a GPU) the CPU platform starts processes with
``spawn``, which re-imports the main module. On CPU engines run in-process by default (``_env.py``), one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cme_bench.errors import CmeError
from cme_bench.vllm_backend.check import require_vllm
from cme_bench.vllm_backend.routed import BLOCK_METHODS
from cme_bench.vllm_backend.serving import ServingPlan, lora_rank_limit

log = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN = 2048

# In-process engines (the CPU default, see _env.py) share vLLM's process-global distributed state: closing one tears
# down the state another still uses. So at most one lives at a time; sweeps run engines one after another.
_live_in_process: list[Engine] = []


def _ensure_plugin(plans: Sequence[ServingPlan]) -> None:
    from cme_bench.vllm_backend import plugin

    plugin.register()  # this process; the engine's own processes need the entry point
    if any(p.kind == "routed" for p in plans) and not plugin.entry_point_installed():
        raise CmeError(
            "routed adapters on vLLM need cme-bench's vllm.general_plugins entry point, which is not installed in "
            "this environment; rebuild it with `make vllm-env` (scripts/setup-vllm-env.sh)"
        )


class Engine:
    """A ``vllm.LLM`` over one model folder; LoRA plans are served by request on the same engine.

    Args:
        plans: every plan this engine will serve; they must share ``engine_key`` (the backend's ``group_key``).
            ``max_lora_rank`` is taken from the LoRA plans' ranks, rounded up to a rank vLLM accepts.
        dtype: default: the HF backend's (``models.default_dtype``): fp32 on CPU, bf16 on a CUDA device that supports
            it. Not vLLM's ``"auto"``, which downcasts fp32 checkpoints: parity with HF needs the same dtype.
        enforce_eager: skip torch.compile and CUDA graphs. Default: eager on CPU (start-up is much shorter and LoRA
            disables compilation there anyway) and for MixLoRA (its expert loop has data-dependent shapes); compiled
            with CUDA graphs on a GPU otherwise.
        llm_kwargs: passed to ``vllm.LLM`` unchanged.
    """

    def __init__(
        self,
        plans: Sequence[ServingPlan],
        *,
        dtype: str | None = None,
        max_model_len: int | None = DEFAULT_MAX_MODEL_LEN,
        seed: int = 0,
        enforce_eager: bool | None = None,
        max_num_seqs: int | None = None,
        **llm_kwargs: Any,
    ) -> None:
        if not plans:
            raise ValueError("Engine needs at least one plan")
        keys = {p.engine_key for p in plans}
        if len(keys) != 1:
            raise ValueError(f"plans need {len(keys)} different engines; group them by engine_key")
        require_vllm()
        _ensure_plugin(plans)
        from vllm import LLM

        self.plans = list(plans)
        first = plans[0]
        if enforce_eager is None:
            from cme_bench.vllm_backend._env import cuda_available

            enforce_eager = not cuda_available() or any(p.method in BLOCK_METHODS for p in plans)
        self.model_dir = first.model_dir
        if dtype is None:
            from cme_bench.vllm_backend._env import cuda_available

            dtype = "bfloat16" if cuda_available() and _bf16_supported() else "float32"
        kwargs: dict[str, Any] = {
            "model": str(first.model_dir),
            "dtype": dtype,
            "seed": seed,
            "enforce_eager": enforce_eager,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = min(max_model_len, _model_max_len(first.model_dir) or max_model_len)
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
        from cme_bench.vllm_backend._env import in_process

        self._in_process = in_process()
        if self._in_process:
            if _live_in_process:
                raise CmeError(
                    "another in-process vLLM engine is still open in this process; close it first (Engine.close() or "
                    "a `with` block), or set VLLM_ENABLE_V1_MULTIPROCESSING=1 to run engines in their own processes"
                )
            kwargs["distributed_executor_backend"] = "uni"  # the worker in this process too (see _env.py)
        if first.hf_overrides:
            kwargs["hf_overrides"] = dict(first.hf_overrides)
        loras = [p for p in plans if p.kind == "lora"]
        self.max_lora_rank: int | None = None
        if loras:
            self.max_lora_rank = lora_rank_limit(max(int(p.rank or 1) for p in loras))
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1, max_cpu_loras=len(loras))
        kwargs.update(llm_kwargs)
        log.info("starting vLLM engine: %s", {k: v for k, v in kwargs.items() if k != "hf_overrides"})
        self.llm_kwargs = kwargs
        self.llm = LLM(**kwargs)
        if self._in_process:
            _live_in_process.append(self)
        self._lora_ids: dict[str, int] = {}

    # -- requests -----------------------------------------------------------------------------------------------

    def lora_request(self, plan: ServingPlan | None):
        """The ``LoRARequest`` for ``plan`` (None for base, routed and merged plans: their adapter is in the model)."""
        if plan is None or plan.kind != "lora":
            return None
        from vllm.lora.request import LoRARequest

        key = str(plan.lora_dir)
        if key not in self._lora_ids:
            self._lora_ids[key] = len(self._lora_ids) + 1  # vLLM ids must be unique positive ints
        name = f"{plan.method}-{self._lora_ids[key]}"
        return LoRARequest(name, self._lora_ids[key], key)

    def _check_plan(self, plan: ServingPlan | None) -> None:
        if plan is not None and plan.engine_key != self.plans[0].engine_key:
            raise ValueError(f"plan for {plan.adapter_dir} belongs to another engine")

    def generate_ids(
        self,
        prompts: Sequence[str] | Sequence[list[int]],
        max_tokens: int = 64,
        plan: ServingPlan | None = None,
        *,
        ignore_eos: bool = False,
    ) -> list[list[int]]:
        """Greedy continuations as token ids, one list per prompt (prompts as text or token ids).

        ``ignore_eos`` decodes exactly ``max_tokens`` tokens (parity checks against HF ``generate`` without EOS).
        """
        from vllm import SamplingParams, TokensPrompt

        self._check_plan(plan)
        inputs = [TokensPrompt(prompt_token_ids=list(p)) if not isinstance(p, str) else p for p in prompts]
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
        outs = self.llm.generate(inputs, params, use_tqdm=False, lora_request=self.lora_request(plan))
        return [list(o.outputs[0].token_ids) for o in outs]

    def generate(self, prompts: Sequence[str], max_tokens: int = 64, plan: ServingPlan | None = None) -> list[str]:
        """Greedy continuations as text."""
        from vllm import SamplingParams

        self._check_plan(plan)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        outs = self.llm.generate(list(prompts), params, use_tqdm=False, lora_request=self.lora_request(plan))
        return [o.outputs[0].text for o in outs]

    # -- lm-eval ------------------------------------------------------------------------------------------------

    def lm(self, plan: ServingPlan | None = None, *, batch_size: int | str = "auto", **lm_kwargs: Any):
        """An lm-eval ``LM`` (lm-eval's ``vllm`` class) that runs on this engine with ``plan``'s adapter."""
        from cme_bench.vllm_backend.lm_eval_model import CmeVLLM

        self._check_plan(plan)
        return CmeVLLM(self.llm, self.llm_kwargs, self.lora_request(plan), batch_size=batch_size, **lm_kwargs)

    # -- lifetime -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the engine's processes now (otherwise they stop when the interpreter exits)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        if self in _live_in_process:
            _live_in_process.remove(self)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


def _model_max_len(model_dir: Path) -> int | None:
    import json

    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = cfg.get("max_position_embeddings")
    return int(value) if value else None
