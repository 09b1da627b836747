"""Base model and ``lora`` through one shared engine (vLLM's LoRA support, adapter by request): greedy tokens equal
HF ``generate``, and lm-eval gives the same per-document generations and scores as the HF backend.

Routed adapters are in test_vllm_routed.py: in-process engines run one at a time, and this module's shared engine is
closed when the module ends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from vllm_helpers import PROMPTS, hf_greedy, hf_model, make_adapter, normalise_text, save_base

pytestmark = pytest.mark.vllm

MAX_TOKENS = 24
LORA_PARAMS = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "gate_proj", "down_proj"]}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_base(tmp_path_factory.mktemp("vllm") / "tiny-llama-h64")


@pytest.fixture(scope="module")
def lora_dir(base_dir: Path) -> Path:
    return make_adapter(base_dir, base_dir.parent / "lora", "lora", LORA_PARAMS)


@pytest.fixture(scope="module")
def tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture(scope="module")
def shared_engine(base_dir: Path, lora_dir: Path):
    """One engine for the base model and the LoRA adapter: the sweep set-up (base loaded once)."""
    from cme_bench import vllm_backend

    plans = [vllm_backend.plan(base_dir, None), vllm_backend.plan(base_dir, lora_dir)]
    with vllm_backend.start_engine(plans, dtype="float32", max_model_len=1024) as engine:
        yield engine, plans


def test_base_matches_hf(shared_engine, base_dir: Path, tokenizer) -> None:
    engine, (base_plan, _) = shared_engine
    got = engine.generate_ids(PROMPTS, MAX_TOKENS, base_plan, ignore_eos=True)
    assert got == hf_greedy(hf_model(base_dir, None), tokenizer, PROMPTS, MAX_TOKENS)


def test_lora_matches_hf(shared_engine, base_dir: Path, lora_dir: Path, tokenizer) -> None:
    engine, (base_plan, lora_plan) = shared_engine
    assert lora_plan.kind == "lora" and engine.max_lora_rank == 8
    got = engine.generate_ids(PROMPTS, MAX_TOKENS, lora_plan, ignore_eos=True)
    want = hf_greedy(hf_model(base_dir, lora_dir), tokenizer, PROMPTS, MAX_TOKENS)
    assert got == want
    # The adapter really changed the output (a silently dropped LoRA would match the base instead).
    assert got != engine.generate_ids(PROMPTS, MAX_TOKENS, base_plan, ignore_eos=True)


SCORE_TASKS = ["cme_mini_sst2", "cme_mini_boolq"]
SCORE_LIMIT = 6


def _lm_eval(lm, tasks: list[str]) -> dict:
    import lm_eval

    from cme_bench import taskreg

    return lm_eval.simple_evaluate(
        model=lm, tasks=tasks, limit=SCORE_LIMIT, log_samples=True, task_manager=taskreg.task_manager()
    )


def _hf_lm_eval(model, tokenizer, tasks: list[str]) -> dict:
    from lm_eval.models.huggingface import HFLM

    # batch_size 1: no padding, so HF's numerics are the per-prompt ones vLLM reproduces.
    return _lm_eval(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=1024), tasks)


def _text(resps: list) -> list[str]:
    return [normalise_text(r) for group in resps for r in group]


@pytest.mark.parametrize("which", ["base", "lora"])
def test_lm_eval_scores_match_hf(which: str, shared_engine, base_dir: Path, lora_dir: Path, tokenizer) -> None:
    """Same task configs through lm-eval: identical generations per document, so identical scores."""
    engine, plans = shared_engine
    plan = plans[0] if which == "base" else plans[1]
    got = _lm_eval(engine.lm(plan), SCORE_TASKS)  # the LM the vllm backend's sessions hand to lm-eval
    want = _hf_lm_eval(hf_model(base_dir, plan.adapter_dir), tokenizer, SCORE_TASKS)
    for task in SCORE_TASKS:
        got_resps = [_text(s["resps"]) for s in got["samples"][task]]
        want_resps = [_text(s["resps"]) for s in want["samples"][task]]
        assert len(got_resps) == SCORE_LIMIT
        assert got_resps == want_resps, task
        assert got["results"][task]["acc,none"] == want["results"][task]["acc,none"]


def test_cpu_lora_runs() -> None:
    import torch

    from cme_bench.vllm_backend.punica import token_runs

    idx = torch.tensor([0, 0, -1, -1, 1, 0, 0, -1])
    assert token_runs(idx) == [(0, 0, 2), (1, 4, 5), (0, 5, 7)]
    assert token_runs(idx[:0]) == []


def test_mixed_batch_base_and_lora(shared_engine, base_dir: Path, lora_dir: Path, tokenizer) -> None:
    """Base and LoRA requests in one batch: each gets its own tokens (slot -1 must not pick up the adapter)."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.platforms import current_platform

    from cme_bench.vllm_backend import plugin
    from cme_bench.vllm_backend._env import cuda_available

    engine, (_, lora_plan) = shared_engine
    if not cuda_available() and os.environ.get(plugin.CPU_LORA_ENV, "cme") == "cme":
        # On CPU this engine's LoRA layers run our kernels (punica.py), not vLLM's torch ops.
        assert current_platform.get_punica_wrapper() == plugin.CME_PUNICA
    ids = [tokenizer(p).input_ids for p in PROMPTS]
    lora = engine.lora_request(lora_plan)
    requests = [None if i % 2 else lora for i in range(len(PROMPTS))]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], params, lora_request=requests)
    got = [list(o.outputs[0].token_ids) for o in outs]
    want_base = hf_greedy(hf_model(base_dir, None), tokenizer, PROMPTS, MAX_TOKENS)
    want_lora = hf_greedy(hf_model(base_dir, lora_dir), tokenizer, PROMPTS, MAX_TOKENS)
    assert got == [want_base[i] if i % 2 else want_lora[i] for i in range(len(PROMPTS))]
