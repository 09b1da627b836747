"""vLLM tests: collected only where vLLM imports (``.venv-vllm``, ``make test-vllm``); skipped as a folder elsewhere.

Engines are expensive (~25 s to start on CPU), so fixtures are module- or session-scoped and shared: one engine for
the base model and every LoRA adapter, one per routed adapter.
"""

from __future__ import annotations

import os

import pytest

from cme_bench.vllm_backend import is_available

collect_ignore_glob: list[str] = []
if not is_available():
    # The main environment has no vLLM: collect nothing here (no import errors, no skips to count).
    collect_ignore_glob = ["test_*.py"]
else:
    from cme_bench.vllm_backend._env import prepare_environment

    prepare_environment()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/vllm/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.vllm)
