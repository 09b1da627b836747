"""lm-eval's own ``vllm`` model class, run on an engine we built (so a sweep loads the base model once).

lm-eval's ``VLLM.__init__`` always constructs a new ``vllm.LLM``. ``CmeVLLM`` lets it run unchanged (tokenizer, chat
template, request batching, log-likelihood and generation code all stay lm-eval's) while the module-level ``LLM``
name it calls returns our existing engine for the duration of ``__init__``; the LoRA request is then set to the
plan's. ``_env.prepare_environment`` has already patched lm-eval's ``version("vllm")`` lookup.
"""

from __future__ import annotations

import threading
from typing import Any

from cme_bench.vllm_backend._env import prepare_environment

prepare_environment()

import lm_eval.models.vllm_causallms as _vllm_lm  # noqa: E402  (needs the patched version lookup)

_swap_lock = threading.Lock()


class CmeVLLM(_vllm_lm.VLLM):
    """lm-eval's VLLM LM over a running ``vllm.LLM`` (``Engine.lm`` passes its own) and one LoRA request.

    Args:
        llm: the engine's ``vllm.LLM``; llm_kwargs: the options it was built with (model folder, max_model_len).
        lora_request: the adapter every request carries (None: base, routed or merged plans).
    """

    def __init__(
        self, llm: Any, llm_kwargs: dict[str, Any], lora_request: Any, *, batch_size: int | str = "auto", **kwargs: Any
    ):
        model_dir = str(llm_kwargs["model"])
        max_len = llm_kwargs.get("max_model_len")
        with _swap_lock:
            original = _vllm_lm.LLM
            _vllm_lm.LLM = lambda **_: llm  # the engine is already running with the right options
            try:
                super().__init__(pretrained=model_dir, batch_size=batch_size, max_model_len=max_len, **kwargs)
            finally:
                _vllm_lm.LLM = original
        self.lora_request = lora_request
