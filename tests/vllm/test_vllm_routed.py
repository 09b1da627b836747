"""Routed adapters through our out-of-tree vLLM model: greedy tokens equal HF ``generate`` with the training layers
(TeamLoRA in its fused form), one engine per adapter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from vllm_helpers import PROMPTS, hf_greedy, hf_model, make_adapter, normalise_text, save_base

pytestmark = pytest.mark.vllm

MAX_TOKENS = 24
ROUTED = {
    "teamlora": {"r_a": 16, "num_experts": 4, "alpha": 16, "dropout": 0.0},
    "moelora": {"r": 4, "num_experts": 4, "alpha": 8, "dropout": 0.0},
    "loramoe": {"r": 4, "num_experts": 4, "alpha": 8, "dropout": 0.0},
    "hydralora": {"r": 8, "num_experts": 3, "alpha": 8, "dropout": 0.0},
    "smora": {"r": 16, "activate_r": 4, "alpha": 8, "dropout": 0.0},
    "mixlora": {"r": 4, "num_experts": 4, "top_k": 2, "alpha": 8, "dropout": 0.0},
}
# An in-process engine starts in ~8 s, so every routed method runs end to end (~10-25 s each on 2 CPUs).
# CME_VLLM_QUICK=1 keeps TeamLoRA only; the others' math is also checked without vLLM in tests/test_vllm_backend.py.
if os.environ.get("CME_VLLM_QUICK") == "1":
    ROUTED = {"teamlora": ROUTED["teamlora"]}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_base(tmp_path_factory.mktemp("vllm-routed") / "tiny-llama-h64")


@pytest.fixture(scope="module")
def tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.mark.parametrize("method", sorted(ROUTED))
def test_routed_matches_hf(method: str, base_dir: Path, tokenizer) -> None:
    from cme_bench import vllm_backend

    adapter = make_adapter(base_dir, base_dir.parent / method, method, ROUTED[method], seed=1)
    plan = vllm_backend.plan(base_dir, adapter)
    assert plan.kind == "routed"
    with vllm_backend.start_engine([plan], dtype="float32", max_model_len=256) as engine:
        got = engine.generate_ids(PROMPTS, MAX_TOKENS, plan, ignore_eos=True)
    want = hf_greedy(hf_model(base_dir, adapter), tokenizer, PROMPTS, MAX_TOKENS)
    base = hf_greedy(hf_model(base_dir, None), tokenizer, PROMPTS, MAX_TOKENS)
    assert want != base, "the adapter does not change the output: the parity check would be vacuous"
    assert got == want


def test_vllm_backend_matches_hf_backend(base_dir: Path) -> None:
    """The two backends through the one evaluation path (``cme_bench.evaluate.evaluate``, what the runner's stages
    run) for a TeamLoRA adapter: same primary metrics, same per-document predictions."""
    from cme_bench.backends import EvalTarget
    from cme_bench.evaluate import evaluate
    from cme_bench.models import load_model
    from cme_bench.vllm_backend.backend import VLLMBackend

    tasks, limit = ["cme_mini_sst2", "cme_mini_rte"], 6
    adapter = make_adapter(base_dir, base_dir.parent / "teamlora-eval", "teamlora", ROUTED["teamlora"], seed=2)
    done: list = []
    vllm = VLLMBackend(engine_kwargs={"dtype": "float32"})
    got = evaluate(EvalTarget(str(base_dir), adapter), tasks, backend=vllm, limit=limit, on_task_done=done.append)
    done = [r.task for r in done]
    assert done == tasks
    assert got.backend_info["vllm"]["adapter_kind"] == "routed"
    loaded = load_model(str(base_dir))
    target = EvalTarget(str(base_dir), adapter, model=hf_model(base_dir, adapter), tokenizer=loaded.tokenizer)
    want = evaluate(target, tasks, backend="hf", limit=limit, batch_size=1, progress=False)
    for task in tasks:
        g, w = got.tasks[task], want.tasks[task]
        assert (g.metric, g.value, g.n) == (w.metric, w.value, w.n)
        assert [(r["doc_id"], normalise_text(r["prediction"])) for r in g.samples] == [
            (r["doc_id"], normalise_text(r["prediction"])) for r in w.samples
        ]
