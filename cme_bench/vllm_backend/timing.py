"""Prefill and per-token decode time through vLLM, per profiled adapter (``cme-bench profile --vllm``).

The profiler (``cme_bench.profile``) times HF generation; this module times the same workload (``batch`` prompts of
``prompt_len`` pseudo-random tokens, exactly ``new_tokens`` greedy tokens, EOS ignored) served by vLLM. Each variant
is saved as an adapter folder with random non-zero weights (a fresh adapter has B = 0, which vLLM's LoRA path and
our CPU kernels may skip: speed must be measured on a real update) and served the way an evaluation serves it
(``serving.plan``: LoRA by request, routed adapters through our model, others merged), one engine at a time.

Per repeat: ``t1`` = a generation of one token (prefill + first sample), ``tn`` = a generation of ``new_tokens``;
prefill = ``t1``, decode per token = ``(tn - t1) / (new_tokens - 1)``. Prefix caching is off, or the second
generation of the same prompts would skip its prefill. Engines cannot be interleaved (one in-process engine at a
time), so each variant is timed in its own block after a warm-up; medians and quartiles as elsewhere.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def randomise_adapter(model: nn.Module, seed: int) -> None:
    """Give every adapter tensor a small random value (the interaction matrix keeps its zero diagonal)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if "lora_" not in name or not t.is_floating_point():
                continue
            if "interaction" in name:
                t.copy_(torch.empty(t.shape).uniform_(-0.1, 0.1, generator=gen).fill_diagonal_(0).to(t.dtype))
            elif "biases" in name:
                t.zero_()
            else:
                t.copy_((torch.randn(t.shape, generator=gen) * 0.02).to(t.dtype))


def time_variants(
    loaded: Any,
    variants: Sequence[Any],
    build: Callable[[nn.Module, Any, int], nn.Module],
    *,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    warmup: int,
    repeats: int,
    seed: int,
    dtype: str | None = None,
) -> dict[str, dict[str, float] | None]:
    """``{label: {"vllm_prefill_ms", "vllm_decode_ms_per_token", ...quartiles} or None}`` per variant.

    ``build(model, variant, seed)`` makes the adapted HF model (the profiler's ``apply_variant``). A variant vLLM
    cannot serve gets None and a log line saying why, the others go on.
    """
    from cme_bench import vllm_backend
    from cme_bench.adapters import save_adapter
    from cme_bench.models import architecture_info
    from cme_bench.profile import quartiles, random_tokens
    from cme_bench.vllm_backend.backend import model_folder
    from cme_bench.vllm_backend.engine import Engine

    vllm_backend.require_vllm()
    model_dir = model_folder(loaded.spec)
    base_info = architecture_info(loaded.model)
    vocab = loaded.model.get_input_embeddings().weight.shape[0]
    prompts = random_tokens(vocab, batch, prompt_len, seed + 1, torch.device("cpu")).tolist()
    out: dict[str, dict[str, float] | None] = {}
    with tempfile.TemporaryDirectory(prefix="cme-profile-vllm-") as tmp:
        for v in variants:
            try:
                adapted = build(loaded.model, v, seed)
                randomise_adapter(adapted, seed)
                folder = save_adapter(adapted, Path(tmp) / v.label, base_info=base_info)
                del adapted
                plan = vllm_backend.plan(model_dir, folder)
                engine_kw: dict[str, Any] = {"enable_prefix_caching": False, "max_num_seqs": batch}
                if dtype:
                    engine_kw["dtype"] = dtype
                engine_kw["max_model_len"] = prompt_len + new_tokens + 8
                log.info("vLLM timing of %s (%s)", v.label, plan.kind)
                with Engine([plan], seed=seed, **engine_kw) as engine:
                    out[v.label] = _time(engine, plan, prompts, new_tokens, warmup, repeats, quartiles)
            except Exception as exc:  # one variant's failure must not lose the others' figures
                log.warning("vLLM timing of %s failed: %s: %s", v.label, type(exc).__name__, exc)
                out[v.label] = None
    return out


def _time(engine: Any, plan: Any, prompts: list[list[int]], new_tokens: int, warmup: int, repeats: int, quartiles):
    def timed(n: int) -> float:
        t0 = time.perf_counter()
        engine.generate_ids(prompts, n, plan, ignore_eos=True)
        return time.perf_counter() - t0

    for _ in range(max(1, warmup)):
        timed(new_tokens)
    prefill, decode = [], []
    for _ in range(repeats):
        t1, tn = timed(1), timed(new_tokens)
        prefill.append(t1 * 1e3)
        decode.append((tn - t1) / (new_tokens - 1) * 1e3)
    p, d = quartiles(prefill), quartiles(decode)
    return {
        "vllm_prefill_ms": p["median"],
        "vllm_decode_ms_per_token": d["median"],
        "vllm_decode_ms_p25": d["p25"],
        "vllm_decode_ms_p75": d["p75"],
        "vllm_serving": plan.kind,
    }
